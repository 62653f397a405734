"""The verdict rules (`decisions.rules`): pure functions of what the index found."""

from __future__ import annotations

import pytest
from helpers import POLICY

from imgdedup.decisions.rules import (
    KEPT_VERDICTS,
    Candidate,
    CheckVerdict,
    Decision,
    Lookup,
    MatchKind,
    Policy,
    Verdict,
    check,
    decide,
    sort_candidates,
)


def near(image_id: str, seq: int, distance: int) -> Candidate:
    return Candidate(image_id, seq, distance, MatchKind.NEAR)


def exact(image_id: str, seq: int) -> Candidate:
    return Candidate(image_id, seq, 0, MatchKind.EXACT)


def lookup(*candidates: Candidate) -> Lookup:
    return Lookup(sort_candidates(list(candidates)))


# --- decide ---------------------------------------------------------------------------------


def test_nothing_found_is_accepted():
    decision = decide(Lookup(), POLICY)
    assert decision == Decision(Verdict.ACCEPTED)
    assert decision.duplicate_of is None and decision.distance is None and decision.match is None
    assert decision.kept


def test_candidates_beyond_review_radius_are_ignored():
    decision = decide(lookup(near("far", 1, 13), near("farther", 2, 30)), POLICY)
    assert decision.verdict == Verdict.ACCEPTED
    assert decision.duplicate_of is None


def test_exact_beats_near():
    # An *earlier* near duplicate at distance 0 still loses to the exact byte match.
    decision = decide(lookup(near("older-near", 1, 0), exact("bytes-twin", 5)), POLICY)
    assert decision == Decision(Verdict.DUPLICATE, "bytes-twin", 0, MatchKind.EXACT)
    assert not decision.kept


def test_exact_picks_earliest_exact():
    decision = decide(lookup(exact("b", 9), exact("a", 3), near("c", 1, 2)), POLICY)
    assert decision == Decision(Verdict.DUPLICATE, "a", 0, MatchKind.EXACT)


def test_earliest_within_duplicate_radius_wins_over_closest():
    candidates = lookup(near("later-but-closer", 7, 1), near("original", 2, 8), near("mid", 4, 5))
    decision = decide(candidates, POLICY)
    assert decision == Decision(Verdict.DUPLICATE, "original", 8, MatchKind.NEAR)


def test_duplicate_band_beats_earlier_review_band():
    # An older image only in the review band does not outrank a duplicate-band match.
    decision = decide(lookup(near("old-review", 1, 11), near("newer-dup", 6, 7)), POLICY)
    assert decision == Decision(Verdict.DUPLICATE, "newer-dup", 7, MatchKind.NEAR)


@pytest.mark.parametrize("distance, verdict", [
    (0, Verdict.DUPLICATE),
    (8, Verdict.DUPLICATE),
    (9, Verdict.REVIEW),
    (12, Verdict.REVIEW),
    (13, Verdict.ACCEPTED),
])
def test_band_boundaries(distance, verdict):
    decision = decide(lookup(near("x", 1, distance)), POLICY)
    assert decision.verdict == verdict
    if verdict == Verdict.ACCEPTED:
        assert decision.duplicate_of is None and decision.distance is None
    else:
        assert decision.duplicate_of == "x"
        assert decision.distance == distance
        assert decision.match == MatchKind.NEAR


def test_review_picks_earliest_in_band():
    decision = decide(lookup(near("late", 9, 9), near("early", 3, 12)), POLICY)
    assert decision == Decision(Verdict.REVIEW, "early", 12, MatchKind.NEAR)
    assert decision.kept  # review images are stored (and so indexed)


def test_equal_radii_disable_review():
    policy = Policy(8, 8)
    assert decide(lookup(near("x", 1, 9)), policy).verdict == Verdict.ACCEPTED
    assert decide(lookup(near("x", 1, 8)), policy).verdict == Verdict.DUPLICATE


def test_zero_radii_only_exact_codes():
    policy = Policy(0, 0)
    assert decide(lookup(near("x", 1, 0)), policy).verdict == Verdict.DUPLICATE
    assert decide(lookup(near("x", 1, 1)), policy).verdict == Verdict.ACCEPTED


def test_kept_verdicts():
    assert KEPT_VERDICTS == {Verdict.ACCEPTED, Verdict.REVIEW}
    assert not Decision(Verdict.REJECTED).kept
    assert not Decision(Verdict.DUPLICATE, "x", 1, MatchKind.NEAR).kept


# --- Policy -------------------------------------------------------------------------------------


def test_policy_rejects_duplicate_above_review():
    with pytest.raises(ValueError):
        Policy(duplicate_radius=10, review_radius=9)


def test_policy_rejects_negative():
    with pytest.raises(ValueError):
        Policy(duplicate_radius=-1, review_radius=5)


def test_policy_accepts_valid():
    assert Policy(0, 0).review_radius == 0
    assert Policy(8, 12).duplicate_radius == 8


# --- sort / check -------------------------------------------------------------------------------


def test_sort_candidates_exact_then_distance_then_seq():
    ordered = sort_candidates([
        near("d3-late", 9, 3), near("d1", 8, 1), exact("e", 10), near("d3-early", 2, 3),
        near("d0", 11, 0),
    ])
    assert [c.image_id for c in ordered] == ["e", "d0", "d1", "d3-early", "d3-late"]


def test_check_unique():
    verdict, matches, _ = check(lookup(near("far", 1, 13)), POLICY)
    assert verdict == CheckVerdict.UNIQUE
    assert matches == ()


def test_check_lists_matches_nearest_first():
    found = Lookup((
        near("review", 1, 11), near("dup-far", 2, 7), near("dup-near", 5, 2),
        near("too-far", 3, 20),
    ))
    verdict, matches, _ = check(found, POLICY)
    assert verdict == CheckVerdict.DUPLICATE
    assert [m.image_id for m in matches] == ["dup-near", "dup-far", "review"]
    assert [m.distance for m in matches] == [2, 7, 11]


def test_check_review_only():
    verdict, matches, _ = check(lookup(near("a", 4, 10), near("b", 2, 12)), POLICY)
    assert verdict == CheckVerdict.REVIEW
    assert [m.image_id for m in matches] == ["a", "b"]


def test_check_exact_first_and_duplicate():
    verdict, matches, _ = check(lookup(near("n", 1, 0), exact("e", 6)), POLICY)
    assert verdict == CheckVerdict.DUPLICATE
    assert matches[0] == exact("e", 6)
    assert [m.image_id for m in matches] == ["e", "n"]


def test_check_verdict_agrees_with_decide():
    cases = [
        lookup(),
        lookup(near("a", 1, 5)),
        lookup(near("a", 1, 10)),
        lookup(near("a", 1, 30)),
        lookup(exact("a", 1)),
    ]
    mapping = {
        Verdict.ACCEPTED: CheckVerdict.UNIQUE,
        Verdict.DUPLICATE: CheckVerdict.DUPLICATE,
        Verdict.REVIEW: CheckVerdict.REVIEW,
    }
    for case in cases:
        assert check(case, POLICY)[0] == mapping[decide(case, POLICY).verdict]

"""The second look (`service.verify`) and how the decision rules use it."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
from helpers import SAMPLE_NAMES, sample_image
from PIL import Image, ImageEnhance

from service.decisions import Candidate, Lookup, MatchKind, Policy, Verdict, decide
from service.hashing import THUMBNAIL_BYTES, ImageLimits, fingerprint
from service.verify import similarity

LIMITS = ImageLimits(max_bytes=25 * 1024 * 1024, max_pixels=50_000_000)


def jpeg(image: Image.Image, quality: int = 85) -> bytes:
    out = io.BytesIO()
    image.convert("RGB").save(out, "JPEG", quality=quality)
    return out.getvalue()


def thumbs(image: Image.Image) -> bytes:
    return fingerprint(jpeg(image), LIMITS).thumbnail


def crop(image: Image.Image, left: float, top: float, right: float, bottom: float) -> Image.Image:
    w, h = image.size
    return image.crop((round(w * left), round(h * top), round(w * right), round(h * bottom)))


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    return {name: sample_image(name) for name in SAMPLE_NAMES}


def test_thumbnails_are_part_of_the_fingerprint(photos):
    blob = thumbs(photos["chelsea"])
    assert len(blob) == THUMBNAIL_BYTES
    assert similarity(blob, blob) == pytest.approx(1.0)


def test_blank_picture_gets_no_thumbnails():
    assert fingerprint(jpeg(Image.new("RGB", (200, 150), (40, 40, 40))), LIMITS).thumbnail == b""


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_copies_and_crops_look_alike(photos, name):
    image = photos[name]
    stored = thumbs(image)
    copies = {
        "brighter": ImageEnhance.Brightness(image).enhance(1.3),
        "less contrast": ImageEnhance.Contrast(image).enhance(0.7),
        "half size": image.resize((image.width // 2, image.height // 2)),
        "centre crop 20 %": crop(image, 0.05, 0.05, 0.95, 0.95),
        "corner crop 20 %": crop(image, 0.1, 0.1, 1.0, 1.0),
        "top 75 %": crop(image, 0.0, 0.0, 1.0, 0.75),
    }
    for label, copy in copies.items():
        sim = similarity(thumbs(copy), stored)
        assert sim is not None and sim >= 0.9, (label, sim)


def test_different_photos_do_not_look_alike(photos):
    blobs = {name: thumbs(image) for name, image in photos.items()}
    for a, b in itertools.combinations(blobs, 2):
        sim = similarity(blobs[a], blobs[b])
        assert sim is not None and sim < 0.8, (a, b, sim)


def test_mirror_matches_only_when_symmetries_are_asked_for(photos):
    image = photos["rocket"]
    stored, mirrored = thumbs(image), thumbs(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    rotated = thumbs(image.transpose(Image.Transpose.ROTATE_90))
    assert similarity(mirrored, stored) < 0.8
    assert similarity(mirrored, stored, symmetries=True) >= 0.95
    assert similarity(rotated, stored, symmetries=True) >= 0.95


def test_missing_or_malformed_thumbnails_give_no_similarity(photos):
    blob = thumbs(photos["coffee"])
    assert similarity(b"", blob) is None
    assert similarity(blob, b"") is None
    assert similarity(blob, blob[:-1]) is None


def test_flat_views_leave_the_decision_to_the_distance():
    flat = bytes(THUMBNAIL_BYTES)
    ramp = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (32, 1)).tobytes()
    # No shape to correlate on one side: no similarity (not 0, which would send even an
    # exact-looking copy to review).
    assert similarity(flat, flat) is None
    assert similarity(flat, ramp) is None and similarity(ramp, flat) is None
    assert similarity(ramp, ramp) == pytest.approx(1.0)
    assert decide(Lookup((candidate("flat", 1, 0, flat),)), Policy(8, 12), flat).verdict == Verdict.DUPLICATE


# --- the decision rules with the second look --------------------------------------------


def candidate(image_id: str, seq: int, distance: int, thumbnail: bytes) -> Candidate:
    return Candidate(image_id, seq, distance, MatchKind.NEAR, thumbnail)


def test_review_band_candidate_confirmed_by_thumbnails_is_a_duplicate(photos):
    # The query is a crop of the stored original: it is compared with the original's windows.
    query, original, other = thumbs(crop(photos["chelsea"], 0, 0, 0.9, 0.9)), thumbs(photos["chelsea"]), thumbs(photos["camera"])
    policy = Policy(8, 12)
    found = Lookup((candidate("other", 1, 10, other), candidate("copy", 2, 11, original)))
    decision = decide(found, policy, query)
    assert (decision.verdict, decision.duplicate_of, decision.distance) == (Verdict.DUPLICATE, "copy", 11)
    assert decision.similarity >= 0.9
    # Unconfirmed, the earliest candidate in the band is named for review.
    strict = decide(found, Policy(8, 12, confirm_similarity=1.0), query)
    assert (strict.verdict, strict.duplicate_of) == (Verdict.REVIEW, "other")


def test_look_alike_within_the_duplicate_radius_goes_to_review(photos):
    query, other = thumbs(photos["chelsea"]), thumbs(photos["camera"])
    decision = decide(Lookup((candidate("other", 1, 5, other),)), Policy(8, 12, min_similarity=0.9), query)
    assert (decision.verdict, decision.duplicate_of) == (Verdict.REVIEW, "other")
    assert decision.similarity < 0.9


def test_earliest_confirmed_candidate_wins(photos):
    query = thumbs(photos["astronaut"])
    near_copy = thumbs(photos["astronaut"].resize((300, 300)))
    found = Lookup((candidate("late", 7, 2, near_copy), candidate("early", 3, 7, near_copy)))
    assert decide(found, Policy(8, 12), query).duplicate_of == "early"


def test_records_without_thumbnails_are_judged_by_distance(photos):
    query = thumbs(photos["rocket"])
    assert decide(Lookup((candidate("old", 1, 8, b""),)), Policy(8, 12), query).verdict == Verdict.DUPLICATE
    assert decide(Lookup((candidate("old", 1, 9, b""),)), Policy(8, 12), query).verdict == Verdict.REVIEW
    assert decide(Lookup((candidate("old", 1, 9, query),)), Policy(8, 12), b"").verdict == Verdict.REVIEW


def test_policy_rejects_similarities_outside_correlation_range():
    with pytest.raises(ValueError):
        Policy(8, 12, confirm_similarity=1.5)
    with pytest.raises(ValueError):
        Policy(8, 12, min_similarity=-2)

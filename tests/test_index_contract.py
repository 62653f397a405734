"""The `DedupIndex` contract, run against both backends (in-memory and Redis MIH, the
latter in both of its layouts: bucket keys, and the replica-local mirror fed by a log)."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import sys

import numpy as np
import pytest
from conftest import parametrize_redis, spread_namespace
from helpers import POLICY, flip_bits, hamming, make_fingerprint, random_code

from imgdedup.decisions.review import Outcome, ReviewConflict, plan, plan_undo
from imgdedup.decisions.rules import CheckVerdict, Decision, Lookup, MatchKind, Verdict, check, decide
from imgdedup.errors import ImageIdConflict, InvalidIdentifier
from imgdedup.fingerprint import Fingerprint
from imgdedup.records import ImageRecord, Registration

RADIUS = POLICY.review_radius
decide_real = functools.partial(decide, policy=POLICY)
NS = "contract"


#: Redis tests about the bucket layout itself (m, probe expansion): not run on mirrors.
BUCKET_LAYOUT_ONLY = {"test_redis_probe_expansion_matches_brute_force_for_every_substring_count"}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    parametrize_redis(metafunc, BUCKET_LAYOUT_ONLY)


@pytest.fixture(autouse=True)
def _namespace(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """On the cluster, each test's namespace lives on the next master in turn."""
    monkeypatch.setattr(sys.modules[__name__], "NS", spread_namespace(request, "contract"))


def always_accept(lookup: Lookup) -> Decision:
    return Decision(Verdict.ACCEPTED)


async def register(index, image_id: str, fp: Fingerprint, ns: str | None = None, **kw) -> Registration:
    return await index.register(ns or NS, image_id, fp, kw.pop("decide", decide_real),
                                radius=kw.pop("radius", RADIUS), **kw)


async def register_many(index, ns, items, decide_fn, radius, batch=64) -> list[Registration]:
    out: list[Registration] = []
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        out.extend(await asyncio.gather(*(
            index.register(ns, image_id, fp, decide_fn, radius=radius) for image_id, fp in chunk
        )))
    return out


def brute_force(inserted: dict[str, tuple[int, ...]], code: int, radius: int):
    hits = []
    for image_id, codes in inserted.items():
        distance = min(hamming(c, code) for c in codes)
        if distance <= radius:
            hits.append((image_id, distance))
    return sorted(hits, key=lambda pair: (pair[1], pair[0]))


def far_code(rng: np.random.Generator, *others: int, min_distance: int = 24) -> int:
    while True:
        code = random_code(rng)
        if all(hamming(code, o) >= min_distance for o in others):
            return code


# --- randomized oracle -----------------------------------------------------------------------


async def test_query_matches_brute_force(index):
    rng = np.random.default_rng(1234)
    inserted: dict[str, tuple[int, ...]] = {}
    items: list[tuple[str, Fingerprint]] = []
    bases = [random_code(rng) for _ in range(60)]
    n = 0
    for base in bases:  # clusters: a base and members 1..14 bits away
        for k in [0] + [int(k) for k in rng.integers(1, 15, size=9)]:
            items.append((f"c{n:05d}", make_fingerprint(flip_bits(base, k, rng), n)))
            n += 1
    while n < 2000:
        items.append((f"r{n:05d}", make_fingerprint(random_code(rng), n)))
        n += 1
    # A few duplicated codes (two images, identical perceptual code).
    for i in range(5):
        items.append((f"twin{i}", make_fingerprint(items[i * 37][1].primary_code, 10_000 + i)))
    order = rng.permutation(len(items))
    items = [items[i] for i in order]
    for image_id, fp in items:
        inserted[image_id] = fp.codes

    registrations = await register_many(index, NS, items, always_accept, radius=0)
    assert all(r.record.verdict == Verdict.ACCEPTED and not r.replayed for r in registrations)
    assert len({r.record.seq for r in registrations}) == len(items)

    queries = [flip_bits(b, int(rng.integers(0, 7)), rng) for b in bases for _ in range(2)]
    queries += [items[int(i)][1].primary_code for i in rng.integers(0, len(items), 40)]
    queries += [random_code(rng) for _ in range(40)]
    total_hits = 0
    for radius in (0, 3, 8, 12, 16):
        for code in queries:
            got = await index.query(NS, code, radius=radius)
            expected = brute_force(inserted, code, radius)
            assert got == expected, f"radius {radius} code {code:016x}"
            total_hits += len(expected)
    assert total_hits > 1000  # the oracle compared real result sets, not empty lists


@pytest.mark.parametrize("substrings", [2, 3, 5, 8])
async def test_redis_probe_expansion_matches_brute_force_for_every_substring_count(redis_replicas, substrings):
    """The refined MIH probe radii must read every bucket that can hold a match, for
    any substring count a namespace may have been created with (2 to 8)."""
    (index,) = await redis_replicas(1, substrings=substrings)
    namespace = f"m{substrings}"
    rng = np.random.default_rng(substrings)
    bases = [random_code(rng) for _ in range(20)]
    items = [
        (f"i{i:04d}", make_fingerprint(flip_bits(bases[i % 20], int(rng.integers(0, 13)), rng), i))
        for i in range(400)
    ]
    await register_many(index, namespace, items, always_accept, radius=0)
    inserted = {image_id: fp.codes for image_id, fp in items}
    hits = 0
    for radius in ((0, 2, 4) if substrings == 2 else (0, 3, 7, 12)):
        for base in bases:
            query = flip_bits(base, int(rng.integers(0, 4)), rng)
            expected = brute_force(inserted, query, radius)
            assert await index.query(namespace, query, radius=radius) == expected, (radius, f"{query:016x}")
            hits += len(expected)
    assert hits > 100
    await index.drop_namespace(namespace)


async def test_removals_keep_queries_exact(index):
    # Enough removals to make the in-memory backend compact its arrays (> 1024 dead rows).
    rng = np.random.default_rng(77)
    bases = [random_code(rng) for _ in range(30)]
    items = []
    for i in range(1500):
        code = flip_bits(bases[i % 30], int(rng.integers(0, 12)), rng)
        items.append((f"i{i:04d}", make_fingerprint(code, i)))
    await register_many(index, NS, items, always_accept, radius=0)
    removed = {items[i][0] for i in rng.choice(1500, size=1100, replace=False).tolist()}
    results = []
    ids = sorted(removed)
    for start in range(0, len(ids), 64):
        results += await asyncio.gather(*(index.remove(NS, i) for i in ids[start : start + 64]))
    assert all(results)
    remaining = {i: fp.codes for i, fp in items if i not in removed}
    assert len(remaining) == 400
    for base in bases:
        for radius in (4, 12):
            assert await index.query(NS, base, radius=radius) == brute_force(remaining, base, radius)
    # New registrations after the removals are found too.
    late = make_fingerprint(bases[0] ^ 1, b"late")
    await index.register(NS, "late", late, always_accept, radius=0)
    assert ("late", 0) in await index.query(NS, bases[0] ^ 1, radius=0)


# --- register with the real policy ----------------------------------------------------------


async def test_register_verdicts(index):
    rng = np.random.default_rng(1)
    code = random_code(rng)
    first = await register(index, "orig", make_fingerprint(code, 1))
    assert not first.replayed
    assert first.record.verdict == Verdict.ACCEPTED
    assert first.record.duplicate_of is None and first.record.distance is None
    assert first.record.kept

    # Same bytes (same SHA), even with a far-off code: exact duplicate.
    exact = await register(index, "exact-copy", make_fingerprint(flip_bits(code, 30, rng), 1))
    assert exact.record.decision == Decision(Verdict.DUPLICATE, "orig", 0, MatchKind.EXACT)

    near_code = flip_bits(code, 5, rng)
    near = await register(index, "near-copy", make_fingerprint(near_code, 2))
    assert near.record.decision == Decision(Verdict.DUPLICATE, "orig", 5, MatchKind.NEAR)
    assert not near.record.kept

    review_code = flip_bits(code, 10, rng)
    review = await register(index, "review", make_fingerprint(review_code, 3))
    assert review.record.decision == Decision(Verdict.REVIEW, "orig", 10, MatchKind.NEAR)
    assert review.record.kept

    other = far_code(rng, code, review_code)
    unrelated = await register(index, "unrelated", make_fingerprint(other, 4))
    assert unrelated.record.verdict == Verdict.ACCEPTED

    # Kept images are match targets, duplicates are not.
    assert await index.query(NS, code, radius=0) == [("orig", 0)]
    assert await index.query(NS, review_code, radius=0) == [("review", 0)]
    assert await index.query(NS, near_code, radius=0) == []
    assert await index.query(NS, code, radius=10) == [("orig", 0), ("review", 10)]

    seqs = [r.record.seq for r in (first, exact, near, review, unrelated)]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5


async def test_earliest_kept_image_is_the_original(index):
    rng = np.random.default_rng(2)
    code = random_code(rng)
    positions = rng.choice(64, size=10, replace=False).tolist()
    mask10 = sum(1 << p for p in positions)
    mask8 = sum(1 << p for p in positions[:8])
    await register(index, "orig", make_fingerprint(code, 1))
    second = await register(index, "second", make_fingerprint(code ^ mask10, 2))
    assert second.record.verdict == Verdict.REVIEW  # kept, so it is a match target too
    third = await register(index, "third", make_fingerprint(code ^ mask8, 3))
    # 8 from "orig" (earliest), 2 from "second" (closest): the original wins.
    assert third.record.decision == Decision(Verdict.DUPLICATE, "orig", 8, MatchKind.NEAR)


async def test_lookup_is_read_only(index):
    rng = np.random.default_rng(3)
    code = random_code(rng)
    await register(index, "a", make_fingerprint(code, 1))
    probe = make_fingerprint(flip_bits(code, 3, rng), 2)
    found = await index.lookup(NS, probe, radius=RADIUS)
    assert [(c.image_id, c.distance, c.match) for c in found.candidates] == [
        ("a", 3, MatchKind.NEAR)
    ]
    assert check(found, POLICY)[0] == CheckVerdict.DUPLICATE
    assert await index.get(NS, "probe") is None
    again = await index.lookup(NS, probe, radius=RADIUS)
    assert again == found
    exact = await index.lookup(NS, make_fingerprint(far_code(rng, code), 1), radius=RADIUS)
    assert [(c.image_id, c.match) for c in exact.candidates] == [("a", MatchKind.EXACT)]
    nothing = await index.lookup(NS, make_fingerprint(far_code(rng, code), 9), radius=RADIUS)
    assert nothing.candidates == ()


async def test_replay_is_idempotent(index):
    rng = np.random.default_rng(4)
    code = random_code(rng)
    fp = make_fingerprint(code, 1)
    first = await register(index, "a", fp, event_id="evt-1")
    # Replays return the stored decision, whatever the decide function would say now.
    replay = await register(index, "a", fp, decide=lambda lookup: pytest.fail("decided"))
    assert replay.replayed
    assert replay.record == first.record
    assert replay.record.event_id == "evt-1"

    dup_fp = make_fingerprint(flip_bits(code, 2, rng), 2)
    dup = await register(index, "b", dup_fp)
    dup_replay = await register(index, "b", dup_fp)
    assert dup_replay.replayed and dup_replay.record == dup.record
    assert dup_replay.record.verdict == Verdict.DUPLICATE
    assert [r.image_id for r in await index.duplicates_of(NS, "a")] == ["b"]  # no double entry


async def test_image_id_conflict(index):
    rng = np.random.default_rng(5)
    code = random_code(rng)
    first = await register(index, "a", make_fingerprint(code, 1))
    with pytest.raises(ImageIdConflict) as info:
        await register(index, "a", make_fingerprint(code, 2))  # same id, other bytes
    assert info.value.http_status == 409
    assert info.value.code == "image_id_conflict"
    assert await index.get(NS, "a") == first.record


async def test_get_returns_record_with_hashes(index):
    rng = np.random.default_rng(6)
    code = random_code(rng)
    fp = make_fingerprint(code, b"some image bytes", width=800, height=600, fmt="PNG",
                          size_bytes=4321)
    registered = await register(index, "img/1:x", fp, event_id="e-42")
    record = await index.get(NS, "img/1:x")
    assert isinstance(record, ImageRecord)
    assert record == registered.record
    assert record.namespace == NS and record.image_id == "img/1:x"
    assert record.sha256 == fp.sha256_hex
    assert record.codes == (code,)
    assert (record.width, record.height, record.format, record.size_bytes) == (800, 600, "PNG", 4321)
    assert record.event_id == "e-42"
    assert record.created_at > 0
    assert ImageRecord.from_json(record.to_json()) == record
    dup = await register(index, "dup", make_fingerprint(flip_bits(code, 1, rng), 2))
    assert await index.get(NS, "dup") == dup.record
    assert await index.get(NS, "missing") is None


async def test_duplicates_of_in_registration_order(index):
    rng = np.random.default_rng(7)
    code = random_code(rng)
    await register(index, "orig", make_fingerprint(code, 1))
    names = []
    for name, fp in [
        ("d-near", make_fingerprint(flip_bits(code, 6, rng), 2)),
        ("d-review", make_fingerprint(flip_bits(code, 11, rng), 3)),
        ("d-exact", make_fingerprint(far_code(rng, code), 1)),
        ("d-closest", make_fingerprint(flip_bits(code, 1, rng), 4)),
    ]:
        await register(index, name, fp)
        names.append(name)
    dups = await index.duplicates_of(NS, "orig")
    assert [r.image_id for r in dups] == names
    assert [r.verdict for r in dups] == [
        Verdict.DUPLICATE, Verdict.REVIEW, Verdict.DUPLICATE, Verdict.DUPLICATE
    ]
    assert dups == [await index.get(NS, n) for n in names]
    assert await index.duplicates_of(NS, "d-near") == []
    assert await index.duplicates_of(NS, "nobody") == []


# --- remove ----------------------------------------------------------------------------------


async def test_remove_kept_image(index):
    rng = np.random.default_rng(8)
    code = random_code(rng)
    fp = make_fingerprint(code, 1)
    await register(index, "a", fp)
    await register(index, "a-dup", make_fingerprint(flip_bits(code, 2, rng), 2))
    assert await index.remove(NS, "a") is True
    assert await index.get(NS, "a") is None
    assert await index.query(NS, code, radius=16) == []
    assert (await index.lookup(NS, fp, radius=RADIUS)).candidates == ()
    assert await index.duplicates_of(NS, "a") == []
    # The duplicate's own record survives (it was a decision that was made).
    assert (await index.get(NS, "a-dup")).duplicate_of == "a"
    assert await index.remove(NS, "a") is False
    assert await index.remove(NS, "never-there") is False
    # The same bytes under a new id are now new: no exact match, no near match.
    again = await register(index, "a2", fp)
    assert again.record.verdict == Verdict.ACCEPTED and not again.replayed
    assert await index.query(NS, code, radius=0) == [("a2", 0)]


async def test_remove_then_reregister_same_id(index):
    rng = np.random.default_rng(9)
    fp = make_fingerprint(random_code(rng), 1)
    first = await register(index, "a", fp)
    assert await index.remove(NS, "a")
    second = await register(index, "a", fp)
    assert not second.replayed
    assert second.record.verdict == Verdict.ACCEPTED
    assert second.record.seq > first.record.seq


async def test_remove_duplicate(index):
    rng = np.random.default_rng(10)
    code = random_code(rng)
    await register(index, "orig", make_fingerprint(code, 1))
    d1_fp = make_fingerprint(flip_bits(code, 3, rng), 2)
    await register(index, "d1", d1_fp)
    await register(index, "d2", make_fingerprint(flip_bits(code, 4, rng), 3))
    assert [r.image_id for r in await index.duplicates_of(NS, "orig")] == ["d1", "d2"]
    assert await index.remove(NS, "d1") is True
    assert [r.image_id for r in await index.duplicates_of(NS, "orig")] == ["d2"]
    assert await index.get(NS, "d1") is None
    assert await index.query(NS, code, radius=0) == [("orig", 0)]
    # Registering d1 again decides afresh (no replay of the removed record).
    again = await register(index, "d1", d1_fp)
    assert not again.replayed and again.record.duplicate_of == "orig"
    assert [r.image_id for r in await index.duplicates_of(NS, "orig")] == ["d2", "d1"]


async def test_remove_review_image(index):
    rng = np.random.default_rng(11)
    code = random_code(rng)
    await register(index, "orig", make_fingerprint(code, 1))
    review_code = flip_bits(code, 10, rng)
    await register(index, "rev", make_fingerprint(review_code, 2))
    assert await index.query(NS, review_code, radius=0) == [("rev", 0)]
    assert await index.remove(NS, "rev")
    assert await index.query(NS, review_code, radius=0) == []
    assert await index.duplicates_of(NS, "orig") == []
    assert await index.query(NS, code, radius=0) == [("orig", 0)]


# --- namespaces, multi-code images, identifiers -----------------------------------------------


async def test_namespaces_are_isolated(index):
    rng = np.random.default_rng(12)
    code = random_code(rng)
    fp = make_fingerprint(code, 1)
    a = await register(index, "img", fp, ns="tenant-a")
    b = await register(index, "img", fp, ns="tenant-b")
    assert a.record.verdict == b.record.verdict == Verdict.ACCEPTED
    assert not b.replayed
    # Same image_id with other bytes in a third namespace: no conflict.
    c = await register(index, "img", make_fingerprint(code, 2), ns="tenant.c_1")
    assert c.record.verdict == Verdict.ACCEPTED
    assert await index.query("tenant-a", code, radius=4) == [("img", 0)]
    assert await index.remove("tenant-a", "img")
    assert await index.query("tenant-a", code, radius=4) == []
    assert await index.query("tenant-b", code, radius=4) == [("img", 0)]
    assert (await index.get("tenant-b", "img")).namespace == "tenant-b"
    assert await index.query("tenant-empty", code, radius=16) == []


async def test_several_codes_per_image(index):
    rng = np.random.default_rng(13)
    c1 = random_code(rng)
    c2 = far_code(rng, c1)
    multi = make_fingerprint(c1, 1, codes=(c1, c2))
    registered = await register(index, "multi", multi)
    assert registered.record.codes == (c1, c2)
    assert await index.query(NS, c1, radius=0) == [("multi", 0)]
    assert await index.query(NS, c2, radius=0) == [("multi", 0)]
    # A query near both codes lists the image once, at its nearest distance.
    c3 = c1 ^ 0b111  # 3 from c1
    both = make_fingerprint(c3, 5, codes=(c3, c2 ^ 1))
    found = await index.lookup(NS, both, radius=RADIUS)
    assert [(c.image_id, c.distance) for c in found.candidates] == [("multi", 1)]
    # A new image near the *second* code is a duplicate of it.
    near2 = await register(index, "near-second", make_fingerprint(flip_bits(c2, 4, rng), 2))
    assert near2.record.decision == Decision(Verdict.DUPLICATE, "multi", 4, MatchKind.NEAR)
    assert await index.remove(NS, "multi")
    assert await index.query(NS, c1, radius=16) == []
    assert await index.query(NS, c2, radius=16) == []


async def test_codes_sharing_buckets_of_one_image(index):
    # Two codes of one image that share MIH buckets (differ in one substring only).
    rng = np.random.default_rng(14)
    c1 = random_code(rng)
    c2 = c1 ^ 0xFFFF  # only the last 16-bit substring differs
    await register(index, "twin-codes", make_fingerprint(c1, 1, codes=(c1, c2)))
    assert await index.query(NS, c2, radius=0) == [("twin-codes", 0)]
    assert await index.query(NS, c1 ^ 0xFF, radius=8) == [("twin-codes", 8)]
    assert await index.remove(NS, "twin-codes")
    assert await index.query(NS, c1, radius=16) == []


async def test_rotated_codes_are_probed_but_never_indexed(index):
    """Rotation mode: a lookup probes `rotated_codes` too (a mirrored copy finds its
    original), while registration indexes only the whole-image and window codes."""
    rng = np.random.default_rng(15)
    stored, mirrored = random_code(rng), random_code(rng)
    await register(index, "upright", make_fingerprint(stored, 1))
    plain = make_fingerprint(mirrored, 2)
    assert (await index.lookup(NS, plain, radius=RADIUS)).candidates == ()
    with_rotations = dataclasses.replace(plain, rotated_codes=(flip_bits(stored, 3, rng),))
    (candidate,) = (await index.lookup(NS, with_rotations, radius=RADIUS)).candidates
    assert (candidate.image_id, candidate.distance) == ("upright", 3)
    registration = await register(index, "mirrored", with_rotations)
    assert (registration.record.verdict, registration.record.duplicate_of) == (Verdict.DUPLICATE, "upright")
    lone = dataclasses.replace(make_fingerprint(random_code(rng), 3), rotated_codes=(777,))
    assert (await register(index, "lone", lone)).record.verdict == Verdict.ACCEPTED
    assert await index.query(NS, 777, radius=0) == []  # rotated codes are not stored


@pytest.mark.parametrize("namespace", ["a b", "{x}", "", "x" * 65, "a:b", "ns/1", "é"])
async def test_invalid_namespace(index, namespace):
    fp = make_fingerprint(1, 1)
    with pytest.raises(InvalidIdentifier) as info:
        await index.register(namespace, "img", fp, decide_real, radius=RADIUS)
    assert info.value.http_status == 400
    with pytest.raises(InvalidIdentifier):
        await index.query(namespace, 1, radius=0)
    with pytest.raises(InvalidIdentifier):
        await index.lookup(namespace, fp, radius=0)
    with pytest.raises(InvalidIdentifier):
        await index.get(namespace, "img")
    with pytest.raises(InvalidIdentifier):
        await index.remove(namespace, "img")
    with pytest.raises(InvalidIdentifier):
        await index.duplicates_of(namespace, "img")


@pytest.mark.parametrize("image_id", ["", "a\nb", "tab\there", "x" * 513, "del\x7f"])
async def test_invalid_image_id(index, image_id):
    with pytest.raises(InvalidIdentifier):
        await register(index, image_id, make_fingerprint(1, 1))


async def test_valid_unusual_image_ids(index):
    rng = np.random.default_rng(15)
    for i, image_id in enumerate(["x" * 512, "ünïcødé", "a:b:c", "{braces}", "with space"]):
        code = random_code(rng)
        reg = await register(index, image_id, make_fingerprint(code, i))
        assert reg.record.verdict == Verdict.ACCEPTED
        assert (await index.get(NS, image_id)).image_id == image_id
        assert await index.query(NS, code, radius=0) == [(image_id, 0)]
    exact = await register(index, "copy", make_fingerprint(random_code(rng), 2))
    assert exact.record.duplicate_of == "a:b:c"


async def test_ping(index):
    await index.ping()


# --- concurrency: first wins --------------------------------------------------------------


def _assert_one_accepted(registrations: list[Registration], fps: dict[str, Fingerprint]):
    accepted = [r.record for r in registrations if r.record.verdict == Verdict.ACCEPTED]
    assert len(accepted) == 1, [r.record.verdict for r in registrations]
    winner = accepted[0]
    for r in registrations:
        assert not r.replayed
        if r.record.image_id == winner.image_id:
            continue
        assert r.record.verdict == Verdict.DUPLICATE
        assert r.record.duplicate_of == winner.image_id
        assert r.record.match == MatchKind.NEAR
        assert r.record.distance == hamming(fps[r.record.image_id].primary_code,
                                            winner.codes[0])
    # The winner is also the earliest in registration order.
    assert winner.seq == min(r.record.seq for r in registrations)
    return winner


def _near_duplicate_batch(rng, round_no: int, n: int = 40) -> dict[str, Fingerprint]:
    base = random_code(rng)
    return {
        f"r{round_no}-img{i:02d}": make_fingerprint(
            flip_bits(base, int(rng.integers(0, 4)), rng), f"r{round_no}-{i}".encode()
        )
        for i in range(n)
    }


async def test_concurrent_near_duplicates_exactly_one_accepted(index):
    rng = np.random.default_rng(99)
    for round_no in range(5):
        fps = _near_duplicate_batch(rng, round_no)
        registrations = await asyncio.gather(*(
            index.register(NS, image_id, fp, decide_real, radius=RADIUS)
            for image_id, fp in fps.items()
        ))
        winner = _assert_one_accepted(list(registrations), fps)
        dups = await index.duplicates_of(NS, winner.image_id)
        assert sorted(r.image_id for r in dups) == sorted(set(fps) - {winner.image_id})


async def test_concurrent_replicas_exactly_one_accepted(redis_index, redis_replicas):
    # Five independent clusters of 40 near-duplicates, all registered at once through five
    # replicas (separate clients / connection pools): per cluster, exactly one original.
    replicas = [redis_index, *await redis_replicas(4)]
    rng = np.random.default_rng(2025)
    batches = [_near_duplicate_batch(rng, round_no) for round_no in range(5)]
    jobs = [
        (round_no, image_id, fp)
        for round_no, fps in enumerate(batches)
        for image_id, fp in fps.items()
    ]
    order = rng.permutation(len(jobs)).tolist()
    results = await asyncio.gather(*(
        replicas[i % len(replicas)].register(NS, jobs[j][1], jobs[j][2], decide_real, radius=RADIUS)
        for i, j in enumerate(order)
    ))
    by_round: dict[int, list[Registration]] = {}
    for j, registration in zip(order, results):
        by_round.setdefault(jobs[j][0], []).append(registration)
    for round_no, fps in enumerate(batches):
        winner = _assert_one_accepted(by_round[round_no], fps)
        # Every replica sees the same state.
        for replica in replicas:
            assert await replica.query(NS, winner.codes[0], radius=0) == [(winner.image_id, 0)]
            assert len(await replica.duplicates_of(NS, winner.image_id)) == len(fps) - 1
    # Retries/restarts are allowed under this contention; they are only counted.
    assert all(r.watch_conflicts >= 0 for r in replicas)


async def test_concurrent_exact_copies_exactly_one_accepted(index):
    # Same bytes uploaded under many ids at once: one original, the rest exact duplicates.
    rng = np.random.default_rng(5)
    code = random_code(rng)
    ids = [f"copy{i}" for i in range(30)]
    registrations = await asyncio.gather(*(
        index.register(NS, i, make_fingerprint(code, b"same bytes"), decide_real, radius=RADIUS)
        for i in ids
    ))
    accepted = [r.record for r in registrations if r.record.verdict == Verdict.ACCEPTED]
    assert len(accepted) == 1
    for r in registrations:
        if r.record.image_id != accepted[0].image_id:
            assert r.record.decision == Decision(
                Verdict.DUPLICATE, accepted[0].image_id, 0, MatchKind.EXACT
            )


async def test_concurrent_replay_of_same_id(index):
    fp = make_fingerprint(12345, 1)
    registrations = await asyncio.gather(*(
        index.register(NS, "same", fp, decide_real, radius=RADIUS) for _ in range(20)
    ))
    assert sum(not r.replayed for r in registrations) == 1
    assert len({r.record.seq for r in registrations}) == 1


# --- Redis-specific: namespace parameters shared by replicas ------------------------------


async def test_redis_namespace_m_is_fixed_by_its_creator(redis_index, redis_replicas):
    rng = np.random.default_rng(31)
    code = random_code(rng)
    await register(redis_index, "a", make_fingerprint(code, 1))
    (other,) = await redis_replicas(1, substrings=8)  # configured differently
    assert await other.substrings(NS) == 4  # ... but follows the stored parameters
    assert await other.query(NS, flip_bits(code, 7, rng), radius=8) == [("a", 7)]
    dup = await register(other, "b", make_fingerprint(flip_bits(code, 5, rng), 2))
    assert dup.record.duplicate_of == "a"
    # A namespace created by the differently configured replica keeps its m = 8.
    await register(other, "c", make_fingerprint(code, 3), ns="made-by-other")
    assert await redis_index.substrings("made-by-other") == 8
    assert await redis_index.query("made-by-other", code ^ 0b11, radius=2) == [("c", 2)]


async def test_redis_refuses_namespace_of_another_algorithm(redis_index, redis_target, redis_prefix):
    import json

    from imgdedup.errors import IndexMismatch

    client = redis_target.connect()
    try:
        await client.set(
            f"{redis_prefix}:{{legacy}}:meta",
            json.dumps({"m": 4, "algorithm": "dhash64-v0", "bits": 64}),
        )
    finally:
        await client.aclose()
    with pytest.raises(IndexMismatch):
        await redis_index.query("legacy", 0, radius=0)
    with pytest.raises(IndexMismatch):
        await register(redis_index, "x", make_fingerprint(0, 1), ns="legacy")


async def test_redis_drop_namespace(redis_index):
    rng = np.random.default_rng(32)
    codes = [random_code(rng) for _ in range(20)]
    for i, code in enumerate(codes):
        await register(redis_index, f"i{i}", make_fingerprint(code, i), ns="to-drop")
    await register(redis_index, "keep", make_fingerprint(codes[0], 0), ns="kept")
    deleted = await redis_index.drop_namespace("to-drop")
    assert deleted > 20  # records, buckets, ids, sha keys, meta, seq
    assert await redis_index.query("to-drop", codes[0], radius=16) == []
    assert await redis_index.get("to-drop", "i0") is None
    assert await redis_index.query("kept", codes[0], radius=0) == [("keep", 0)]


@pytest.mark.parametrize("near_codes", [True, False])
async def test_concurrent_same_id_different_bytes(index, near_codes):
    rng = np.random.default_rng(41)
    code = random_code(rng)
    other = flip_bits(code, 2, rng) if near_codes else far_code(rng, code)
    results = await asyncio.gather(
        *(
            index.register(NS, "contested", make_fingerprint(c, seed), decide_real, radius=RADIUS)
            for c, seed in [(code, 1), (other, 2)] * 5
        ),
        return_exceptions=True,
    )
    ok = [r for r in results if isinstance(r, Registration)]
    conflicts = [r for r in results if isinstance(r, ImageIdConflict)]
    assert len(ok) + len(conflicts) == len(results), results  # nothing else went wrong
    assert len({r.record.sha256 for r in ok}) == 1  # one version of the image won
    assert sum(not r.replayed for r in ok) == 1
    assert len(conflicts) == 5
    stored = await index.get(NS, "contested")
    assert stored is not None and stored.sha256 == ok[0].record.sha256
    assert stored.verdict == Verdict.ACCEPTED


async def test_redis_crashed_registration_is_recovered_after_its_lease(redis_target, redis_prefix,
                                                                       redis_index, redis_mirror):
    """A registrar that dies between its pending insert and its decision leaves a pending
    entry; a near-duplicate waits for it only until its lease expires."""
    from imgdedup.index.redis.index import RedisMihIndex

    class Crashing(RedisMihIndex):
        async def _abandon_own(self, *args, **kwargs):  # the process died: no clean-up
            return None

    def crash(lookup):
        raise RuntimeError("registrar died")

    client = redis_target.connect()
    try:
        crashing = Crashing(client, prefix=redis_prefix, substrings=4, lease_ms=300, mirror=redis_mirror)
        rng = np.random.default_rng(42)
        code = random_code(rng)
        with pytest.raises(RuntimeError):
            await crashing.register(NS, "ghost", make_fingerprint(code, 1), crash, radius=RADIUS)
    finally:
        await client.aclose()
    loop = asyncio.get_running_loop()
    started = loop.time()
    later = await register(redis_index, "later", make_fingerprint(flip_bits(code, 2, rng), 2))
    waited = loop.time() - started
    assert later.record.verdict == Verdict.ACCEPTED  # the ghost was never decided
    assert 0.1 < waited < 5.0  # it did wait for the lease, and not forever
    assert await redis_index.get(NS, "ghost") is None
    assert await redis_index.query(NS, code, radius=4) == [("later", 2)]
    # The crashed image can be registered afresh (now judged against "later").
    again = await register(redis_index, "ghost", make_fingerprint(code, 1))
    assert again.record.decision == Decision(Verdict.DUPLICATE, "later", 2, MatchKind.NEAR)


async def test_redis_remove_racing_a_duplicate_leaves_no_stale_link(redis_target, redis_prefix,
                                                                    redis_index, redis_mirror):
    """Replica B removes image K while replica A is deciding that X is a duplicate of K.
    Whatever the outcome for X, a *new* image later registered under the id K must not
    inherit X as its duplicate (the in-memory backend serialises the two operations, so
    this can never happen there)."""
    import threading

    from imgdedup.index.redis.index import RedisMihIndex

    rng = np.random.default_rng(43)
    code = random_code(rng)
    await register(redis_index, "K", make_fingerprint(code, 1))

    def remove_from_other_replica() -> None:
        async def run() -> None:
            client = redis_target.connect()
            try:
                other = RedisMihIndex(client, prefix=redis_prefix, substrings=4, mirror=redis_mirror)
                assert await other.remove(NS, "K")
            finally:
                await client.aclose()

        asyncio.run(run())

    calls: list[Decision] = []

    def decide_while_k_is_removed(lookup: Lookup) -> Decision:
        decision = decide_real(lookup)
        calls.append(decision)
        if len(calls) == 1:
            # The concurrent removal lands between the decision and its commit.
            thread = threading.Thread(target=remove_from_other_replica)
            thread.start()
            thread.join()
        return decision

    x = await register(redis_index, "X", make_fingerprint(flip_bits(code, 3, rng), 2),
                       decide=decide_while_k_is_removed)
    # The first decision ("duplicate of K") was fenced out at commit because K was gone;
    # decided again, X is what a serial order gives: K removed first, so X is original.
    assert calls[0].duplicate_of == "K" and len(calls) == 2
    assert x.record.verdict == Verdict.ACCEPTED and x.record.duplicate_of is None
    assert await redis_index.get(NS, "K") is None
    # A different picture now registered under the freed id "K".
    fresh = await register(redis_index, "K", make_fingerprint(far_code(rng, code), 3))
    assert fresh.record.verdict == Verdict.ACCEPTED
    assert await redis_index.duplicates_of(NS, "K") == []


# --- review workflow and tenant operations ------------------------------------------------


async def change_to(index, image_id, outcome, duplicate_of=None, ns=None, by="key:rev", reason=""):
    ns = ns or NS  # read at call time: the fixture moves NS onto a cluster master
    current = await index.get(ns, image_id)
    change = plan(image_id, current.verdict, current.duplicate_of, outcome, duplicate_of, by=by, reason=reason)
    return await index.apply_change(ns, change, current)


async def undo_last(index, image_id, ns=None, by="key:rev"):
    ns = ns or NS
    current = await index.get(ns, image_id)
    history = await index.history(ns, image_id)
    change = plan_undo(history[-1] if history else None, current.verdict, current.duplicate_of, by=by)
    return await index.apply_change(ns, change, current)


async def planted_review(index, rng, name="b", ns=None):
    """An original `a` and `name`, 10 bits away: a `review` of it, queued."""
    ns = ns or NS
    code = random_code(rng)
    await register(index, "a", make_fingerprint(code, 1), ns=ns)
    review_code = flip_bits(code, 10, rng)
    reg = await register(index, name, make_fingerprint(review_code, 2), ns=ns)
    assert reg.record.verdict == Verdict.REVIEW
    await index.note_review(ns, name, reg.record.seq, f"https://img.example/{name}.jpg")
    return code, review_code


async def test_review_queue_is_oldest_first_paged_and_only_open_reviews(index):
    rng = np.random.default_rng(41)
    code = random_code(rng)
    await register(index, "orig", make_fingerprint(code, 1))
    names = []
    for n in range(5):
        other = far_code(rng, code)
        await register(index, f"o{n}", make_fingerprint(other, 100 + n))
        reg = await register(index, f"r{n}", make_fingerprint(flip_bits(other, 10, rng), 200 + n))
        assert reg.record.verdict == Verdict.REVIEW
        await index.note_review(NS, f"r{n}", reg.record.seq, f"https://img.example/r{n}" if n % 2 == 0 else None)
        await index.note_review(NS, f"r{n}", reg.record.seq, None)  # idempotent, keeps the URI
        names.append(f"r{n}")
    first = await index.reviews(NS, after=0, limit=2)
    assert [r.image_id for r, _ in first] == ["r0", "r1"]
    assert [i.source_uri for _, i in first] == ["https://img.example/r0", None]
    rest = await index.reviews(NS, after=first[-1][1].seq, limit=10)
    assert [r.image_id for r, _ in rest] == ["r2", "r3", "r4"]
    assert await index.source_uris(NS, ["r2", "r3", "o0"]) == {"r2": "https://img.example/r2"}
    await change_to(index, "r1", Outcome.DISTINCT)
    assert [r.image_id for r, _ in await index.reviews(NS, after=0, limit=10)] == ["r0", "r2", "r3", "r4"]
    await index.remove(NS, "r2")
    assert [r.image_id for r, _ in await index.reviews(NS, after=0, limit=3)] == ["r0", "r3", "r4"]


async def test_review_resolved_distinct_is_kept_and_its_copies_are_its_duplicates(index):
    rng = np.random.default_rng(42)
    code, review_code = await planted_review(index, rng)
    record = await change_to(index, "b", Outcome.DISTINCT, reason="another dress")
    assert (record.verdict, record.duplicate_of, record.distance) == (Verdict.ACCEPTED, None, None)
    assert await index.get(NS, "b") == record
    assert [r.image_id for r in await index.duplicates_of(NS, "a")] == []
    assert await index.reviews(NS, after=0, limit=10) == []
    [entry] = await index.history(NS, "b")
    assert (entry.by, entry.from_verdict, entry.from_duplicate_of, entry.to_verdict, entry.reason) == (
        "key:rev", Verdict.REVIEW, "a", Verdict.ACCEPTED, "another dress"
    )
    exact = await register(index, "b-copy", make_fingerprint(review_code, 2))
    assert exact.record.decision == Decision(Verdict.DUPLICATE, "b", 0, MatchKind.EXACT)
    near_code = review_code
    while hamming(near_code, code) <= RADIUS:  # near b, too far from a to be its match
        near_code = flip_bits(review_code, 3, rng)
    near = await register(index, "b-near", make_fingerprint(near_code, 3))
    assert (near.record.verdict, near.record.duplicate_of) == (Verdict.DUPLICATE, "b")


async def test_review_resolved_duplicate_leaves_the_index(index):
    rng = np.random.default_rng(43)
    _, review_code = await planted_review(index, rng)
    record = await change_to(index, "b", Outcome.DUPLICATE)
    assert (record.verdict, record.duplicate_of, record.distance) == (Verdict.DUPLICATE, "a", 10)
    assert await index.query(NS, review_code, radius=0) == []
    assert [r.image_id for r in await index.duplicates_of(NS, "a")] == ["b"]
    assert await index.reviews(NS, after=0, limit=10) == []
    copy = await register(index, "b-copy", make_fingerprint(review_code, 2))
    assert (copy.record.verdict, copy.record.duplicate_of) == (Verdict.REVIEW, "a")
    assert (await index.stats(NS)).counts == {"accepted": 1, "duplicate": 1, "review": 1}


async def test_overruled_duplicate_is_indexed_after_everything_before_it(index):
    rng = np.random.default_rng(44)
    code = random_code(rng)
    await register(index, "a", make_fingerprint(code, 1))
    dup_code = flip_bits(code, 4, rng)
    dup = await register(index, "b", make_fingerprint(dup_code, 2))
    assert dup.record.verdict == Verdict.DUPLICATE
    later = await register(index, "c", make_fingerprint(far_code(rng, code), 3))
    record = await change_to(index, "b", Outcome.DISTINCT, reason="other season")
    assert record.verdict == Verdict.ACCEPTED and record.seq > later.record.seq
    assert await index.query(NS, dup_code, radius=0) == [("b", 0)]
    copy = await register(index, "b-copy", make_fingerprint(dup_code, 2))
    assert copy.record.decision == Decision(Verdict.DUPLICATE, "b", 0, MatchKind.EXACT)
    assert [r.image_id for r in await index.find_sha(NS, copy.record.sha256)] == ["b", "b-copy"]
    # Undo: a duplicate of `a` again, out of the index.
    back = await undo_last(index, "b")
    assert (back.verdict, back.duplicate_of) == (Verdict.DUPLICATE, "a")
    assert await index.query(NS, dup_code, radius=0) == []
    assert [c.undo for c in await index.history(NS, "b")] == [False, True]


async def test_undo_reopens_the_review(index):
    rng = np.random.default_rng(45)
    await planted_review(index, rng)
    await change_to(index, "b", Outcome.DUPLICATE)
    back = await undo_last(index, "b")
    assert (back.verdict, back.duplicate_of, back.distance) == (Verdict.REVIEW, "a", 10)
    [(record, item)] = await index.reviews(NS, after=0, limit=10)
    assert record.image_id == "b" and item.source_uri == "https://img.example/b.jpg"
    with pytest.raises(ReviewConflict):
        await undo_last(index, "b")  # an undo is not undone


async def test_change_planned_on_a_stale_record_or_a_gone_target_conflicts(index):
    rng = np.random.default_rng(46)
    await planted_review(index, rng)
    stale = await index.get(NS, "b")
    await change_to(index, "b", Outcome.DISTINCT)
    change = plan("b", stale.verdict, stale.duplicate_of, Outcome.DUPLICATE, None, by="key:x")
    with pytest.raises(ReviewConflict):
        await index.apply_change(NS, change, stale)
    await undo_last(index, "b")
    await index.remove(NS, "a")
    with pytest.raises(ReviewConflict):
        await change_to(index, "b", Outcome.DUPLICATE)  # `a` is gone: not a target
    with pytest.raises(ReviewConflict):
        await change_to(index, "b", Outcome.DUPLICATE, duplicate_of="nobody")
    assert (await index.get(NS, "b")).verdict == Verdict.REVIEW
    with pytest.raises(ReviewConflict):
        plan("a", Verdict.ACCEPTED, None, Outcome.DISTINCT, None, by="key:x")


async def test_find_sha_stats_and_erase(index):
    rng = np.random.default_rng(47)
    await planted_review(index, rng)
    await planted_review(index, rng, ns="other-tenant")
    copy = await register(index, "a-copy", make_fingerprint(random_code(rng), 1))
    assert [r.image_id for r in await index.find_sha(NS, copy.record.sha256)] == ["a", "a-copy"]
    assert await index.find_sha(NS, "0" * 64) == []
    stats = await index.stats(NS)
    assert stats.counts == {"accepted": 1, "duplicate": 1, "review": 1}
    assert (stats.indexed, stats.open_reviews) == (2, 1)
    await change_to(index, "b", Outcome.DISTINCT)
    erased = await index.erase(NS)
    assert erased.images == 3 and erased.keys >= 3
    assert await index.get(NS, "a") is None and await index.history(NS, "b") == []
    assert (await index.stats(NS)).counts == {"accepted": 0, "duplicate": 0, "review": 0}
    assert await index.reviews(NS, after=0, limit=10) == []
    assert (await index.stats("other-tenant")).counts["review"] == 1
    fresh = await register(index, "a", make_fingerprint(random_code(rng), 9))
    assert fresh.record.verdict == Verdict.ACCEPTED and not fresh.replayed


async def test_redis_overrule_races_registrations_first_wins_stays_exact(redis_index, redis_replicas):
    """Copies of an overruled duplicate registered from several replicas while the
    override runs: the outcome is that of applying the events one at a time in seq order
    (the override at the seq it took)."""
    replicas = await redis_replicas(3)
    rng = np.random.default_rng(48)
    for round_ in range(8):
        ns = f"race{round_}"
        code = random_code(rng)
        await register(redis_index, "a", make_fingerprint(code, 1), ns=ns)
        b_code = flip_bits(code, 8, rng)
        assert (await register(redis_index, "b", make_fingerprint(b_code, 2), ns=ns)).record.verdict == Verdict.DUPLICATE
        copy_code = b_code
        while hamming(copy_code, code) <= RADIUS:
            copy_code = flip_bits(b_code, 5, rng)
        copies = [(f"c{n}", make_fingerprint(copy_code, 1000 + n)) for n in range(12)]
        # Half the rounds start the override first: it then tends to take its seq early.
        start = int(rng.integers(0, len(copies))) if round_ % 2 else 0

        async def override(ns: str = ns) -> ImageRecord:
            return await change_to(replicas[0], "b", Outcome.DISTINCT, ns=ns)

        # Later rounds hold the registrations back a little (jitter, not a timing
        # assertion), so that the override also gets seqs before theirs.
        delays = rng.uniform(0, 0.004 if round_ >= 4 else 0, size=len(copies)).tolist()

        async def copy(n: int, ns: str = ns, delays: list[float] = delays, copies=copies) -> Registration:
            await asyncio.sleep(delays[n])
            image_id, fp = copies[n]
            return await register(replicas[n % 3], image_id, fp, ns=ns)

        tasks = [copy(n) for n in range(start)] + [override()] + [copy(n) for n in range(start, len(copies))]
        results = await asyncio.gather(*tasks)
        b = results[start]
        regs = {r.record.image_id: r.record for r in results if isinstance(r, Registration)}
        # Oracle: one at a time in seq order; `b` is kept from its new seq on.
        kept: list[tuple[int, str]] = []
        for seq, image_id in sorted([(b.seq, "b")] + [(rec.seq, i) for i, rec in regs.items()]):
            if image_id == "b":
                kept.append((seq, "b"))
                continue
            expected = kept[0][1] if kept else None
            assert regs[image_id].duplicate_of == expected, (round_, image_id)
            if expected is None:
                assert regs[image_id].verdict == Verdict.ACCEPTED
                kept.append((seq, image_id))
        assert sum(r.verdict == Verdict.ACCEPTED for r in regs.values()) == (1 if kept[0][1] != "b" else 0)


async def test_redis_concurrent_resolutions_of_one_review_apply_once(redis_index, redis_replicas):
    replicas = await redis_replicas(2)
    rng = np.random.default_rng(49)
    await planted_review(redis_index, rng)
    current = await redis_index.get(NS, "b")
    changes = [
        plan("b", current.verdict, current.duplicate_of, outcome, None, by=f"key:r{n}")
        for n, outcome in enumerate([Outcome.DISTINCT, Outcome.DUPLICATE] * 4)
    ]
    results = await asyncio.gather(
        *(replicas[n % 2].apply_change(NS, change, current) for n, change in enumerate(changes)),
        return_exceptions=True,
    )
    applied = [r for r in results if isinstance(r, ImageRecord)]
    assert len(applied) == 1 and all(isinstance(r, ReviewConflict) for r in results if r not in applied)
    assert len(await redis_index.history(NS, "b")) == 1
    assert await redis_index.get(NS, "b") == applied[0]

"""The mirror layout of the Redis index: every replica answers near queries from its own
in-process table, fed by the namespace's Redis stream. Real Redis, several index objects
(each with its own client and mirror) over one prefix, like replicas of the service.

The contract and first-wins suites run on this layout too (tests/test_index_contract.py,
tests/test_redis_first_wins.py); these are about what only a mirror can get wrong: a
replica that does not catch up, a cold replica, a namespace re-created under it.
"""

from __future__ import annotations

import asyncio
from functools import partial

import numpy as np
import pytest
import redis.asyncio as aioredis
from helpers import flip_bits, hamming, make_fingerprint, random_code

from imgdedup.decisions.rules import Decision, MatchKind, Policy, Verdict, decide
from imgdedup.errors import ContentionError
from imgdedup.index.mih_table import MihTable
from imgdedup.index.redis.index import RedisMihIndex
from imgdedup.index.redis.mirror import RedisMirror, decode_adds, pack_add

pytestmark = pytest.mark.integration

NS = "mirror"
DECIDE = partial(decide, policy=Policy(8, 12))
RADIUS = 12


@pytest.fixture
def redis_mirror() -> bool:
    return True


def accept_all(lookup) -> Decision:
    return Decision(Verdict.ACCEPTED)


def logged(index: RedisMihIndex) -> bool:
    """Whether the namespace has the log layout (as the index last read it)."""
    meta = index._namespaces.cached(NS)
    return meta is not None and meta.logged


async def keys_of(index: RedisMihIndex, prefix: str, ns: str = NS) -> set[str]:
    return {k.decode().split(":", 2)[2] async for k in index._redis.scan_iter(match=f"{prefix}:{{{ns}}}:*")}


# --- catching up ------------------------------------------------------------------------------


async def test_replica_registering_a_near_duplicate_of_another_replicas_image_catches_up(
    redis_index: RedisMihIndex, redis_replicas
) -> None:
    """B's mirror is warm (synced before A registers); B must catch up to its own log
    entry before judging, or it would accept the near duplicate."""
    (b,) = await redis_replicas(1)
    rng = np.random.default_rng(1)
    base = random_code(rng)
    await b.register(NS, "warm-up", make_fingerprint(random_code(rng), b"w"), DECIDE, radius=RADIUS)
    assert b.mirror.state(NS).loaded
    a_first = await redis_index.register(NS, "x", make_fingerprint(base, b"x"), DECIDE, radius=RADIUS)
    assert a_first.record.verdict == Verdict.ACCEPTED
    y = await b.register(NS, "y", make_fingerprint(flip_bits(base, 3, rng), b"y"), DECIDE, radius=RADIUS)
    assert (y.record.verdict, y.record.duplicate_of, y.record.distance) == (Verdict.DUPLICATE, "x", 3)
    # A plain lookup on a third replica that was warm before catches up to the end too.
    (c,) = await redis_replicas(1)
    await c.lookup(NS, make_fingerprint(random_code(rng), b"nothing"), radius=RADIUS)
    z = await redis_index.register(NS, "z", make_fingerprint(random_code(rng), b"z"), DECIDE, radius=RADIUS)
    found = await c.lookup(NS, make_fingerprint(z.record.codes[0] ^ 0b101, b"probe"), radius=RADIUS)
    assert [(f.image_id, f.distance) for f in found.candidates] == [("z", 2)]


async def test_without_catch_up_the_same_scenario_goes_wrong(redis_index: RedisMihIndex, redis_replicas) -> None:
    """Mutation check of the test above: a replica whose mirror skips the log (reads
    only meta and the sha key) accepts the near duplicate. So the test above measures
    the catch-up, not luck."""
    (b,) = await redis_replicas(1)
    rng = np.random.default_rng(1)
    base = random_code(rng)
    await b.register(NS, "warm-up", make_fingerprint(random_code(rng), b"w"), DECIDE, radius=RADIUS)

    async def no_catch_up(namespace, *, upto=None, reads=()):
        values = [await b._redis.get(k) for k in reads]
        return await b._redis.get(b.keys.key(namespace, "meta")), values

    b.mirror.sync = no_catch_up  # type: ignore[method-assign]
    await redis_index.register(NS, "x", make_fingerprint(base, b"x"), DECIDE, radius=RADIUS)
    y = await b.register(NS, "y", make_fingerprint(flip_bits(base, 3, rng), b"y"), DECIDE, radius=RADIUS)
    assert y.record.verdict == Verdict.ACCEPTED  # wrong, as expected without catch-up


async def test_removal_on_one_replica_is_seen_by_another_replicas_lookup(redis_index: RedisMihIndex, redis_replicas) -> None:
    (b,) = await redis_replicas(1)
    rng = np.random.default_rng(2)
    code = random_code(rng)
    fp = make_fingerprint(code, b"k")
    await redis_index.register(NS, "k", fp, DECIDE, radius=RADIUS)
    probe = make_fingerprint(flip_bits(code, 2, rng), b"probe")
    assert [c.image_id for c in (await b.lookup(NS, probe, radius=RADIUS)).candidates] == ["k"]
    assert await redis_index.remove(NS, "k")
    assert (await b.lookup(NS, probe, radius=RADIUS)).candidates == ()
    assert await b.query(NS, code, radius=RADIUS) == []
    # The tombstone reached B's table, not only the state filter.
    assert len(b.mirror.state(NS).table) == 0
    # Re-registered on B under the same id: A sees the new one.
    again = await b.register(NS, "k", fp, DECIDE, radius=RADIUS)
    assert again.record.verdict == Verdict.ACCEPTED
    assert await redis_index.query(NS, code, radius=0) == [("k", 0)]


async def test_duplicates_leave_only_tombstoned_adds_in_every_mirror(redis_index: RedisMihIndex, redis_replicas) -> None:
    rng = np.random.default_rng(3)
    base = random_code(rng)
    replicas = [redis_index, *await redis_replicas(2)]
    await replicas[0].register(NS, "orig", make_fingerprint(base, b"o"), DECIDE, radius=RADIUS)
    for i in range(6):
        r = await replicas[i % 3].register(NS, f"d{i}", make_fingerprint(flip_bits(base, 1 + i, rng), f"d{i}".encode()),
                                           DECIDE, radius=RADIUS)
        assert r.record.duplicate_of == "orig"
    for replica in replicas:
        await replica.mirror.sync(NS)
        state = replica.mirror.state(NS)
        assert len(state.table) == 1 and state.adds == 7 and state.removes == 6


async def test_warm_lookup_is_one_round_trip(redis_index: RedisMihIndex) -> None:
    rng = np.random.default_rng(4)
    code = random_code(rng)
    await redis_index.register(NS, "a", make_fingerprint(code, b"a"), DECIDE, radius=RADIUS)
    before = redis_index.mirror.round_trips
    miss = await redis_index.lookup(NS, make_fingerprint(random_code(rng), b"m"), radius=RADIUS)
    assert miss.candidates == ()
    assert redis_index.mirror.round_trips == before + 1


# --- several replicas at once ----------------------------------------------------------------


async def test_replicas_with_cold_mirrors_register_near_duplicates_concurrently(
    redis_index: RedisMihIndex, redis_replicas
) -> None:
    """4 replicas, each its own mirror, all cold; 3 clusters of 30 near-duplicates
    registered at once across them: one accepted per cluster, every other image a
    duplicate of it; afterwards every mirror holds exactly the kept images' codes."""
    rng = np.random.default_rng(5)
    replicas = [redis_index, *await redis_replicas(3)]
    jobs = []
    for cluster in range(3):
        base = random_code(rng)
        for i in range(30):
            jobs.append((cluster, f"c{cluster}-{i:02d}", make_fingerprint(flip_bits(base, int(rng.integers(0, 4)), rng),
                                                                         f"{cluster}-{i}".encode())))
    order = rng.permutation(len(jobs)).tolist()
    results = await asyncio.gather(*(
        replicas[k % 4].register(NS, jobs[j][1], jobs[j][2], DECIDE, radius=RADIUS) for k, j in enumerate(order)
    ))
    by_cluster: dict[int, list] = {}
    for j, reg in zip(order, results):
        by_cluster.setdefault(jobs[j][0], []).append((jobs[j][2], reg.record))
    kept_seqs = set()
    for records in by_cluster.values():
        accepted = [rec for _fp, rec in records if rec.verdict == Verdict.ACCEPTED]
        assert len(accepted) == 1
        winner = accepted[0]
        assert winner.seq == min(rec.seq for _fp, rec in records)
        for fp, rec in records:
            if rec is not winner:
                assert (rec.verdict, rec.duplicate_of, rec.match) == (Verdict.DUPLICATE, winner.image_id, MatchKind.NEAR)
                assert rec.distance == hamming(fp.codes[0], winner.codes[0])
        kept_seqs.add(winner.seq)
    for replica in replicas:
        await replica.mirror.sync(NS)
        table = replica.mirror.state(NS).table
        assert set(table.labels[: table.size][table.alive[: table.size]].tolist()) == kept_seqs


async def test_cold_replica_reads_the_whole_log_in_batches(redis_url, redis_prefix, redis_index: RedisMihIndex) -> None:
    """A replica started after 1,500 registrations and 300 removals answers exactly
    (brute force), reading the log in several batches; 20 concurrent first lookups load
    it once, not 20 times."""
    rng = np.random.default_rng(6)
    bases = [random_code(rng) for _ in range(30)]
    items = [(f"i{i:04d}", make_fingerprint(flip_bits(bases[i % 30], int(rng.integers(0, 12)), rng), i)) for i in range(1500)]
    for start in range(0, len(items), 100):
        await asyncio.gather(*(redis_index.register(NS, i, fp, accept_all, radius=0)
                               for i, fp in items[start : start + 100]))
    removed = {items[int(i)][0] for i in rng.choice(1500, size=300, replace=False)}
    for image_id in removed:
        assert await redis_index.remove(NS, image_id)
    remaining = {i: fp.codes[0] for i, fp in items if i not in removed}

    client = aioredis.Redis.from_url(redis_url)
    try:
        cold = RedisMihIndex(client, prefix=redis_prefix, substrings=4)  # mirror=False: follows the namespace
        cold.mirror.batch = 250
        queries = [flip_bits(bases[i % 30], int(rng.integers(0, 4)), rng) for i in range(20)]
        got = await asyncio.gather(*(cold.query(NS, q, radius=RADIUS) for q in queries))
        for q, result in zip(queries, got):
            want = sorted(((i, hamming(c, q)) for i, c in remaining.items() if hamming(c, q) <= RADIUS),
                          key=lambda p: (p[1], p[0]))
            assert result == want
        state = cold.mirror.state(NS)
        assert state.entries == 1800 and len(state.table) == 1200
        batches = -(-1800 // 250)
        assert cold.mirror.round_trips <= batches + 1 + 20, cold.mirror.round_trips
    finally:
        await client.aclose()
    # A registration on another cold replica drains the whole backlog *before* it takes a
    # seq, so no pending entry (which near registrations elsewhere wait on) is held while
    # a large log loads.
    client = aioredis.Redis.from_url(redis_url)
    try:
        cold = RedisMihIndex(client, prefix=redis_prefix, substrings=4)
        cold.mirror.batch = 250
        loaded_at_insert: list[bool] = []
        insert = cold._log_layout.insert_pending

        async def watched_insert(*args, **kwargs):
            loaded_at_insert.append(cold.mirror.state(NS).loaded)
            return await insert(*args, **kwargs)

        cold._log_layout.insert_pending = watched_insert  # type: ignore[method-assign]
        first_kept = next(i for i, _fp in items if i not in removed)
        code = remaining[first_kept]
        reg = await cold.register(NS, "late", make_fingerprint(code ^ 1, b"late"), DECIDE, radius=RADIUS)
        # (of the earliest kept image within the duplicate radius, not necessarily this one)
        assert reg.record.verdict == Verdict.DUPLICATE and reg.record.distance <= 8
        assert cold.mirror.state(NS).entries >= 1801
        assert loaded_at_insert == [True]
    finally:
        await client.aclose()


# --- layout and namespace lifecycle ------------------------------------------------------------


async def test_layout_is_fixed_by_the_namespace_creator(redis_url, redis_prefix, redis_index: RedisMihIndex) -> None:
    rng = np.random.default_rng(7)
    code = random_code(rng)
    client = aioredis.Redis.from_url(redis_url)
    try:
        buckets_replica = RedisMihIndex(client, prefix=redis_prefix, substrings=4, mirror=False)
        # A mirror namespace written by a replica configured for buckets: still log only.
        await redis_index.register(NS, "a", make_fingerprint(code, b"a"), DECIDE, radius=RADIUS)
        dup = await buckets_replica.register(NS, "b", make_fingerprint(code ^ 1, b"b"), DECIDE, radius=RADIUS)
        assert dup.record.duplicate_of == "a"
        assert not any(k.startswith("b") and ":" in k for k in await keys_of(redis_index, redis_prefix))
        assert "log" in await keys_of(redis_index, redis_prefix)
        # A bucket namespace written by the mirror-configured replica: buckets, no log.
        await buckets_replica.register("old", "a", make_fingerprint(code, b"a"), DECIDE, radius=RADIUS)
        dup = await redis_index.register("old", "b", make_fingerprint(code ^ 1, b"b"), DECIDE, radius=RADIUS)
        assert dup.record.duplicate_of == "a"
        old_keys = await keys_of(redis_index, redis_prefix, "old")
        assert "log" not in old_keys and any(k.startswith("b0:") for k in old_keys)
    finally:
        await client.aclose()


async def test_namespace_dropped_and_recreated_under_a_warm_mirror(redis_index: RedisMihIndex, redis_replicas) -> None:
    """B's mirror holds seqs 1..3 of the old namespace; the namespace is dropped and
    re-created (seqs start again at 1): B rebuilds, never mixes the two."""
    (b,) = await redis_replicas(1)
    rng = np.random.default_rng(8)
    old = [random_code(rng) for _ in range(3)]
    for i, code in enumerate(old):
        await redis_index.register(NS, f"old{i}", make_fingerprint(code, f"old{i}".encode()), DECIDE, radius=RADIUS)
    assert await b.query(NS, old[0], radius=0) == [("old0", 0)]
    await redis_index.drop_namespace(NS)
    assert await b.query(NS, old[0], radius=0) == []  # dropped: nothing, no error
    new = random_code(rng)
    await redis_index.register(NS, "new0", make_fingerprint(new, b"new0"), DECIDE, radius=RADIUS)
    for _ in range(3):  # the first read may report the re-creation (retryable)
        try:
            assert await b.query(NS, new, radius=0) == [("new0", 0)]
            break
        except ContentionError:  # retried, like the service does
            continue
    else:
        pytest.fail("the re-created namespace was never read")
    assert await b.query(NS, old[0], radius=0) == []
    dup = await b.register(NS, "new1", make_fingerprint(new ^ 0b11, b"new1"), DECIDE, radius=RADIUS)
    assert dup.record.duplicate_of == "new0"


async def test_tombstone_is_refused_while_the_image_is_kept(redis_index: RedisMihIndex) -> None:
    """A withdrawal that lost the race to its own successful finalize must not drop a
    kept image from the mirrors (the strip script checks the state first)."""
    rng = np.random.default_rng(9)
    code = random_code(rng)
    reg = await redis_index.register(NS, "a", make_fingerprint(code, b"a"), DECIDE, radius=RADIUS)
    meta = await redis_index._namespaces.meta(NS, create=False)
    await redis_index._log_layout.strip(NS, meta, reg.record.seq, ())
    entries = await redis_index._redis.xrange(redis_index.keys.key(NS, "log"))
    assert [list(fields) for _id, fields in entries] == [[b"a"]]
    assert await redis_index.query(NS, code, radius=0) == [("a", 0)]


# --- pieces ------------------------------------------------------------------------------------


def test_add_entries_round_trip() -> None:
    blobs = [pack_add(7, [1, 2**64 - 1]), pack_add(9, []), pack_add(2**32 - 1, [5])]
    seqs, counts, codes = decode_adds(blobs)
    assert seqs.tolist() == [7, 9, 2**32 - 1]
    assert counts.tolist() == [2, 0, 1]
    assert codes.tolist() == [1, 2**64 - 1, 5]
    with pytest.raises(ValueError):
        decode_adds([b"\x01\x00\x00\x00abc"])


def test_add_many_equals_add_one_by_one() -> None:
    rng = np.random.default_rng(10)
    counts = rng.integers(0, 5, size=3000)
    labels = rng.permutation(10_000)[:3000] + 1
    codes = rng.integers(0, 2**63, size=int(counts.sum()), dtype=np.uint64)
    one, bulk = MihTable(tail_min=256), MihTable(tail_min=256)
    offsets = np.concatenate(([0], np.cumsum(counts)))
    for i, label in enumerate(labels.tolist()):
        one.add(label, codes[offsets[i] : offsets[i + 1]])
    for start in range(0, 3000, 700):
        bulk.add_many(labels[start : start + 700], counts[start : start + 700],
                      codes[offsets[start] : offsets[min(start + 700, 3000)]])
    for label in labels[::3].tolist():
        assert one.remove(label) == bulk.remove(label)
    for q in codes[::50].tolist():
        assert one.near((q,), 12) == bulk.near((q,), 12)
    with pytest.raises(ValueError):
        bulk.add_many(labels[1:2], counts[1:2], codes[offsets[1] : offsets[2]])  # already there
    with pytest.raises(ValueError):
        bulk.add_many(np.array([20_001, 20_001]), np.array([0, 0]), np.zeros(0, np.uint64))


async def test_mirror_of_an_unknown_namespace_is_empty_and_creates_nothing(redis_url, redis_prefix) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        mirror = RedisMirror(client, lambda ns, suffix: f"{redis_prefix}:{{{ns}}}:{suffix}")
        meta, values = await mirror.sync("ghost", reads=[f"{redis_prefix}:{{ghost}}:sha:00"])
        assert (meta, values) == (None, [None])
        assert mirror.near("ghost", (1,), 12) == {}
        assert [k async for k in client.scan_iter(match=f"{redis_prefix}:*")] == []
    finally:
        await client.aclose()


async def test_the_setting_reaches_the_index(redis_url, redis_prefix, redis_index: RedisMihIndex) -> None:
    from imgdedup.config import Settings
    from imgdedup.index import open_index

    index = await open_index(Settings(redis_url=redis_url, redis_prefix=redis_prefix, redis_mirror=True))
    try:
        await index.register("wired", "a", make_fingerprint(1234, b"a"), DECIDE, radius=RADIUS)
        assert await keys_of(redis_index, redis_prefix, "wired") >= {"log", "meta", "seq", "state"}
        assert not any(k.startswith("b0:") for k in await keys_of(redis_index, redis_prefix, "wired"))
    finally:
        await index.close()


@pytest.mark.parametrize("first_layout", ["buckets", "mirror"])
async def test_replica_with_a_stale_layout_notices_a_recreated_namespace(
    redis_index: RedisMihIndex, redis_replicas, first_layout: str
) -> None:
    """Migrating a namespace means dropping it and creating it again in the other layout.
    A replica that cached the old layout (and m) must not write or probe it any longer:
    its insert script sees the new meta and the registration starts over."""
    stale, = await redis_replicas(1, mirror=first_layout == "mirror")
    fresh, = await redis_replicas(1, mirror=first_layout != "mirror")
    rng = np.random.default_rng(7)
    base = random_code(rng)
    await stale.register(NS, "old", make_fingerprint(random_code(rng), b"o"), DECIDE, radius=RADIUS)
    assert logged(stale) == (first_layout == "mirror")
    await fresh.drop_namespace(NS)
    first = await fresh.register(NS, "x", make_fingerprint(base, b"x"), DECIDE, radius=RADIUS)
    assert first.record.verdict == Verdict.ACCEPTED and logged(fresh) == (first_layout != "mirror")
    second = await stale.register(NS, "y", make_fingerprint(flip_bits(base, 3, rng), b"y"), DECIDE, radius=RADIUS)
    assert (second.record.verdict, second.record.duplicate_of) == (Verdict.DUPLICATE, "x")
    assert logged(stale) == (first_layout != "mirror")
    assert stale.restarts >= 1

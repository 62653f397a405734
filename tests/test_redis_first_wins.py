"""The crash-safety parts of the Redis first-wins protocol (insert-then-verify with a
sequence number): stale pending entries, the fenced finalize, and the waits.

These drive real Redis; a registrar "crashing" or "stalling" is simulated by inserting a
pending entry with the index's own script and never finalizing it, or by blocking a
registrar inside its decide step while another replica proceeds. Each test runs on both
Redis layouts: bucket keys, and the mirror layout (a log per namespace, applied by every
replica to its own in-process table).
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from functools import partial

import numpy as np
import pytest
from conftest import RedisTarget, parametrize_redis, spread_namespace
from helpers import flip_bits, make_fingerprint, random_code

from imgdedup.decisions.rules import MatchKind, Policy, Verdict, decide
from imgdedup.index.redis.index import RedisMihIndex

pytestmark = pytest.mark.integration

NS = "race"
POLICY = Policy(8, 12)
DECIDE = partial(decide, policy=POLICY)
#: About the bucket layout's byte format itself: not run on the mirror layout.
BUCKET_LAYOUT_ONLY = {"test_strip_removes_only_record_aligned_matches", "test_strip_leaves_a_kept_image_alone"}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    parametrize_redis(metafunc, BUCKET_LAYOUT_ONLY)


@pytest.fixture(autouse=True)
def _namespace(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """On the cluster, each test's namespace lives on the next master in turn."""
    monkeypatch.setattr(sys.modules[__name__], "NS", spread_namespace(request, "race"))


async def insert_pending(index: RedisMihIndex, image_id: str, fingerprint, lease_ms: int) -> int:
    """What a registrar does before it crashes: seq taken, codes in the buckets (or the
    namespace's log), pending."""
    meta = await index._namespaces.meta(NS, create=True)
    result = await index._layout(meta).insert_pending(
        NS, meta, image_id, fingerprint.sha256_hex, fingerprint.codes, lease_ms
    )
    return int(result[0])


def logged(index: RedisMihIndex) -> bool:
    """Whether the namespace has the log layout (as the index last read it)."""
    meta = index._namespaces.cached(NS)
    return meta is not None and meta.logged


async def test_crashed_registrar_blocks_only_until_its_lease_expires(redis_index: RedisMihIndex) -> None:
    rng = np.random.default_rng(5)
    base = random_code(rng)
    await insert_pending(redis_index, "ghost", make_fingerprint(base, b"ghost"), lease_ms=400)

    started = time.monotonic()
    result = await redis_index.register(NS, "real", make_fingerprint(flip_bits(base, 3, rng), b"real"), DECIDE, radius=12)
    waited = time.monotonic() - started

    assert result.record.verdict == Verdict.ACCEPTED  # the ghost never became a kept image
    assert 0.3 <= waited < 5.0, waited
    assert redis_index.pending_waits == 1
    assert await redis_index.query(NS, base, radius=12) == [("real", 3)]
    assert await redis_index.get(NS, "ghost") is None


async def test_unrelated_pending_entry_does_not_delay(redis_index: RedisMihIndex) -> None:
    rng = np.random.default_rng(6)
    await insert_pending(redis_index, "ghost", make_fingerprint(random_code(rng), b"ghost"), lease_ms=60_000)
    started = time.monotonic()
    result = await redis_index.register(NS, "far", make_fingerprint(random_code(rng), b"far"), DECIDE, radius=12)
    assert result.record.verdict == Verdict.ACCEPTED
    assert time.monotonic() - started < 1.0
    assert redis_index.pending_waits == 0


async def test_later_registrar_waits_for_earlier_pending_near_duplicate(redis_index: RedisMihIndex) -> None:
    """An earlier near-duplicate that is still being decided is waited for, then wins."""
    rng = np.random.default_rng(7)
    base = random_code(rng)
    early = make_fingerprint(base, b"early")
    seq = await insert_pending(redis_index, "early", early, lease_ms=60_000)

    late_task = asyncio.create_task(
        redis_index.register(NS, "late", make_fingerprint(flip_bits(base, 2, rng), b"late"), DECIDE, radius=12)
    )
    await asyncio.sleep(0.3)
    assert not late_task.done(), "the later image must wait for the earlier one's decision"
    # The earlier registrar finishes: accepted, state kept.
    from imgdedup.decisions.rules import Decision
    from imgdedup.records import ImageRecord

    record = ImageRecord.build(NS, "early", early, Decision(Verdict.ACCEPTED), seq, None)
    payload = (await redis_index._redis.hget(redis_index.keys.key(NS, "state"), str(seq)))
    outcome = await redis_index._finalize(
        keys=[redis_index.keys.key(NS, "state"), redis_index.keys.key(NS, "rec:early"), redis_index.keys.key(NS, "rec:early"),
              redis_index.keys.key(NS, f"sha:{early.sha256_hex}")],
        args=[seq, payload, f"K|{early.sha256_hex}|early", record.to_json(), "early", "0", ""],
    )
    assert int(outcome) == 1
    late = await asyncio.wait_for(late_task, 5)
    assert (late.record.verdict, late.record.duplicate_of, late.record.distance) == (Verdict.DUPLICATE, "early", 2)


async def test_stalled_registrar_is_fenced_out_and_retries(
    redis_target: RedisTarget, redis_index: RedisMihIndex, redis_prefix: str, redis_mirror: bool
) -> None:
    """Replica A stalls inside its decision longer than its lease; replica B removes A's
    pending entry and is accepted; A's finalize is refused, it restarts and is judged a
    duplicate of B. Exactly one accepted."""
    rng = np.random.default_rng(8)
    base = random_code(rng)
    fp_a = make_fingerprint(base, b"a")
    fp_b = make_fingerprint(flip_bits(base, 4, rng), b"b")
    client_a = redis_target.connect()
    replica_a = RedisMihIndex(client_a, prefix=redis_prefix, substrings=4, lease_ms=300, mirror=redis_mirror)
    b_result: dict[str, object] = {}

    def run_replica_b() -> None:
        async def main() -> None:
            client = redis_target.connect()
            replica_b = RedisMihIndex(client, prefix=redis_prefix, substrings=4, mirror=redis_mirror)
            try:
                b_result["registration"] = await replica_b.register(NS, "b", fp_b, DECIDE, radius=12)
                b_result["waits"] = replica_b.pending_waits
            finally:
                await client.aclose()

        asyncio.run(main())

    calls = {"n": 0}

    def stalling_decide(lookup):
        calls["n"] += 1
        if calls["n"] == 1:
            # A has its pending entry in Redis; B runs to completion meanwhile (on its own
            # loop and connection), outliving A's 300 ms lease.
            worker = threading.Thread(target=run_replica_b)
            worker.start()
            worker.join(20)
        return DECIDE(lookup)

    try:
        a = await replica_a.register(NS, "a", fp_a, stalling_decide, radius=12)
    finally:
        await client_a.aclose()
    b = b_result["registration"]
    assert b.record.verdict == Verdict.ACCEPTED
    assert b_result["waits"] == 1
    assert (a.record.verdict, a.record.duplicate_of, a.record.match) == (Verdict.DUPLICATE, "b", MatchKind.NEAR)
    assert a.record.seq > b.record.seq
    assert replica_a.restarts == 1  # the fenced finalize forced a restart
    assert calls["n"] == 2
    assert await redis_index.query(NS, base, radius=12) == [("b", 4)]


async def test_same_image_id_registered_concurrently_is_decided_once(redis_index: RedisMihIndex, redis_replicas) -> None:
    rng = np.random.default_rng(9)
    fp = make_fingerprint(random_code(rng), b"same")
    replicas = await redis_replicas(4)
    results = await asyncio.gather(
        *(r.register(NS, "img", fp, DECIDE, radius=12) for r in [redis_index, *replicas] for _ in range(3))
    )
    assert sum(not r.replayed for r in results) == 1
    assert {(r.record.verdict, r.record.seq) for r in results} == {(Verdict.ACCEPTED, results[0].record.seq)}
    assert await redis_index.query(NS, fp.codes[0], radius=0) == [("img", 0)]
    # No leftovers: exactly one record of the image in its own buckets (or live in the log).
    m = await redis_index.substrings(NS)
    if logged(redis_index):
        assert await _log_records(redis_index) == {(fp.codes[0], results[0].record.seq)}
    else:
        for key in redis_index.keys.own_buckets(NS, fp.codes, m):
            assert len(await redis_index._redis.get(key)) == 12


async def test_reads_of_an_unknown_namespace_create_nothing(redis_index: RedisMihIndex, redis_prefix: str) -> None:
    fp = make_fingerprint(123456789, b"x")
    assert await redis_index.query("ghost-ns", 123456789, radius=12) == []
    assert (await redis_index.lookup("ghost-ns", fp, radius=12)).candidates == ()
    assert await redis_index.remove("ghost-ns", "nope") is False
    assert await redis_index.get("ghost-ns", "nope") is None
    assert [k async for k in redis_index._redis.scan_iter(match=f"{redis_prefix}:*")] == []


async def test_burst_of_near_duplicates_resolves_in_seq_order(
    redis_target: RedisTarget, redis_prefix: str, redis_index: RedisMihIndex, redis_mirror: bool  # redis_index: cleans up
) -> None:
    """150 copies of one photo at once, with a lease (1 s) shorter than the whole burst
    takes (~3.6 s on an idle machine): exactly one accepted, the earliest, whatever
    restarts a starved event loop may cause."""
    client = redis_target.connect(max_connections=400)
    index = RedisMihIndex(client, prefix=redis_prefix, substrings=4, lease_ms=1000, mirror=redis_mirror)
    rng = np.random.default_rng(10)
    base = random_code(rng)
    fps = {f"copy{i:03d}": make_fingerprint(flip_bits(base, int(rng.integers(0, 4)), rng), f"c{i}".encode()) for i in range(150)}
    try:
        started = time.monotonic()
        results = await asyncio.gather(*(index.register(NS, i, fp, DECIDE, radius=12) for i, fp in fps.items()))
        elapsed = time.monotonic() - started
    finally:
        await client.aclose()
    accepted = [r.record for r in results if r.record.verdict == Verdict.ACCEPTED]
    assert len(accepted) == 1
    assert accepted[0].seq == min(r.record.seq for r in results)
    assert all(r.record.duplicate_of == accepted[0].image_id for r in results if r.record is not accepted[0])
    print(f"150-way burst resolved in {elapsed:.2f} s, {index.restarts} restarts")


async def test_waiter_renews_its_lease_while_waiting(
    redis_index: RedisMihIndex, redis_target: RedisTarget, redis_prefix: str, redis_mirror: bool
) -> None:
    """A registration waits 1.5 s for an earlier pending near-duplicate, with a 300 ms
    lease of its own: it must keep extending that lease (or a third replica would judge
    it dead), then finish without a restart."""
    rng = np.random.default_rng(12)
    base = random_code(rng)
    early = make_fingerprint(base, b"early")
    seq = await insert_pending(redis_index, "early", early, lease_ms=60_000)
    client = redis_target.connect()
    waiter = RedisMihIndex(client, prefix=redis_prefix, substrings=4, lease_ms=300, mirror=redis_mirror)
    task = asyncio.create_task(waiter.register(NS, "late", make_fingerprint(flip_bits(base, 2, rng), b"late"), DECIDE, radius=12))
    leases = []
    try:
        for _ in range(15):
            await asyncio.sleep(0.1)
            for raw in (await redis_index._redis.hgetall(redis_index.keys.key(NS, "state"))).values():
                if raw.endswith(b"|late"):
                    leases.append(int(raw.split(b"|")[1]))
        assert not task.done()
        assert len(set(leases)) >= 3, f"the waiter's lease was not extended: {sorted(set(leases))}"
        # The earlier registration is withdrawn (e.g. it was rejected): the waiter proceeds.
        await redis_index._cas_delete(keys=[redis_index.keys.key(NS, "state")],
                                      args=[seq, await redis_index._redis.hget(redis_index.keys.key(NS, "state"), str(seq))])
        late = await asyncio.wait_for(task, 5)
    finally:
        await client.aclose()
    assert late.record.verdict == Verdict.ACCEPTED
    assert waiter.restarts == 0 and waiter.pending_waits == 1


# --- bucket hygiene: what duplicates and removals leave in the buckets (or the log) ---------


async def _log_records(index: RedisMihIndex) -> set[tuple[int, int]]:
    """Every live (code, seq) of the namespace's log: adds without a later tombstone."""
    from imgdedup.index.redis.mirror import decode_adds

    live: dict[int, list[int]] = {}
    for _id, fields in await index._redis.xrange(index.keys.key(NS, "log")):
        if b"a" in fields:
            seqs, _counts, codes = decode_adds([fields[b"a"]])
            live[int(seqs[0])] = codes.tolist()
        else:
            live.pop(int(fields[b"d"]), None)
    return {(code, seq) for seq, codes in live.items() for code in codes}


async def _bucket_records(index: RedisMihIndex, prefix: str) -> set[tuple[str, int, int]]:
    """Every (bucket key, code, seq) record stored under the prefix."""
    out: set[tuple[str, int, int]] = set()
    async for key in index._redis.scan_iter(match=f"{prefix}:{{{NS}}}:b[0-9]:*"):
        blob = await index._redis.get(key)
        for record in np.frombuffer(blob, dtype=[("code", "<u8"), ("seq", "<u4")]):
            out.add((key.decode(), int(record["code"]), int(record["seq"])))
    return out


async def test_buckets_hold_exactly_the_kept_images_after_concurrent_duplicates_and_removals(
    redis_index: RedisMihIndex, redis_replicas, redis_prefix: str
) -> None:
    rng = np.random.default_rng(21)
    bases = [random_code(rng) for _ in range(8)]
    items = [(f"b{i}", make_fingerprint(base, f"b{i}".encode())) for i, base in enumerate(bases)]
    items += [(f"d{i}", make_fingerprint(flip_bits(bases[i % 8], 1 + i % 6, rng), f"d{i}".encode())) for i in range(40)]
    order = rng.permutation(len(items))
    replicas = [redis_index, *await redis_replicas(3)]
    results = await asyncio.gather(
        *(replicas[k % 4].register(NS, items[i][0], items[i][1], DECIDE, radius=12) for k, i in enumerate(order))
    )
    kept = {r.record.image_id: r.record for r in results if r.record.kept}
    # Duplicates are stripped from the buckets; review-band images are kept (indexed).
    assert sum(r.record.verdict == Verdict.DUPLICATE for r in results) >= 20
    for image_id in sorted(kept)[:3]:
        assert await redis_index.remove(NS, image_id)
        del kept[image_id]
    m = await redis_index.substrings(NS)
    if logged(redis_index):
        expected_log = {(code, record.seq) for record in kept.values() for code in record.indexed_codes}
        assert await _log_records(redis_index) == expected_log
        # ... and every replica's mirror, once caught up, holds exactly that.
        for replica in replicas:
            await replica.mirror.sync(NS)
            table = replica.mirror.state(NS).table
            live = table.alive[: table.size]
            assert set(zip(table.codes[: table.size][live].tolist(), table.labels[: table.size][live].tolist())) == expected_log
        return
    expected = {
        (key, code, record.seq)
        for record in kept.values()
        for key, codes in redis_index.keys.own_buckets(NS, record.indexed_codes, m).items()
        for code in codes
    }
    assert await _bucket_records(redis_index, redis_prefix) == expected


async def test_strip_removes_only_record_aligned_matches(redis_index: RedisMihIndex) -> None:
    """A record's 12 bytes can also appear straddling two neighbouring records; only the
    aligned copy is the record."""
    target = np.zeros(1, dtype=[("code", "<u8"), ("seq", "<u4")])
    target["code"], target["seq"] = 0x1122334455667788, 77
    raw = target.tobytes()
    # Two records of other images whose boundary spells the target's bytes.
    first = b"\x00" * 6 + raw[:6]
    second = raw[6:] + b"\x01" * 6
    assert np.frombuffer(first, dtype="<u4", offset=8)[0] != 77
    key = redis_index.keys.bucket(NS, 0, 1)
    await redis_index._redis.set(key, first + second + raw)
    await redis_index._bucket_layout.strip_records(NS, {key: [0x1122334455667788]}, 77)
    assert await redis_index._redis.get(key) == first + second
    await redis_index._bucket_layout.strip_records(NS, {key: [0x1122334455667788]}, 77)  # idempotent
    assert await redis_index._redis.get(key) == first + second


async def test_strip_leaves_a_kept_image_alone(redis_index: RedisMihIndex) -> None:
    """A withdrawal that lost the race to its own finalize (the finalize ran, its reply
    was lost to a cancellation) must not strip the now-kept image's records."""
    record = np.zeros(1, dtype=[("code", "<u8"), ("seq", "<u4")])
    record["code"], record["seq"] = 0x0102030405060708, 91
    key = redis_index.keys.bucket(NS, 0, 2)
    await redis_index._redis.set(key, record.tobytes())
    await redis_index._redis.hset(redis_index.keys.key(NS, "state"), "91", "K|" + "0" * 64 + "|kept")
    await redis_index._bucket_layout.strip_records(NS, {key: [0x0102030405060708]}, 91)
    assert await redis_index._redis.get(key) == record.tobytes()
    await redis_index._redis.hdel(redis_index.keys.key(NS, "state"), "91")
    await redis_index._bucket_layout.strip_records(NS, {key: [0x0102030405060708]}, 91)
    assert await redis_index._redis.exists(key) == 0

"""The in-process multi-index table (`imgdedup.index.mih_table`) against a brute-force scan.

Every structure state is exercised: flat only, indexed with a tail, merged tails, full
rebuilds with a new m, tombstones, compaction; direct bucket offsets and the sorted-key
layout; radii 0..16 on random codes and on tight clusters of near-duplicates.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest
from helpers import flip_bits, make_fingerprint, random_code

from imgdedup.decisions.rules import Decision, Lookup, Policy, Verdict, decide
from imgdedup.index.memory import MemoryIndex
from imgdedup.index.mih import probe_count
from imgdedup.index.mih_table import MAX_FORCED_PROBES, MihTable, best_substrings, flat_cost

RADII = range(17)


class Oracle:
    """What the table should answer, kept the obvious way: every code, scanned."""

    def __init__(self) -> None:
        self.codes = np.zeros(0, dtype=np.uint64)
        self.labels = np.zeros(0, dtype=np.int64)
        self.alive = np.zeros(0, dtype=bool)

    def add(self, label: int, codes: list[int] | tuple[int, ...]) -> None:
        self.codes = np.concatenate([self.codes, np.array(codes, dtype=np.uint64)])
        self.labels = np.concatenate([self.labels, np.full(len(codes), label, dtype=np.int64)])
        self.alive = np.concatenate([self.alive, np.ones(len(codes), dtype=bool)])

    def remove(self, label: int) -> None:
        self.alive[self.labels == label] = False

    def distances(self, queries: list[int] | tuple[int, ...]) -> dict[int, int]:
        """{label: smallest distance to any query}, every live label."""
        d = np.full(len(self.codes), 255, dtype=np.int64)
        for q in queries:
            d = np.minimum(d, np.bitwise_count(self.codes ^ np.uint64(q)))
        d[~self.alive] = 255
        best = np.full(int(self.labels.max(initial=0)) + 1, 255, dtype=np.int64)
        np.minimum.at(best, self.labels, d)
        return {int(label): int(best[label]) for label in np.flatnonzero(best <= 64)}

    @staticmethod
    def within(distances: dict[int, int], radius: int) -> dict[int, int]:
        return {label: d for label, d in distances.items() if d <= radius}


def clustered_codes(rng: np.random.Generator, bases: list[int], k: int) -> list[int]:
    """k codes, each a base with 0..16 bits flipped: many near-duplicates of each other."""
    return [flip_bits(bases[int(rng.integers(len(bases)))], int(rng.integers(0, 17)), rng) for _ in range(k)]


def check_all_radii(table: MihTable, oracle: Oracle, queries: list[int], radii=RADII) -> int:
    distances = oracle.distances(queries)
    hits = 0
    for radius in radii:
        expected = Oracle.within(distances, radius)
        assert table.near(queries, radius) == expected, f"radius {radius}, m={table.substrings}"
        hits += len(expected)
    return hits


def assert_index_consistent(table: MihTable) -> None:
    """The indexed part holds exactly rows [0, indexed) once per substring, bucketed by the
    substring value, with each entry's code alongside (so a merge equals a rebuild)."""
    m, n = table.substrings, table.indexed
    assert len(table._entries) == m * n == len(table._entry_codes)
    assert np.array_equal(table._entry_codes, table.codes[table._entries])
    for j in range(m):
        part = table._entries[j * n : (j + 1) * n]
        assert np.array_equal(np.sort(part), np.arange(n))
        values = table._substring(table.codes[part], j)
        assert np.all(np.diff(values.astype(np.int64)) >= 0), "entries sorted by substring value"
    if table._layout.direct:
        assert table._offsets[-1] == m * n
        assert np.all(np.diff(table._offsets) >= 0)


# --- randomized oracle, structure forced ---------------------------------------------------


@pytest.mark.parametrize("direct_max_bits", [22, 1], ids=["direct", "sorted"])
@pytest.mark.parametrize("m", [2, 3, 4, 5, 7, 16])
def test_forced_index_matches_brute_force_through_merges_and_compaction(m, direct_max_bits):
    rng = np.random.default_rng(1000 * m + direct_max_bits)
    table = MihTable(substrings=m, tail_min=40, compact_min=150, direct_max_bits=direct_max_bits)
    oracle = Oracle()
    bases = [random_code(rng) for _ in range(25)]
    # indexed radii, and radii too wide for the index (flat fallback); not the slow middle
    radii = [r for r in RADII if not 60_000 < probe_count(r, m) <= MAX_FORCED_PROBES]
    label, merges, compactions, hits = 1, 0, 0, 0
    for step in range(240):
        k = int(rng.integers(0, 30))  # 0 happens: a label without codes
        codes = clustered_codes(rng, bases, k) if step % 3 else [random_code(rng) for _ in range(k)]
        indexed_before = table.indexed
        table.add(label, codes)
        oracle.add(label, codes)
        merges += table.indexed > indexed_before > 0
        label += 1
        for victim in rng.integers(1, label, size=int(rng.integers(0, 3))).tolist():
            size_before = table.size
            table.remove(victim)
            oracle.remove(victim)
            compactions += table.size < size_before
        if step % 12 == 11:
            assert table.substrings == m and table.indexed > 0
            assert_index_consistent(table)
            queries = [flip_bits(bases[int(rng.integers(len(bases)))], int(rng.integers(0, 6)), rng),
                       random_code(rng)]
            hits += check_all_radii(table, oracle, queries, radii)
    assert merges >= 3 and compactions >= 1, (merges, compactions)
    assert hits > 500, "the oracle compared real result sets"
    # removing everything leaves an empty answer, not stale tombstones
    for victim in range(1, label):
        table.remove(victim)
    assert table.near([bases[0]], 16) == {}


@pytest.mark.parametrize("m", [3, 4, 6])
def test_exact_at_every_radius_on_a_dense_cluster(m):
    # One base and thousands of codes within 16 bits of it: every bucket the probes read
    # is crowded, and radius r must cut exactly at r.
    rng = np.random.default_rng(m)
    base = random_code(rng)
    table = MihTable(substrings=m, tail_min=64)
    oracle = Oracle()
    for label in range(1, 301):
        codes = [flip_bits(base, int(rng.integers(0, 17)), rng) for _ in range(10)]
        table.add(label, codes)
        oracle.add(label, codes)
    assert table.indexed > 0 and table.tail > 0  # queries read both parts
    for query in (base, flip_bits(base, 3, rng), flip_bits(base, 9, rng)):
        hits = check_all_radii(table, oracle, [query])
        assert hits > 300


def test_labels_are_removed_by_span_and_only_once():
    table = MihTable(substrings=4, tail_min=8)
    table.add(1, [1, 2, 3])
    table.add(2, [])
    table.add(3, [3, 2**64 - 1])
    assert table.near([3], 0) == {1: 0, 3: 0}
    assert table.remove(1) == 3
    assert table.remove(1) == 0
    assert table.remove(2) == 0
    assert table.remove(99) == 0
    assert table.near([3], 0) == {3: 0}
    assert len(table) == 2
    with pytest.raises(ValueError, match="already"):
        table.add(3, [5])
    table.add(1, [3])  # a removed label may come back
    assert table.near([3], 0) == {1: 0, 3: 0}


def test_radius_edges():
    table = MihTable(substrings=3, tail_min=4)
    for label in range(1, 20):
        table.add(label, [label, 2**64 - label])
    assert table.near([0], -1) == {}
    assert table.near([], 5) == {}
    everything = table.near([0], 100)
    assert everything == {label: 1 if label in (1, 2, 4, 8, 16) else min(label.bit_count(), 64) for label in range(1, 20)}


# --- the automatic choice ----------------------------------------------------------------


def test_cost_model_scans_small_tables_flat_and_indexes_large_ones():
    assert best_substrings(1_000, 12, 2)[1] > flat_cost(1_000, 2)
    m, cost = best_substrings(1_000_000, 12, 2)
    assert 3 <= m <= 5 and cost < flat_cost(1_000_000, 2) / 3
    # a radius whose probes cannot pay off stays flat however large the table
    assert best_substrings(1_000_000, 40, 2)[1] > flat_cost(1_000_000, 2)


def test_automatic_table_goes_indexed_past_the_crossover_and_stays_exact():
    rng = np.random.default_rng(7)
    table = MihTable()
    oracle = Oracle()
    bases = [random_code(rng) for _ in range(200)]
    label = 1
    while table.substrings == 0:
        codes = clustered_codes(rng, bases, 29) if label % 2 else [random_code(rng) for _ in range(29)]
        table.add(label, codes)
        oracle.add(label, codes)
        label += 1
        assert label < 10_000, "never left the flat scan"
    first_m = table.substrings
    assert table.size > 5_000
    for _ in range(100):  # a tail, below the size that forces a merge
        codes = clustered_codes(rng, bases, 29)
        table.add(label, codes)
        oracle.add(label, codes)
        label += 1
    assert table.tail >= 2900
    indexed = table.indexed
    for _ in range(6):
        queries = [flip_bits(bases[int(rng.integers(200))], 4, rng), random_code(rng)]
        check_all_radii(table, oracle, queries, radii=(0, 4, 8, 12, 16))
    assert table.substrings == first_m
    # once the queries have spent a merge's worth scanning the tail, it is folded in
    for _ in range(5000):
        table.near([random_code(rng), random_code(rng)], 12)
        if table.tail == 0:
            break
    assert table.tail == 0 and table.indexed > indexed
    check_all_radii(table, oracle, [bases[1], random_code(rng)], radii=(0, 8, 16))
    assert_index_consistent(table)
    # removing most of it compacts and re-decides (here: back to a flat scan)
    for victim in range(1, label - 50):
        table.remove(victim)
        oracle.remove(victim)
    assert len(table) == 50 * 29 and table.substrings == 0
    check_all_radii(table, oracle, [bases[0], random_code(rng)], radii=(0, 8, 16))


def test_growing_table_is_rebuilt_with_a_new_m_and_stays_exact():
    rng = np.random.default_rng(21)
    table = MihTable()
    oracle = Oracle()
    bases = [random_code(rng) for _ in range(500)]
    ms = []
    label = 1
    while table.size < 320_000:
        codes = clustered_codes(rng, bases, 29) if label % 4 == 0 else [random_code(rng) for _ in range(29)]
        table.add(label, codes)
        oracle.add(label, codes)
        label += 1
        if table.substrings and (not ms or ms[-1] != table.substrings):
            ms.append(table.substrings)
            assert_index_consistent(table)
    assert len(ms) >= 2 and ms[-1] < ms[0], f"m over the growth: {ms}"
    for _ in range(3):
        check_all_radii(table, oracle, [flip_bits(bases[int(rng.integers(500))], 5, rng), random_code(rng)],
                        radii=(0, 6, 12, 16))


# --- through MemoryIndex -----------------------------------------------------------------


async def test_memory_index_registers_past_the_crossover_like_a_flat_scan():
    """Scan-style registration (2 whole-image codes + 20..27 window codes, one image at a
    time) into a namespace that goes from flat to MIH midway: every lookup the decision
    saw equals the brute-force one, so every verdict does too."""
    rng = np.random.default_rng(11)
    policy = Policy(duplicate_radius=8, review_radius=12)
    decide_fn = functools.partial(decide, policy=policy)
    index = MemoryIndex()
    oracle = Oracle()
    originals: list[int] = []
    modes: set[int] = set()
    verdicts: set[Verdict] = set()
    for i in range(2000):
        if originals and i % 3 == 0:  # a near-duplicate of an earlier image, 0..14 bits off
            whole = flip_bits(originals[int(rng.integers(len(originals)))], int(rng.integers(0, 15)), rng)
        else:
            whole = random_code(rng)
            originals.append(whole)
        codes = (whole, flip_bits(whole, 2, rng))
        windows = tuple(random_code(rng) for _ in range(int(rng.integers(20, 28))))
        fp = dataclasses.replace(make_fingerprint(whole, i, codes=codes), window_codes=windows)
        seen: list[Lookup] = []

        def spy(lookup: Lookup, seen: list[Lookup] = seen) -> Decision:
            seen.append(lookup)
            return decide_fn(lookup)

        registration = await index.register("scan", f"img{i}", fp, spy, radius=policy.review_radius)
        expected = Oracle.within(oracle.distances(codes), policy.review_radius)
        assert {c.seq: c.distance for c in seen[0].candidates} == expected, f"image {i}"
        record = registration.record
        verdicts.add(record.verdict)
        if record.kept:
            oracle.add(record.seq, fp.indexed_codes)
        modes.add(index._namespaces["scan"].table.substrings)
    assert 0 in modes and len(modes) > 1, "the namespace started flat and went indexed"
    assert verdicts == {Verdict.ACCEPTED, Verdict.DUPLICATE, Verdict.REVIEW}
    # removals through the index drop exactly that image's codes
    victim = await index.get("scan", "img0")
    assert await index.remove("scan", "img0")
    oracle.remove(victim.seq)
    hits = await index.query("scan", victim.codes[0], radius=16)
    assert all(image_id != "img0" for image_id, _ in hits)
    assert len(hits) == len(Oracle.within(oracle.distances(victim.codes[:1]), 16))

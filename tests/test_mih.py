"""The multi-index hashing maths (`imgdedup.index.mih`) against brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import MASK64, flip_bits, hamming, random_code

from imgdedup.index.mih import (
    CODE_BITS,
    RECORD_DTYPE,
    flip_masks,
    hamming_distances,
    nearest_per_seq,
    pack_records,
    probe_count,
    probe_radii,
    probes,
    split_code,
    substring_widths,
    suggest_substrings,
    unpack_records,
)

#: Above this many probes, building the explicit probe set is too slow for a unit test;
#: those (radius, m) pairs are checked through `probe_radii` instead.
MAX_EXPLICIT_PROBES = 100_000


# --- substrings ----------------------------------------------------------------------------


@pytest.mark.parametrize("m", range(1, 65))
def test_substring_widths(m):
    widths = substring_widths(m)
    assert len(widths) == m
    assert sum(widths) == CODE_BITS
    assert max(widths) - min(widths) <= 1
    assert list(widths) == sorted(widths, reverse=True)  # widest first


def test_substring_widths_examples():
    assert substring_widths(4) == (16, 16, 16, 16)
    assert substring_widths(3) == (22, 21, 21)
    assert substring_widths(5) == (13, 13, 13, 13, 12)
    assert substring_widths(1) == (64,)
    assert substring_widths(3, bits=8) == (3, 3, 2)


@pytest.mark.parametrize("m", [0, -1, 65])
def test_substring_widths_rejects_bad_m(m):
    with pytest.raises(ValueError):
        substring_widths(m)


def test_split_code_reassembles():
    rng = np.random.default_rng(1)
    codes = [0, MASK64, 1, 1 << 63, 0x0123456789ABCDEF] + [random_code(rng) for _ in range(200)]
    for m in range(1, 17):
        widths = substring_widths(m)
        for code in codes:
            parts = split_code(code, m)
            assert len(parts) == m
            rebuilt = 0
            for value, width in zip(parts, widths):
                assert 0 <= value < 1 << width
                rebuilt = (rebuilt << width) | value
            assert rebuilt == code


def test_split_code_most_significant_first():
    assert split_code(0x0123456789ABCDEF, 4) == (0x0123, 0x4567, 0x89AB, 0xCDEF)
    assert split_code(1 << 63, 2) == (1 << 31, 0)
    assert split_code(1, 3) == (0, 0, 1)


# --- probe radii (Norouzi's refined pigeonhole) -------------------------------------------------


def _refined_radii(radius: int, m: int) -> tuple[int, ...]:
    q, a = radius // m, radius % m
    return tuple([q] * (a + 1) + [q - 1] * (m - a - 1))


def test_probe_radii_examples():
    assert probe_radii(0, 4) == (0, -1, -1, -1)
    assert probe_radii(3, 4) == (0, 0, 0, 0)
    assert probe_radii(4, 4) == (1, 0, 0, 0)
    assert probe_radii(8, 4) == (2, 1, 1, 1)
    assert probe_radii(12, 4) == (3, 2, 2, 2)
    assert probe_radii(5, 1) == (5,)
    assert probe_radii(7, 3) == (2, 2, 1)


@pytest.mark.parametrize("m", range(1, 9))
def test_probe_radii_refined_pigeonhole(m):
    for radius in range(33):
        radii = probe_radii(radius, m)
        assert radii == _refined_radii(radius, m)
        assert len(radii) == m
        # The budget that lets every substring escape its radius is r + 1: any code within
        # r must therefore land inside some substring's probe radius (the pigeonhole).
        assert sum(r + 1 for r in radii) == radius + 1


def test_probe_radii_rejects_negative():
    with pytest.raises(ValueError):
        probe_radii(-1, 4)


# --- the key property: probes cover every code within the radius ----------------------------


def _spread_flips(code: int, k: int, m: int, start: int, rng: np.random.Generator) -> int:
    """Flip k bits dealt round-robin over the m substrings (starting at `start`): the
    most even spread, which is where a too-small probe radius would miss."""
    widths = substring_widths(m)
    offsets = np.concatenate([[0], np.cumsum(widths)])
    per_sub = [0] * m
    j = start
    for _ in range(k):
        while per_sub[j % m] >= widths[j % m]:
            j += 1
        per_sub[j % m] += 1
        j += 1
    mask = 0
    for sub, count in enumerate(per_sub):
        # substring `sub` covers bits [64 - offsets[sub+1], 64 - offsets[sub]) of the code
        low = CODE_BITS - int(offsets[sub + 1])
        for bit in rng.choice(widths[sub], size=count, replace=False).tolist():
            mask |= 1 << (low + bit)
    result = code ^ mask
    assert hamming(result, code) == k
    return result


def _neighbours(c1: int, radius: int, m: int, rng: np.random.Generator, n_random: int):
    for k in range(radius + 1):
        for start in range(m):
            yield _spread_flips(c1, k, m, start, rng)
    for _ in range(n_random):
        k = int(rng.integers(0, radius + 1)) if rng.random() < 0.5 else radius
        yield flip_bits(c1, k, rng)


def test_probes_cover_every_code_within_radius():
    rng = np.random.default_rng(20240501)
    checked_explicit = 0
    for m in range(1, 9):
        for radius in range(17):
            radii = probe_radii(radius, m)
            explicit = probe_count(radius, m) <= MAX_EXPLICIT_PROBES
            for _ in range(2 if explicit else 4):
                c1 = random_code(rng)
                subs1 = split_code(c1, m)
                probe_set = set(probes(c1, radius, m)) if explicit else None
                for c2 in _neighbours(c1, radius, m, rng, n_random=60):
                    assert hamming(c1, c2) <= radius
                    subs2 = split_code(c2, m)
                    if probe_set is not None:
                        hit = any((j, subs2[j]) in probe_set for j in range(m))
                        checked_explicit += 1
                    else:
                        hit = any(
                            hamming(subs1[j], subs2[j]) <= radii[j] for j in range(m)
                        )
                    assert hit, f"m={m} r={radius}: {c2:016x} within {radius} of {c1:016x} missed"
    assert checked_explicit > 10_000


def test_probes_are_exactly_the_buckets_within_each_substring_radius():
    # probes() == {(j, v): popcount(v ^ sub_j) <= radii[j]}, enumerated over all v.
    rng = np.random.default_rng(3)
    for m, radius in [(8, 0), (8, 5), (8, 16), (6, 9), (4, 4), (4, 7)]:
        code = random_code(rng)
        widths = substring_widths(m)
        radii = probe_radii(radius, m)
        got = probes(code, radius, m)
        assert len(got) == len(set(got))  # no bucket read twice
        expected = set()
        for j, (sub, width, r) in enumerate(zip(split_code(code, m), widths, radii)):
            values = np.arange(1 << width, dtype=np.uint64)
            near = values[np.bitwise_count(values ^ np.uint64(sub)) <= r] if r >= 0 else []
            expected.update((j, int(v)) for v in near)
        assert set(got) == expected


def test_probes_miss_codes_beyond_a_substring_radius():
    # Sanity that the coverage test can fail: a neighbour at distance r + 1 spread evenly
    # over the substrings escapes every probed bucket.
    rng = np.random.default_rng(9)
    for m, radius in [(4, 3), (4, 7), (4, 8), (8, 12), (2, 3)]:
        c1 = random_code(rng)
        radii = probe_radii(radius, m)
        # radii[j] + 1 flips in substring j: total r + 1 (see the budget identity above).
        c2 = c1
        widths = substring_widths(m)
        low = CODE_BITS
        for width, r in zip(widths, radii):
            low -= width
            for bit in range(r + 1):
                c2 ^= 1 << (low + bit)
        assert hamming(c1, c2) == radius + 1
        subs2 = split_code(c2, m)
        assert not any((j, subs2[j]) in set(probes(c1, radius, m)) for j in range(m))


def _plain_count(radius: int, m: int) -> int:
    q = radius // m
    return sum(sum(math.comb(w, k) for k in range(q + 1)) for w in substring_widths(m))


def test_probe_count_matches_probes_and_beats_plain_bound():
    rng = np.random.default_rng(4)
    for m in range(1, 9):
        for radius in range(17):
            count = probe_count(radius, m)
            if count <= MAX_EXPLICIT_PROBES:
                assert count == len(probes(random_code(rng), radius, m))
            plain = _plain_count(radius, m)
            if radius % m != m - 1:
                assert count < plain, (m, radius)
            else:
                assert count == plain, (m, radius)


def test_probe_count_examples():
    assert probe_count(0, 4) == 1
    assert probe_count(3, 4) == 4
    assert probe_count(8, 4) == 137 + 3 * 17  # 16 bits at radius 2, three at radius 1
    assert probe_count(12, 4) == 697 + 3 * 137


@pytest.mark.parametrize("width, radius", [(1, 0), (1, 1), (8, 0), (8, 3), (16, 2), (21, 4), (5, 9)])
def test_flip_masks(width, radius):
    masks = flip_masks(width, radius)
    expected_size = sum(math.comb(width, k) for k in range(min(radius, width) + 1))
    assert len(masks) == expected_size
    values = masks.tolist()
    assert len(set(values)) == len(values)
    popcounts = [v.bit_count() for v in values]
    assert all(v < 1 << width for v in values)
    assert max(popcounts) == min(radius, width)
    assert popcounts == sorted(popcounts)  # fewest bits first
    assert values[0] == 0
    assert not masks.flags.writeable  # cached: must not be mutable by callers


def test_flip_masks_negative_radius_is_empty():
    assert len(flip_masks(16, -1)) == 0


# --- candidate verification -------------------------------------------------------------------


def test_hamming_distances_vectorised():
    rng = np.random.default_rng(6)
    codes = [random_code(rng) for _ in range(500)] + [0, MASK64]
    query = random_code(rng)
    got = hamming_distances(np.array(codes, dtype=np.uint64), query)
    assert got.tolist() == [hamming(c, query) for c in codes]


def _records(codes: list[int], seqs: list[int]) -> np.ndarray:
    records = np.empty(len(codes), dtype=RECORD_DTYPE)
    records["code"] = np.array(codes, dtype=np.uint64)
    records["seq"] = np.array(seqs, dtype=np.uint32)
    return records


def test_nearest_per_seq_matches_brute_force():
    rng = np.random.default_rng(8)
    base = [random_code(rng) for _ in range(5)]
    codes, seqs = [], []
    for i in range(600):
        anchor = base[i % 5]
        codes.append(flip_bits(anchor, int(rng.integers(0, 20)), rng))
        seqs.append(int(rng.integers(1, 150)))  # repeated seqs: several codes per image
    records = _records(codes, seqs)
    for trial in range(30):
        queries = tuple(flip_bits(base[(trial + k) % 5], int(rng.integers(0, 6)), rng)
                        for k in range(1 + trial % 3))
        radius = int(rng.integers(0, 17))
        expected: dict[int, int] = {}
        for code, seq in zip(codes, seqs):
            for q in queries:
                d = hamming(code, q)
                if d <= radius and d < expected.get(seq, 999):
                    expected[seq] = d
        assert nearest_per_seq(records, queries, radius) == expected
    assert nearest_per_seq(records[:0], (0,), 64) == {}


# --- bucket records -------------------------------------------------------------------------


def test_pack_unpack_round_trip():
    codes = [0, 1, MASK64, 0x8000_0000_0000_0000, 0x0123456789ABCDEF]
    for seq in (1, 2**31, 2**32 - 1):
        blob = pack_records(codes, seq)
        assert len(blob) == 12 * len(codes)
        records = unpack_records(blob)
        assert [int(c) for c in records["code"]] == codes
        assert records["seq"].tolist() == [seq] * len(codes)
    # Little-endian, unpadded layout (bucket blobs are shared by every replica).
    assert pack_records([0x0102030405060708], 0x0A0B0C0D) == bytes.fromhex(
        "0807060504030201" "0d0c0b0a"
    )
    joined = pack_records([5], 1) + pack_records([6, 7], 2)
    records = unpack_records(joined)
    assert records["code"].tolist() == [5, 6, 7]
    assert records["seq"].tolist() == [1, 2, 2]
    assert len(unpack_records(b"")) == 0


@pytest.mark.parametrize("length", [1, 11, 13, 25])
def test_unpack_rejects_bad_lengths(length):
    with pytest.raises(ValueError):
        unpack_records(b"\x00" * length)


# --- choosing m ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, expected",
    [(1_000_000, 3), (65_536, 4), (2**32, 2), (2**21, 3), (1_000, 6), (256, 8), (2, 1), (0, 1)],
)
def test_suggest_substrings(n, expected):
    assert suggest_substrings(n) == expected


def test_suggest_substrings_follows_rule_of_thumb():
    for n in (10, 100, 5_000, 10**5, 10**7, 10**9):
        assert suggest_substrings(n) == round(64 / math.log2(n))

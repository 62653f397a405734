"""Multi-index hashing maths (Norouzi, Punjani & Fleet, "Fast Search in Hamming Space
with Multi-Index Hashing", CVPR 2012). Pure functions over ints and numpy arrays.

A 64-bit code is cut into m disjoint substrings; each substring value owns a bucket.
If two codes are within Hamming distance r, then by the pigeonhole principle at least
one substring pair is within floor(r/m). The paper's sharper form is used here: with
r = m*q + a (0 <= a < m), some substring among the first a+1 is within q, or some
substring among the remaining m-a-1 is within q-1. So the first a+1 substrings are
probed at radius q and the others at q-1 (not at all when q = 0), which probes fewer
buckets than the plain bound and misses nothing. Candidates found in the buckets are
then verified on the full code.
"""

from __future__ import annotations

import math
from functools import lru_cache
from itertools import combinations

import numpy as np

CODE_BITS = 64

#: One bucket record: the full code and the image's sequence number, packed (no
#: padding), little-endian. 12 bytes, so a code costs 12*m bytes of bucket payload.
RECORD_DTYPE = np.dtype([("code", "<u8"), ("seq", "<u4")])


def substring_widths(m: int, bits: int = CODE_BITS) -> tuple[int, ...]:
    """Widths of the m substrings, as even as possible, widest first."""
    if not 1 <= m <= bits:
        raise ValueError(f"substring count must be in 1..{bits}, got {m}")
    base, extra = divmod(bits, m)
    return tuple(base + 1 if j < extra else base for j in range(m))


def split_code(code: int, m: int, bits: int = CODE_BITS) -> tuple[int, ...]:
    """Substring values of `code`, most significant substring first."""
    values = []
    shift = bits
    for width in substring_widths(m, bits):
        shift -= width
        values.append((code >> shift) & ((1 << width) - 1))
    return tuple(values)


def probe_radii(radius: int, m: int) -> tuple[int, ...]:
    """Per-substring search radius; -1 means the substring need not be probed."""
    if radius < 0:
        raise ValueError("radius must be >= 0")
    q, a = divmod(radius, m)
    return tuple(q if j <= a else q - 1 for j in range(m))


@lru_cache(maxsize=256)
def flip_masks(width: int, radius: int) -> np.ndarray:
    """All `width`-bit masks with at most `radius` bits set, fewest bits first."""
    if radius < 0:
        return np.zeros(0, dtype=np.uint64)
    masks = [0]
    for k in range(1, min(radius, width) + 1):
        for positions in combinations(range(width), k):
            mask = 0
            for p in positions:
                mask |= 1 << p
            masks.append(mask)
    out = np.array(masks, dtype=np.uint64)
    out.flags.writeable = False
    return out


def probes(code: int, radius: int, m: int, bits: int = CODE_BITS) -> list[tuple[int, int]]:
    """(substring index, bucket value) pairs to read for a radius query around `code`."""
    widths = substring_widths(m, bits)
    out: list[tuple[int, int]] = []
    for j, (value, width, r) in enumerate(zip(split_code(code, m, bits), widths, probe_radii(radius, m))):
        if r < 0:
            continue
        for neighbour in (np.uint64(value) ^ flip_masks(width, r)).tolist():
            out.append((j, int(neighbour)))
    return out


def probe_count(radius: int, m: int, bits: int = CODE_BITS) -> int:
    widths = substring_widths(m, bits)
    total = 0
    for width, r in zip(widths, probe_radii(radius, m)):
        total += sum(math.comb(width, k) for k in range(r + 1)) if r >= 0 else 0
    return total


def suggest_substrings(expected_codes: int, bits: int = CODE_BITS) -> int:
    """Norouzi's rule of thumb m = bits / log2(N), rounded: buckets hold about one code
    each on average."""
    if expected_codes <= 2:
        return 1
    return max(1, min(bits, round(bits / math.log2(expected_codes))))


def hamming_distances(codes: np.ndarray, query: int) -> np.ndarray:
    """Popcount of XOR, vectorised (numpy >= 2 has a native bitwise_count)."""
    return np.bitwise_count(codes.astype(np.uint64, copy=False) ^ np.uint64(query)).astype(np.int64)


def pack_records(codes: list[int] | tuple[int, ...], seq: int) -> bytes:
    records = np.empty(len(codes), dtype=RECORD_DTYPE)
    records["code"] = np.array(codes, dtype=np.uint64)
    records["seq"] = seq
    return records.tobytes()


def unpack_records(blob: bytes) -> np.ndarray:
    if len(blob) % RECORD_DTYPE.itemsize:
        raise ValueError(f"bucket length {len(blob)} is not a multiple of {RECORD_DTYPE.itemsize}")
    return np.frombuffer(blob, dtype=RECORD_DTYPE)


def nearest_per_seq(records: np.ndarray, queries: tuple[int, ...], radius: int) -> dict[int, int]:
    """Verify candidates: {seq: smallest distance over all query/record code pairs <= radius}."""
    if len(records) == 0:
        return {}
    best: dict[int, int] = {}
    for query in queries:
        distances = hamming_distances(records["code"], query)
        hits = np.nonzero(distances <= radius)[0]
        for seq, distance in zip(records["seq"][hits].tolist(), distances[hits].tolist()):
            if distance < best.get(seq, CODE_BITS + 1):
                best[seq] = distance
    return best

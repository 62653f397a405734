"""In-process multi-index hash table over 64-bit codes, numpy arrays only: exact radius
queries in time that grows with the probes and candidates rather than with the number
of codes, so registering an estate one image at a time is not quadratic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from imgdedup.index.mih import CODE_BITS, flip_masks, probe_radii, substring_widths

#: Radius assumed for choosing m before the first query (the service's review radius).
DEFAULT_RADIUS_HINT = 12
#: Substrings wider than this use a sorted key array instead of direct bucket offsets
#: (2**22 offsets per substring = 32 MB at most).
DIRECT_MAX_BITS = 22
#: The tail is merged only when it is over this many codes (merges cost O(entries)).
TAIL_MIN = 4096
#: Compaction rewrites every array: only worth it for this many tombstones or more.
COMPACT_MIN = 1024
SUBSTRING_CHOICES = range(2, 17)
#: With a forced m, radii needing more probes than this still scan flat.
MAX_FORCED_PROBES = 1_000_000
#: A different m is adopted at a rebuild only if it is this much cheaper (no flapping).
HYSTERESIS = 1.25

# Cost model: the cost of each step of a query, in units of about a nanosecond on one
# core, fitted to query timings. Only the ratios matter.
COST_FLAT = 0.7  # per code, per query code: popcount over a contiguous block
COST_CALL_FLAT = 10_000.0  # per flat query: fixed numpy overhead
COST_CALL_INDEXED = 25_000.0  # per indexed query: fixed numpy overhead
COST_PROBE_CACHED = 22.0  # per probe, bucket offsets small enough to stay in cache
COST_PROBE_DIRECT = 40.0  # per probe, bucket offsets in main memory
COST_PROBE_SORTED = 1000.0  # per probe: two binary searches, cache misses
COST_CANDIDATE = 6.0  # per candidate: contiguous bucket read, popcount
COST_MERGE = 15.0  # per entry (codes x m) rewritten by a merge
CACHED_OFFSETS_BYTES = 4 << 20
#: Flat scans go block by block so that the temporaries stay in cache.
FLAT_BLOCK = 1 << 16


@dataclass(frozen=True, slots=True)
class _Layout:
    """Geometry of an m-way split: where each substring's values live in key space."""

    m: int
    widths: tuple[int, ...]
    shifts: tuple[int, ...]
    bases: tuple[int, ...]
    direct: bool
    keyspace: int  # direct layout: number of bucket offsets (sum of 2**width)


@lru_cache(maxsize=64)
def _layout(m: int, direct_max_bits: int) -> _Layout:
    widths = substring_widths(m)
    shifts = tuple(CODE_BITS - sum(widths[: j + 1]) for j in range(m))
    direct = widths[0] <= direct_max_bits
    if direct:
        bases = tuple(sum(1 << w for w in widths[:j]) for j in range(m))
        keyspace = sum(1 << w for w in widths)
    else:  # widths <= 32 (m >= 2): the substring index goes in the high bits
        bases = tuple(j << 32 for j in range(m))
        keyspace = 0
    return _Layout(m, widths, shifts, bases, direct, keyspace)


@dataclass(frozen=True, slots=True)
class _Plan:
    """Every probe of one query, as arrays: key = base + (((q >> shift) & mask) ^ flip)."""

    shift: np.ndarray
    mask: np.ndarray
    flip: np.ndarray
    base: np.ndarray


@lru_cache(maxsize=32)
def _plan(layout: _Layout, radius: int) -> _Plan:
    parts: list[tuple[int, int, int, np.ndarray]] = []
    for j, r in enumerate(probe_radii(radius, layout.m)):
        if r >= 0:
            width = layout.widths[j]
            parts.append((layout.shifts[j], (1 << width) - 1, layout.bases[j], flip_masks(width, r)))

    def column(values: list[np.ndarray]) -> np.ndarray:
        out = np.concatenate(values).astype(np.uint64)
        out.flags.writeable = False
        return out

    return _Plan(
        shift=column([np.full(len(f), s, np.uint64) for s, _, _, f in parts]),
        mask=column([np.full(len(f), k, np.uint64) for _, k, _, f in parts]),
        flip=column([f for _, _, _, f in parts]),
        base=column([np.full(len(f), b, np.uint64) for _, _, b, f in parts]),
    )


@lru_cache(maxsize=1024)
def _probe_stats(m: int, radius: int) -> tuple[int, float]:
    """(probes per query, expected fraction of codes that are candidates if uniform)."""
    probes = 0
    fraction = 0.0
    for width, r in zip(substring_widths(m), probe_radii(radius, m)):
        if r >= 0:
            ball = sum(math.comb(width, k) for k in range(min(r, width) + 1))
            probes += ball
            fraction += ball / 2**width
    return probes, fraction


def flat_cost(codes: int, n_queries: int) -> float:
    """Estimated ns for a flat scan of `codes` codes."""
    return COST_CALL_FLAT + COST_FLAT * codes * n_queries


def indexed_cost(m: int, radius: int, codes: int, n_queries: int, direct_max_bits: int = DIRECT_MAX_BITS) -> float:
    """Estimated ns for a multi-index query over `codes` codes split m ways (uniform codes)."""
    probes, fraction = _probe_stats(m, radius)
    layout = _layout(m, direct_max_bits)
    if not layout.direct:
        probe_cost = COST_PROBE_SORTED
    elif layout.keyspace * 8 <= CACHED_OFFSETS_BYTES:
        probe_cost = COST_PROBE_CACHED
    else:
        probe_cost = COST_PROBE_DIRECT
    return COST_CALL_INDEXED + n_queries * (probes * probe_cost + fraction * codes * COST_CANDIDATE)


def best_substrings(
    codes: int, radius: int, n_queries: int, direct_max_bits: int = DIRECT_MAX_BITS
) -> tuple[int, float]:
    """(m, estimated ns) minimising `indexed_cost`."""
    return min(
        ((m, indexed_cost(m, radius, codes, n_queries, direct_max_bits)) for m in SUBSTRING_CHOICES),
        key=lambda pair: pair[1],
    )


def _grow(array: np.ndarray, needed: int, used: int) -> np.ndarray:
    if needed <= len(array):
        return array
    grown = np.zeros(max(needed, 2 * len(array), 1024), dtype=array.dtype)
    grown[:used] = array[:used]
    return grown


class MihTable:
    """Exact radius search over labelled 64-bit codes (label = the owner's sequence number).

    Layout (no Python object per code):

    * rows: `codes`, `labels` (the owner's sequence number) and an `alive` tombstone mask,
      appended contiguously per label; (start, count) per label, in arrays indexed by label,
      make a removal O(codes of that label).
    * indexed part, rows [0, indexed): per substring j (Norouzi's m-way split, `imgdedup.index.mih`)
      the row ids sorted by substring value, all substrings in one `entries` array, with
      each entry's code alongside (verifying a bucket is then a contiguous read). Narrow
      substrings (<= `direct_max_bits`) get direct bucket offsets (`offsets[key]` ..
      `offsets[key + 1]`); wider ones a sorted `keys` array read with `np.searchsorted`.
      Substring j's values are shifted by a per-substring base, so one gather serves every
      probe of every substring and query.
    * tail, rows [indexed, size): recent codes, scanned flat and merged into the indexed part
      (LSM style, O(entries) per merge, no re-sort) once the tail outgrows max(tail_min,
      indexed / 8), or once the queries have spent as much scanning it as a merge costs.
    * removed rows stay as tombstones (filtered when verifying) until they are more than half
      of all rows; then the arrays are compacted and the index rebuilt.

    m is chosen from the number of codes and the radius the caller queries with, by an
    estimated cost per query (probes + expected candidates, uniform codes) against the flat
    scan; below the crossover (tens of thousands of codes) the table is a plain flat scan.
    Every query is verified on the full code, so results are exactly the flat scan's.

    `substrings` forces m and the indexed path whatever the cost model says (tests);
    `tail_min`, `compact_min` and `direct_max_bits` are exposed for the same reason.
    """

    def __init__(
        self,
        *,
        substrings: int | None = None,
        tail_min: int = TAIL_MIN,
        compact_min: int = COMPACT_MIN,
        direct_max_bits: int = DIRECT_MAX_BITS,
        radius_hint: int = DEFAULT_RADIUS_HINT,
        queries_hint: int = 2,
    ) -> None:
        if substrings is not None and substrings not in SUBSTRING_CHOICES:
            raise ValueError(f"substrings must be in {SUBSTRING_CHOICES.start}..{SUBSTRING_CHOICES.stop - 1}")
        self._forced = substrings
        self._tail_min = tail_min
        self._compact_min = compact_min
        self._direct_max_bits = direct_max_bits
        self.radius_hint = radius_hint  # radius and codes per query that m is chosen for:
        self.queries_hint = queries_hint  # the latest query's
        self.codes = np.zeros(1024, dtype=np.uint64)
        self.labels = np.zeros(1024, dtype=np.int64)
        self.alive = np.zeros(1024, dtype=bool)
        self.size = 0
        self.dead = 0
        self._span_start = np.zeros(1024, dtype=np.int64)
        self._span_count = np.zeros(1024, dtype=np.int64)
        self._reset_index()

    def _reset_index(self) -> None:
        self._layout: _Layout | None = None
        self.indexed = 0  # rows [0, indexed) are in the multi-index, the rest is the tail
        self._entries = np.zeros(0, dtype=np.uint32)  # row ids, sorted by (substring, value)
        # The entries' codes in the same order: verifying a bucket reads it contiguously
        # instead of one random gather per candidate.
        self._entry_codes = np.zeros(0, dtype=np.uint64)
        self._offsets = np.zeros(1, dtype=np.int64)  # direct layout
        self._keys = np.zeros(0, dtype=np.uint64)  # sorted layout
        self._debt = 0  # tail codes x query codes since the last merge
        self._next_check = 0  # flat: size at which to ask the cost model again

    # --- introspection ------------------------------------------------------------------

    @property
    def substrings(self) -> int:
        """m of the current multi-index; 0 while the table is a flat scan."""
        return self._layout.m if self._layout is not None else 0

    @property
    def tail(self) -> int:
        return self.size - self.indexed

    def __len__(self) -> int:
        return self.size - self.dead

    # --- updates --------------------------------------------------------------------------

    def add(self, label: int, codes: tuple[int, ...] | list[int] | np.ndarray) -> None:
        """Append the codes of `label`, contiguously (that is what makes `remove` cheap)."""
        if label < 0:
            raise ValueError("labels must be >= 0")
        if label >= len(self._span_count):
            self._span_start = _grow(self._span_start, label + 1, len(self._span_start))
            self._span_count = _grow(self._span_count, label + 1, len(self._span_count))
        if self._span_count[label]:
            raise ValueError(f"label {label} is already in the table")
        values = np.asarray(codes, dtype=np.uint64)
        end = self.size + len(values)
        self.codes = _grow(self.codes, end, self.size)
        self.labels = _grow(self.labels, end, self.size)
        self.alive = _grow(self.alive, end, self.size)
        self.codes[self.size : end] = values
        self.labels[self.size : end] = label
        self.alive[self.size : end] = True
        self._span_start[label] = self.size
        self._span_count[label] = len(values)
        self.size = end
        if self.tail > max(self._tail_min, self.indexed // 8) and self.size >= self._next_check:
            self._refresh()

    def add_many(self, labels: np.ndarray, counts: np.ndarray, codes: np.ndarray) -> None:
        """`add` for many labels at once (a bulk load, in vectorised steps):
        labels[i] owns the next counts[i] of `codes`, in order. All or nothing."""
        labels = np.asarray(labels, dtype=np.int64)
        counts = np.asarray(counts, dtype=np.int64)
        values = np.asarray(codes, dtype=np.uint64)
        if len(labels) == 0:
            return
        if len(counts) != len(labels) or int(counts.sum()) != len(values) or int(counts.min()) < 0:
            raise ValueError("counts must be >= 0, one per label, summing to the number of codes")
        if int(labels.min()) < 0:
            raise ValueError("labels must be >= 0")
        if len(np.unique(labels)) != len(labels):
            raise ValueError("labels must be distinct")
        top = int(labels.max())
        if top >= len(self._span_count):
            self._span_start = _grow(self._span_start, top + 1, len(self._span_start))
            self._span_count = _grow(self._span_count, top + 1, len(self._span_count))
        taken = labels[self._span_count[labels] != 0]
        if len(taken):
            raise ValueError(f"label {int(taken[0])} is already in the table")
        end = self.size + len(values)
        self.codes = _grow(self.codes, end, self.size)
        self.labels = _grow(self.labels, end, self.size)
        self.alive = _grow(self.alive, end, self.size)
        self.codes[self.size : end] = values
        self.labels[self.size : end] = np.repeat(labels, counts)
        self.alive[self.size : end] = True
        self._span_start[labels] = self.size + np.cumsum(counts) - counts
        self._span_count[labels] = counts
        self.size = end
        if self.tail > max(self._tail_min, self.indexed // 8) and self.size >= self._next_check:
            self._refresh()

    def remove(self, label: int) -> int:
        """Tombstone the codes of `label`; returns how many. Compacts when over half dead."""
        if not 0 <= label < len(self._span_count) or not self._span_count[label]:
            return 0
        start, count = int(self._span_start[label]), int(self._span_count[label])
        self.alive[start : start + count] = False
        self._span_count[label] = 0
        self.dead += count
        if self.dead > self._compact_min and self.dead * 2 > self.size:
            self._compact()
        return count

    def _compact(self) -> None:
        alive = self.alive[: self.size]
        dead_before = np.concatenate(([0], np.cumsum(~alive)))
        owners = np.flatnonzero(self._span_count)
        self._span_start[owners] -= dead_before[self._span_start[owners]]
        keep = np.flatnonzero(alive)
        n = len(keep)
        self.codes[:n] = self.codes[keep]
        self.labels[:n] = self.labels[keep]
        self.alive[:n] = True
        self.alive[n : self.size] = False
        self.size, self.dead = n, 0
        self._reset_index()
        if self.size > self._tail_min:
            self._refresh()

    # --- (re)indexing -----------------------------------------------------------------------

    def _choose(self) -> int:
        """m for the next (re)build, 0 for a flat scan."""
        if self._forced is not None:
            return self._forced
        n, radius, n_queries = self.size, self.radius_hint, self.queries_hint
        m, cost = best_substrings(n, radius, n_queries, self._direct_max_bits)
        if cost >= flat_cost(n, n_queries):
            return 0
        current = self.substrings
        if current and indexed_cost(current, radius, n, n_queries, self._direct_max_bits) <= HYSTERESIS * cost:
            return current
        return m

    def settle(self) -> None:
        """Fold the tail into the multi-index now, e.g. after a bulk load, instead of
        waiting for the merge rule (queries scan the tail until then)."""
        if self.tail:
            self._refresh()

    def _refresh(self) -> None:
        """Bring the tail into the multi-index: merge, rebuild with a new m, or stay flat."""
        m = self._choose()
        if m == 0:
            self._reset_index()
            self._next_check = self.size + max(self._tail_min, self.size // 8)
        elif m == self.substrings and self.indexed:
            self._merge()
        else:
            self._build(m)
        self._debt = 0

    def _substring(self, codes: np.ndarray, j: int) -> np.ndarray:
        layout = self._layout
        assert layout is not None
        return (codes >> np.uint64(layout.shifts[j])) & np.uint64((1 << layout.widths[j]) - 1)

    def _build(self, m: int) -> None:
        n = self.size
        if n >= 2**32:
            raise OverflowError("row ids are uint32")
        self._reset_index()
        self._layout = layout = _layout(m, self._direct_max_bits)
        codes = self.codes[:n]
        entries = np.empty(m * n, dtype=np.uint32)
        keys = np.empty(0 if layout.direct else m * n, dtype=np.uint64)
        counts = []
        for j in range(m):
            substring = self._substring(codes, j)
            order = np.argsort(substring.astype(np.uint32))
            entries[j * n : (j + 1) * n] = order
            if layout.direct:
                counts.append(np.bincount(substring.astype(np.intp), minlength=1 << layout.widths[j]))
            else:
                keys[j * n : (j + 1) * n] = substring[order] + np.uint64(layout.bases[j])
        if layout.direct:
            self._offsets = np.concatenate(([0], np.cumsum(np.concatenate(counts)))).astype(np.int64)
        self._entries, self._keys = entries, keys
        self._entry_codes = codes[entries]
        self.indexed = n

    def _merge(self) -> None:
        """Insert the tail's entries after their buckets' current ones: O(entries), no sort
        of the indexed part."""
        layout = self._layout
        assert layout is not None
        old, n = self.indexed, self.size
        if n >= 2**32:
            raise OverflowError("row ids are uint32")
        t, m = n - old, layout.m
        if t == 0:
            return
        tail = self.codes[old:n]
        keys = np.concatenate([self._substring(tail, j) + np.uint64(layout.bases[j]) for j in range(m)])
        order = np.argsort(keys)
        keys = keys[order]
        rows = (order % t + old).astype(np.uint32)
        if layout.direct:
            after = self._offsets[keys.astype(np.intp) + 1]
        else:
            after = np.searchsorted(self._keys, keys, side="right")
        slots = after + np.arange(len(keys))  # final positions of the tail's entries
        is_new = np.zeros(m * n, dtype=bool)
        is_new[slots] = True
        is_old = ~is_new
        entries = np.empty(m * n, dtype=np.uint32)
        entries[slots] = rows
        entries[is_old] = self._entries
        entry_codes = np.empty(m * n, dtype=np.uint64)
        entry_codes[slots] = self.codes[rows]
        entry_codes[is_old] = self._entry_codes
        if layout.direct:
            added = np.bincount(keys.astype(np.intp), minlength=layout.keyspace)
            self._offsets[1:] += np.cumsum(added)
        else:
            merged = np.empty(m * n, dtype=np.uint64)
            merged[slots] = keys
            merged[is_old] = self._keys
            self._keys = merged
        self._entries, self._entry_codes = entries, entry_codes
        self.indexed = n

    # --- queries -------------------------------------------------------------------------------

    def near(self, queries: tuple[int, ...] | list[int], radius: int) -> dict[int, int]:
        """{label: smallest distance to any query} over live codes within `radius`."""
        if radius < 0 or not queries or self.size == 0:
            return {}
        radius = min(radius, CODE_BITS)
        self.radius_hint, self.queries_hint = radius, len(queries)
        q = np.array(queries, dtype=np.uint64)
        found_rows: list[np.ndarray] = []
        found_dist: list[np.ndarray] = []
        start = 0
        if self._layout is not None:
            self._debt += self.tail * len(q)  # what the tail costs, indexed path or not
            if self._use_index(radius, len(q)):
                rows, dist = self._probe(q, radius)
                found_rows.append(rows)
                found_dist.append(dist)
                start = self.indexed
        for lo in range(start, self.size, FLAT_BLOCK):
            block = self.codes[lo : min(lo + FLAT_BLOCK, self.size)]
            for code in q:
                dist = np.bitwise_count(block ^ code)
                hits = np.flatnonzero(dist <= radius)
                found_rows.append(hits + lo)
                found_dist.append(dist[hits])
        result = self._reduce(np.concatenate(found_rows), np.concatenate(found_dist))
        if self._layout is not None and self.tail and self._debt * COST_FLAT >= COST_MERGE * self._layout.m * self.size:
            self._refresh()
        return result

    def _use_index(self, radius: int, n_queries: int) -> bool:
        layout = self._layout
        assert layout is not None
        if self._forced is not None:
            return _probe_stats(layout.m, radius)[0] <= MAX_FORCED_PROBES
        indexed = indexed_cost(layout.m, radius, self.indexed, n_queries, self._direct_max_bits)
        return indexed + flat_cost(self.tail, n_queries) < flat_cost(self.size, n_queries)

    def _probe(self, q: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, distances) of indexed codes within `radius` of any query (rows may repeat)."""
        layout = self._layout
        assert layout is not None
        plan = _plan(layout, radius)
        keys = (plan.base + (((q[:, None] >> plan.shift) & plan.mask) ^ plan.flip)).ravel()
        if layout.direct:
            keys_i = keys.astype(np.intp)
            lo = self._offsets[keys_i]
            counts = self._offsets[keys_i + 1] - lo
        else:
            lo = np.searchsorted(self._keys, keys, side="left")
            counts = np.searchsorted(self._keys, keys, side="right") - lo
        nonempty = np.flatnonzero(counts)
        lo, counts = lo[nonempty], counts[nonempty]
        ends = np.concatenate(([0], np.cumsum(counts)))
        positions = np.repeat(lo - ends[:-1], counts) + np.arange(ends[-1])
        candidates = self._entry_codes[positions]
        # Probes are laid out query by query, so each query's candidates are one slice.
        cut = ends[np.searchsorted(nonempty, np.arange(len(q) + 1) * len(plan.flip))]
        dist = np.empty(len(candidates), dtype=np.uint8)
        for i, code in enumerate(q):
            np.bitwise_count(candidates[cut[i] : cut[i + 1]] ^ code, out=dist[cut[i] : cut[i + 1]])
        hits = np.flatnonzero(dist <= radius)
        return self._entries[positions[hits]].astype(np.int64), dist[hits]

    def _reduce(self, rows: np.ndarray, dist: np.ndarray) -> dict[int, int]:
        live = self.alive[rows]
        labels, dist = self.labels[rows[live]], dist[live]
        if len(labels) > 1:
            order = np.lexsort((dist, labels))
            labels, dist = labels[order], dist[order]
            first = np.concatenate(([True], labels[1:] != labels[:-1]))
            labels, dist = labels[first], dist[first]
        return dict(zip(labels.tolist(), dist.tolist()))

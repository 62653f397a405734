"""Second look at a candidate before it is called a duplicate: tiny-thumbnail correlation.

A 64-bit pHash throws away almost everything, so a candidate 9-12 bits away is as often
a look-alike as a copy, and a crop matched through one of the original's crop-window
codes has never been compared with the original at all. Each kept image therefore
stores two 16x16 grey thumbnails (512 bytes): the picture as stored and with its uniform
borders trimmed, i.e. the 32x32 hash inputs halved. A query's thumbnails are compared
with a candidate's at 8x8 by Pearson correlation (brightness, contrast and most colour
work leave it near 1), against the candidate's whole picture and against each of its
crop windows cut from the trimmed thumbnail, so a crop is compared with the part of the
original it came from. The best correlation is the similarity.

Chosen by `imgdedup bench accuracy` (docs/accuracy.md): 8x8 tolerates the imprecise
alignment of a crop with the nearest window; 16x16 comparisons rejected more
look-alikes but lost as many crops.

Pure functions, no I/O: the decision rules call `similarity` on what the index returns.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .hashing import CROP_WINDOWS, THUMB_SIDE, THUMBNAIL_BYTES, _area_matrix

#: Side at which thumbnails are compared.
COMPARE_SIDE = 8
#: A view with less spread than this (grey levels) has no shape to correlate.
MIN_VIEW_STD = 1.0


def _unpack(blob: bytes) -> np.ndarray | None:
    if len(blob) != THUMBNAIL_BYTES:
        return None
    return np.frombuffer(blob, dtype=np.uint8).reshape(2, THUMB_SIDE, THUMB_SIDE).astype(np.float64)


def _halve(pixels: np.ndarray) -> np.ndarray:
    return pixels.reshape(COMPARE_SIDE, 2, COMPARE_SIDE, 2).mean(axis=(1, 3))


@lru_cache(maxsize=1)
def _window_operators() -> tuple[np.ndarray, np.ndarray]:
    """Per crop window, (rows, cols) matrices R, C (8 x 16) with R @ T @ C.T = the
    window of a 16x16 thumbnail T, area-averaged to 8x8."""
    rows, cols = [], []
    for keep_w, keep_h, anchor_x, anchor_y in CROP_WINDOWS:
        y0 = (1 - keep_h) * anchor_y * THUMB_SIDE
        x0 = (1 - keep_w) * anchor_x * THUMB_SIDE
        rows.append(_area_matrix(y0, y0 + keep_h * THUMB_SIDE, size=THUMB_SIDE, out=COMPARE_SIDE))
        cols.append(_area_matrix(x0, x0 + keep_w * THUMB_SIDE, size=THUMB_SIDE, out=COMPARE_SIDE))
    return np.stack(rows), np.stack(cols)


def _normalised(views: np.ndarray) -> np.ndarray:
    """Rows zero-mean and unit-length; rows without spread become zero (never match)."""
    flat = views.reshape(len(views), -1)
    centred = flat - flat.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    spread = flat.std(axis=1, keepdims=True)
    return np.where(spread >= MIN_VIEW_STD, centred / np.maximum(norms, 1e-12), 0.0)


def _symmetries(views: np.ndarray) -> np.ndarray:
    """Each view in the 8 orientations of the square (mirror/rotation mode). The
    thumbnails are the whole picture squashed to a square, so rotating the picture
    rotates its thumbnail."""
    out = []
    for view in views:
        for turned in (view, view.T):
            out += [turned, turned[:, ::-1], turned[::-1, :], turned[::-1, ::-1]]
    return np.stack(out)


def similarity(query: bytes, stored: bytes, *, symmetries: bool = False) -> float | None:
    """Best correlation of the query's views with the stored image's whole picture and
    crop windows, in [-1, 1]; None when either side has no thumbnails (a record written
    before thumbnails existed), so the caller falls back to distance alone. With
    `symmetries`, the query is also compared mirrored and rotated."""
    q, s = _unpack(query), _unpack(stored)
    if q is None or s is None:
        return None
    rows, cols = _window_operators()
    windows = np.matmul(np.matmul(rows, s[1]), cols.transpose(0, 2, 1))
    stored_views = _normalised(np.concatenate([np.stack([_halve(s[0]), _halve(s[1])]), windows]))
    query = np.stack([_halve(q[0]), _halve(q[1])])
    query_views = _normalised(_symmetries(query) if symmetries else query)
    if not query_views.any() or not stored_views.any():
        return None  # no view with any shape on one side: nothing to compare, distance decides
    return float((stored_views @ query_views.T).max())

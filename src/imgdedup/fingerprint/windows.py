"""Crop-window codes: the pHash of fixed crops of the trimmed picture, stored so that a
later crop of an image finds it. All windows come from two matrix products."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

from imgdedup.fingerprint.phash import DCT_SIDE, HASH_SIZE, LOW_INFORMATION_STD, dct_matrix, is_degenerate, row_medians

#: Crop windows (keep width, keep height, anchor x, anchor y) over the trimmed picture:
#: uniform crops at three scales anchored centre and at the corners, and one-dimension
#: crops (aspect-ratio changes) at three depths (90, 80, 70 %) anchored at both ends and the centre.
#: Chosen by `imgdedup bench accuracy`: see docs/accuracy.md.
CROP_WINDOWS: tuple[tuple[float, float, float, float], ...] = tuple(
    [(s, s, ax, ay) for s in (0.9, 0.8, 0.7) for ax, ay in ((0.5, 0.5), (0, 0), (1, 0), (0, 1), (1, 1))]
    + [(k, 1.0, a, 0.5) for k in (0.9, 0.8, 0.7) for a in (0, 0.5, 1)]
    + [(1.0, k, 0.5, a) for k in (0.9, 0.8, 0.7) for a in (0, 0.5, 1)]
)

#: Crop windows are computed on the trimmed picture resampled to this square, with the
#: area averaging to 32x32 and the 8 lowest DCT rows folded into precomputed matrices:
#: two matrix products per image instead of a crop, resize and DCT per window.
WINDOW_BASE = 128


def area_matrix(start: float, end: float, size: int = WINDOW_BASE, out: int = 32) -> np.ndarray:
    """out x size matrix averaging [start, end) of a `size` line into `out` equal cells."""
    matrix = np.zeros((out, size))
    step = (end - start) / out
    for i in range(out):
        lo, hi = start + i * step, start + (i + 1) * step
        for j in range(int(np.floor(lo)), min(size, int(np.ceil(hi)))):
            overlap = min(hi, j + 1) - max(lo, j)
            if overlap > 0:
                matrix[i, j] = overlap / step
    return matrix


@lru_cache(maxsize=4)
def window_operators(side: int, out: int) -> tuple[np.ndarray, np.ndarray]:
    """Per crop window, (rows, cols) matrices R, C (out x side) with R @ T @ C.T = the
    window of a side x side picture T, area-averaged to out x out."""
    rows, cols = [], []
    for keep_w, keep_h, anchor_x, anchor_y in CROP_WINDOWS:
        y0 = (1 - keep_h) * anchor_y * side
        x0 = (1 - keep_w) * anchor_x * side
        rows.append(area_matrix(y0, y0 + keep_h * side, size=side, out=out))
        cols.append(area_matrix(x0, x0 + keep_w * side, size=side, out=out))
    return np.stack(rows), np.stack(cols)


@lru_cache(maxsize=1)
def _dct_window_operators() -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols): per window, 8 x WINDOW_BASE matrices R and C such that the window's
    8x8 low-frequency DCT block of its 32x32 area average is R @ X @ C.T."""
    dct8 = dct_matrix(DCT_SIDE)[:HASH_SIZE]
    rows, cols = window_operators(WINDOW_BASE, DCT_SIDE)
    dct_rows = np.stack([dct8 @ row for row in rows])
    dct_cols = np.stack([dct8 @ col for col in cols])
    return dct_rows.astype(np.float32), dct_cols.astype(np.float32)


def window_codes(gray: Image.Image) -> list[int]:
    """pHash of every crop window that carries enough information (see CROP_WINDOWS)."""
    base = np.asarray(gray.resize((WINDOW_BASE, WINDOW_BASE), Image.Resampling.BOX), dtype=np.float32)
    rows, cols = _dct_window_operators()
    blocks = np.round(np.matmul(np.matmul(rows, base), cols.transpose(0, 2, 1)), 3).reshape(len(CROP_WINDOWS), -1)
    # Low-frequency AC energy bounds a window's variance from below (Parseval): the same
    # low-information gate as whole pictures, from what is already computed.
    ac_std = np.sqrt((blocks[:, 1:].astype(np.float64) ** 2).sum(axis=1) / (DCT_SIDE * DCT_SIDE))
    bits = blocks > row_medians(blocks)
    bits[:, 0] = False
    codes = np.packbits(bits, axis=1).view(">u8").ravel().tolist()
    return [code for code, std in zip(codes, ac_std, strict=True) if std >= LOW_INFORMATION_STD and not is_degenerate(code)]

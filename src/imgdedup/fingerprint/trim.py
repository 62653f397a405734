"""Border trim: the box left after cutting uniform bands (letterbox bars, frames,
plain backgrounds) from a greyscale picture's edges."""

from __future__ import annotations

import numpy as np
from PIL import Image

#: A border row/column is "uniform" when at least BORDER_SHARE of its pixels lie within
#: a tolerance of the edge's median. The tolerance is relative to the picture's own
#: contrast (so brightness and contrast changes of a copy trim the same band), with a
#: floor for JPEG noise in flat bars: a black frame JPEG-encoded around a small cut-out
#: holds noise next to the picture that a lower floor leaves untrimmed
#: (tests/test_hashing.py, and overlay/border-black in `imgdedup bench accuracy`).
BORDER_SHARE = 0.97
BORDER_TOLERANCE_OF_STD = 0.08
BORDER_TOLERANCE_FLOOR = 8.0
#: Trimming runs at this scale (longest side), so a copy decoded at another size trims
#: the same band.
TRIM_SIDE = 128
#: Never trim more than this share of a dimension in total (a nearly blank picture stays).
MAX_TRIM = 0.8


def trim_size(size: tuple[int, int]) -> tuple[int, int]:
    """At most TRIM_SIDE pixels on the longest side, the aspect ratio kept."""
    width, height = size
    if max(size) <= TRIM_SIDE:
        return size
    scale = TRIM_SIDE / max(size)
    return max(1, round(width * scale)), max(1, round(height * scale))


def downscale_for_trim(gray: Image.Image) -> Image.Image:
    """At most TRIM_SIDE pixels on the longest side: copies decoded at other sizes then
    trim the same band."""
    size = trim_size(gray.size)
    return gray if size == gray.size else gray.resize(size, Image.Resampling.BOX)


def trim_box(gray: Image.Image) -> tuple[int, int, int, int] | None:
    """The box left after cutting away uniform bands at the edges (letterbox and
    pillarbox bars, added borders, the plain background around a product cut-out), or
    None when there is nothing to cut.

    Copies of one photo differ most in exactly these bands, and none of it is picture
    content; trimming the original and every copy the same way makes them hash alike.
    """
    pixels = np.asarray(gray, dtype=np.float32)
    height, width = pixels.shape
    if height < 8 or width < 8:
        return None
    tolerance = max(BORDER_TOLERANCE_FLOOR, BORDER_TOLERANCE_OF_STD * float(pixels.std()))
    limit_rows, limit_cols = int(height * MAX_TRIM), int(width * MAX_TRIM)

    def uniform_run(lines: np.ndarray, reference: float) -> int:
        """How many leading lines (rows of `lines`) are uniform around `reference`.
        Most pictures have no border: one line decides that."""
        close = np.abs(lines[0] - reference) <= tolerance
        if close.mean() < BORDER_SHARE:
            return 0
        flags = (np.abs(lines - reference) <= tolerance).mean(axis=1) >= BORDER_SHARE
        return len(flags) if flags.all() else int(np.argmin(flags))

    # Each side is cut while its lines are uniform, within the trim limits; the sides
    # run in this order (top, bottom, left, right), each on what the previous left.
    top = min(uniform_run(pixels, _median(pixels[0])), limit_rows, height - 1)
    cut = uniform_run(pixels[::-1], _median(pixels[-1]))
    bottom = height - min(cut, max(0, limit_rows - top), height - top - 1)
    band = pixels[top:bottom]
    left = min(uniform_run(band.T, _median(band[:, 0])), limit_cols, width - 1)
    cut = uniform_run(band.T[::-1], _median(band[:, -1]))
    right = width - min(cut, max(0, limit_cols - left), width - left - 1)
    if (top, bottom, left, right) == (0, height, 0, width) or bottom - top < 4 or right - left < 4:
        return None
    return left, top, right, bottom


def _median(line: np.ndarray) -> float:
    """np.median of a short 1-D line, without its generic-axis overhead (same value)."""
    ordered = np.sort(line)
    half = len(ordered) // 2
    return float(ordered[half]) if len(ordered) % 2 else (float(ordered[half - 1]) + float(ordered[half])) / 2

"""Second look at a candidate before it is called a duplicate: thumbnail correlation.

A 64-bit pHash throws away almost everything, so a candidate a few bits away may be a
look-alike rather than a copy, and a crop matched through a crop-window code was never
compared with the original at all. `second_look` compares the query's verification
thumbnails with the candidate's, in grey and then in colour. Pure functions, no I/O.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import numpy as np

from imgdedup.fingerprint.thumbnails import CHROMA_SIDE, THUMB_SIDE, Thumbnails, unpack_thumbnails
from imgdedup.fingerprint.windows import CROP_WINDOWS, window_operators

#: Side at which thumbnails are compared: coarse enough to tolerate the imprecise
#: alignment of a crop with the nearest crop window (a finer side rejects more
#: look-alikes but loses crops; chosen by `imgdedup bench accuracy`, docs/accuracy.md).
COMPARE_SIDE = 8
#: A view with less spread than this (grey levels) has no shape to correlate.
MIN_VIEW_STD = 1.0
#: Side at which the colour of the best-matching views is compared.
COLOUR_SIDE = 4
#: Colour spread (RMS distance of the 4x4 Cb/Cr cells from their mean, in JPEG chroma
#: units) below which a view counts as grey, and above which as colourful; between the
#: two, colour decides nothing.
GREY_SPREAD = 3.0
COLOURFUL_SPREAD = 6.0
#: Two colourful views agree when their centred colour layouts correlate at least this
#: (the cosine of the hue angle between them, where the colour is).
MIN_COLOUR_CORRELATION = 0.8
#: Two views whose mean colours are both at least this saturated (distance of the mean
#: Cb/Cr from neutral, in JPEG chroma units) have a dominant hue each...
DOMINANT_SATURATION = 10.0
#: ...and are different pictures when those hues are at least a right angle apart
#: (cosine below this): a yellow planet and a green one of one render. Tints, saturation,
#: brightness and contrast work on a copy move its hue far less.
MIN_HUE_COSINE = 0.3
#: Cells of the 4x4 colour grid an overlay on a copy may colour (see `colour_agrees`).
OVERLAY_CELLS = 1
#: The thumbnails are squares whatever the picture's shape, so a square icon and a tall
#: one of the same design look alike: two views are only compared when their aspect
#: ratios (the window's, for a crop window) are within this factor of each other.
MAX_ASPECT_CHANGE = 1.25
MAX_LOG_ASPECT_CHANGE = float(np.log2(MAX_ASPECT_CHANGE))


@lru_cache(maxsize=1)
def _window_log_aspects() -> np.ndarray:
    """log2 of how much each crop window changes the trimmed view's aspect ratio."""
    return np.log2(np.array([keep_w / keep_h for keep_w, keep_h, _, _ in CROP_WINDOWS]))


def _aspects_agree(q: Thumbnails, s: Thumbnails, symmetries: bool) -> np.ndarray | None:
    """(stored views, query views) booleans: do the two views' shapes agree? None
    when a side carries no aspect ratios (a grey-only blob)."""
    if q.log_aspect is None or s.log_aspect is None:
        return None
    stored = np.concatenate([s.log_aspect, s.log_aspect[1] + _window_log_aspects()])
    query = q.log_aspect
    if symmetries:  # the 8 orientations of each view: the last four are transposed
        query = np.repeat(query, 8) * np.tile(np.repeat([1.0, -1.0], 4), len(query))
    return np.abs(stored[:, None] - query[None, :]) <= MAX_LOG_ASPECT_CHANGE


def _halve(pixels: np.ndarray) -> np.ndarray:
    """Area-average the last two axes to half their side."""
    *lead, h, w = pixels.shape
    return pixels.reshape(*lead, h // 2, 2, w // 2, 2).mean(axis=(-3, -1))


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


class Look(NamedTuple):
    """What the second look saw."""

    #: Best grey correlation of the query's views with the stored picture and its crop
    #: windows, in [-1, 1]; None when there is nothing to compare (see `similarity`).
    similarity: float | None
    #: Whether the best-matching views' colours agree (`colour_agrees`); None when colour
    #: cannot tell (a record without colour planes, or no grey match to follow).
    colour: bool | None
    #: False when no pair of views has aspect ratios that agree (a square icon against a
    #: tall one); None for a record without aspect ratios.
    shape: bool | None = None
    #: True when the best-matching views have dominant hues that tell them apart
    #: (`hues_differ`): not a look-alike to review but another picture.
    different: bool = False


def second_look(query: bytes, stored: bytes, *, symmetries: bool = False) -> Look:
    """Compare a query's thumbnails with a stored image's: grey similarity first, then
    the colour of the pair of views that matched best. With `symmetries`, the query is
    also compared mirrored and rotated.

    Grey: the query's two views (as stored, trimmed) are correlated at COMPARE_SIDE
    (Pearson: brightness, contrast and most colour work leave it near 1) with the
    stored picture's two views and with each crop window cut from its trimmed view, so
    a crop meets the part of the original it came from; the best correlation is the
    similarity. Colour: grey cannot tell a four of hearts from a four of spades, nor
    two flags of one layout in other colours, so the best pair is also compared in
    colour (`colour_agrees`)."""
    q, s = unpack_thumbnails(query), unpack_thumbnails(stored)
    if q is None or s is None:
        return Look(None, None)
    rows, cols = window_operators(THUMB_SIDE, COMPARE_SIDE)
    windows = np.matmul(np.matmul(rows, s.grey[1]), cols.transpose(0, 2, 1))
    stored_views = _normalised(np.concatenate([_halve(s.grey), windows]))
    query_grey = _halve(q.grey)
    query_views = _normalised(_symmetries(query_grey) if symmetries else query_grey)
    if not query_views.any() or not stored_views.any():
        return Look(None, None)  # no view with any shape on one side: distance decides
    scores = stored_views @ query_views.T
    agree = _aspects_agree(q, s, symmetries)
    shape = None if agree is None else bool(agree.any())
    if agree is not None and shape:  # only views of one shape are compared
        scores = np.where(agree, scores, -np.inf)
    best_stored, best_query = np.unravel_index(int(np.argmax(scores)), scores.shape)
    sim = float(scores[best_stored, best_query])
    if q.chroma is None or s.chroma is None:
        return Look(sim, None, shape)
    query_colour = _colour_view(q.chroma, int(best_query), symmetries)
    stored_colour = _stored_colour_view(s.chroma, int(best_stored))
    colour = colour_agrees(query_colour, stored_colour)
    return Look(sim, colour, shape, different=hues_differ(query_colour, stored_colour))


def similarity(query: bytes, stored: bytes, *, symmetries: bool = False) -> float | None:
    """Best correlation of the query's views with the stored image's whole picture and
    crop windows, in [-1, 1]; None when either side has no thumbnails (or nothing with
    any shape to compare), so the caller falls back to distance alone."""
    return second_look(query, stored, symmetries=symmetries).similarity


def _stored_colour_view(chroma: np.ndarray, view: int) -> np.ndarray:
    """(2, 4, 4) colour of stored view `view`: 0 as stored, 1 trimmed, 2.. the crop
    windows (cut from the trimmed view), in the order `second_look` builds them."""
    if view < 2:
        return _halve(chroma[view])
    rows, cols = window_operators(CHROMA_SIDE, COLOUR_SIDE)
    k = view - 2
    return np.matmul(np.matmul(rows[k], chroma[1]), cols[k].T)


def _colour_view(chroma: np.ndarray, view: int, symmetries: bool) -> np.ndarray:
    """(2, 4, 4) colour of query view `view` (as `second_look` orders the views)."""
    if not symmetries:
        return _halve(chroma[view])
    source, turn = divmod(view, 8)
    return _symmetries(_halve(chroma[source]))[turn::8]  # the same turn of Cb and of Cr


def hues_differ(query: np.ndarray, stored: np.ndarray) -> bool:
    """Do two (2, 4, 4) Cb/Cr views have clearly different dominant hues? Only when both
    mean colours are saturated (a grey or pastel copy says nothing) and point at least
    a right angle apart on the Cb/Cr plane."""
    q, s = query.reshape(2, -1).mean(axis=1), stored.reshape(2, -1).mean(axis=1)
    q_norm, s_norm = float(np.linalg.norm(q)), float(np.linalg.norm(s))
    if min(q_norm, s_norm) < DOMINANT_SATURATION:
        return False
    return float(np.dot(q, s)) / (q_norm * s_norm) < MIN_HUE_COSINE


def colour_agrees(query: np.ndarray, stored: np.ndarray) -> bool | None:
    """Do two (2, 4, 4) Cb/Cr views look like one picture in colour? None when colour
    cannot tell: the query is grey (a greyscale copy matches a colour original) or
    hardly colourful. False for a colourful query against a grey view (copies do not
    gain a colour layout; a tint is uniform and adds none), or for two colourful views
    whose colours are laid out differently (two flags of one layout in other colours).

    A logo or a caption pasted on a copy colours a cell of the 4x4 grid, so the
    query's colourfulness leaves out its OVERLAY_CELLS most colourful cells, and the
    layouts are compared without the cells where they disagree most."""
    q = query.reshape(2, -1) - query.reshape(2, -1).mean(axis=1, keepdims=True)
    s = stored.reshape(2, -1) - stored.reshape(2, -1).mean(axis=1, keepdims=True)
    q_cells = (q**2).sum(axis=0)
    if float(np.sqrt(np.sort(q_cells)[:-OVERLAY_CELLS].mean())) < COLOURFUL_SPREAD:
        return None
    s_spread = float(np.sqrt((s**2).sum(axis=0).mean()))
    if s_spread < GREY_SPREAD:
        return False
    if s_spread < COLOURFUL_SPREAD:
        return None
    # Unit-length layouts, then the cells where they differ most left out.
    q, s = q / np.linalg.norm(q), s / np.linalg.norm(s)
    keep = np.argsort(((q - s) ** 2).sum(axis=0))[:-OVERLAY_CELLS]
    q, s = q[:, keep], s[:, keep]
    correlation = float((q * s).sum() / max(float(np.linalg.norm(q) * np.linalg.norm(s)), 1e-12))
    return correlation >= MIN_COLOUR_CORRELATION

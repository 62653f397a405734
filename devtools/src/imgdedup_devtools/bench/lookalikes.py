"""Corpus pictures the accuracy benchmark counts apart from its false positives.

`../shared/README.md` warns that the corpus is not de-duplicated. Three kinds are counted
apart: pairs with the same pixels under two names (identical files, or one a resize of
the other: `same_pixels`), pairs that are the same picture drawn twice (looked at by
eye, docs/design.md "What is a false positive"), and the generated star polygon family.
A never-registered image with such a partner among the registered originals goes to
rows of its own, and to an "all counted" row with every other negative, so nothing is
hidden.
"""

from __future__ import annotations

import re

import numpy as np
from PIL import Image

#: Generated star polygons (`stars_star_<points>pt<step>step`, a good share of the
#: objects folder): thin outlines which, from a few dozen points on, render as a ring
#: whose members differ only in the ring's width and an inner circle. Not the same
#: picture, but so alike that counting them would make the false-positive figure a
#: measure of this one family: a member matching another member is counted apart.
STAR_POLYGON = re.compile(r"^openclipart__stars_star_\d+pt\d+step\.png$")

#: Pairs a person would call the same picture (identical or nearly identical pixels).
SAME_PICTURE_PAIRS: frozenset[frozenset[str]] = frozenset(
    frozenset(pair)
    for pair in (
        # the same flag drawn in three collections
        ("openclipart__signs_and_symbols_france_st_pierre_and_miquelon.png",
         "openclipart__europe_st_pierre_miquelon_patri_01.png"),
        ("openclipart__flags_st_pierre_miquelon_patri_01.png", "openclipart__europe_st_pierre_miquelon_patri_01.png"),
        ("openclipart__france_st_pierre_miquelon_patri_01.png", "openclipart__europe_st_pierre_miquelon_patri_01.png"),
        # one drawing, the logo on it resized
        ("openclipart__clothing_t-shirt_03.png", "openclipart__clothing_t-shirt_02.png"),
    )
)


#: `same_pixels`: both pictures area-averaged to this square, in RGB on white ...
PIXEL_SIDE = 16
#: ... differ nowhere by more than this (of 255): a resize of a photo stays within it,
#: two playing cards that differ in one pip do not (tests/test_bench_lookalikes.py) ...
MAX_PIXEL_DIFFERENCE = 16
#: ... nor by more than this share of the pictures' own spread (std of the thumbnail),
#: with a floor for rounding: two different thin-line drawings on white differ by
#: little in absolute terms, because there is little in them (the same tests).
MAX_PIXEL_DIFFERENCE_OF_STD = 0.5
PIXEL_DIFFERENCE_FLOOR = 3


def pixel_thumbnail(rgb: Image.Image) -> np.ndarray:
    """The flattened RGB picture as `same_pixels` compares it."""
    return np.asarray(rgb.convert("RGB").resize((PIXEL_SIDE, PIXEL_SIDE), Image.Resampling.BOX), dtype=np.uint8)


def same_pixels(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Do pixel thumbnail `a` and each of the stacked thumbnails `b` show the same
    pixels (identical files, or a resize)? A boolean per row of `b`."""
    a16, b16 = a.astype(np.int16), b.astype(np.int16)
    difference = np.abs(b16 - a16[None]).reshape(len(b), -1).max(axis=1)
    spread = np.maximum(b16.reshape(len(b), -1).std(axis=1), float(a16.std()))
    allowed = np.minimum(MAX_PIXEL_DIFFERENCE, np.maximum(PIXEL_DIFFERENCE_FLOOR, MAX_PIXEL_DIFFERENCE_OF_STD * spread))
    return difference <= allowed


def counted_apart(a: str, b: str) -> bool:
    """Is a match between corpus files `a` and `b` (file names) counted apart: the same
    picture (reviewed pair), or two members of the star polygon family?"""
    if a == b:
        return True
    if STAR_POLYGON.match(a) and STAR_POLYGON.match(b):
        return True
    return frozenset((a, b)) in SAME_PICTURE_PAIRS

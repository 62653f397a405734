"""The 64-bit DCT perceptual hash (pHash) and the helpers every code is built from:
the 32x32 hash input, its low-frequency DCT block, median bits, Hamming distance."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

HASH_SIZE = 8
HIGHFREQ_FACTOR = 4
#: Side of the square hash input the DCT runs on.
DCT_SIDE = HASH_SIZE * HIGHFREQ_FACTOR

#: Standard deviation (grey levels) of the 32x32 hash input below which a picture is
#: "low information" (near-uniform, very dark or nearly empty): its DCT signs are noise,
#: so it gets no perceptual code and can only match by exact bytes. Low enough that thin
#: line drawings get codes: the second look (`second_look`) keeps their near matches
#: honest (docs/design.md, "Low information").
LOW_INFORMATION_STD = 3.0

#: A pHash splits 63 AC coefficients at their median, so a normal code has about half
#: its bits set. Far fewer means most coefficients were exactly zero (plain bands, e.g.
#: a tricolour flag): the bits are ties, not content, and two unrelated pictures of that
#: kind land a bit or two apart.
MIN_CODE_BITS = 20


def hash_input(gray: Image.Image) -> np.ndarray:
    """The 32x32 area-averaged greyscale pixels every perceptual code is computed from."""
    return np.asarray(gray.resize((DCT_SIDE, DCT_SIDE), Image.Resampling.BOX), dtype=np.float64)


def is_low_information(small: np.ndarray) -> bool:
    """Is a hash input too flat for its DCT signs to mean anything?"""
    return float(small.std()) < LOW_INFORMATION_STD


def is_degenerate(code: int) -> bool:
    """Are a code's bits median ties rather than content (see MIN_CODE_BITS)?"""
    return code.bit_count() < MIN_CODE_BITS


@lru_cache(maxsize=4)
def dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix: dct(x) == M @ x. Same basis as scipy's dct(norm='ortho')."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    matrix = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    matrix[0, :] /= np.sqrt(2.0)
    return matrix


def phash_code(gray: Image.Image) -> int:
    """64-bit DCT perceptual hash (the pHash construction ImageHash popularised).

    Area-average to 32x32, 2-D DCT, keep the 8x8 lowest frequencies, one bit per
    coefficient: above the median or not. Bits are row-major, most significant first,
    so `format(code, "016x")` reads like ImageHash's hex string.

    Two deviations from the textbook, both for flat and near-flat pictures:
    coefficients are rounded (float round-off of a zero coefficient must not decide a
    bit), and the DC bit is always 0: DC is the mean brightness, which the hash is meant
    to ignore, and it is above the median for every image but a black one.
    """
    return phash_from_pixels(hash_input(gray))


def phash_from_pixels(pixels: np.ndarray) -> int:
    """pHash of a 32x32 float array (see `phash_code`)."""
    return code_from_coefficients(low_block(pixels))


def low_block(pixels: np.ndarray, side: int = HASH_SIZE) -> np.ndarray:
    """The side x side lowest DCT frequencies of a 32x32 array (8x8: all a pHash uses)."""
    low = dct_matrix(DCT_SIDE)[:side]
    return low @ pixels @ low.T


def code_from_coefficients(low: np.ndarray) -> int:
    """Bits of an 8x8 low-frequency DCT block: above the median, DC bit cleared. Rounding
    keeps float round-off of a zero coefficient from deciding a bit."""
    coefficients = np.round(low, 6).reshape(1, -1)
    bits = (coefficients > row_medians(coefficients))[0]
    bits[0] = False
    return bits_to_int(bits)


def row_medians(rows: np.ndarray) -> np.ndarray:
    """np.median(rows, axis=1, keepdims=True) for an even row length, cheaper: the two
    middle order statistics from one partition, averaged."""
    half = rows.shape[1] // 2
    middle = np.partition(rows, (half - 1, half), axis=1)[:, half - 1 : half + 1]
    return middle.mean(axis=1, keepdims=True)


def bits_to_int(bits: np.ndarray) -> int:
    """Booleans, most significant first -> an unsigned integer."""
    packed = np.packbits(bits.astype(np.uint8))
    return int.from_bytes(packed.tobytes(), "big")


def hamming(a: int, b: int) -> int:
    """Number of bits in which two codes differ."""
    return (a ^ b).bit_count()


def code_hex(code: int) -> str:
    """A 64-bit code as 16 hex digits (ImageHash's spelling)."""
    return format(code, "016x")

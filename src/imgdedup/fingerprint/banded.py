"""Banded codes: a code for a picture whose pHash is degenerate (plain bands: a
tricolour flag, a two-tone banner), built from the signs of its large coefficients."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from imgdedup.fingerprint.phash import HASH_SIZE, bits_to_int

#: A banded code's dead zone: AC coefficients within this share of the largest one
#: count as zero.
BANDED_DEAD_ZONE = 0.15
_BANDED_SALT = 0xC3A5_5A3C_9669_0FF0


@lru_cache(maxsize=1)
def _zigzag(side: int = HASH_SIZE) -> np.ndarray:
    """Flat indices of a side x side block in JPEG zigzag order (lowest frequencies first)."""
    order = sorted(((i, j) for i in range(side) for j in range(side)), key=lambda p: (p[0] + p[1], p[1] if (p[0] + p[1]) % 2 else p[0]))
    return np.array([i * side + j for i, j in order])


def banded_code(low: np.ndarray) -> int | None:
    """The banded code of a picture from its 8x8 low-frequency DCT block, or None for a
    flat block.

    A picture of plain bands has a handful of large DCT coefficients and exact zeros elsewhere; a
    pHash puts the median on the zeros, so its bits are ties that any re-encode breaks
    at random. Here each of the 32 lowest AC frequencies gives two bits, "clearly
    positive" and "clearly negative", with a dead zone (BANDED_DEAD_ZONE of the largest
    coefficient) in which both stay 0: the large coefficients decide, the noise does not.
    Salted, so that it is never read as a pHash of another picture. Two pictures with the
    same bands in other colours get the same code: the second look's colour check
    (`second_look.colour_agrees`) is what tells them apart."""
    ac = low.reshape(-1)[_zigzag()][1:33]
    scale = float(np.abs(ac).max())
    if scale <= 0:
        return None
    threshold = BANDED_DEAD_ZONE * scale
    bits = np.concatenate([ac > threshold, ac < -threshold])
    return bits_to_int(bits) ^ _BANDED_SALT

"""Folded codes: an extra code for a mirror-symmetric picture (flags, emblems,
patterns), whose plain pHash bits sit on median ties that any re-encode flips."""

from __future__ import annotations

import numpy as np

from imgdedup.fingerprint.phash import HASH_SIZE, code_from_coefficients, is_degenerate, low_block

#: A picture is mirror-symmetric (left-right, top-bottom) when its odd horizontal
#: (vertical) DCT frequencies hold less than this share of the AC energy of the 16x16
#: low-frequency block.
SYMMETRY_ENERGY = 0.03
#: XORed into folded codes, one per kind of symmetry, so that folded codes of different
#: kinds are not compared with each other as if they were the same construction.
_FOLD_SALTS = {"both": 0x5A5A_A5A5_3C3C_C3C3, "left-right": 0x0F0F_F0F0_6969_9696, "top-bottom": 0x33CC_CC33_55AA_AA55}

#: Side of the low-frequency DCT block a folded code is cut from.
FOLD_BLOCK_SIDE = 2 * HASH_SIZE


def folded_code(pixels: np.ndarray) -> int | None:
    """An extra code for a mirror-symmetric picture, or None, from its 32x32 hash input.

    Symmetry forces the odd-frequency DCT coefficients to ~0. In a pHash they sit on the
    median, so their bits are float noise that any re-encode flips, and two copies of a
    symmetric picture end up far apart. The folded code is a pHash of the 64
    coefficients the symmetry leaves: the even columns (left-right), rows (top-bottom)
    or both of the 16x16 low-frequency block.
    """
    return folded_from_block(low_block(pixels, FOLD_BLOCK_SIDE))


def folded_from_block(block: np.ndarray) -> int | None:
    """`folded_code` from the picture's 16x16 low-frequency DCT block."""
    ac = float((block**2).sum() - block[0, 0] ** 2)
    if ac <= 0:
        return None
    left_right = float((block[:, 1::2] ** 2).sum()) / ac < SYMMETRY_ENERGY
    top_bottom = float((block[1::2, :] ** 2).sum()) / ac < SYMMETRY_ENERGY
    if left_right and top_bottom:
        kind, kept = "both", block[0::2, 0::2]
    elif left_right:
        kind, kept = "left-right", block[:HASH_SIZE, 0::2]
    elif top_bottom:
        kind, kept = "top-bottom", block[0::2, :HASH_SIZE]
    else:
        return None
    code = code_from_coefficients(kept)
    return None if is_degenerate(code) else code ^ _FOLD_SALTS[kind]

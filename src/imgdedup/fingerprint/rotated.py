"""Rotated codes: the codes of a picture's 7 mirror images and rotations, read off its
8x8 DCT block without moving a pixel, so a mirrored or rotated copy finds the original."""

from __future__ import annotations

import numpy as np

from imgdedup.fingerprint.phash import HASH_SIZE, code_from_coefficients, is_degenerate


def _symmetry_signs() -> tuple[np.ndarray, ...]:
    frequency = np.arange(HASH_SIZE)
    odd_rows = np.where(frequency % 2, -1.0, 1.0)[:, None] * np.ones(HASH_SIZE)[None, :]
    odd_cols = odd_rows.T
    return (np.ones((HASH_SIZE, HASH_SIZE)), odd_cols, odd_rows, odd_rows * odd_cols)


#: Sign patterns of: as is, mirrored left-right, top-bottom, rotated 180 degrees.
_SYMMETRY_SIGNS = _symmetry_signs()


def rotated_codes(blocks: list[np.ndarray], codes: list[int]) -> tuple[int, ...]:
    """Codes of the 7 mirror images and rotations of each whole-image code's 8x8 DCT
    block, without the codes themselves.

    Mirroring a picture left-right negates its odd horizontal DCT frequencies,
    top-bottom the odd vertical ones, and transposing it transposes the coefficient
    block, so the 8 symmetries of the square come from one 8x8 block.
    """
    found: list[int] = []
    for low in blocks:
        for block in (low, low.T):
            for signs in _SYMMETRY_SIGNS:
                code = code_from_coefficients(block * signs)
                if code not in codes and code not in found and not is_degenerate(code):
                    found.append(code)
    return tuple(found)

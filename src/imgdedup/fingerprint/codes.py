"""Perceptual codes of a decoded picture: whole-image pHash codes (as stored and
trimmed), folded and banded codes, mirror/rotation codes, crop-window codes and the
verification thumbnails, composed from the modules that compute each."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from PIL import Image

from imgdedup.fingerprint.banded import banded_code
from imgdedup.fingerprint.folded import FOLD_BLOCK_SIDE, folded_from_block
from imgdedup.fingerprint.phash import (
    HASH_SIZE,
    code_from_coefficients,
    hash_input,
    is_degenerate,
    is_low_information,
    low_block,
)
from imgdedup.fingerprint.rotated import rotated_codes
from imgdedup.fingerprint.thumbnails import chroma_thumbnails, thumbnails
from imgdedup.fingerprint.trim import downscale_for_trim, trim_box
from imgdedup.fingerprint.windows import window_codes


class PerceptualCodes(NamedTuple):
    whole: tuple[int, ...]
    windows: tuple[int, ...]
    rotated: tuple[int, ...]
    thumbnail: bytes


def perceptual_codes(
    gray: Image.Image, *, colour: Image.Image | None = None, windows: bool = True, rotations: bool = False
) -> PerceptualCodes:
    """Whole-image codes, crop-window codes, mirror/rotation codes and verification
    thumbnails of a greyscale picture; windows and rotations are empty unless asked for,
    the thumbnails empty when the picture gets no code.

    Whole-image codes: the picture as stored, and the picture with uniform borders
    trimmed (when trimming changed anything). Both are kept because trimming makes
    letterboxed, framed and padded copies match, while the untrimmed code is the more
    stable one under colour changes. A mirror-symmetric picture also gets its folded
    code(s) (`folded_code`), and a picture whose pHash is degenerate its banded code
    (`banded_code`) instead, after the others. Low-information pictures get no code at
    all (nor mirror/rotation codes): they match by exact bytes only.

    `colour`: the picture in colour (`Picture.colour`), None for a grey picture; it only
    feeds the verification thumbnails.
    """
    small = downscale_for_trim(gray)
    box = trim_box(small)
    trimmed_image = small.crop(box) if box is not None else small
    inputs = [hash_input(gray)] + ([hash_input(trimmed_image)] if box is not None else [])
    whole: list[int] = []
    blocks: list[np.ndarray] = []
    folded: list[int] = []
    for pixels in inputs:
        if is_low_information(pixels):
            continue
        block = low_block(pixels, FOLD_BLOCK_SIDE)  # the folded code's block; pHash uses its 8x8 corner
        low = block[:HASH_SIZE, :HASH_SIZE]
        code = code_from_coefficients(low)
        extra = folded_from_block(block)
        if extra is not None and extra not in folded:
            folded.append(extra)
        if is_degenerate(code):
            banded = banded_code(low)
            if banded is not None and banded not in folded:
                folded.append(banded)
            continue
        blocks.append(low)
        if code not in whole:
            whole.append(code)
    whole += [code for code in folded if code not in whole]
    rotated = rotated_codes(blocks, whole) if rotations else ()
    if whole:
        chroma = chroma_thumbnails(colour, box, small.size) if colour is not None else None
        left, top, right, bottom = box if box is not None else (0, 0, small.width, small.height)
        aspects = (gray.width / gray.height, (right - left) / (bottom - top))
        thumbs = thumbnails(inputs[0], inputs[-1], chroma, aspects)
    else:
        thumbs = b""
    if not whole or not windows:
        return PerceptualCodes(tuple(whole), (), rotated, thumbs)
    found: list[int] = []
    for code in window_codes(trimmed_image):
        if code not in whole and code not in found:
            found.append(code)
    return PerceptualCodes(tuple(whole), tuple(found), rotated, thumbs)

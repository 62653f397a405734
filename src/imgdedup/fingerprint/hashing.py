"""Image bytes -> fingerprint. Pure functions: no I/O, no globals, safe in worker processes.

A fingerprint is the SHA-256 of the bytes (the exact tier) plus one or more 64-bit
perceptual codes (the near tier). Decoding is normalised first so that the same
picture hashes the same however it was stored: EXIF orientation applied, alpha
flattened onto a fixed background, first frame of an animation, 16-bit and CMYK
brought to 8-bit luminance.

Speed: JPEGs are decoded with libjpeg's DCT scaling (`Image.draft`), which hands back a
1/2, 1/4 or 1/8 size image straight from the DCT coefficients, as the decoder's own
YCbCr planes (no RGB conversion; Y is the grey picture, the chroma planes feed only the
colour thumbnails). A 1280x960 JPEG then costs ~1.6 ms (the entropy decoding, which no
scaling avoids) instead of a ~4 ms full decode, and the 32x32 pHash input loses nothing.
Everything after the decode is a few small numpy operations (~0.7 ms; docs/performance.md).
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from imgdedup.errors import (
    DecompressionBomb,
    EmptyImage,
    ImageTooLarge,
    UndecodableImage,
    UnsupportedImageType,
)

#: Identifies how codes are computed; stored per namespace so that codes computed by an
#: incompatible future algorithm are never compared with these.
HASH_ALGORITHM = "phash64-dct32-trim-windows-v7"

#: Formats we decode. Others that Pillow could open (EPS via Ghostscript, PSD, ICO, ...)
#: are refused: they are not upload formats and widen the attack surface.
SUPPORTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "GIF", "WEBP", "BMP", "TIFF", "AVIF"})

#: Alpha is composited onto this colour so that a cut-out on transparency and the same
#: cut-out on white (the usual product-shot background) hash the same.
FLATTEN_BACKGROUND = (255, 255, 255)
_BACKGROUND_LUMINANCE = Image.new("RGB", (1, 1), FLATTEN_BACKGROUND).convert("L").getpixel((0, 0))

#: Smallest side requested from the JPEG DCT-scaled decoder. pHash needs 32x32; 64 keeps
#: enough detail for a clean area-average resize.
DRAFT_MIN_SIDE = 64

HASH_SIZE = 8
HIGHFREQ_FACTOR = 4
_DCT_SIDE = HASH_SIZE * HIGHFREQ_FACTOR


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """What the index needs to know about one image."""

    sha256: bytes
    codes: tuple[int, ...]
    width: int
    height: int
    format: str
    size_bytes: int
    #: Codes of crop windows: stored in the index so that a later crop of this image
    #: matches, but never used to query (that would multiply the probes per query).
    window_codes: tuple[int, ...] = ()
    #: Codes of the picture mirrored and rotated (the other 7 symmetries of the square,
    #: for each whole-image code), when the rotation mode is on: query-side only, so a
    #: mirrored or rotated copy finds the stored original without growing the index.
    rotated_codes: tuple[int, ...] = ()
    #: Verification thumbnails for the second look at a candidate before it is called a
    #: duplicate (`thumbnails`, `verify.second_look`): two 16x16 grey views (as stored,
    #: borders trimmed), their colour and aspect ratios; empty for pictures without
    #: perceptual codes.
    thumbnail: bytes = b""

    @property
    def query_codes(self) -> tuple[int, ...]:
        """The codes a lookup probes: whole-image codes, then their mirrored/rotated ones."""
        return self.codes + self.rotated_codes

    @property
    def indexed_codes(self) -> tuple[int, ...]:
        """Every code the index keeps for this image: whole-image codes, then windows
        (disjoint by construction, see `perceptual_codes`)."""
        return self.codes + self.window_codes

    @property
    def sha256_hex(self) -> str:
        return self.sha256.hex()

    @property
    def primary_code(self) -> int:
        return self.codes[0]


@dataclass(frozen=True, slots=True)
class ImageLimits:
    max_bytes: int
    max_pixels: int
    crop_windows: bool = True
    rotations: bool = False


def fingerprint(data: bytes, limits: ImageLimits) -> Fingerprint:
    """Hash one image. Raises an `InputError` subclass for anything we must refuse."""
    if not data:
        raise EmptyImage("the image body is empty")
    if len(data) > limits.max_bytes:
        raise ImageTooLarge(
            f"image is {len(data)} bytes; the limit is {limits.max_bytes} bytes"
        )
    sha = hashlib.sha256(data).digest()
    picture, fmt, (width, height) = decode_for_hashing(data, limits.max_pixels)
    codes = perceptual_codes(
        picture.gray, colour=picture.colour, windows=limits.crop_windows, rotations=limits.rotations
    )
    return Fingerprint(
        sha256=sha, codes=codes.whole, width=width, height=height, format=fmt,
        size_bytes=len(data), window_codes=codes.windows, rotated_codes=codes.rotated,
        thumbnail=codes.thumbnail,
    )


def rotated_codes(blocks: list[np.ndarray], codes: list[int]) -> tuple[int, ...]:
    """Codes of the 7 mirror images and rotations of each whole-image code's 8x8 DCT
    block, without the codes themselves.

    No pixels are moved: mirroring a picture left-right negates its odd horizontal DCT
    frequencies, top-bottom the odd vertical ones, and transposing it transposes the
    coefficient block, so the 8 symmetries of the square come from one 8x8 block.
    """
    found: list[int] = []
    for low in blocks:
        for block in (low, low.T):
            for signs in _SYMMETRY_SIGNS:
                code = _code_from_coefficients(block * signs)
                if code not in codes and code not in found and not is_degenerate(code):
                    found.append(code)
    return tuple(found)


def _symmetry_signs() -> tuple[np.ndarray, ...]:
    frequency = np.arange(HASH_SIZE)
    odd_rows = np.where(frequency % 2, -1.0, 1.0)[:, None] * np.ones(HASH_SIZE)[None, :]
    odd_cols = odd_rows.T
    return (np.ones((HASH_SIZE, HASH_SIZE)), odd_cols, odd_rows, odd_rows * odd_cols)


#: Sign patterns of: as is, mirrored left-right, top-bottom, rotated 180 degrees.
_SYMMETRY_SIGNS = _symmetry_signs()


#: Crop windows (keep width, keep height, anchor x, anchor y) over the trimmed picture:
#: uniform crops at three scales anchored centre and at the corners, and one-dimension
#: crops (aspect-ratio changes) at three depths (90, 80, 70 %) anchored at both ends and the centre.
#: Chosen by `imgdedup bench accuracy`: see docs/accuracy.md.
CROP_WINDOWS: tuple[tuple[float, float, float, float], ...] = tuple(
    [(s, s, ax, ay) for s in (0.9, 0.8, 0.7) for ax, ay in ((0.5, 0.5), (0, 0), (1, 0), (0, 1), (1, 1))]
    + [(k, 1.0, a, 0.5) for k in (0.9, 0.8, 0.7) for a in (0, 0.5, 1)]
    + [(1.0, k, 0.5, a) for k in (0.9, 0.8, 0.7) for a in (0, 0.5, 1)]
)


#: Verification thumbnails (`verify.py`): two grey ones of this side (as stored,
#: trimmed), 8 bits per pixel, stored per kept image...
THUMB_SIDE = 16
#: ... followed by the two views' colour: Cb and Cr planes of this side, offset by 128.
CHROMA_SIDE = 8
GREY_THUMBNAIL_BYTES = 2 * THUMB_SIDE * THUMB_SIDE
CHROMA_BYTES = 2 * 2 * CHROMA_SIDE * CHROMA_SIDE
#: ... and last, the two views' aspect ratios (the thumbnails are squares, so they lose
#: it): one byte each, 128 + 32 * log2(width / height).
ASPECT_BYTES = 2
ASPECT_STEPS_PER_OCTAVE = 32
#: Records written before colour and aspect existed hold GREY_THUMBNAIL_BYTES only.
THUMBNAIL_BYTES = GREY_THUMBNAIL_BYTES + CHROMA_BYTES + ASPECT_BYTES


def thumbnails(
    untrimmed: np.ndarray, trimmed: np.ndarray, chroma: bytes | None = None, aspects: tuple[float, float] = (1.0, 1.0)
) -> bytes:
    """Two 32x32 hash inputs -> the verification thumbnails: each halved to 16x16 grey,
    then the two views' colour planes (`chroma_thumbnails`; neutral for a grey picture),
    then the two views' aspect ratios (width / height)."""
    out = []
    for pixels in (untrimmed, trimmed):
        half = pixels.reshape(THUMB_SIDE, 2, THUMB_SIDE, 2).mean(axis=(1, 3))
        out.append(np.clip(np.rint(half), 0, 255).astype(np.uint8).tobytes())
    out.append(chroma if chroma is not None else bytes([128]) * CHROMA_BYTES)
    out.append(bytes(int(np.clip(round(128 + ASPECT_STEPS_PER_OCTAVE * np.log2(a)), 0, 255)) for a in aspects))
    return b"".join(out)


def chroma_thumbnails(
    colour: Image.Image, box: tuple[int, int, int, int] | None, trim_scale: tuple[int, int]
) -> bytes:
    """A colour picture ("YCbCr" or "RGB", `Picture.colour`) -> CHROMA_BYTES: the Cb and
    Cr planes (offset by 128, as JPEG stores them) of the picture as stored, then of the
    trimmed box (given at `trim_scale`), each area-averaged to CHROMA_SIDE. Averaging and
    the YCbCr transform are both linear, so shrinking RGB first changes nothing but
    rounding."""
    sx, sy = colour.width / trim_scale[0], colour.height / trim_scale[1]
    boxes = [None] + ([None] if box is None else [(box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)])
    out = []
    for region in boxes:
        small = colour.resize((CHROMA_SIDE, CHROMA_SIDE), Image.Resampling.BOX, box=region)
        planes = np.asarray(small if small.mode == "YCbCr" else small.convert("YCbCr"))[..., 1:]
        out.append(np.ascontiguousarray(planes.transpose(2, 0, 1)).tobytes())
    return b"".join(out)


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
    code(s) (`folded_code`), after the others. Low-information pictures get no code at all (nor
    mirror/rotation codes): they match by exact bytes only.

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
        block = _low_block(pixels, 2 * HASH_SIZE)  # the folded code needs 16x16; pHash its 8x8 corner
        low = block[:HASH_SIZE, :HASH_SIZE]
        code = _code_from_coefficients(low)
        extra = _folded_from_block(block)
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


#: Crop windows are computed on the trimmed picture resampled to this square, with the
#: area averaging to 32x32 and the 8 lowest DCT rows folded into precomputed matrices:
#: two matrix products per image instead of 33 crops, resizes and DCTs.
WINDOW_BASE = 128


def _area_matrix(start: float, end: float, size: int = WINDOW_BASE, out: int = 32) -> np.ndarray:
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


@lru_cache(maxsize=1)
def _window_operators() -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols): per window, 8 x WINDOW_BASE matrices R and C such that the window's
    8x8 low-frequency DCT block of its 32x32 area average is R @ X @ C.T."""
    dct8 = _dct_matrix(_DCT_SIDE)[:HASH_SIZE]
    rows, cols = [], []
    for keep_w, keep_h, anchor_x, anchor_y in CROP_WINDOWS:
        y0 = (1 - keep_h) * anchor_y * WINDOW_BASE
        x0 = (1 - keep_w) * anchor_x * WINDOW_BASE
        rows.append(dct8 @ _area_matrix(y0, y0 + keep_h * WINDOW_BASE))
        cols.append(dct8 @ _area_matrix(x0, x0 + keep_w * WINDOW_BASE))
    return np.stack(rows).astype(np.float32), np.stack(cols).astype(np.float32)


def window_codes(gray: Image.Image) -> list[int]:
    """pHash of every crop window that carries enough information (see CROP_WINDOWS)."""
    base = np.asarray(gray.resize((WINDOW_BASE, WINDOW_BASE), Image.Resampling.BOX), dtype=np.float32)
    rows, cols = _window_operators()
    blocks = np.round(np.matmul(np.matmul(rows, base), cols.transpose(0, 2, 1)), 3).reshape(len(CROP_WINDOWS), -1)
    # Low-frequency AC energy bounds a window's variance from below (Parseval): the same
    # low-information gate as whole pictures, from what is already computed.
    ac_std = np.sqrt((blocks[:, 1:].astype(np.float64) ** 2).sum(axis=1) / (_DCT_SIDE * _DCT_SIDE))
    bits = blocks > _row_medians(blocks)
    bits[:, 0] = False
    codes = np.packbits(bits, axis=1).view(">u8").ravel().tolist()
    return [code for code, std in zip(codes, ac_std, strict=True) if std >= LOW_INFORMATION_STD and not is_degenerate(code)]


#: A picture is mirror-symmetric (left-right, top-bottom) when its odd horizontal
#: (vertical) DCT frequencies hold less than this share of the AC energy of the 16x16
#: low-frequency block.
SYMMETRY_ENERGY = 0.03
#: XORed into folded codes, one per kind of symmetry, so that folded codes of different
#: kinds are not compared with each other as if they were the same construction.
_FOLD_SALTS = {"both": 0x5A5A_A5A5_3C3C_C3C3, "left-right": 0x0F0F_F0F0_6969_9696, "top-bottom": 0x33CC_CC33_55AA_AA55}


def folded_code(pixels: np.ndarray) -> int | None:
    """An extra code for a mirror-symmetric picture (flags, emblems, patterns), or None,
    from its 32x32 hash input.

    Symmetry forces the odd-frequency DCT coefficients to ~0. In a pHash they sit on the
    median, so their bits are float noise that any re-encode flips, and two copies of a
    symmetric picture end up far apart. The folded code is a pHash of the 64
    coefficients the symmetry leaves: the even columns (left-right), rows (top-bottom)
    or both of the 16x16 low-frequency block.
    """
    return _folded_from_block(_low_block(pixels, 2 * HASH_SIZE))


def _folded_from_block(block: np.ndarray) -> int | None:
    """`folded_code` from the 16x16 block perceptual_codes has already computed."""
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
    code = _code_from_coefficients(kept)
    return None if is_degenerate(code) else code ^ _FOLD_SALTS[kind]


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
    """A code for a picture whose pHash is degenerate (plain bands: a tricolour flag, a
    two-tone banner), or None.

    Such a picture has a handful of large DCT coefficients and exact zeros elsewhere; a
    pHash puts the median on the zeros, so its bits are ties that any re-encode breaks
    at random. Here each of the 32 lowest AC frequencies gives two bits, "clearly
    positive" and "clearly negative", with a dead zone (BANDED_DEAD_ZONE of the largest
    coefficient) in which both stay 0: the large coefficients decide, the noise does not.
    Salted, so that it is never read as a pHash of another picture. Two pictures with the
    same bands in other colours get the same code: the second look's colour check
    (`verify.colour_agrees`) is what tells them apart."""
    ac = low.reshape(-1)[_zigzag()][1:33]
    scale = float(np.abs(ac).max())
    if scale <= 0:
        return None
    threshold = BANDED_DEAD_ZONE * scale
    bits = np.concatenate([ac > threshold, ac < -threshold])
    return bits_to_int(bits) ^ _BANDED_SALT


def _row_medians(rows: np.ndarray) -> np.ndarray:
    """np.median(rows, axis=1, keepdims=True) for an even row length, at a fraction of
    its cost: the two middle order statistics from one partition, averaged."""
    half = rows.shape[1] // 2
    middle = np.partition(rows, (half - 1, half), axis=1)[:, half - 1 : half + 1]
    return middle.mean(axis=1, keepdims=True)


class Picture(NamedTuple):
    """A decoded picture as hashing sees it: upright, transparency flattened."""

    #: 8-bit luminance ("L"), possibly smaller than the original (DCT scaling).
    gray: Image.Image
    #: The same picture in colour, "YCbCr" (JPEG, as decoded) or "RGB" (others, shrunk to
    #: at most the trim scale), transparency flattened: only the verification thumbnails
    #: use colour. None for a grey picture.
    colour: Image.Image | None


def decode_for_hashing(data: bytes, max_pixels: int) -> tuple[Picture, str, tuple[int, int]]:
    """Open, guard, draft-decode and normalise. Returns (picture, format, original size).

    The size returned is the original's, after EXIF rotation.
    """
    try:
        with warnings.catch_warnings():
            # Pillow warns above its own global limit; our limit is the one that counts.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise DecompressionBomb(f"image canvas is too large: {exc}") from None
    except UnidentifiedImageError:
        raise UndecodableImage("not a recognisable image (unknown format or corrupt header)") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise UndecodableImage(f"corrupt image header: {exc}") from None

    fmt = image.format or "unknown"
    if fmt not in SUPPORTED_FORMATS:
        raise UnsupportedImageType(
            f"{fmt} images are not supported; send one of {', '.join(sorted(SUPPORTED_FORMATS))}"
        )
    width, height = image.size
    if width <= 0 or height <= 0:
        raise UndecodableImage(f"image has an empty canvas ({width}x{height})")
    if width * height > max_pixels:
        raise DecompressionBomb(
            f"image canvas is {width}x{height} = {width * height} pixels; "
            f"the limit is {max_pixels}"
        )
    try:
        if fmt in ("JPEG", "MPO"):
            # DCT-scaled decode, and for colour JPEGs libjpeg's own YCbCr planes: the
            # hash input is the Y plane as is, the chroma planes are only shrunk, and
            # nothing is converted to RGB. A JPEG stored as RGB (Adobe transform 0)
            # has no YCbCr planes and libjpeg cannot make them: it stays RGB. CMYK
            # keeps its mode. The EXIF block is kept.
            stored_as_rgb = image.info.get("adobe_transform") == 0
            mode = "YCbCr" if image.mode in ("RGB", "YCbCr") and not stored_as_rgb else image.mode
            image.draft(mode, (DRAFT_MIN_SIDE, DRAFT_MIN_SIDE))
        image.seek(0)  # first frame of animations / multi-page files
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.load()
        orientation = exif_orientation(image)
        if orientation in ORIENTATION_TRANSPOSE:
            image = image.transpose(ORIENTATION_TRANSPOSE[orientation])
            if orientation in (5, 6, 7, 8):
                width, height = height, width
        gray = to_luminance(flatten_for_hashing(image))
        colour = colour_for_hashing(image, trim_size(gray.size))
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise UndecodableImage(f"image data is corrupt or truncated: {exc}") from None
    except Image.DecompressionBombError as exc:  # pragma: no cover - guarded above
        raise DecompressionBomb(str(exc)) from None
    return Picture(gray, colour), fmt, (width, height)


#: EXIF Orientation value -> the transpose that makes the image upright (as in
#: ImageOps.exif_transpose, which we avoid: it re-serialises the whole EXIF block and
#: raises on unrelated malformed tags).
ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation, or 1 when absent or unreadable: a broken EXIF block is no
    reason to refuse pixels that decode fine."""
    try:
        value = image.getexif().get(0x0112, 1)
        return int(value) if isinstance(value, int) else 1
    except Exception:
        return 1


def flatten_for_hashing(image: Image.Image) -> Image.Image:
    """Like `normalise_mode`, but transparent pictures come back as "L" already flattened
    onto the background's luminance. Luminance is linear in RGB, so compositing the grey
    picture equals compositing in colour and then taking the grey (up to rounding), on
    one channel instead of four (compositing was the largest cost of a cut-out PNG)."""
    if not _is_transparent(image):
        return normalise_mode(image)
    if image.mode not in ("RGBA", "LA"):  # palette, premultiplied, colour-key (PNG tRNS)
        image = image.convert("RGBA")
    alpha = image.getchannel("A")
    flat = Image.new("L", image.size, _BACKGROUND_LUMINANCE)
    flat.paste(image.convert("L"), (0, 0), alpha)
    return flat


def _is_transparent(image: Image.Image) -> bool:
    """Alpha, or a palette / colour-key (PNG tRNS) transparency."""
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode in ("P", "L", "RGB") and "transparency" in image.info
    )


#: Modes without colour: their pictures get neutral colour planes.
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "F"})


def colour_for_hashing(image: Image.Image, size: tuple[int, int]) -> Image.Image | None:
    """The picture in colour for the verification thumbnails (`Picture.colour`), or None
    for a grey picture. A YCbCr picture (a JPEG as decoded) is used as it is; anything
    else is shrunk to `size` (the trim scale) in one pass, transparency averaged
    premultiplied and then put on the background, which is what compositing first and
    shrinking after gives."""
    mode = image.mode
    if mode in _GREY_MODES or mode.startswith("I;16"):
        return None
    if mode == "YCbCr":
        return image
    if not _is_transparent(image):
        return (image if mode == "RGB" else image.convert("RGB")).resize(size, Image.Resampling.BOX)
    rgba = image if image.mode == "RGBA" else image.convert("RGBA")
    premultiplied = np.asarray(rgba.convert("RGBa").resize(size, Image.Resampling.BOX), dtype=np.float32)
    cover = premultiplied[..., 3:] / 255.0
    rgb = premultiplied[..., :3] + (1.0 - cover) * np.asarray(FLATTEN_BACKGROUND, dtype=np.float32)
    return Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8), "RGB")


def normalise_mode(image: Image.Image) -> Image.Image:
    """Bring any Pillow mode to 8-bit "L" or "RGB" with alpha flattened ("YCbCr" stays:
    its Y plane is the luminance)."""
    mode = image.mode
    if mode == "YCbCr":
        return image
    if mode in ("L", "RGB") and "transparency" in image.info:
        mode = "LA"  # colour-key transparency (PNG tRNS): flatten like real alpha
        image = image.convert("RGBA")
    if mode in ("L", "RGB"):
        return image
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, FLATTEN_BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode in ("1",):
        return image.convert("L")
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _high_depth_to_l(image)
    # CMYK, YCbCr, LAB, HSV: Pillow's converters handle these (CMYK naively, which is
    # consistent for every copy of the same file, which is what hashing needs).
    return image.convert("RGB")


def _high_depth_to_l(image: Image.Image) -> Image.Image:
    """16-bit and float images: scale to 8 bits instead of clipping (Pillow's convert clips)."""
    array = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        lo, hi = float(np.nanmin(array)), float(np.nanmax(array))
        scaled = (array - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(array)
    else:
        scaled = array / 257.0 if array.max(initial=0) > 255 else array
    return Image.fromarray(np.clip(np.nan_to_num(scaled), 0, 255).astype(np.uint8), "L")


def to_luminance(image: Image.Image) -> Image.Image:
    if image.mode == "YCbCr":
        return image.getchannel("Y")  # the decoder's own luminance, as a draft("L") gives
    return image if image.mode == "L" else image.convert("L")


#: A border row/column is "uniform" when at least BORDER_SHARE of its pixels lie within
#: a tolerance of the edge's median. The tolerance is relative to the picture's own
#: contrast (so brightness and contrast changes of a copy trim the same band), with a
#: floor for JPEG noise in flat bars: a black frame JPEG-encoded around a small cut-out
#: holds noise next to the picture that a floor of 3 left untrimmed (v7;
#: tests/test_hashing.py, and overlay/border-black in `imgdedup bench accuracy`).
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


def hash_input(gray: Image.Image) -> np.ndarray:
    """The 32x32 area-averaged greyscale pixels every perceptual code is computed from."""
    return np.asarray(gray.resize((_DCT_SIDE, _DCT_SIDE), Image.Resampling.BOX), dtype=np.float64)


#: Standard deviation (grey levels) of the 32x32 hash input below which a picture is
#: "low information" (near-uniform, very dark or nearly empty): its DCT signs are noise,
#: so it gets no perceptual code and can only match by exact bytes. It was 8 before
#: candidates got a second look (`verify.py`); thin line drawings (std 4-7) then had no
#: code at all; the second look keeps their near matches honest (docs/design.md, "Low
#: information").
LOW_INFORMATION_STD = 3.0


#: A pHash splits 63 AC coefficients at their median, so a normal code has ~31 bits set
#: (28-31 on the whole benchmark corpus). Far fewer means most coefficients were exactly
#: zero (plain bands, e.g. a tricolour flag): the bits are ties, not content, and two
#: unrelated pictures of that kind land a bit or two apart.
MIN_CODE_BITS = 20


def is_low_information(small: np.ndarray) -> bool:
    return float(small.std()) < LOW_INFORMATION_STD


def is_degenerate(code: int) -> bool:
    return code.bit_count() < MIN_CODE_BITS


@lru_cache(maxsize=4)
def _dct_matrix(n: int) -> np.ndarray:
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
    return _code_from_coefficients(_low_block(pixels))


def _low_block(pixels: np.ndarray, side: int = HASH_SIZE) -> np.ndarray:
    """The side x side lowest DCT frequencies of a 32x32 array (8x8: all a pHash uses)."""
    low = _dct_matrix(_DCT_SIDE)[:side]
    return low @ pixels @ low.T


def _code_from_coefficients(low: np.ndarray) -> int:
    """Bits of an 8x8 low-frequency DCT block: above the median, DC bit cleared. Rounding
    keeps float round-off of a zero coefficient from deciding a bit."""
    coefficients = np.round(low, 6).reshape(1, -1)
    bits = (coefficients > _row_medians(coefficients))[0]
    bits[0] = False
    return bits_to_int(bits)


def bits_to_int(bits: np.ndarray) -> int:
    packed = np.packbits(bits.astype(np.uint8))
    return int.from_bytes(packed.tobytes(), "big")


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def code_hex(code: int) -> str:
    return format(code, "016x")

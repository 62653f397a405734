"""Image bytes -> the picture hashing sees: guarded decode, EXIF orientation applied,
first frame, transparency flattened onto a fixed background, 8-bit luminance plus a
small colour view. JPEGs are decoded DCT-scaled (`Image.draft`) as their own YCbCr
planes: the entropy decoding is the only full-size work, and the hash loses nothing."""

from __future__ import annotations

import io
import warnings
from typing import NamedTuple

import numpy as np
import pillow_heif
from PIL import Image, UnidentifiedImageError
from pillow_jxl import JpegXLImagePlugin

from imgdedup.errors import DecompressionBomb, UndecodableImage, UnsupportedImageType
from imgdedup.fingerprint.jxl_header import JxlHeader, JxlHeaderError, is_jxl, read_jxl_header
from imgdedup.fingerprint.trim import trim_size

#: Formats we decode. Others that Pillow could open (EPS via Ghostscript, PSD, ICO, ...)
#: are refused: they are not upload formats and widen the attack surface. HEIF (HEIC
#: photos) and JXL (JPEG XL) come from the pillow-heif and pillow-jxl-plugin plugins.
SUPPORTED_FORMATS = frozenset(
    {"JPEG", "MPO", "PNG", "GIF", "WEBP", "BMP", "TIFF", "AVIF", "HEIF", "JXL"}
)


def _register_plugins() -> None:
    """Register the HEIF and JPEG XL openers, once, at import (hashing workers import
    this module too). Pillow's own plugins are loaded first, so they keep precedence
    for every format they know (AVIF stays Pillow's). Both decoders run single-threaded:
    hashing already runs one worker process per core. Embedded HEIF thumbnails, depth
    and auxiliary images are never read: only the primary image is hashed."""
    Image.init()
    pillow_heif.register_heif_opener(
        thumbnails=False, depth_images=False, aux_images=False, decode_threads=1
    )
    JpegXLImagePlugin.DECODE_THREADS = 0  # 0: decode in the calling thread


_register_plugins()

#: What Pillow raises on a corrupt file that says what is wrong with it: quoted in the detail.
DESCRIBED_DECODER_ERRORS: tuple[type[Exception], ...] = (OSError, ValueError, SyntaxError, EOFError)

#: Not the file's fault, even when raised inside Pillow: the process is short of memory.
#: Never mapped to a refusal of the image (KeyboardInterrupt and SystemExit are not
#: `Exception`s and pass anyway).
NOT_DECODER_FAILURES: tuple[type[Exception], ...] = (MemoryError,)

#: Alpha is composited onto this colour so that a cut-out on transparency and the same
#: cut-out on white (the usual product-shot background) hash the same.
FLATTEN_BACKGROUND = (255, 255, 255)
_BACKGROUND_LUMINANCE = Image.new("RGB", (1, 1), FLATTEN_BACKGROUND).convert("L").getpixel((0, 0))

#: Smallest side requested from the JPEG DCT-scaled decoder. pHash needs 32x32; 64 keeps
#: enough detail for a clean area-average resize.
DRAFT_MIN_SIDE = 64


#: Detail for any other exception raised inside Pillow's open, seek or load. Its format
#: plugins parse headers and tags in Python and raise whatever that parsing hits on a
#: malformed file (a TIFF field of the wrong type gives TypeError, struct.error or
#: IndexError; the AVIF plugin raises RuntimeError for libavif's failures), so there any
#: exception means a corrupt file. Its text names Pillow's internals: not quoted. Raised
#: by our own normalisation after decoding, such exceptions would mean a bug and are not
#: mapped.
_UNDESCRIBED_FAILURE = "the decoder failed on it (a field has an impossible type or value)"


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
    jxl = check_header_limits(data, max_pixels)
    try:
        with warnings.catch_warnings():
            # Pillow warns above its own global limit; our limit is the one that counts.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        # Pillow refuses canvases past twice its own global limit before we see the size;
        # ours is lower, so quote it instead of Pillow's.
        raise DecompressionBomb(f"image canvas exceeds the limit of {max_pixels} pixels") from None
    except UnidentifiedImageError:
        raise UndecodableImage("not a recognisable image (unknown format or corrupt header)") from None
    except NOT_DECODER_FAILURES:
        raise
    except DESCRIBED_DECODER_ERRORS as exc:
        raise UndecodableImage(f"corrupt image header: {exc}") from None
    except Exception:  # see _UNDESCRIBED_FAILURE
        raise UndecodableImage(f"corrupt image header: {_UNDESCRIBED_FAILURE}") from None

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
    try:  # Pillow's decoding: its errors mean a corrupt file
        if fmt in ("JPEG", "MPO"):
            # DCT-scaled decode, and for colour JPEGs libjpeg's own YCbCr planes: the
            # hash input is the Y plane as is, the chroma planes are only shrunk, and
            # nothing is converted to RGB. A JPEG stored as RGB (Adobe transform 0)
            # has no YCbCr planes and libjpeg cannot make them: it stays RGB. CMYK
            # keeps its mode. The EXIF block is kept.
            stored_as_rgb = image.info.get("adobe_transform") == 0
            mode = "YCbCr" if image.mode in ("RGB", "YCbCr") and not stored_as_rgb else image.mode
            image.draft(mode, (DRAFT_MIN_SIDE, DRAFT_MIN_SIDE))
        if fmt != "HEIF":  # a HEIF file opens at its primary image, the one to hash
            image.seek(0)  # first frame of animations / multi-page files
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.load()
    except Image.DecompressionBombError as exc:  # pragma: no cover - guarded above
        raise DecompressionBomb(str(exc)) from None
    except NOT_DECODER_FAILURES:
        raise
    except DESCRIBED_DECODER_ERRORS as exc:
        raise UndecodableImage(f"image data is corrupt or truncated: {exc}") from None
    except Exception:  # see _UNDESCRIBED_FAILURE
        raise UndecodableImage(f"image data is corrupt: {_UNDESCRIBED_FAILURE}") from None
    try:  # our normalisation of the decoded pixels
        orientation = orientation_to_apply(image, jxl)
        if orientation in ORIENTATION_TRANSPOSE:
            image = image.transpose(ORIENTATION_TRANSPOSE[orientation])
            if orientation in (5, 6, 7, 8):
                width, height = height, width
        gray = to_luminance(flatten_for_hashing(image))
        colour = colour_for_hashing(image, trim_size(gray.size))
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise UndecodableImage(f"image data is corrupt or truncated: {exc}") from None
    return Picture(gray, colour), fmt, (width, height)


def check_header_limits(data: bytes, max_pixels: int) -> JxlHeader | None:
    """The pixel limit for formats whose decoder decodes every pixel when the file is
    opened (JPEG XL), checked from the header before that. Returns the JPEG XL header,
    or None for other formats (Pillow reads their size without decoding)."""
    if not is_jxl(data):
        return None
    try:
        header = read_jxl_header(data)
    except JxlHeaderError as exc:
        raise UndecodableImage(f"corrupt image header: {exc}") from None
    if header.width * header.height > max_pixels:
        raise DecompressionBomb(
            f"image canvas is {header.width}x{header.height} = {header.width * header.height} "
            f"pixels; the limit is {max_pixels}"
        )
    return header


def orientation_to_apply(image: Image.Image, jxl: JxlHeader | None) -> int:
    """The EXIF orientation still to apply to a decoded image.

    HEIF: none is left; libheif applies the container's rotation and mirroring, which
    the format says win over EXIF, and pillow-heif resets the EXIF tag to 1. JPEG XL:
    the decoder applies the codestream's orientation; EXIF counts only when that is the
    identity (libjxl's encoders move the EXIF orientation into the codestream and reset
    the tag, so both never apply), and fully for a JPEG recompressed losslessly, which
    decodes back to the original JPEG, EXIF block and unrotated pixels included."""
    if jxl is not None and jxl.orientation != 1 and not getattr(image, "jpeg", False):
        return 1
    return exif_orientation(image)


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
    one channel instead of four."""
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
    """8-bit luminance ("L") of a picture `normalise_mode` or `flatten_for_hashing` gave."""
    if image.mode == "YCbCr":
        return image.getchannel("Y")  # the decoder's own luminance, as a draft("L") gives
    return image if image.mode == "L" else image.convert("L")

"""Unit tests for `imgdedup.fingerprint`: decoding normalisation, limits and the pHash itself."""

from __future__ import annotations

import hashlib
import io
import itertools
import os

import numpy as np
import pytest
from helpers import (
    SAMPLE_NAMES,
    STORE_FOR_ORIENTATION,
    animated_gif,
    blank_png,
    encode,
    exif_ifd_data_offset,
    exif_with,
    gif,
    hamming,
    jpeg,
    png,
    sample_bytes,
    sample_image,
    tiff,
    webp,
)
from imagegen import poison_avif_header, poison_avif_pixels, poison_tiff
from PIL import Image, ImageDraw, ImageEnhance, ImageFile, ImageFilter, ImageOps, features

from imgdedup.errors import (
    DecompressionBomb,
    EmptyImage,
    ImageTooLarge,
    InputError,
    UndecodableImage,
    UnsupportedImageType,
)
from imgdedup.fingerprint import ImageLimits, code_hex, fingerprint
from imgdedup.fingerprint.decode import decode_for_hashing, flatten_for_hashing, normalise_mode, to_luminance
from imgdedup.fingerprint.phash import HASH_SIZE, bits_to_int, phash_code
from imgdedup.fingerprint.thumbnails import chroma_thumbnails

LIMITS = ImageLimits(max_bytes=25 * 1024 * 1024, max_pixels=50_000_000)


def fp(data: bytes, limits: ImageLimits = LIMITS):
    return fingerprint(data, limits)


def code_of(data: bytes) -> int:
    return fp(data).primary_code


def sample_bytes_io(name: str) -> io.BytesIO:
    return io.BytesIO(sample_bytes(name))


@pytest.fixture(scope="module")
def sample_codes() -> dict[str, int]:
    return {name: code_of(sample_bytes(name)) for name in SAMPLE_NAMES}


def test_samples_are_present():
    # The hashing tests below rely on several distinct photographs.
    assert len(SAMPLE_NAMES) >= 4


# --- the fingerprint record --------------------------------------------------------------


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_fingerprint_fields(name):
    data = sample_bytes(name)
    result = fp(data)
    assert result.sha256 == hashlib.sha256(data).digest()
    assert result.sha256_hex == hashlib.sha256(data).hexdigest()
    assert result.size_bytes == len(data)
    assert result.format == "JPEG"
    with Image.open(sample_bytes_io(name)) as im:
        assert (result.width, result.height) == im.size
    # As stored, plus trimmed where the photo has a near-uniform band at an edge
    # (camera's sky: 4 rows of 64).
    assert 1 <= len(result.codes) <= 2
    assert result.primary_code == result.codes[0]
    assert 0 <= result.primary_code < 1 << 64
    assert len(code_hex(result.primary_code)) == 16


def test_fingerprint_is_deterministic_and_sha_tracks_bytes():
    image = sample_image("chelsea")
    a = jpeg(image, quality=90)
    b = jpeg(image, quality=89)
    assert fp(a) == fp(a)
    assert fp(a).sha256 != fp(b).sha256  # different bytes, different exact tier
    assert fp(a).sha256 == hashlib.sha256(a).digest()


# --- robustness to re-encoding -------------------------------------------------------------


def _variants(image: Image.Image) -> dict[str, bytes]:
    half = image.resize((image.width // 2, image.height // 2), Image.Resampling.LANCZOS)
    return {
        "jpeg-q40": jpeg(image, quality=40),
        "half-size": jpeg(half, quality=90),
        "png": png(image),
        "webp": webp(image, quality=80),
        "brightened": jpeg(ImageEnhance.Brightness(image).enhance(1.1), quality=90),
        "grayscale-png": png(image.convert("L")),
        "tiff": tiff(image),
        "bmp": encode(image, "BMP"),
    }


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_reencoded_copies_hash_close(name, sample_codes):
    original = sample_codes[name]
    for label, data in _variants(sample_image(name)).items():
        distance = hamming(code_of(data), original)
        assert distance <= 8, f"{name} {label}: distance {distance}"


def test_different_photos_hash_far_apart(sample_codes):
    for a, b in itertools.combinations(SAMPLE_NAMES, 2):
        distance = hamming(sample_codes[a], sample_codes[b])
        assert distance >= 20, f"{a} vs {b}: distance {distance}"


def test_codes_are_balanced(sample_codes):
    # Median thresholding over 64 coefficients sets (about) half of the bits.
    for name, code in sample_codes.items():
        assert 24 <= code.bit_count() <= 40, name


def test_mirrored_image_is_a_different_picture():
    image = sample_image("rocket")
    mirrored = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    assert hamming(code_of(png(image)), code_of(png(mirrored))) >= 16


# --- EXIF orientation ------------------------------------------------------------------------



def _with_orientation(image: Image.Image, orientation: int, fmt: str) -> bytes:
    transform = STORE_FOR_ORIENTATION[orientation]
    stored = image if transform is None else image.transpose(transform)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(stored, fmt, exif=exif)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_exif_orientation_is_applied(orientation, fmt):
    upright = sample_image("rocket")  # 640x427: not square, so a swap is visible
    assert upright.width != upright.height
    reference = code_of(encode(upright, fmt))
    data = _with_orientation(upright, orientation, fmt)
    result = fp(data)
    assert (result.width, result.height) == upright.size
    assert hamming(result.primary_code, reference) <= 4
    if orientation != 1:
        # Sanity: ignoring the tag would give a clearly different code.
        transform = STORE_FOR_ORIENTATION[orientation]
        raw = code_of(encode(upright.transpose(transform), fmt))
        assert hamming(raw, reference) > 12


@pytest.mark.parametrize("orientation", [0, 9, 255])
def test_invalid_exif_orientation_is_ignored(orientation):
    image = sample_image("rocket")
    exif = Image.Exif()
    exif[0x0112] = orientation
    result = fp(jpeg(image, exif=exif))
    assert (result.width, result.height) == image.size
    assert hamming(result.primary_code, code_of(jpeg(image))) <= 4


def test_exif_rotation_decode_returns_upright_image():
    upright = sample_image("coffee")  # 600x400
    data = _with_orientation(upright, 6, "PNG")
    picture, fmt, size = decode_for_hashing(data, LIMITS.max_pixels)
    assert fmt == "PNG"
    assert size == (600, 400)
    assert picture.gray.size == (600, 400)
    assert picture.gray.mode == "L"
    # The colour planes are upright too, at the trim scale of the grey picture.
    assert picture.colour is not None and picture.colour.size == (128, 85)


@pytest.mark.parametrize(
    "bad_tag",
    [0x011A, 0x0100],  # XResolution (RATIONAL), ImageWidth (SHORT/LONG), typed ASCII here
)
def test_malformed_exif_with_orientation_is_an_input_problem(bad_tag):
    # Orientation=6 plus one numeric tag wrongly typed ASCII: a real-world kind of EXIF
    # damage. The picture itself decodes fine, so either a fingerprint or an InputError
    # (a clean 400 / rejection) is acceptable -- but never an unexpected exception.
    upright = sample_image("chelsea")
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    raw_exif = exif_with(
        [
            (0x0112, 3, 1, (6).to_bytes(2, "big")),
            (bad_tag, 2, 6, exif_ifd_data_offset(2).to_bytes(4, "big")),
        ],
        extra=b"Maker\x00",
    )
    data = jpeg(stored, exif=raw_exif)
    try:
        result = fp(data)
    except InputError:
        return
    assert (result.width, result.height) == upright.size


# --- alpha, palettes, unusual modes ---------------------------------------------------------


def _cutout(name: str) -> tuple[Image.Image, Image.Image, Image.Image]:
    """(RGBA cut-out with a noisy fully transparent background, the same on white, mask)."""
    photo = sample_image(name)
    mask = Image.new("L", photo.size, 0)
    ImageDraw.Draw(mask).ellipse(
        (photo.width // 8, photo.height // 10, photo.width * 7 // 8, photo.height * 9 // 10),
        fill=255,
    )
    rng = np.random.default_rng(7)
    noise = Image.fromarray(rng.integers(0, 256, (photo.height, photo.width, 3), dtype=np.uint8))
    rgba = Image.composite(photo, noise, mask).convert("RGBA")
    rgba.putalpha(mask)
    on_white = Image.composite(photo, Image.new("RGB", photo.size, (255, 255, 255)), mask)
    return rgba, on_white, mask


@pytest.mark.parametrize("name", ["astronaut", "chelsea"])
def test_transparent_background_hashes_like_white(name):
    rgba, on_white, _ = _cutout(name)
    white_code = code_of(png(on_white))
    assert hamming(code_of(png(rgba)), white_code) <= 2
    assert hamming(code_of(webp(rgba, lossless=True)), white_code) <= 2
    # Guard against a vacuous pass: ignoring alpha (hidden noise shows) is clearly worse.
    assert hamming(code_of(png(rgba.convert("RGB"))), white_code) > 2


@pytest.mark.parametrize("mode", ["RGBA", "LA", "PA", "P-transparency", "RGB-colour-key"])
def test_fast_flatten_matches_flattening_in_colour(mode):
    """Hashing flattens transparency on the grey picture (one channel); the result must
    be what flattening in colour onto white and then taking the grey gives."""
    rgba, _, mask = _cutout("astronaut")
    # Partial transparency too, not only 0/255: a soft edge.
    rgba.putalpha(mask.filter(ImageFilter.GaussianBlur(6)))
    # Colour-key and palette transparency: the photo (lifted off black) on a black key.
    keyed = Image.composite(sample_image("astronaut").point(lambda v: max(v, 1)), Image.new("RGB", mask.size), mask)
    if mode == "P-transparency":
        image = keyed.convert("P", palette=Image.Palette.ADAPTIVE, colors=255)
        image.info["transparency"] = image.getpixel((0, 0))  # the corner is background
    elif mode == "RGB-colour-key":
        image = keyed
        image.info["transparency"] = (0, 0, 0)
    else:
        image = rgba.convert(mode)
    expected = np.asarray(normalise_mode(image).convert("L"), dtype=np.int16)
    got = flatten_for_hashing(image)
    assert got.mode == "L"
    assert np.abs(np.asarray(got, dtype=np.int16) - expected).max() <= 1
    assert (np.asarray(got) == 255).mean() > 0.1  # the background really became white


def test_la_image_hashes_like_white_background():
    rgba, on_white, _ = _cutout("camera")
    la = rgba.convert("LA")
    assert hamming(code_of(png(la)), code_of(png(on_white.convert("L")))) <= 2


def test_palette_image_without_transparency():
    image = sample_image("coffee")
    palette = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
    data = png(palette)
    decoded, _, _ = decode_for_hashing(data, LIMITS.max_pixels)
    assert decoded.gray.mode == "L" and decoded.colour is not None
    assert hamming(code_of(data), code_of(png(image))) <= 4
    assert hamming(code_of(gif(image)), code_of(png(image))) <= 6


def test_palette_image_with_transparency():
    _, _, mask = _cutout("astronaut")
    photo = sample_image("astronaut")
    palette = photo.convert("P", palette=Image.Palette.ADAPTIVE, colors=255)
    indices = np.array(palette)
    indices[np.array(mask) == 0] = 255  # transparent index; its colour is black
    transparent = Image.fromarray(indices, "P")
    transparent.putpalette(palette.getpalette()[: 255 * 3] + [0, 0, 0])
    reference = Image.composite(
        transparent.convert("RGB"), Image.new("RGB", photo.size, (255, 255, 255)), mask
    )
    expected = code_of(png(reference))
    for data in (png(transparent, transparency=255), gif(transparent, transparency=255)):
        assert hamming(code_of(data), expected) <= 2
    # Without the transparency flag the black background counts: a different code.
    assert hamming(code_of(png(transparent)), expected) > 8


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_colour_key_transparency_hashes_like_white(mode):
    _, _, mask = _cutout("astronaut")
    # Lift every channel to >= 1 so that the key colour (0 / (0, 0, 0)) marks only the
    # background, never a pixel of the photo.
    photo = sample_image("astronaut", mode).point(lambda v: max(v, 1))
    key = 0 if mode == "L" else (0, 0, 0)
    white = 255 if mode == "L" else (255, 255, 255)
    keyed = Image.composite(photo, Image.new(mode, photo.size, key), mask)
    on_white = Image.composite(photo, Image.new(mode, photo.size, white), mask)
    data = png(keyed, transparency=key)
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == mode and im.info.get("transparency") == key
    assert hamming(code_of(data), code_of(png(on_white))) <= 2


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_colour_jpeg_decodes_as_scaled_luminance_and_hashes_like_the_full_decode(name):
    """The fast path (DCT-scaled JPEG decode, its own Y plane as the luminance) must give
    the code the slow path gives: full RGB decode, then Pillow's RGB -> L conversion;
    and the colour planes the full decode's colour gives."""
    image = sample_image(name)
    data = jpeg(image, quality=90)
    decoded, fmt, size = decode_for_hashing(data, LIMITS.max_pixels)
    assert fmt == "JPEG" and size == image.size
    assert decoded.gray.mode == "L"
    assert decoded.gray.width < image.width  # scaled in the decoder, not resized after
    full = Image.open(io.BytesIO(data))
    assert hamming(code_of(data), phash_code(full.convert("L"))) <= 2
    # The scaled luminance is the same the decoder gives when asked for grey only.
    grey_only = Image.open(io.BytesIO(data))
    grey_only.draft("L", (64, 64))
    assert np.array_equal(np.asarray(decoded.gray), np.asarray(grey_only.convert("L")))
    # The decoder's own colour, at its scale: the colour thumbnails are what the full RGB
    # decode gives (JPEG chroma units, 128 = grey).
    assert decoded.colour.mode == "YCbCr" and decoded.colour.size == decoded.gray.size
    trim_scale = (decoded.gray.width // 2, decoded.gray.height // 2)
    box = (3, 2, trim_scale[0] - 5, trim_scale[1] - 1)
    fast = np.frombuffer(chroma_thumbnails(decoded.colour, box, trim_scale), dtype=np.uint8)
    slow = np.frombuffer(chroma_thumbnails(full.convert("RGB"), box, trim_scale), dtype=np.uint8)
    assert np.abs(fast.astype(int) - slow.astype(int)).mean() < 1.5


@pytest.mark.parametrize("name", ["astronaut", "rocket"])
def test_cmyk_jpeg(name):
    image = sample_image(name)
    data = jpeg(image.convert("CMYK"), quality=90)
    decoded, fmt, size = decode_for_hashing(data, LIMITS.max_pixels)
    assert fmt == "JPEG" and size == image.size
    assert decoded.gray.mode == "L" and decoded.colour is not None
    assert hamming(code_of(data), code_of(jpeg(image, quality=90))) <= 4


def test_sixteen_bit_grayscale_png_is_scaled_not_clipped():
    gray = np.asarray(sample_image("chelsea", "L"), dtype=np.float64)
    # Stretch to the full 16-bit range (0..65535), then derive the 8-bit version from it.
    values = np.round((gray - gray.min()) / (gray.max() - gray.min()) * 65535).astype(np.uint16)
    assert values.min() == 0 and values.max() == 65535
    gray8 = Image.fromarray(np.round(values / 257.0).astype(np.uint8), "L")
    image16 = Image.fromarray(values)
    assert image16.mode == "I;16"
    data = png(image16)
    decoded, fmt, _ = decode_for_hashing(data, LIMITS.max_pixels)
    assert fmt == "PNG" and decoded.gray.mode == "L" and decoded.colour is None
    assert hamming(code_of(data), code_of(png(gray8))) <= 4
    # What a naive convert("L") (clipping at 255) would have produced is far away.
    clipped = image16.convert("L")
    clipped_codes = fp(png(clipped)).codes  # washed out: no code at all, or a distant one
    assert not clipped_codes or hamming(clipped_codes[0], code_of(png(gray8))) > 8


def test_one_bit_image():
    gray = sample_image("camera", "L")
    bilevel = gray.convert("1")
    data = png(bilevel)
    decoded, _, _ = decode_for_hashing(data, LIMITS.max_pixels)
    assert decoded.gray.mode == "L" and decoded.colour is None
    assert hamming(code_of(data), code_of(png(bilevel.convert("L")))) == 0


def test_animated_gif_uses_first_frame():
    first = sample_image("astronaut")
    second = sample_image("coffee").resize(first.size)
    data = animated_gif([first, second])
    with Image.open(io.BytesIO(data)) as im:
        assert getattr(im, "n_frames", 1) == 2
    code = code_of(data)
    first_code = code_of(gif(first))
    second_code = code_of(gif(second))
    assert hamming(first_code, second_code) >= 20  # the frames really differ
    assert hamming(code, first_code) <= 2
    assert hamming(code, second_code) >= 20


def test_multipage_tiff_uses_first_page():
    first = sample_image("rocket")
    second = sample_image("camera").resize(first.size)
    data = encode(first, "TIFF", save_all=True, append_images=[second])
    assert hamming(code_of(data), code_of(tiff(first))) <= 2


def test_mpo_uses_first_picture():
    first = sample_image("rocket")
    second = sample_image("camera").resize(first.size)
    data = encode(first, "MPO", save_all=True, append_images=[second], quality=90)
    result = fp(data)
    assert result.format == "MPO"
    assert (result.width, result.height) == first.size
    assert hamming(result.primary_code, code_of(jpeg(first))) <= 2
    assert hamming(result.primary_code, code_of(jpeg(second))) >= 20


@pytest.mark.parametrize("fmt, params", [
    ("PNG", {}), ("GIF", {}), ("WEBP", {"quality": 90}), ("BMP", {}), ("TIFF", {}),
    ("JPEG", {"quality": 90}),
])
def test_supported_formats_reported(fmt, params):
    image = sample_image("chelsea")
    result = fp(encode(image, fmt, **params))
    assert result.format == fmt
    assert (result.width, result.height) == image.size


def test_avif_if_pillow_supports_it():
    if not features.check("avif"):
        pytest.skip("this Pillow build has no AVIF codec")
    image = sample_image("coffee")
    result = fp(encode(image, "AVIF", quality=80))
    assert result.format == "AVIF"
    assert hamming(result.primary_code, code_of(png(image))) <= 4


# --- refusals ---------------------------------------------------------------------------------


def test_truncated_jpeg_is_undecodable():
    data = jpeg(sample_image("astronaut"), quality=90)
    with pytest.raises(UndecodableImage) as info:
        fp(data[: len(data) // 2])
    assert info.value.http_status == 400
    assert info.value.code == "undecodable_image"


def test_truncated_png_is_undecodable():
    data = png(sample_image("chelsea"))
    with pytest.raises(UndecodableImage):
        fp(data[: len(data) // 2])


def test_truncated_header_is_undecodable():
    data = png(sample_image("chelsea"))
    with pytest.raises(UndecodableImage):
        fp(data[:20])


def test_a_file_pillow_fails_on_with_a_type_error_is_undecodable():
    data = poison_tiff()
    with pytest.raises(TypeError):  # the premise: Pillow's own error is no OSError here
        Image.open(io.BytesIO(data)).load()
    with pytest.raises(UndecodableImage, match="impossible type or value") as info:
        fp(data)
    assert "bytes" not in info.value.detail, "Pillow's internals stay out of the detail"


@pytest.mark.parametrize("poison", [poison_avif_header, poison_avif_pixels], ids=["open", "load"])
def test_a_file_the_avif_decoder_fails_on_with_a_runtime_error_is_undecodable(poison):
    if not features.check("avif"):
        pytest.skip("this Pillow build has no AVIF codec")
    data = poison()
    with pytest.raises(RuntimeError):  # the premise: Pillow's AVIF plugin raises no OSError
        Image.open(io.BytesIO(data)).load()
    with pytest.raises(UndecodableImage) as info:
        fp(data)
    assert "libavif" not in info.value.detail and "Failed to decode" not in info.value.detail


@pytest.mark.parametrize("stage", ["open", "load"])
def test_memory_error_inside_the_decoder_is_not_blamed_on_the_file(monkeypatch, stage):
    """Running short of memory is the process's problem: it must not become a 400."""

    def short_of_memory(*args, **kwargs):
        raise MemoryError

    if stage == "open":
        monkeypatch.setattr(Image, "open", short_of_memory)
    else:
        monkeypatch.setattr(ImageFile.ImageFile, "load", short_of_memory)
    with pytest.raises(MemoryError):
        fp(png(sample_image("chelsea")))


def test_random_garbage_is_undecodable():
    rng = np.random.default_rng(123)
    for size in (1, 7, 100, 5000):
        garbage = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        with pytest.raises(UndecodableImage):
            fp(garbage)
    with pytest.raises(UndecodableImage):
        fp(b"this is not an image at all" * 10)


def test_empty_bytes():
    with pytest.raises(EmptyImage) as info:
        fp(b"")
    assert info.value.code == "empty_image"
    assert isinstance(info.value, InputError)


def test_too_many_bytes_refused_before_decoding():
    data = jpeg(sample_image("coffee"))
    limit = len(data) - 1
    with pytest.raises(ImageTooLarge) as info:
        fingerprint(data, ImageLimits(max_bytes=limit, max_pixels=LIMITS.max_pixels))
    message = str(info.value)
    assert str(len(data)) in message and str(limit) in message
    assert info.value.http_status == 413
    # Garbage over the limit is refused for size, not for being undecodable.
    with pytest.raises(ImageTooLarge):
        fingerprint(os.urandom(2000), ImageLimits(max_bytes=1000, max_pixels=10))
    # Exactly at the limit is fine.
    assert fingerprint(data, ImageLimits(max_bytes=len(data), max_pixels=LIMITS.max_pixels))


def test_decompression_bomb_under_configured_limit():
    data = blank_png(10_000, 10_000)
    assert len(data) < 100_000  # a small file ...
    with pytest.raises(DecompressionBomb) as info:
        fingerprint(data, ImageLimits(max_bytes=LIMITS.max_bytes, max_pixels=10_000_000))
    assert "10000x10000" in str(info.value)
    assert info.value.http_status == 413


def test_decompression_bomb_beyond_pillows_own_limit():
    data = blank_png(20_000, 20_000)  # 400 Mpx, over 2x Pillow's default MAX_IMAGE_PIXELS
    assert len(data) < 200_000
    with pytest.raises(DecompressionBomb):
        fingerprint(data, ImageLimits(max_bytes=LIMITS.max_bytes, max_pixels=10**12))


def test_decompression_bomb_error_quotes_the_configured_limit():
    data = blank_png(20_000, 20_000)  # refused by Pillow itself, before we see the size
    with pytest.raises(DecompressionBomb) as info:
        fingerprint(data, ImageLimits(max_bytes=LIMITS.max_bytes, max_pixels=12_345_678))
    assert "12345678" in info.value.detail
    assert str(Image.MAX_IMAGE_PIXELS) not in info.value.detail
    assert str(2 * Image.MAX_IMAGE_PIXELS) not in info.value.detail


def test_pixel_limit_boundary():
    data = png(sample_image("chelsea"))  # 451x300
    pixels = 451 * 300
    assert fingerprint(data, ImageLimits(LIMITS.max_bytes, pixels)).width == 451
    with pytest.raises(DecompressionBomb):
        fingerprint(data, ImageLimits(LIMITS.max_bytes, pixels - 1))


@pytest.mark.parametrize("fmt", ["ICO", "PCX", "PPM", "TGA"])
def test_unsupported_but_readable_format(fmt):
    data = encode(sample_image("chelsea").resize((64, 48)), fmt)
    with pytest.raises(UnsupportedImageType) as info:
        fp(data)
    assert info.value.http_status == 415
    assert info.value.code == "unsupported_image_type"
    assert fmt in str(info.value)


# --- the pHash itself, against a reference written here ----------------------------------------


def _dct_ortho_fft(x: np.ndarray) -> np.ndarray:
    """Orthonormal DCT-II along the last axis via an FFT of the even extension."""
    n = x.shape[-1]
    mirrored = np.concatenate([x, x[..., ::-1]], axis=-1)
    spectrum = np.fft.fft(mirrored, axis=-1)[..., :n]
    k = np.arange(n)
    coeffs = np.real(spectrum * np.exp(-1j * np.pi * k / (2 * n))) / 2.0
    scale = np.full(n, np.sqrt(2.0 / n))
    scale[0] = np.sqrt(1.0 / n)
    return coeffs * scale


def _dct_direct(x: np.ndarray) -> np.ndarray:
    """The textbook sum, with explicit loops (for checking the FFT version)."""
    n = len(x)
    out = np.zeros(n)
    for k in range(n):
        total = 0.0
        for i in range(n):
            total += x[i] * np.cos(np.pi * (2 * i + 1) * k / (2 * n))
        out[k] = total * (np.sqrt(1.0 / n) if k == 0 else np.sqrt(2.0 / n))
    return out


def test_reference_dct_is_right():
    rng = np.random.default_rng(5)
    for n in (4, 8, 32):
        x = rng.normal(size=n)
        np.testing.assert_allclose(_dct_ortho_fft(x), _dct_direct(x), atol=1e-9)


def _reference_phash(pixels32: np.ndarray) -> int:
    """pHash of a 32x32 float array: 2-D DCT, top-left 8x8, > median, row-major MSB first;
    the DC bit (the mean brightness) is always 0 by design (see phash_code)."""
    rows = _dct_ortho_fft(pixels32)  # along x
    full = _dct_ortho_fft(rows.T).T  # along y
    low = full[:HASH_SIZE, :HASH_SIZE]
    median = np.median(low)
    code = 0
    for r in range(HASH_SIZE):
        for c in range(HASH_SIZE):
            code = (code << 1) | int(low[r, c] > median)
    return code & ~(1 << 63)


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_phash_code_matches_reference(name):
    gray = sample_image(name, "L")
    small = gray.resize((32, 32), Image.Resampling.BOX)
    expected = _reference_phash(np.asarray(small, dtype=np.float64))
    assert phash_code(gray) == expected


def test_phash_code_with_reference_area_average():
    # 512x512 -> 32x32 by exact 16x16 block means, computed here without Pillow.
    gray = sample_image("astronaut", "L")
    assert gray.size == (512, 512)
    blocks = np.asarray(gray, dtype=np.float64).reshape(32, 16, 32, 16).mean(axis=(1, 3))
    assert hamming(phash_code(gray), _reference_phash(blocks)) <= 2


def _image_from_dct(low: np.ndarray, dc: float = 128.0 * 32) -> Image.Image:
    """A 32x32 float ("F") image whose orthonormal 2-D DCT is `low` in the top-left 8x8
    (row = vertical frequency) with the given DC term, and zero elsewhere."""
    coefficients = np.zeros((32, 32))
    coefficients[:8, :8] = low
    coefficients[0, 0] = dc
    basis = np.array([_dct_direct(np.eye(32)[i]) for i in range(32)]).T  # dct(x) == basis @ x
    pixels = basis.T @ coefficients @ basis  # inverse of an orthonormal transform
    return Image.fromarray(pixels.astype(np.float32), "F")


def test_phash_bit_layout_from_known_coefficients():
    # Build pictures from chosen DCT coefficients, so the expected bits are known without
    # any DCT: bit (row, col) is set iff that coefficient exceeds the 8x8 block's median,
    # laid out row-major, most significant bit first.
    rng = np.random.default_rng(11)
    for _ in range(5):
        low = rng.permutation(np.linspace(-60, 60, 64)).reshape(8, 8)
        image = _image_from_dct(low)
        low_with_dc = low.copy()
        low_with_dc[0, 0] = 128.0 * 32
        median = np.median(low_with_dc)
        expected = 0
        for value in low_with_dc.ravel():
            expected = (expected << 1) | int(value > median)
        assert expected >> 63 == 1  # the DC term is the top bit, above the median...
        expected &= ~(1 << 63)  # ...and always cleared: it is the mean brightness
        assert phash_code(image) == expected
        # Row/column orientation matters: the transposed coefficients give another code.
        assert phash_code(_image_from_dct(low.T)) != expected


def test_transposed_picture_transposes_the_bit_matrix():
    for name in ("rocket", "coffee"):
        gray = sample_image(name, "L")
        code = phash_code(gray)
        bits = np.array([(code >> (63 - i)) & 1 for i in range(64)], dtype=bool).reshape(8, 8)
        transposed = phash_code(gray.transpose(Image.Transpose.TRANSPOSE))
        assert hamming(transposed, bits_to_int(bits.T.ravel())) <= 2
        assert hamming(transposed, code) > 8


def test_uniform_images_hash_identically():
    codes = {
        level: phash_code(Image.new("L", (100, 80), level)) for level in (0, 1, 100, 200, 255)
    }
    assert len(set(codes.values())) == 1, {k: code_hex(v) for k, v in codes.items()}


def test_black_image_hashes_to_zero_and_gets_no_index_code():
    assert phash_code(Image.new("L", (100, 80), 0)) == 0
    # Low information: matched by exact bytes only, never by a near code.
    assert fp(png(Image.new("L", (64, 64), 0))).codes == ()
    assert fp(png(Image.new("L", (64, 64), 0))).window_codes == ()


def test_bits_to_int_is_msb_first():
    bits = np.zeros(64, dtype=bool)
    bits[0] = True
    assert bits_to_int(bits) == 1 << 63
    bits = np.zeros(64, dtype=bool)
    bits[63] = True
    assert bits_to_int(bits) == 1
    assert code_hex(1) == "0000000000000001"
    assert code_hex((1 << 64) - 1) == "f" * 16


def test_to_luminance():
    rgb = sample_image("coffee")
    assert to_luminance(rgb).mode == "L"
    gray = rgb.convert("L")
    assert to_luminance(gray) is gray


# --- matching that survives borders and crops (the accuracy work) -----------------------


def _min_distance(codes_a, codes_b) -> int:
    return min(hamming(a, b) for a in codes_a for b in codes_b)


@pytest.mark.parametrize("name", ["astronaut", "coffee", "rocket"])
def test_letterboxed_and_framed_copies_share_a_whole_image_code(name):
    image = sample_image(name)
    original = fp(jpeg(image))
    w, h = image.size
    letterbox = Image.new("RGB", (w, round(w * 9 / 16) if w * 9 / 16 > h else h + h // 3), (0, 0, 0))
    letterbox.paste(image, ((letterbox.width - w) // 2, (letterbox.height - h) // 2))
    framed = ImageOps.expand(image, border=max(4, w // 10), fill=(255, 255, 255))
    # A pale picture on a white frame can trim to a slightly different box (the rocket's
    # sky does): the benchmark measures how often; here the mechanism on clear cases.
    for copy in (letterbox, framed) if name != "rocket" else (letterbox,):
        assert _min_distance(fp(jpeg(copy)).codes, original.codes) <= 8  # the duplicate radius
        # Without trimming, the bars alone push the copy out of the duplicate radius.
        untrimmed = phash_code(copy.convert("L"))
        assert hamming(untrimmed, original.codes[0]) > 8


@pytest.mark.parametrize("removed, anchor", [(0.15, (0.5, 0.5)), (0.25, (1.0, 1.0)), (0.3, (0.2, 0.7))])
def test_crop_matches_a_window_code_of_the_original(removed, anchor):
    image = sample_image("chelsea")
    side = (1 - removed) ** 0.5
    cw, ch = round(image.width * side), round(image.height * side)
    x, y = round((image.width - cw) * anchor[0]), round((image.height - ch) * anchor[1])
    crop = fp(jpeg(image.crop((x, y, x + cw, y + ch))))
    original = fp(jpeg(image))
    assert len(original.window_codes) >= 20
    assert _min_distance(crop.codes, original.window_codes) <= 8
    if removed >= 0.25:
        # Queries probe whole-image codes only; the windows are what make this crop findable.
        assert _min_distance(crop.codes, original.codes) > 8


def test_crop_windows_can_be_switched_off():
    data = jpeg(sample_image("chelsea"))
    assert fp(data, ImageLimits(LIMITS.max_bytes, LIMITS.max_pixels, crop_windows=False)).window_codes == ()
    assert fp(data).indexed_codes[: len(fp(data).codes)] == fp(data).codes


def _bands(colours: list[tuple[int, int, int]], vertical: bool = True, size: tuple[int, int] = (300, 200)) -> Image.Image:
    image = Image.new("RGB", size)
    step = (size[0] if vertical else size[1]) // len(colours)
    for i, colour in enumerate(colours):
        box = (i * step, 0, (i + 1) * step, size[1]) if vertical else (0, i * step, size[0], (i + 1) * step)
        image.paste(colour, box)
    return image


GUINEA = [(206, 17, 38), (252, 209, 22), (0, 148, 96)]


def test_plain_band_pictures_get_only_a_banded_code():
    # Plain bands: nearly every DCT coefficient is exactly zero, so a pHash's bits are
    # median ties (few bits set, and a re-encode breaks them at random). Such a picture
    # gets no pHash, only the banded code, which its copies share.
    from imgdedup.fingerprint.banded import banded_code
    from imgdedup.fingerprint.phash import hash_input, low_block

    vertical, horizontal = _bands(GUINEA), _bands([(0, 40, 160), (255, 255, 255), (0, 40, 160)], vertical=False, size=(300, 210))
    for picture in (vertical, horizontal):
        result = fp(png(picture))
        banded = banded_code(low_block(hash_input(picture.convert("L"))))
        # The banded codes of the picture as stored and trimmed; no pHash, no windows.
        assert banded in result.codes and len(result.codes) <= 2 and result.window_codes == ()
        for copy in (jpeg(picture, quality=40), png(picture.resize((150, 100))), jpeg(picture.resize((600, 400)), quality=90)):
            assert set(fp(copy).codes) & set(result.codes)
    assert not set(fp(png(vertical)).codes) & set(fp(png(horizontal)).codes)


def test_banded_code_ignores_what_the_dead_zone_holds():
    from imgdedup.fingerprint.banded import BANDED_DEAD_ZONE, banded_code

    block = np.zeros((HASH_SIZE, HASH_SIZE))
    block[0, 0], block[0, 1], block[0, 2] = 4000.0, -1000.0, 600.0
    noisy = block + np.random.default_rng(3).normal(0, BANDED_DEAD_ZONE * 1000 / 4, block.shape)
    assert banded_code(block) == banded_code(noisy)
    flipped = block.copy()
    flipped[0, 2] = -600.0
    assert hamming(banded_code(block), banded_code(flipped)) == 2  # one coefficient changed sign
    assert banded_code(np.eye(HASH_SIZE) * 0) is None


def test_black_frame_around_a_jpeg_cut_out_is_trimmed_like_its_white_background():
    # A small cut-out (icon) on white, then a 10 % black frame, JPEG-encoded: the frame's
    # JPEG noise next to the picture reaches ~8 grey levels. It must still be cut, so the
    # framed copy's trimmed code meets the original's.
    icon = Image.new("RGB", (60, 60), (255, 255, 255))
    draw = ImageDraw.Draw(icon)
    draw.polygon([(30, 5), (55, 50), (5, 50)], fill=(200, 40, 40))
    draw.ellipse((20, 25, 40, 45), fill=(20, 20, 120))
    framed = ImageOps.expand(icon, border=6, fill=(0, 0, 0))
    original, copy = fp(png(icon)), fp(jpeg(framed, quality=88))
    assert min(hamming(a, b) for a in original.codes for b in copy.codes) <= 6


def test_normal_codes_are_balanced():
    for name in SAMPLE_NAMES:
        for code in fp(jpeg(sample_image(name))).indexed_codes:
            assert 20 <= code.bit_count() <= 44


ROTATIONS = ImageLimits(LIMITS.max_bytes, LIMITS.max_pixels, rotations=True)


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_rotation_mode_codes_find_every_mirrored_and_rotated_copy(name):
    image = sample_image(name)
    original = fingerprint(png(image), ROTATIONS)
    assert fingerprint(png(image), LIMITS).rotated_codes == ()  # off by default
    assert 1 <= len(original.rotated_codes) <= 7 * len(original.codes)
    for op in Image.Transpose:
        copy = fingerprint(jpeg(image.transpose(op), quality=90), LIMITS)
        nearest = min(hamming(copy.primary_code, c) for c in original.query_codes)
        assert nearest <= 4, (op, nearest)
    # Without the mode the symmetric copies are mostly far away (what the mode is for).
    far = [op for op in Image.Transpose
           if min(hamming(fingerprint(png(image.transpose(op)), LIMITS).primary_code, c) for c in original.codes) > 10]
    assert len(far) >= 4


def test_thin_line_drawing_gets_a_code_and_its_copy_matches():
    # A one-pixel outline on white is low-contrast at 32x32 (std ~4-7 grey levels) but
    # not noise: it gets codes (it used to get none, so even a re-encode was missed).
    image = Image.new("L", (400, 400), 255)
    draw = ImageDraw.Draw(image)
    draw.line([(40, 350), (120, 60), (210, 300), (300, 90), (370, 330), (90, 210)], fill=0, width=1)
    draw.ellipse((230, 40, 350, 150), outline=0, width=1)
    assert 3.0 <= float(np.asarray(image.resize((32, 32), Image.Resampling.BOX), dtype=float).std()) < 8.0
    original, copy = fp(png(image)), fp(jpeg(image.convert("RGB"), quality=80))
    assert original.codes and original.thumbnail
    assert min(hamming(a, b) for a in original.codes for b in copy.codes) <= 8


def _saltire_flag(size: tuple[int, int] = (600, 400)) -> Image.Image:
    """A flag symmetric left-right and top-bottom (Jamaica-like: a diagonal cross)."""
    w, h = size
    image = Image.new("RGB", size, (0, 120, 60))
    draw = ImageDraw.Draw(image)
    draw.polygon([(0, 0), (w // 2, h // 2), (w, 0)], fill=(20, 20, 20))
    draw.polygon([(0, h), (w // 2, h // 2), (w, h)], fill=(20, 20, 20))
    draw.line([(0, 0), (w, h)], fill=(250, 200, 0), width=h // 8)
    draw.line([(0, h), (w, 0)], fill=(250, 200, 0), width=h // 8)
    return image


def test_symmetric_picture_gets_a_folded_code_that_survives_reencoding():
    from imgdedup.fingerprint.folded import folded_code
    from imgdedup.fingerprint.phash import hash_input

    flag = _saltire_flag()
    original = fp(png(flag))
    copies = [fp(jpeg(flag, quality=40)), fp(jpeg(flag.resize((300, 200)), quality=75))]
    folded = folded_code(hash_input(flag.convert("L")))
    assert folded is not None and folded in original.codes
    for copy in copies:
        # The plain pHash bits of a symmetric picture sit on median ties and flip; the
        # folded code (only the coefficients the symmetry leaves) holds.
        assert min(hamming(a, b) for a in original.codes for b in copy.codes) <= 8


def test_asymmetric_photos_get_no_folded_code():
    from imgdedup.fingerprint.folded import folded_code
    from imgdedup.fingerprint.phash import hash_input

    for name in SAMPLE_NAMES:
        assert folded_code(hash_input(sample_image(name, "L"))) is None, name


def test_jpeg_stored_as_rgb_decodes_and_hashes_like_its_ycbcr_twin():
    # Adobe transform 0: the JPEG holds RGB planes; libjpeg cannot hand them over as YCbCr.
    image = sample_image("coffee")
    as_rgb, as_ycbcr = io.BytesIO(), io.BytesIO()
    image.save(as_rgb, "JPEG", quality=90, keep_rgb=True)
    image.save(as_ycbcr, "JPEG", quality=90)
    with Image.open(io.BytesIO(as_rgb.getvalue())) as probe:
        assert probe.info.get("adobe_transform") == 0
    stored_rgb, stored_ycbcr = fp(as_rgb.getvalue()), fp(as_ycbcr.getvalue())
    assert hamming(stored_rgb.primary_code, stored_ycbcr.primary_code) <= 2
    from imgdedup.fingerprint.second_look import second_look

    look = second_look(stored_rgb.thumbnail, stored_ycbcr.thumbnail)
    assert look.similarity > 0.98 and look.colour is not False and look.shape is True

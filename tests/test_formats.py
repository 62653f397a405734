"""HEIF (HEIC photos) and JPEG XL: real files made by each format's encoder at test time
(pillow-heif's libheif/x265, pillow-jxl-plugin's libjxl), through the decoder, the
limits, the HTTP service, the `hash` command and `scan`."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pillow_heif
import pytest
from auth_helpers import bearer, write_keys_file
from helpers import STORE_FOR_ORIENTATION, encode, hamming, png, sample_image
from PIL import Image
from pillow_jxl import JpegXLImagePlugin
from scan_helpers import cluster_of, run

from imgdedup.app import Service
from imgdedup.config import Settings
from imgdedup.errors import DecompressionBomb, UndecodableImage
from imgdedup.fingerprint import ImageLimits, fingerprint
from imgdedup.fingerprint.decode import decode_for_hashing
from imgdedup.fingerprint.jxl_header import read_jxl_header

LIMITS = ImageLimits(max_bytes=25 * 1024 * 1024, max_pixels=50_000_000)
FORMATS = ["HEIF", "JXL"]
#: Encoder settings a phone or a converter would use.
PARAMS: dict[str, dict[str, Any]] = {"HEIF": {"quality": 80}, "JXL": {"quality": 85}}


def made(image: Image.Image, fmt: str, **params: Any) -> bytes:
    return encode(image, fmt, **{**PARAMS[fmt], **params})


def code_of(data: bytes) -> int:
    return fingerprint(data, LIMITS).primary_code


def reencoded_jpeg(data: bytes, quality: int = 80) -> bytes:
    """What a pipeline makes of the file: decoded by the format's plugin, saved as JPEG."""
    with Image.open(io.BytesIO(data)) as image:
        return encode(image.convert("RGB"), "JPEG", quality=quality)


def refuse_pixel_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if either plugin decodes pixels (the JPEG XL decoder runs at open)."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(JpegXLImagePlugin, "Decoder", refuse)
    monkeypatch.setattr(pillow_heif.as_plugin._LibHeifImageFile, "load", refuse)


# --- the decoder ------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_file_of_the_format_fingerprints(fmt: str) -> None:
    image = sample_image("chelsea")  # 451x300
    data = made(image, fmt)
    result = fingerprint(data, LIMITS)
    assert result.format == fmt
    assert (result.width, result.height) == image.size
    assert hamming(result.primary_code, code_of(png(image))) <= 4


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_reencoded_jpeg_of_it_is_a_near_duplicate_and_another_photo_is_not(fmt: str) -> None:
    data = made(sample_image("coffee"), fmt)
    code = code_of(data)
    copy = reencoded_jpeg(data)
    assert code_of(copy) != code or copy != data
    assert hamming(code_of(copy), code) <= 4
    assert hamming(code_of(made(sample_image("rocket"), fmt)), code) > 16




@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", FORMATS)
def test_orientation_is_honoured(fmt: str, orientation: int) -> None:
    """Stored sideways with an EXIF orientation, as a camera writes it. pillow-heif turns
    the tag into the container's rotation and mirroring (HEIF's own orientation); the JPEG
    XL encoder keeps the EXIF box."""
    upright = sample_image("rocket")  # 640x427
    transform = STORE_FOR_ORIENTATION[orientation]
    stored = upright if transform is None else upright.transpose(transform)
    exif = Image.Exif()
    exif[0x0112] = orientation
    result = fingerprint(made(stored, fmt, exif=exif.tobytes()), LIMITS)
    assert (result.width, result.height) == upright.size
    assert hamming(result.primary_code, code_of(png(upright))) <= 4
    if transform is not None:
        assert hamming(code_of(png(stored)), code_of(png(upright))) > 12  # the tag mattered


def _boxes(data: bytes) -> list[tuple[bytes, bytes]]:
    boxes, pos = [], 0
    while pos < len(data):
        size, kind = struct.unpack_from(">I4s", data, pos)
        boxes.append((kind, data[pos : pos + size]))
        pos += size
    return boxes


def _jxl_recompressed_jpeg(upright: Image.Image, orientation: int, tmp_path: Path) -> bytes:
    """A JPEG stored sideways with EXIF orientation 6, recompressed losslessly to JPEG XL
    (libjxl copies the orientation into the codestream and keeps the JPEG's EXIF)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    source = tmp_path / "sideways.jpg"
    source.write_bytes(encode(upright.transpose(STORE_FOR_ORIENTATION[orientation]), "JPEG",
                              quality=90, exif=exif.tobytes()))
    with Image.open(source) as jpeg:
        return encode(jpeg, "JXL", lossless_jpeg=True)


def test_jxl_recompressed_jpeg_is_upright(tmp_path: Path) -> None:
    upright = sample_image("rocket")
    data = _jxl_recompressed_jpeg(upright, 6, tmp_path)
    assert read_jxl_header(data).orientation == 6
    result = fingerprint(data, LIMITS)
    assert result.format == "JXL" and (result.width, result.height) == upright.size
    assert hamming(result.primary_code, code_of(png(upright))) <= 4


def test_jxl_codestream_orientation_is_applied_once(tmp_path: Path) -> None:
    """Without its JPEG reconstruction data the file decodes to pixels, which libjxl turns
    upright from the codestream's orientation; the EXIF tag saying the same must not turn
    them a second time."""
    upright = sample_image("rocket")
    recompressed = _jxl_recompressed_jpeg(upright, 6, tmp_path)
    exif = Image.Exif()
    exif[0x0112] = 6
    tiff = exif.tobytes()[6:]  # without the "Exif\0\0" marker
    exif_box = struct.pack(">I4sI", 12 + len(tiff), b"Exif", 0) + tiff  # uncompressed, readable
    pixels_only = b"".join(
        exif_box if kind == b"brob" else box for kind, box in _boxes(recompressed) if kind != b"jbrd"
    )
    with Image.open(io.BytesIO(pixels_only)) as opened:
        assert opened.size == upright.size  # libjxl turned it upright
        assert opened.getexif().get(0x0112) == 6
    result = fingerprint(pixels_only, LIMITS)
    assert (result.width, result.height) == upright.size
    assert hamming(result.primary_code, code_of(png(upright))) <= 4


def test_heif_hashes_the_primary_image() -> None:
    first, primary = sample_image("coffee"), sample_image("chelsea").resize((600, 400))
    data = encode(first, "HEIF", save_all=True, append_images=[primary], primary_index=1, quality=80)
    result = fingerprint(data, LIMITS)
    assert hamming(result.primary_code, code_of(png(primary))) <= 4
    assert hamming(result.primary_code, code_of(png(first))) > 16


@pytest.mark.parametrize("container", [False, True])
def test_jxl_header_gives_the_size(container: bool) -> None:
    for size in [(1, 1), (8, 16), (451, 300), (640, 427), (4000, 7), (513, 513), (960, 720)]:
        data = made(sample_image("chelsea").resize(size), "JXL", use_container=container)
        assert read_jxl_header(data)[:2] == size


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_oversized_canvas_is_refused_before_pixels_exist(fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    image = sample_image("chelsea")  # 451x300
    data = made(image, fmt)
    pixels = image.width * image.height
    assert fingerprint(data, ImageLimits(LIMITS.max_bytes, pixels)).width == image.width
    refuse_pixel_decoding(monkeypatch)
    with pytest.raises(DecompressionBomb) as info:
        fingerprint(data, ImageLimits(LIMITS.max_bytes, pixels - 1))
    assert (info.value.code, info.value.http_status) == ("decompression_bomb", 413)
    assert "451x300" in info.value.detail and str(pixels - 1) in info.value.detail


def _bits(fields: list[tuple[int, int]]) -> bytes:
    """(value, width) fields packed least-significant bit first, as JPEG XL does."""
    value = shift = 0
    for field, width in fields:
        value |= field << shift
        shift += width
    return value.to_bytes((shift + 7) // 8, "little")


def test_a_jxl_bomb_is_refused_from_its_header(monkeypatch: pytest.MonkeyPatch) -> None:
    """A few bytes claiming a 2^30 x 2^30 canvas: refused for its size, not decoded."""
    refuse_pixel_decoding(monkeypatch)
    side = 1 << 30
    # SizeHeader: not small; ysize U32 selector 3 (30 bits); ratio 0; xsize likewise.
    header = _bits([(0, 1), (3, 2), (side - 1, 30), (0, 3), (3, 2), (side - 1, 30), (1, 1)])
    data = b"\xff\x0a" + header + bytes(64)
    with pytest.raises(DecompressionBomb, match=f"{side}x{side}"):
        fingerprint(data, LIMITS)


@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_or_damaged_files_are_undecodable(fmt: str) -> None:
    data = made(sample_image("astronaut"), fmt)
    for broken in (data[: len(data) // 2], data[:14]):
        with pytest.raises(UndecodableImage) as info:
            fingerprint(broken, LIMITS)
        assert info.value.code == "undecodable_image"
        assert "libjxl" not in info.value.detail


def test_existing_formats_still_open_with_pillows_own_plugins() -> None:
    image = sample_image("coffee")
    for fmt in ("AVIF", "WEBP", "TIFF", "PNG", "JPEG"):
        _, decoded, _ = decode_for_hashing(encode(image, fmt), LIMITS.max_pixels)
        assert decoded == fmt
        with Image.open(io.BytesIO(encode(image, fmt))) as opened:
            assert type(opened).__module__.startswith("PIL.")


# --- the service, the hash command and scan ------------------------------------------------


@pytest.fixture
async def service(tmp_path: Path) -> Any:
    tokens = write_keys_file(tmp_path / "keys.json")
    settings = Settings(
        http_port=0, hash_workers=1, api_keys_file=str(tmp_path / "keys.json"),
        max_image_pixels=300_000, log_level="WARNING",
    )
    settings.validate()
    svc = Service(settings)  # real hashing worker processes: the plugins register there too
    await svc.start()
    headers = bearer(next(iter(tokens.values())))
    async with aiohttp.ClientSession(f"http://127.0.0.1:{svc.http_port}", headers=headers) as session:
        yield session
    await svc.stop()


@pytest.mark.parametrize("fmt, media_type", [("HEIF", "image/heic"), ("JXL", "image/jxl")])
async def test_the_service_registers_the_format_and_finds_its_jpeg_copy(
    service: aiohttp.ClientSession, fmt: str, media_type: str
) -> None:
    data = made(sample_image("chelsea"), fmt)
    async with service.post("/v1/namespaces/formats/images/photo", data=data,
                            headers={"Content-Type": media_type}) as response:
        assert response.status == 201, await response.text()
        body = await response.json()
    assert (body["verdict"], body["format"], body["width"], body["height"]) == ("accepted", fmt, 451, 300)
    async with service.post("/v1/namespaces/formats/images/photo-copy", data=reencoded_jpeg(data),
                            headers={"Content-Type": "image/jpeg"}) as response:
        copy = await response.json()
    assert (copy["verdict"], copy["duplicate_of"], copy["match"]) == ("duplicate", "photo", "near")
    within = made(sample_image("coffee"), fmt)  # 600x400 = 240,000 pixels: under the limit
    async with service.post("/v1/namespaces/formats/check", data=within) as response:
        assert response.status == 200, await response.text()
    over = made(sample_image("coffee").resize((700, 500)), fmt)  # 350,000 pixels
    async with service.post("/v1/namespaces/formats/images/big", data=over,
                            headers={"Content-Type": media_type}) as response:
        assert response.status == 413
        assert (await response.json())["error"] == "decompression_bomb"


def test_hash_command_reads_both_formats(tmp_path: Path) -> None:
    paths = []
    for fmt, name in (("HEIF", "photo.heic"), ("JXL", "photo.jxl")):
        path = tmp_path / name
        path.write_bytes(made(sample_image("coffee"), fmt))
        paths.append(str(path))
    result = subprocess.run([sys.executable, "-m", "imgdedup", "hash", *paths],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert '"format": "HEIF"' in lines[0] and '"format": "JXL"' in lines[1]


def test_scan_clusters_heic_and_jxl_with_their_jpeg_copies(tmp_path: Path) -> None:
    root = tmp_path / "estate"
    root.mkdir()
    heic = made(sample_image("chelsea"), "HEIF")
    jxl = made(sample_image("coffee"), "JXL")
    (root / "IMG_0001.HEIC").write_bytes(heic)
    (root / "chelsea-export.jpg").write_bytes(reencoded_jpeg(heic))
    (root / "coffee.jxl").write_bytes(jxl)
    (root / "coffee.jpg").write_bytes(reencoded_jpeg(jxl, 70))
    (root / "rocket.heif").write_bytes(made(sample_image("rocket"), "HEIF"))
    result = run(root, tmp_path / "out")
    where = cluster_of(result.report)
    assert where["IMG_0001.HEIC"] == where["chelsea-export.jpg"]
    assert where["coffee.jxl"] == where["coffee.jpg"]
    assert where["coffee.jxl"] != where["IMG_0001.HEIC"] and "rocket.heif" not in where
    assert not result.report.get("unreadable")


def test_hashing_benchmark_covers_the_formats(capsys: pytest.CaptureFixture[str]) -> None:
    from imgdedup_devtools.bench import hashing

    line = hashing.run(count=1, min_seconds=0.01, formats=("HEIF", "JXL"))
    results = line["results"]
    assert isinstance(results, dict) and set(results) == {"1280x960 HEIF", "1280x960 JXL"}
    assert "breakdown_1280x960_jpeg_ms" not in line
    assert "1280x960 HEIF" in capsys.readouterr().out


@pytest.mark.parametrize("fmt", FORMATS)
def test_scan_thumbnails_are_upright_and_guarded(fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from imgdedup.scan.worker import make_thumbnail

    upright = sample_image("rocket")  # 640x427
    exif = Image.Exif()
    exif[0x0112] = 6
    data = made(upright.transpose(Image.Transpose.ROTATE_90), fmt, exif=exif.tobytes())
    with Image.open(io.BytesIO(make_thumbnail(data, 128, LIMITS.max_pixels))) as thumb:
        assert thumb.size == (128, 85)
    refuse_pixel_decoding(monkeypatch)
    with pytest.raises((DecompressionBomb, ValueError)):
        make_thumbnail(data, 128, 640 * 427 - 1)

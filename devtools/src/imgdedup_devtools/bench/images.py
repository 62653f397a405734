"""Benchmark inputs made on the spot from the bundled samples (nothing downloaded)."""

from __future__ import annotations

import io
from importlib.resources import files

import numpy as np
from PIL import Image

SAMPLES = ("astronaut", "camera", "chelsea", "coffee", "rocket")


def sample_bytes(name: str) -> bytes:
    """The bundled JPEG `name` (one of SAMPLES) as stored."""
    return files("imgdedup_devtools.samples").joinpath(f"{name}.jpg").read_bytes()


def sample(name: str) -> Image.Image:
    return Image.open(io.BytesIO(sample_bytes(name))).convert("RGB")


def photo_1280x960(seed: int) -> Image.Image:
    """A 1280x960 photo-like image: an upscaled sample plus sensor-like grain, so that it
    encodes to the size of a camera photo rather than of a smooth upscale."""
    rng = np.random.default_rng(seed)
    base = sample(SAMPLES[seed % len(SAMPLES)]).resize((1280, 960), Image.Resampling.BICUBIC)
    pixels = np.asarray(base, dtype=np.int16) + rng.normal(0, 3.0, size=(960, 1280, 3)).astype(np.int16)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    """`image` saved as `fmt` with Pillow's `options` (quality, ...)."""
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


#: Save options of `encoded`, per format.
TYPICAL_OPTIONS: dict[str, dict[str, object]] = {
    "JPEG": {"quality": 85}, "WEBP": {"quality": 80}, "PNG": {},
    "AVIF": {"quality": 70}, "HEIF": {"quality": 80}, "JXL": {"quality": 85},
}


def encoded(image: Image.Image, fmt: str) -> bytes:
    return encode(image, fmt, **TYPICAL_OPTIONS[fmt])

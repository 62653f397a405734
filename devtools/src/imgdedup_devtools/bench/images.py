"""Benchmark inputs made on the spot from the bundled samples (nothing downloaded)."""

from __future__ import annotations

import io
from importlib.resources import files

import numpy as np
from PIL import Image

SAMPLES = ("astronaut", "camera", "chelsea", "coffee", "rocket")


def sample(name: str) -> Image.Image:
    data = files("imgdedup_devtools.samples").joinpath(f"{name}.jpg").read_bytes()
    return Image.open(io.BytesIO(data)).convert("RGB")


def photo_1280x960(seed: int) -> Image.Image:
    """A 1280x960 photo-like image: an upscaled sample plus sensor-like grain, so the JPEG
    lands near the ~170 KB of a real camera-sized product shot."""
    rng = np.random.default_rng(seed)
    base = sample(SAMPLES[seed % len(SAMPLES)]).resize((1280, 960), Image.Resampling.BICUBIC)
    pixels = np.asarray(base, dtype=np.int16) + rng.normal(0, 3.0, size=(960, 1280, 3)).astype(np.int16)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def encoded(image: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    options = {"JPEG": {"quality": 85}, "WEBP": {"quality": 80}, "PNG": {}}[fmt]
    image.save(out, fmt, **options)
    return out.getvalue()

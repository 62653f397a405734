"""The copies an archive really holds of one photo, as deterministic transforms.

Each transform maps an RGB image to (bytes, format). Families are reported apart by the
accuracy benchmark; `geometric` (mirror, rotation) is reported separately because the
default matching deliberately does not treat a mirrored photo as the same picture.
"""

from __future__ import annotations

import io
from collections.abc import Callable

from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

Transform = Callable[[Image.Image], Image.Image]


def save(image: Image.Image, fmt: str = "JPEG", **options: object) -> bytes:
    out = io.BytesIO()
    if fmt == "JPEG" and not options:
        options = {"quality": 88}
    image.save(out, fmt, **options)
    return out.getvalue()


def _resize(scale: float) -> Transform:
    def apply(im: Image.Image) -> Image.Image:
        return im.resize((max(8, round(im.width * scale)), max(8, round(im.height * scale))), Image.Resampling.LANCZOS)
    return apply


def _thumbnail(side: int) -> Transform:
    def apply(im: Image.Image) -> Image.Image:
        out = im.copy()
        out.thumbnail((side, side), Image.Resampling.LANCZOS)
        return out
    return apply


def _gamma(gamma: float) -> Transform:
    table = [round(255 * (i / 255) ** gamma) for i in range(256)] * 3
    return lambda im: im.point(table)


def _tint(colour: tuple[int, int, int], amount: float) -> Transform:
    return lambda im: Image.blend(im, Image.new("RGB", im.size, colour), amount)


def _crop(keep_w: float, keep_h: float, anchor_x: float, anchor_y: float) -> Transform:
    """Keep a keep_w x keep_h fraction of the frame; anchor 0 = left/top, 0.5 = centre, 1 = right/bottom."""
    def apply(im: Image.Image) -> Image.Image:
        w, h = round(im.width * keep_w), round(im.height * keep_h)
        x, y = round((im.width - w) * anchor_x), round((im.height - h) * anchor_y)
        return im.crop((x, y, x + w, y + h))
    return apply


def _area_crop(removed: float, anchor_x: float, anchor_y: float) -> Transform:
    side = (1 - removed) ** 0.5
    return _crop(side, side, anchor_x, anchor_y)


def _watermark(im: Image.Image) -> Image.Image:
    out = im.copy().convert("RGBA")
    layer = Image.new("RGBA", out.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    size = max(10, out.width // 14)
    font = ImageFont.load_default(size=size)
    text = "(c) imgdedup stock"
    box = draw.textbbox((0, 0), text, font=font)
    x = (out.width - (box[2] - box[0])) // 2
    y = round(out.height * 0.78)
    draw.text((x, y), text, font=font, fill=(255, 255, 255, 150), stroke_width=1, stroke_fill=(0, 0, 0, 120))
    return Image.alpha_composite(out, layer).convert("RGB")


def _logo(im: Image.Image) -> Image.Image:
    out = im.copy()
    w, h = max(8, out.width // 6), max(6, out.height // 10)
    draw = ImageDraw.Draw(out)
    x0, y0 = out.width - w - out.width // 40, out.height // 40
    draw.rectangle((x0, y0, x0 + w, y0 + h), fill=(230, 30, 40))
    draw.rectangle((x0 + w // 5, y0 + h // 4, x0 + 4 * w // 5, y0 + 3 * h // 4), fill=(255, 255, 255))
    return out


def _border(fraction: float, colour: tuple[int, int, int]) -> Transform:
    return lambda im: ImageOps.expand(im, border=max(2, round(min(im.size) * fraction)), fill=colour)


def _letterbox(aspect: float) -> Transform:
    def apply(im: Image.Image) -> Image.Image:
        if im.width / im.height < aspect:
            canvas = Image.new("RGB", (round(im.height * aspect), im.height), (0, 0, 0))
        else:
            canvas = Image.new("RGB", (im.width, round(im.width / aspect)), (0, 0, 0))
        canvas.paste(im, ((canvas.width - im.width) // 2, (canvas.height - im.height) // 2))
        return canvas
    return apply


def _combo(im: Image.Image) -> Image.Image:
    im = _area_crop(0.10, 0.3, 0.6)(im)
    im = ImageEnhance.Brightness(im).enhance(1.1)
    return _resize(0.7)(im)


Variant = tuple[str, str, Transform, str, dict[str, object]]  # family, name, transform, format, save options

IDENTITY: Transform = lambda im: im  # noqa: E731

VARIANTS: list[Variant] = [
    ("reencode", "jpeg-q15", IDENTITY, "JPEG", {"quality": 15}),
    ("reencode", "jpeg-q40", IDENTITY, "JPEG", {"quality": 40}),
    ("reencode", "jpeg-q75", IDENTITY, "JPEG", {"quality": 75}),
    ("reencode", "jpeg-q95", IDENTITY, "JPEG", {"quality": 95}),
    ("reencode", "png", IDENTITY, "PNG", {}),
    ("reencode", "webp-q60", IDENTITY, "WEBP", {"quality": 60}),
    ("resize", "half", _resize(0.5), "JPEG", {}),
    ("resize", "quarter", _resize(0.25), "JPEG", {}),
    ("resize", "upscale-1.5", _resize(1.5), "JPEG", {}),
    ("resize", "thumb-160", _thumbnail(160), "JPEG", {}),
    ("colour", "brightness-0.75", lambda im: ImageEnhance.Brightness(im).enhance(0.75), "JPEG", {}),
    ("colour", "brightness-1.25", lambda im: ImageEnhance.Brightness(im).enhance(1.25), "JPEG", {}),
    ("colour", "contrast-0.7", lambda im: ImageEnhance.Contrast(im).enhance(0.7), "JPEG", {}),
    ("colour", "contrast-1.3", lambda im: ImageEnhance.Contrast(im).enhance(1.3), "JPEG", {}),
    ("colour", "saturation-1.5", lambda im: ImageEnhance.Color(im).enhance(1.5), "JPEG", {}),
    ("colour", "gamma-0.7", _gamma(0.7), "JPEG", {}),
    ("colour", "gamma-1.4", _gamma(1.4), "JPEG", {}),
    ("colour", "tint-orange", _tint((255, 140, 0), 0.15), "JPEG", {}),
    ("colour", "greyscale", lambda im: im.convert("L").convert("RGB"), "JPEG", {}),
    ("colour", "autolevels", lambda im: ImageOps.autocontrast(im, cutoff=1), "JPEG", {}),
    ("filter", "blur-1.5", lambda im: im.filter(ImageFilter.GaussianBlur(1.5)), "JPEG", {}),
    ("filter", "sharpen", lambda im: im.filter(ImageFilter.UnsharpMask(2, 150, 2)), "JPEG", {}),
    ("overlay", "text-watermark", _watermark, "JPEG", {}),
    ("overlay", "logo-box", _logo, "JPEG", {}),
    ("overlay", "border-white-5%", _border(0.05, (255, 255, 255)), "JPEG", {}),
    ("overlay", "border-black-10%", _border(0.10, (0, 0, 0)), "JPEG", {}),
    ("overlay", "letterbox-16:9", _letterbox(16 / 9), "JPEG", {}),
    ("overlay", "pillarbox-1:1", _letterbox(1.0), "JPEG", {}),
    ("crop", "centre-5%", _area_crop(0.05, 0.5, 0.5), "JPEG", {}),
    ("crop", "centre-15%", _area_crop(0.15, 0.5, 0.5), "JPEG", {}),
    ("crop", "centre-30%", _area_crop(0.30, 0.5, 0.5), "JPEG", {}),
    ("crop", "corner-10%", _area_crop(0.10, 0.0, 0.0), "JPEG", {}),
    ("crop", "corner-20%", _area_crop(0.20, 1.0, 1.0), "JPEG", {}),
    ("crop", "offcentre-30%", _area_crop(0.30, 0.2, 0.7), "JPEG", {}),
    ("crop", "width-80%", _crop(0.8, 1.0, 0.5, 0.5), "JPEG", {}),
    ("crop", "height-75%-top", _crop(1.0, 0.75, 0.5, 0.0), "JPEG", {}),
    ("combination", "crop10+bright+resize", _combo, "JPEG", {"quality": 60}),
    ("combination", "thumb+grey+webp", lambda im: _thumbnail(200)(im).convert("L").convert("RGB"), "WEBP", {"quality": 70}),
    ("geometric", "mirror", lambda im: ImageOps.mirror(im), "JPEG", {}),
    ("geometric", "rotate-90", lambda im: im.transpose(Image.Transpose.ROTATE_90), "JPEG", {}),
    ("geometric", "rotate-180", lambda im: im.transpose(Image.Transpose.ROTATE_180), "JPEG", {}),
]

NEGATIVE_TRANSFORMS: list[Variant] = [
    ("negative", "raw", IDENTITY, "JPEG", {}),
    ("negative", "reencode-q88", IDENTITY, "JPEG", {"quality": 88}),
    ("negative", "half-q50", _resize(0.5), "JPEG", {"quality": 50}),
]

#: Issue 12's "non-geometric" recall: the copies that keep the whole frame.
ENCODE_RESIZE_COLOUR_FILTER = ("reencode", "resize", "colour", "filter")
NON_GEOMETRIC = ("reencode", "resize", "colour", "filter", "overlay", "crop", "combination")

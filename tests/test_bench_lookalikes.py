"""What the accuracy benchmark excuses as "the same pixels" (`imgdedup_devtools.bench.lookalikes`)."""

from __future__ import annotations

import numpy as np
from helpers import sample_image
from imgdedup_devtools.bench.lookalikes import counted_apart, pixel_thumbnail, same_pixels
from PIL import Image, ImageDraw


def _card(suit_dots: list[tuple[int, int]]) -> Image.Image:
    image = Image.new("RGB", (250, 350), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for x, y in suit_dots:
        draw.ellipse((x - 25, y - 25, x + 25, y + 25), fill=(0, 0, 0))
    return image


def test_identical_files_and_resizes_show_the_same_pixels():
    photo = sample_image("coffee")
    stored = pixel_thumbnail(photo)
    others = np.stack([pixel_thumbnail(photo), pixel_thumbnail(photo.resize((photo.width // 3, photo.height // 3), Image.Resampling.LANCZOS))])
    assert same_pixels(stored, others).tolist() == [True, True]


def test_look_alikes_do_not_show_the_same_pixels():
    four = _card([(70, 80), (180, 80), (70, 270), (180, 270)])
    five = _card([(70, 80), (180, 80), (70, 270), (180, 270), (125, 175)])
    photo = sample_image("coffee")
    others = np.stack([pixel_thumbnail(five), pixel_thumbnail(photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT))])
    assert same_pixels(pixel_thumbnail(four), others).tolist() == [False, False]
    assert same_pixels(pixel_thumbnail(photo), others[1:]).tolist() == [False]


def test_counted_apart_by_name():
    assert counted_apart("a.png", "a.png")
    assert counted_apart("openclipart__stars_star_43pt02step.png", "openclipart__stars_star_89pt03step.png")
    assert not counted_apart("openclipart__white_white_c_4.png", "openclipart__white_white_s_4.png")


def test_different_thin_line_drawings_do_not_show_the_same_pixels():
    # Little ink on white: two different drawings differ by little in absolute terms.
    def drawing(points: list[tuple[int, int]]) -> Image.Image:
        image = Image.new("RGB", (900, 900), (255, 255, 255))
        ImageDraw.Draw(image).line(points, fill=(0, 0, 0), width=1)
        return image

    a = drawing([(100, 100), (800, 450), (100, 800), (450, 100), (800, 800)])
    b = drawing([(100, 450), (800, 100), (450, 800), (100, 100), (800, 450)])
    assert not same_pixels(pixel_thumbnail(a), pixel_thumbnail(b)[None])[0]
    assert same_pixels(pixel_thumbnail(a), pixel_thumbnail(a.resize((450, 450), Image.Resampling.LANCZOS))[None])[0]

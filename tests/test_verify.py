"""The second look (`imgdedup.fingerprint.second_look`) and how the decision rules use it."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
from helpers import SAMPLE_NAMES, sample_image
from PIL import Image, ImageEnhance

from imgdedup.decisions.rules import Candidate, Lookup, MatchKind, Policy, Verdict, decide
from imgdedup.fingerprint import ImageLimits, fingerprint
from imgdedup.fingerprint.second_look import second_look, similarity
from imgdedup.fingerprint.thumbnails import THUMBNAIL_BYTES

LIMITS = ImageLimits(max_bytes=25 * 1024 * 1024, max_pixels=50_000_000)


def jpeg(image: Image.Image, quality: int = 85) -> bytes:
    out = io.BytesIO()
    image.convert("RGB").save(out, "JPEG", quality=quality)
    return out.getvalue()


def thumbs(image: Image.Image) -> bytes:
    return fingerprint(jpeg(image), LIMITS).thumbnail


def crop(image: Image.Image, left: float, top: float, right: float, bottom: float) -> Image.Image:
    w, h = image.size
    return image.crop((round(w * left), round(h * top), round(w * right), round(h * bottom)))


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    return {name: sample_image(name) for name in SAMPLE_NAMES}


def test_thumbnails_are_part_of_the_fingerprint(photos):
    blob = thumbs(photos["chelsea"])
    assert len(blob) == THUMBNAIL_BYTES
    assert similarity(blob, blob) == pytest.approx(1.0)


def test_blank_picture_gets_no_thumbnails():
    assert fingerprint(jpeg(Image.new("RGB", (200, 150), (40, 40, 40))), LIMITS).thumbnail == b""


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_copies_and_crops_look_alike(photos, name):
    image = photos[name]
    stored = thumbs(image)
    copies = {
        "brighter": ImageEnhance.Brightness(image).enhance(1.3),
        "less contrast": ImageEnhance.Contrast(image).enhance(0.7),
        "half size": image.resize((image.width // 2, image.height // 2)),
        "centre crop 20 %": crop(image, 0.05, 0.05, 0.95, 0.95),
        "corner crop 20 %": crop(image, 0.1, 0.1, 1.0, 1.0),
        "top 75 %": crop(image, 0.0, 0.0, 1.0, 0.75),
    }
    for label, copy in copies.items():
        sim = similarity(thumbs(copy), stored)
        assert sim is not None and sim >= 0.9, (label, sim)


def test_different_photos_do_not_look_alike(photos):
    blobs = {name: thumbs(image) for name, image in photos.items()}
    for a, b in itertools.combinations(blobs, 2):
        sim = similarity(blobs[a], blobs[b])
        assert sim is not None and sim < 0.8, (a, b, sim)


def test_mirror_matches_only_when_symmetries_are_asked_for(photos):
    image = photos["rocket"]
    stored, mirrored = thumbs(image), thumbs(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    rotated = thumbs(image.transpose(Image.Transpose.ROTATE_90))
    assert similarity(mirrored, stored) < 0.8
    assert similarity(mirrored, stored, symmetries=True) >= 0.95
    assert similarity(rotated, stored, symmetries=True) >= 0.95


def test_missing_or_malformed_thumbnails_give_no_similarity(photos):
    blob = thumbs(photos["coffee"])
    assert similarity(b"", blob) is None
    assert similarity(blob, b"") is None
    assert similarity(blob, blob[:-1]) is None


def test_flat_views_leave_the_decision_to_the_distance():
    flat = bytes(THUMBNAIL_BYTES)
    ramp = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (32, 1)).tobytes()
    # No shape to correlate on one side: no similarity (not 0, which would send even an
    # exact-looking copy to review).
    assert similarity(flat, flat) is None
    assert similarity(flat, ramp) is None and similarity(ramp, flat) is None
    assert similarity(ramp, ramp) == pytest.approx(1.0)
    assert decide(Lookup((candidate("flat", 1, 0, flat),)), Policy(8, 12), flat).verdict == Verdict.DUPLICATE


# --- the decision rules with the second look --------------------------------------------


def candidate(image_id: str, seq: int, distance: int, thumbnail: bytes) -> Candidate:
    return Candidate(image_id, seq, distance, MatchKind.NEAR, thumbnail)


def test_review_band_candidate_confirmed_by_thumbnails_is_a_duplicate(photos):
    # The query is a crop of the stored original: it is compared with the original's windows.
    query, original, other = thumbs(crop(photos["chelsea"], 0, 0, 0.9, 0.9)), thumbs(photos["chelsea"]), thumbs(photos["camera"])
    policy = Policy(8, 12)
    found = Lookup((candidate("other", 1, 10, other), candidate("copy", 2, 11, original)))
    decision = decide(found, policy, query)
    assert (decision.verdict, decision.duplicate_of, decision.distance) == (Verdict.DUPLICATE, "copy", 11)
    assert decision.similarity >= 0.9
    # Unconfirmed, the earliest look-alike in the band is named for review; the other
    # photo, whose code met the query's by chance, is another picture and not named.
    strict = decide(found, Policy(8, 12, confirm_similarity=1.0), query)
    assert (strict.verdict, strict.duplicate_of) == (Verdict.REVIEW, "copy")
    assert second_look(query, other).similarity < Policy(8, 12).distinct_similarity
    alone = decide(Lookup((candidate("other", 1, 10, other),)), Policy(8, 12), query)
    assert alone.verdict is Verdict.ACCEPTED
    every_candidate = Policy(8, 12, confirm_similarity=1.0, distinct_similarity=-1.0)
    assert decide(found, every_candidate, query).duplicate_of == "other"


def boxed(image: Image.Image, side: float) -> Image.Image:
    """The picture with a black box over its centre, `side` of its width and height."""
    w, h = image.size
    out = image.copy()
    out.paste((0, 0, 0), (round(w * (0.5 - side / 2)), round(h * (0.5 - side / 2)),
                          round(w * (0.5 + side / 2)), round(h * (0.5 + side / 2))))
    return out


def test_look_alike_within_the_duplicate_radius_goes_to_review(photos):
    query, stored = thumbs(boxed(photos["chelsea"], 0.2)), thumbs(photos["chelsea"])
    decision = decide(Lookup((candidate("stored", 1, 5, stored),)), Policy(8, 12, min_similarity=0.9), query)
    assert (decision.verdict, decision.duplicate_of) == (Verdict.REVIEW, "stored")
    assert Policy(8, 12).distinct_similarity <= decision.similarity < 0.9


def test_a_candidate_that_hardly_correlates_is_another_picture(photos):
    query, other = thumbs(photos["chelsea"]), thumbs(photos["camera"])
    policy = Policy(8, 12)
    decision = decide(Lookup((candidate("other", 1, 5, other),)), policy, query)
    assert decision.verdict is Verdict.ACCEPTED
    assert second_look(query, other).similarity < policy.distinct_similarity
    reviewing_everything = Policy(8, 12, distinct_similarity=-1.0)
    assert decide(Lookup((candidate("other", 1, 5, other),)), reviewing_everything, query).verdict is Verdict.REVIEW


def test_earliest_confirmed_candidate_wins(photos):
    query = thumbs(photos["astronaut"])
    near_copy = thumbs(photos["astronaut"].resize((300, 300)))
    found = Lookup((candidate("late", 7, 2, near_copy), candidate("early", 3, 7, near_copy)))
    assert decide(found, Policy(8, 12), query).duplicate_of == "early"


def test_records_without_thumbnails_are_judged_by_distance(photos):
    query = thumbs(photos["rocket"])
    assert decide(Lookup((candidate("old", 1, 8, b""),)), Policy(8, 12), query).verdict == Verdict.DUPLICATE
    assert decide(Lookup((candidate("old", 1, 9, b""),)), Policy(8, 12), query).verdict == Verdict.REVIEW
    assert decide(Lookup((candidate("old", 1, 9, query),)), Policy(8, 12), b"").verdict == Verdict.REVIEW


def test_policy_rejects_similarities_outside_correlation_range():
    with pytest.raises(ValueError):
        Policy(8, 12, confirm_similarity=1.5)
    with pytest.raises(ValueError):
        Policy(8, 12, min_similarity=-2)


# --- colour: the second look's check on the best-matching views --------------------------


def _card(pip_colour: tuple[int, int, int], size: tuple[int, int] = (250, 350)) -> Image.Image:
    """A playing-card-like picture: the same layout of pips, only their colour differs."""
    from PIL import ImageDraw

    image = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    w, h = size
    for cx, cy in ((0.3, 0.2), (0.7, 0.2), (0.3, 0.8), (0.7, 0.8), (0.5, 0.5)):
        draw.ellipse((w * cx - 30, h * cy - 30, w * cx + 30, h * cy + 30), fill=pip_colour)
    draw.rectangle((10, 10, 40, 60), fill=pip_colour)
    return image


def _flag(bottom: tuple[int, int, int]) -> Image.Image:
    image = Image.new("RGB", (300, 200), (255, 255, 255))
    image.paste(bottom, (0, 100, 300, 200))
    image.paste((200, 160, 40), (130, 70, 170, 130))  # an emblem across the bands
    return image


def test_thumbnails_carry_both_views_colour(photos):
    from imgdedup.fingerprint.thumbnails import CHROMA_BYTES, CHROMA_SIDE, GREY_THUMBNAIL_BYTES

    colour = slice(GREY_THUMBNAIL_BYTES, GREY_THUMBNAIL_BYTES + CHROMA_BYTES)
    blob = thumbs(photos["coffee"])
    chroma = np.frombuffer(blob[colour], dtype=np.uint8)
    assert len(chroma) == 2 * 2 * CHROMA_SIDE * CHROMA_SIDE and chroma.std() > 2  # a colour photo
    grey = np.frombuffer(thumbs(photos["camera"])[colour], dtype=np.uint8)
    assert np.abs(grey.astype(int) - 128).max() <= 2  # a grey picture: neutral planes


def test_same_layout_in_other_colours_is_not_a_copy():
    red, black = thumbs(_card((220, 20, 30))), thumbs(_card((10, 10, 10)))
    # Grey alone cannot tell them apart ...
    assert similarity(red, black) > 0.9
    # ... colour does: a colourful query against a grey candidate is no copy.
    assert second_look(red, black).colour is False
    blue_flag, green_flag = thumbs(_flag((90, 180, 230))), thumbs(_flag((0, 110, 40)))
    assert second_look(blue_flag, green_flag).similarity > 0.8
    assert second_look(blue_flag, green_flag).colour is False
    decision = decide(Lookup((candidate("black", 1, 4, black),)), Policy(10, 12), red)
    assert (decision.verdict, decision.duplicate_of) == (Verdict.REVIEW, "black")


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_colour_work_on_a_copy_does_not_fail_the_colour_check(photos, name):
    image = photos[name]
    stored = thumbs(image)
    copies = {
        "greyscale": image.convert("L").convert("RGB"),
        "saturated": ImageEnhance.Color(image).enhance(1.5),
        "tinted": Image.blend(image, Image.new("RGB", image.size, (255, 140, 0)), 0.15),
        "darker": ImageEnhance.Brightness(image).enhance(0.75),
        "logo": _with_logo(image),
    }
    for label, copy in copies.items():
        look = second_look(thumbs(copy), stored)
        assert look.colour is not False, label
    red_card = thumbs(_card((220, 20, 30)))
    assert second_look(thumbs(_card((220, 20, 30)).convert("L").convert("RGB")), red_card).colour is None  # grey copy
    assert second_look(thumbs(ImageEnhance.Color(_card((220, 20, 30))).enhance(1.5)), red_card).colour is True


def _with_logo(image: Image.Image) -> Image.Image:
    from PIL import ImageDraw

    out = image.copy()
    w, h = out.width // 6, out.height // 10
    ImageDraw.Draw(out).rectangle((out.width - w - 10, 10, out.width - 10, 10 + h), fill=(230, 30, 40))
    return out


def test_records_without_colour_planes_are_compared_in_grey_only(photos):
    from imgdedup.fingerprint.thumbnails import GREY_THUMBNAIL_BYTES

    red, black = thumbs(_card((220, 20, 30))), thumbs(_card((10, 10, 10)))
    old = black[:GREY_THUMBNAIL_BYTES]  # a record written before the colour planes
    look = second_look(red, old)
    assert look.colour is None and look.similarity == pytest.approx(second_look(red, black).similarity)


def _led(size: tuple[int, int]) -> Image.Image:
    """An LED-like icon: a frame with a lit, shaded face, stretched to `size`."""
    from PIL import ImageDraw

    image = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    w, h = size
    draw.rectangle((0, 0, w - 1, h - 1), fill=(120, 120, 130))
    draw.rectangle((w // 10, h // 10, w - w // 10, h - h // 10), fill=(70, 70, 220))
    draw.rectangle((w // 5, h // 7, w - w // 5, h // 3), fill=(200, 200, 250))
    return image


def test_views_of_another_shape_are_not_compared(photos):
    square, tall = thumbs(_led((200, 200))), thumbs(_led((200, 420)))
    # The thumbnails are squares: in grey (and colour) the two icons look the same ...
    look = second_look(square, tall)
    assert look.shape is False
    decision = decide(Lookup((candidate("tall", 1, 2, tall),)), Policy(10, 12), square)
    assert decision.verdict == Verdict.REVIEW
    # ... while a copy, a crop that changes the aspect ratio (found through a window)
    # and a letterboxed copy (trimmed back) keep a view of the same shape.
    image = photos["chelsea"]
    stored = thumbs(image)
    letterboxed = Image.new("RGB", (image.width, round(image.width * 9 / 16) + 80))
    letterboxed.paste(image, (0, 40))
    for copy in (image.resize((image.width // 3, image.height // 3)), crop(image, 0, 0, 0.8, 1.0),
                 crop(image, 0, 0, 1.0, 0.75), letterboxed):
        look = second_look(thumbs(copy), stored)
        assert look.shape is True and look.similarity >= 0.9


# --- dominant hue -------------------------------------------------------------------------


def planet(texture: Image.Image, colour: tuple[int, int, int], side: int = 320) -> Image.Image:
    """One render of a planet: the same shaded, textured disc on black, in one colour."""
    grey = texture.convert("L").resize((side, side))
    yy, xx = np.mgrid[0:side, 0:side] / (side - 1) - 0.5
    disc = (xx**2 + yy**2) <= 0.42**2
    light = np.clip(1.1 - 1.6 * np.hypot(xx + 0.15, yy + 0.15), 0.15, 1.0)
    shade = np.asarray(grey, dtype=np.float64) / 255.0 * 0.5 + 0.5
    level = np.where(disc, shade * light, 0.0)
    rgb = np.stack([level * c for c in colour], axis=-1)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def planets(photos: dict[str, Image.Image]) -> dict[str, Image.Image]:
    texture = photos[SAMPLE_NAMES[0]]
    return {name: planet(texture, colour) for name, colour in
            {"yellow": (240, 200, 40), "green": (40, 200, 90), "blue": (60, 90, 240)}.items()}


def test_renders_in_other_hues_are_different_pictures(planets: dict[str, Image.Image]) -> None:
    yellow, green, blue = (thumbs(planets[name]) for name in ("yellow", "green", "blue"))
    for a, b in ((yellow, green), (yellow, blue), (green, blue)):
        look = second_look(a, b)
        assert look.similarity is not None and look.similarity > 0.9  # alike in grey
        assert look.different


@pytest.mark.parametrize("edit", [
    lambda im: ImageEnhance.Color(im).enhance(1.5),
    lambda im: ImageEnhance.Brightness(im).enhance(0.75),
    lambda im: ImageEnhance.Contrast(im).enhance(1.3),
    lambda im: Image.blend(im, Image.new("RGB", im.size, (255, 140, 0)), 0.15),
    lambda im: im.convert("L").convert("RGB"),
], ids=["saturation", "brightness", "contrast", "tint", "greyscale"])
def test_colour_work_on_a_render_keeps_its_hue(planets: dict[str, Image.Image], edit) -> None:
    for original in planets.values():
        assert not second_look(thumbs(edit(original)), thumbs(original)).different


def test_a_render_in_another_hue_is_accepted_not_reviewed(planets: dict[str, Image.Image]) -> None:
    policy = Policy(duplicate_radius=10, review_radius=12)
    stored = fingerprint(jpeg(planets["yellow"]), LIMITS)
    query = fingerprint(jpeg(planets["green"]), LIMITS)
    distance = min(bin(a ^ b).count("1") for a in query.codes for b in stored.codes)
    assert distance <= policy.duplicate_radius  # the codes alone would call it a copy
    candidate = Candidate("yellow", 1, distance, MatchKind.NEAR, stored.thumbnail)
    assert decide(Lookup((candidate,)), policy, query.thumbnail).verdict is Verdict.ACCEPTED
    copy = fingerprint(jpeg(planets["yellow"], quality=40), LIMITS)
    assert decide(Lookup((candidate,)), policy, copy.thumbnail).verdict is Verdict.DUPLICATE

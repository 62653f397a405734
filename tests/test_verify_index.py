"""The second look on every index backend: stored thumbnails travel with candidates."""

from __future__ import annotations

import io
import json

import pytest
from helpers import sample_image
from PIL import Image

from imgdedup.decisions.rules import Decision, Policy, Verdict, decide
from imgdedup.fingerprint import ImageLimits, fingerprint
from imgdedup.records import ImageRecord

NS = "verify"
# Whole-image codes only, so a small crop lands between the two radii.
LIMITS = ImageLimits(max_bytes=25 * 1024 * 1024, max_pixels=50_000_000, crop_windows=False)


def fp_of(image: Image.Image):
    out = io.BytesIO()
    image.convert("RGB").save(out, "JPEG", quality=85)
    return fingerprint(out.getvalue(), LIMITS)


def crop(image: Image.Image, removed: float) -> Image.Image:
    w, h = image.size
    return image.crop((round(w * removed), round(h * removed), w, h))


async def register(index, image_id, fp, policy):
    return (await index.register(NS, image_id, fp, lambda found: decide(found, policy, fp.thumbnail),
                                 radius=policy.review_radius)).record


async def test_review_band_crop_is_confirmed_with_stored_thumbnails(index):
    original, cropped = fp_of(sample_image("chelsea")), fp_of(crop(sample_image("chelsea"), 0.06))
    policy = Policy(8, 12)
    assert (await register(index, "orig", original, policy)).verdict == Verdict.ACCEPTED
    found = await index.lookup(NS, cropped, radius=12)
    assert [c.image_id for c in found.candidates] == ["orig"]
    assert 8 < found.candidates[0].distance <= 12
    assert found.candidates[0].thumbnail == original.thumbnail
    record = await register(index, "crop", cropped, policy)
    assert (record.verdict, record.duplicate_of) == (Verdict.DUPLICATE, "orig")
    assert record.similarity is not None and record.similarity >= 0.9
    # What is stored survives a round trip, and only kept images keep thumbnails.
    stored = await index.get(NS, "orig")
    assert stored.thumbnail == original.thumbnail
    assert (await index.get(NS, "crop")).thumbnail == b""


async def test_removed_image_leaves_no_thumbnail_behind(index):
    original = fp_of(sample_image("rocket"))
    policy = Policy(8, 12)
    await register(index, "orig", original, policy)
    assert await index.remove(NS, "orig")
    assert (await index.lookup(NS, original, radius=12)).candidates == ()
    again = await register(index, "again", original, policy)
    assert again.verdict == Verdict.ACCEPTED


@pytest.mark.integration
async def test_redis_records_carry_thumbnails_of_kept_images_only(redis_index):
    policy = Policy(8, 12)
    original = fp_of(sample_image("coffee"))
    await register(redis_index, "orig", original, policy)
    copy = await register(redis_index, "copy", fp_of(sample_image("coffee").resize((300, 200))), policy)
    assert (copy.verdict, copy.duplicate_of) == (Verdict.DUPLICATE, "orig")
    raw = await redis_index._redis.get(redis_index.keys.key(NS, "rec:orig"))
    assert raw[:1] != b"{", "records are stored binary, not JSON"
    assert (await redis_index.get(NS, "orig")).thumbnail == original.thumbnail
    assert (await redis_index.get(NS, "copy")).thumbnail == b""


def test_records_from_json_of_older_and_newer_versions():
    record = ImageRecord.build(NS, "a", fp_of(sample_image("camera")), Decision(Verdict.ACCEPTED), 1, None)
    data = json.loads(record.to_json())
    older = {k: v for k, v in data.items() if k not in ("thumbnail", "similarity")}
    parsed = ImageRecord.from_json(json.dumps(older))
    assert (parsed.thumbnail, parsed.similarity, parsed.codes) == (b"", None, record.codes)
    newer = {**data, "field_of_a_later_version": 1}
    assert ImageRecord.from_json(json.dumps(newer)) == record

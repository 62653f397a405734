"""The stored forms of records and state entries: binary, versioned, and lossless for
everything a decision reads (codes and thumbnails), so decisions cannot move."""

from __future__ import annotations

import io

import numpy as np
import pytest
from helpers import SAMPLE_NAMES, sample_image

from imgdedup.decisions.rules import Candidate, Decision, Lookup, MatchKind, Policy, Verdict, decide
from imgdedup.fingerprint import ImageLimits, fingerprint
from imgdedup.index.redis.encoding import CorruptValue, decode_record, encode_record, kept_state, thumbnail_of
from imgdedup.index.redis.pending import State
from imgdedup.records import ImageRecord

NS = "enc"
LIMITS = ImageLimits(max_bytes=25 * 1024 * 1024, max_pixels=50_000_000)


def fp_of(image, quality: int = 85):
    out = io.BytesIO()
    image.convert("RGB").save(out, "JPEG", quality=quality)
    return fingerprint(out.getvalue(), LIMITS)


def kept(name: str, seq: int = 7) -> ImageRecord:
    return ImageRecord.build(NS, f"id-{name}", fp_of(sample_image(name)), Decision(Verdict.ACCEPTED), seq, "evt-1")


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_kept_records_round_trip_exactly(name: str) -> None:
    record = kept(name)
    assert record.window_codes and record.thumbnail, "defaults: crop windows and thumbnails are stored"
    raw = encode_record(record)
    assert raw[:1] != b"{" and record.image_id.encode() in raw
    back = decode_record(raw, NS)
    assert back == record
    # compare=False fields and the decision inputs, byte for byte
    assert (back.codes, back.window_codes, back.thumbnail) == (record.codes, record.window_codes, record.thumbnail)
    assert back.created_at == record.created_at and thumbnail_of(raw) == record.thumbnail


def test_every_optional_field_round_trips() -> None:
    fp = fp_of(sample_image("coffee"))
    for decision in (
        Decision(Verdict.DUPLICATE, "orig-é", 0, MatchKind.EXACT),
        Decision(Verdict.DUPLICATE, "orig", 9, MatchKind.NEAR, 0.9512345678),
        Decision(Verdict.REVIEW, "orig", 12, MatchKind.NEAR, -0.25),
        Decision(Verdict.ACCEPTED),
    ):
        for event_id in (None, "", "event-ünï"):
            record = ImageRecord.build(NS, "x" * 512, fp, decision, 2**32 - 1, event_id)
            assert decode_record(encode_record(record), NS) == record


def test_incompressible_thumbnails_are_stored_raw_and_come_back() -> None:
    rng = np.random.default_rng(3)
    record = kept("camera")
    noisy = rng.integers(0, 256, len(record.thumbnail), dtype=np.uint8).tobytes()
    from dataclasses import replace

    record = replace(record, thumbnail=noisy)
    assert decode_record(encode_record(record), NS).thumbnail == noisy


def test_duplicates_store_no_window_codes_nor_thumbnails() -> None:
    fp = fp_of(sample_image("coffee"))
    assert fp.window_codes
    dup = ImageRecord.build(NS, "copy", fp, Decision(Verdict.DUPLICATE, "orig", 3, MatchKind.NEAR, 0.99), 2, None)
    assert (dup.window_codes, dup.thumbnail) == ((), b"")
    assert dup.codes == fp.codes, "the whole-image codes are told in every decision"
    assert decode_record(encode_record(dup), NS) == dup


def test_json_records_of_earlier_versions_are_still_read() -> None:
    record = kept("chelsea")
    assert decode_record(record.to_json(), NS) == record
    assert decode_record(record.to_json().encode(), NS) == record
    assert thumbnail_of(record.to_json().encode()) == record.thumbnail


def test_fields_a_later_version_appends_are_ignored() -> None:
    record = kept("astronaut")
    assert decode_record(encode_record(record) + b"\x05later", NS) == record


def test_truncated_records_are_refused_not_misread() -> None:
    raw = encode_record(kept("camera"))
    for cut in (1, 10, len(raw) // 2, len(raw) - 1):
        with pytest.raises(CorruptValue):
            decode_record(raw[:cut], NS)


def test_state_entries_binary_and_text() -> None:
    sha = "ab" * 32
    assert State.parse(kept_state(sha, "img|1")) == State(True, 0, sha, "img|1")
    assert len(kept_state(sha, "i")) == 1 + 32 + 1
    assert State.parse(f"K|{sha}|img|1".encode()) == State(True, 0, sha, "img|1")
    assert State.parse(f"P|123|{sha}|img".encode()) == State(False, 123, sha, "img")


def test_decisions_from_stored_thumbnails_equal_those_from_the_originals() -> None:
    """A query judged against each sample's stored (encoded, decoded) thumbnails gets the
    very decision it gets against the thumbnails as computed."""
    policy = Policy(8, 12)
    queries = [fp_of(sample_image(n).resize((300, 200)), quality=60) for n in SAMPLE_NAMES]
    for name in SAMPLE_NAMES:
        record = kept(name)
        stored = decode_record(encode_record(record), NS)
        for query in queries:
            for distance in (0, 5, 10, 12):
                live = Candidate(record.image_id, 1, distance, MatchKind.NEAR, record.thumbnail)
                read = Candidate(stored.image_id, 1, distance, MatchKind.NEAR, stored.thumbnail)
                assert decide(Lookup((read,)), policy, query.thumbnail) == decide(Lookup((live,)), policy, query.thumbnail)


@pytest.mark.integration
async def test_redis_stores_binary_records_and_reads_json_ones(redis_index) -> None:
    record = kept("coffee", seq=1)
    rec_key = redis_index.keys.record(NS, record.image_id)
    await redis_index._redis.set(rec_key, record.to_json())
    assert await redis_index.get(NS, record.image_id) == record
    fp = fp_of(sample_image("chelsea"))
    reg = await redis_index.register(NS, "fresh", fp, lambda found: decide(found, Policy(8, 12), fp.thumbnail), radius=12)
    raw = await redis_index._redis.get(redis_index.keys.record(NS, "fresh"))
    assert raw[:1] != b"{" and b'"thumbnail"' not in raw
    assert await redis_index.get(NS, "fresh") == reg.record
    state = await redis_index._redis.hget(redis_index.keys.state(NS), str(reg.record.seq))
    assert state == kept_state(fp.sha256_hex, "fresh")

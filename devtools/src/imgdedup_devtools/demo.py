"""`imgdedup demo`: the whole pipeline on this machine, in one command.

Starts a Kafka-compatible broker (Tansu), uses Redis if one answers (else the in-memory
index, saying so), starts the service, publishes sample uploads with real variants
(re-encoded, resized, colour-shifted copies of the sample photos, an exact copy, a
corrupt file and a malformed event), prints every decision, then keeps serving HTTP
until Ctrl-C. Authentication is on, as deployed: the demo makes a throw-away API key
(admin in its own namespaces, gone when it stops) and prints curl lines that use it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from PIL import Image, ImageEnhance

from imgdedup._gen.imgdedup.v1 import events_pb2
from imgdedup.adapters.events import UploadEvent, decode_decision, encode_upload
from imgdedup.adapters.kafka_clients import ensure_topics
from imgdedup.app import Service
from imgdedup.config import Settings
from imgdedup_devtools.bench.images import encode, sample, sample_bytes
from imgdedup_devtools.broker import TansuBroker, free_port
from imgdedup_devtools.keys import throwaway_key


@dataclass(frozen=True)
class SampleUpload:
    image_id: str
    description: str
    data: bytes | None
    raw_value: bytes | None = None  # a malformed record, sent as-is


def sample_uploads() -> tuple[list[SampleUpload], list[SampleUpload]]:
    """(originals, variants): originals go first so the demo's first-wins is predictable."""
    names = ["astronaut", "chelsea", "coffee", "rocket", "camera"]
    images = {n: sample(n) for n in names}
    originals = [SampleUpload(f"{n}.jpg", "original photo", sample_bytes(n)) for n in names]
    variants: list[tuple[str, str, Callable[[], bytes]]] = [
        ("astronaut-q30.jpg", "re-encoded as JPEG quality 30", lambda: encode(images["astronaut"], "JPEG", quality=30)),
        ("astronaut-copy.jpg", "byte-identical copy", lambda: originals[0].data or b""),
        ("chelsea-half.png", "resized to 50 %, saved as PNG",
         lambda: encode(images["chelsea"].resize((images["chelsea"].width // 2, images["chelsea"].height // 2)), "PNG")),
        ("coffee-warm.webp", "colour-shifted (+25 % saturation, +10 % brightness), WebP",
         lambda: encode(ImageEnhance.Brightness(ImageEnhance.Color(images["coffee"]).enhance(1.25)).enhance(1.1), "WEBP", quality=80)),
        ("rocket-thumb.jpg", "thumbnail 160 px wide",
         lambda: encode(images["rocket"].resize((160, 107)), "JPEG", quality=85)),
        ("camera-gray.png", "greyscale PNG", lambda: encode(images["camera"].convert("L"), "PNG")),
        ("chelsea-rotated.jpg", "rotated 90 degrees (rotation matching is not enabled: a new image)",
         lambda: encode(images["chelsea"].transpose(Image.Transpose.ROTATE_90), "JPEG", quality=85)),
    ]
    out = [SampleUpload(i, d, make()) for i, d, make in variants]
    out.append(SampleUpload("broken.jpg", "corrupt file (truncated JPEG)", (originals[2].data or b"")[:2000]))
    out.append(SampleUpload("malformed-event", "malformed event (not protobuf)", None, raw_value=b"\x08\xff\xff garbage"))
    return originals, out


async def _redis_answers(url: str) -> bool:
    client = aioredis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    try:
        await client.ping()
        return True
    except Exception:
        return False
    finally:
        await client.aclose()


def _print_decision(description: str, d: events_pb2.DedupDecision) -> None:
    detail = ""
    if d.verdict in ("duplicate", "review"):
        detail = f"of {d.duplicate_of} ({d.match}, distance {d.distance})"
    elif d.verdict == "rejected":
        detail = f"{d.error.code}: {d.error.detail}"
    print(f"  {d.image_id or '?':<22} {d.verdict:<10} {detail:<44} <- {description}")


async def run_demo(env: dict[str, str] | None = None, keep_serving: bool = True) -> int:
    env = dict(os.environ if env is None else env)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    redis_url = env.get("IMGDEDUP_REDIS_URL", "redis://127.0.0.1:6379/0")
    use_redis = await _redis_answers(redis_url)
    print("imgdedup demo")
    key_folder = tempfile.TemporaryDirectory(prefix="imgdedup-demo-keys-")
    broker = TansuBroker().start()
    try:
        print(f"  broker : Tansu (Kafka protocol) on {broker.bootstrap}, in-memory")
        if use_redis:
            print(f"  index  : Redis MIH at {redis_url}")
        else:
            print(f"  index  : in-memory (no Redis answered at {redis_url}); set IMGDEDUP_REDIS_URL to use one")
        port = int(env.get("IMGDEDUP_HTTP_PORT", "8080"))
        try:
            import socket

            with socket.socket() as probe:
                probe.bind((env.get("IMGDEDUP_HTTP_HOST", "127.0.0.1"), port))
        except OSError:
            port = free_port()
        namespace = f"demo-{time.strftime('%H%M%S')}-{uuid.uuid4().hex[:4]}"
        token, keys_file = throwaway_key(Path(key_folder.name), "demo", (namespace,))
        overrides = {
            "api_keys_file": str(keys_file),
            "kafka_bootstrap": broker.bootstrap,
            "redis_url": redis_url if use_redis else "",
            "http_port": port,
            "log_level": env.get("IMGDEDUP_LOG_LEVEL", "ERROR"),
        }
        settings = Settings.from_env({k: v for k, v in env.items() if k.startswith("IMGDEDUP_") and k != "IMGDEDUP_REDIS_URL"}, **overrides)
        from imgdedup import logs

        logs.configure(settings.log_level, "text")
        await ensure_topics(settings, partitions=3)
        service = Service(settings)
        await service.start()
        print(f"  service: HTTP on http://{settings.http_host}:{service.http_port}, namespace {namespace!r}")
        print(f"  API key: {token} (admin in {namespace!r}; a throw-away key, gone when the demo stops)\n")
        interrupted = asyncio.create_task(stop.wait())
        try:
            publishing = asyncio.create_task(_publish_and_print(settings, namespace))
            await asyncio.wait([publishing, interrupted], return_when=asyncio.FIRST_COMPLETED)
            if not publishing.done():
                publishing.cancel()
                await asyncio.gather(publishing, return_exceptions=True)
            else:
                publishing.result()
            if keep_serving and not stop.is_set():
                print("\n" + try_lines(f"http://{settings.http_host}:{service.http_port}", namespace, token))
                await stop.wait()
            print("\nstopping: draining, committing, closing")
        finally:
            interrupted.cancel()
            if service.consumer is not None:
                await service.consumer.stop()  # nothing in flight may re-create keys after the drop
            drop = getattr(service.index, "drop_namespace", None)
            if drop is not None:  # the demo's namespace is throwaway: leave the user's Redis as it was
                try:
                    await drop(namespace)
                except Exception as exc:  # best effort; say so
                    print(f"  (could not remove demo namespace {namespace!r} from Redis: {exc})")
            await service.stop()
    finally:
        broker.stop()
        key_folder.cleanup()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return 0


def try_lines(base: str, namespace: str, token: str) -> str:
    """What to try while the demo serves: curl lines that use the demo's key."""
    auth = f"-H 'Authorization: Bearer {token}'"
    sample = "devtools/src/imgdedup_devtools/samples/coffee.jpg"
    return (
        "Serving HTTP until Ctrl-C. Try:\n"
        f"  curl -s {auth} -H 'Content-Type: image/jpeg' --data-binary @{sample} "
        f"{base}/v1/namespaces/{namespace}/check\n"
        f"  curl -s {auth} {base}/v1/namespaces/{namespace}/images/astronaut.jpg/duplicates\n"
        f"  curl -s {base}/v1/namespaces/{namespace}/images/astronaut.jpg   # no key: 401 unauthenticated\n"
        f"  curl -s {base}/metrics | grep imgdedup_decisions"
    )


async def _publish_and_print(settings: Settings, namespace: str) -> None:
    from imgdedup.adapters.kafka_clients import connection_options

    producer = AIOKafkaProducer(**connection_options(settings), enable_idempotence=False, max_request_size=settings.max_image_bytes + 1_048_576)
    reader = AIOKafkaConsumer(
        settings.kafka_decisions_topic, **connection_options(settings),
        group_id=None, auto_offset_reset="earliest",
    )
    await producer.start()
    await reader.start()
    try:
        originals, variants = sample_uploads()
        for title, batch in (("originals", originals), ("variants", variants)):
            print(f"{title}:")
            expected: dict[str, str] = {}
            for sample in batch:
                event_id = uuid.uuid4().hex
                expected[event_id] = sample.description
                if sample.raw_value is not None:
                    value = sample.raw_value
                else:
                    value = encode_upload(UploadEvent(event_id, namespace, sample.image_id, "", sample.data, None))
                await producer.send_and_wait(settings.kafka_input_topic, value, key=sample.image_id.encode())
            pending = len(expected)
            deadline = time.monotonic() + 60
            malformed_description = next((s.description for s in batch if s.raw_value is not None), None)
            while pending and time.monotonic() < deadline:
                result = await reader.getmany(timeout_ms=500)
                for records in result.values():
                    for record in records:
                        message = decode_decision(record.value, record.headers)
                        if message.namespace not in (namespace, ""):
                            continue  # decisions of earlier demo runs
                        description = expected.pop(message.event_id, None)
                        if description is None and message.verdict == "rejected" and malformed_description:
                            description, malformed_description = malformed_description, None
                        if description is None:
                            continue
                        _print_decision(description, message)
                        pending -= 1
            if pending:
                print(f"  ({pending} decisions did not arrive within 60 s)")
    finally:
        await reader.stop()
        await producer.stop()

"""Kafka pipeline: ImageUploaded in, DedupDecision out, at-least-once.

`UploadConsumer` holds the delivery contract: offsets are committed only after a record's
decision is acknowledged, bad input is rejected to the dead-letter topic, and
infrastructure failures are retried.
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    CorruptRecordException,
    InvalidTopicError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
    TopicAuthorizationFailedError,
    UnsupportedForMessageFormatError,
)
from aiokafka.structs import ConsumerRecord

from imgdedup._gen.imgdedup.v1 import events_pb2
from imgdedup.adapters.events import (
    JSON_CONTENT_TYPE,
    PROTOBUF_CONTENT_TYPE,
    UploadEvent,
    decision_from_record,
    decode_upload,
    encode_decision,
    is_json,
    partial_identity,
    rejection,
)
from imgdedup.adapters.kafka_clients import connection_options
from imgdedup.adapters.url_fetch import UrlFetcher
from imgdedup.config import Settings
from imgdedup.decisions.deduplicator import Deduplicator
from imgdedup.errors import DECISION_REFUSED, INTERNAL_ERROR, IndexUnavailable, InputError, TransientError
from imgdedup.metrics import Metrics

log = logging.getLogger("imgdedup.consumer")

T = TypeVar("T")

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    TransientError,
    KafkaError,
    ConnectionError,
    TimeoutError,
)

#: Produce errors that sending the same record again cannot cure: it is larger than the
#: broker or the topic accepts, the topic name is invalid, or this client may not write
#: there. Named one by one rather than read from `retriable`, which is False for
#: transient errors too (KafkaTimeoutError, a broker that is away).
PERMANENT_PRODUCE_ERRORS: tuple[type[BaseException], ...] = (
    MessageSizeTooLargeError,
    RecordTooLargeError,
    RecordListTooLargeError,
    InvalidTopicError,
    TopicAuthorizationFailedError,
    ClusterAuthorizationFailedError,
    UnsupportedForMessageFormatError,
    CorruptRecordException,
)


class ProduceRefused(Exception):
    """The broker refused a record for good (PERMANENT_PRODUCE_ERRORS): not retried."""

    def __init__(self, topic: str, cause: BaseException) -> None:
        super().__init__(f"{topic}: {cause!r}")
        self.topic = topic


async def _quietly(what: str, closing: Awaitable[None]) -> None:
    """Run a client's close step; a failure there (a broker already gone) is logged, not
    raised, so that the remaining resources still get closed. A CancelledError that is not
    aimed at us (aiokafka re-raises its own fetch task's) is absorbed the same way."""
    try:
        await closing
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        log.warning("closing the Kafka %s was interrupted", what)
    except Exception as exc:
        log.warning("closing the Kafka %s failed: %r", what, exc)


class _Abandoned(Exception):
    """Shutdown gave up on this record; it stays uncommitted and is redelivered."""


class OffsetTracker:
    """Which offsets are in flight per partition, and how far it is safe to commit."""

    def __init__(self) -> None:
        self._pending: dict[TopicPartition, set[int]] = {}
        self._next: dict[TopicPartition, int] = {}

    def started(self, tp: TopicPartition, offset: int) -> None:
        self._pending.setdefault(tp, set()).add(offset)
        self._next[tp] = max(self._next.get(tp, 0), offset + 1)

    def finished(self, tp: TopicPartition, offset: int) -> None:
        self._pending.get(tp, set()).discard(offset)

    def in_flight(self, tps: set[TopicPartition] | None = None) -> int:
        return sum(len(p) for tp, p in self._pending.items() if tps is None or tp in tps)

    def committable(self) -> dict[TopicPartition, int]:
        """Offset to commit per partition: the next record that is not finished."""
        out = {}
        for tp, next_offset in self._next.items():
            pending = self._pending.get(tp)
            out[tp] = min(pending) if pending else next_offset
        return out

    def forget(self, tps: set[TopicPartition]) -> None:
        for tp in tps:
            self._pending.pop(tp, None)
            self._next.pop(tp, None)


class _RebalanceListener(ConsumerRebalanceListener):
    def __init__(self, owner: UploadConsumer) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._owner.release_partitions(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("partitions assigned", extra={"partitions": sorted(str(tp) for tp in assigned)})


class UploadConsumer:
    """Consumes ImageUploaded events and produces their decisions.

    Delivery contract:
    - A record's offset becomes committable only after its decision (and, for rejections,
      its dead-letter copy) has been acknowledged by the broker. Offsets are tracked per
      partition and the committed offset is the lowest one still in flight, so records
      finishing out of order never let the commit run past unfinished work. A crash at
      any point therefore re-delivers, never loses; re-delivery is harmless because the
      index replays the stored decision for a known (namespace, image_id).
    - Records are processed concurrently (bounded by `max_in_flight`: back-pressure stops
      fetching while the bound is reached); hashing runs in the worker pool.
    - Bad input (malformed event, undecodable image, refused URL...) becomes a `rejected`
      decision plus the raw record on the dead-letter topic; the consumer never stops on it.
    - Infrastructure failures (Redis down, index contention, broker hiccups) are retried
      with capped exponential back-off and are never turned into rejections.
    - SIGTERM: stop fetching, finish in-flight work (up to the drain timeout), produce,
      commit, leave the group.
    """

    def __init__(self, settings: Settings, dedup: Deduplicator, fetcher: UrlFetcher, metrics: Metrics) -> None:
        self._settings = settings
        self._dedup = dedup
        self._fetcher = fetcher
        self._metrics = metrics
        self._tracker = OffsetTracker()
        self._slots = asyncio.Semaphore(settings.max_in_flight)
        self._tasks: dict[asyncio.Task[None], TopicPartition] = {}
        self._stopping = asyncio.Event()
        self._abandon = asyncio.Event()
        self._committed: dict[TopicPartition, int] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._run_task: asyncio.Task[None] | None = None

    # --- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        s = self._settings
        common = connection_options(s)
        message_limit = s.max_image_bytes + 1024 * 1024
        self._producer = AIOKafkaProducer(
            **common,
            acks="all",
            enable_idempotence=False,
            linger_ms=2,
            max_request_size=message_limit,
        )
        self._consumer = AIOKafkaConsumer(
            **common,
            group_id=s.kafka_group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=message_limit,
            fetch_max_wait_ms=s.kafka_fetch_max_wait_ms,
            fetch_max_bytes=max(message_limit, 50 * 1024 * 1024),
        )
        try:
            await self._producer.start()
            await self._consumer.start()
        except BaseException:
            await _quietly("producer", self._producer.stop())
            raise
        self._consumer.subscribe([s.kafka_input_topic], listener=_RebalanceListener(self))
        self._run_task = asyncio.create_task(self._run(), name="imgdedup-consumer")

    async def wait(self) -> None:
        """Return when the consumer loop ends (after stop(), or if it crashed)."""
        if self._run_task is not None:
            # shield: a waiter being cancelled must not cancel the loop itself
            await asyncio.shield(self._run_task)

    async def stop(self) -> None:
        """Graceful drain: stop fetching, finish in-flight, commit, leave the group."""
        if self._consumer is None:
            return
        self._stopping.set()
        if self._run_task is not None:
            try:
                await self._run_task
            except asyncio.CancelledError:
                log.warning("consumer loop was cancelled")
            except Exception:
                log.exception("consumer loop had failed")
        await self._drain(self._settings.shutdown_timeout_s)
        await self._commit()
        consumer, producer = self._consumer, self._producer
        try:
            await _quietly("consumer", consumer.stop())
        finally:
            self._consumer = self._producer = None
            if producer is not None:
                await _quietly("producer", producer.stop())
        log.info("consumer stopped")

    async def ready(self) -> str:
        """'ok' if the broker answers a metadata request, else the reason."""
        if self._producer is None:
            return "not started"
        try:
            await asyncio.wait_for(self._producer.partitions_for(self._settings.kafka_decisions_topic), 3)
            return "ok"
        except Exception as exc:  # readiness reports, never raises
            return f"{type(exc).__name__}: {exc}"

    # --- fetch loop ------------------------------------------------------------------
    async def _run(self) -> None:
        assert self._consumer is not None
        committer = asyncio.create_task(self._commit_loop(), name="imgdedup-committer")
        try:
            while not self._stopping.is_set():
                batch = await self._consumer.getmany(timeout_ms=200, max_records=self._settings.max_in_flight)
                for tp, records in batch.items():
                    for record in records:
                        await self._slots.acquire()
                        if self._stopping.is_set() or tp not in self._consumer.assignment():
                            # Not started, not tracked: it will be fetched again.
                            self._slots.release()
                            continue
                        self._tracker.started(tp, record.offset)
                        task = asyncio.create_task(self._handle(tp, record))
                        self._tasks[task] = tp
                        task.add_done_callback(self._task_done)
        finally:
            committer.cancel()
            try:
                await committer
            except asyncio.CancelledError:
                pass

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            log.error("record handler failed", exc_info=task.exception())

    async def _handle(self, tp: TopicPartition, record: ConsumerRecord[bytes, bytes]) -> None:
        gauge = self._metrics.in_flight.labels("kafka")
        gauge.inc()
        started = time.perf_counter()
        try:
            await self._process(record)
            self._tracker.finished(tp, record.offset)
            self._metrics.decision_seconds.labels("kafka").observe(time.perf_counter() - started)
        except _Abandoned:
            log.warning("abandoned at shutdown; will be redelivered", extra=_position(record))
        except Exception:
            # Not even the rejection could be produced (a bug): skip the record rather
            # than hold its partition back forever; the log keeps where it was.
            log.exception("record dropped: its rejection could not be produced", extra=_position(record))
            self._tracker.finished(tp, record.offset)
        finally:
            gauge.dec()

    async def _process(self, record: ConsumerRecord[bytes, bytes]) -> None:
        """Decide one record. Every outcome but a transient failure (retried here until
        it passes, or until shutdown abandons the record) is a decision: bad input and
        unexpected errors alike end in a rejection, so that no record stalls its partition."""
        self._metrics.events_consumed.labels(record.topic).inc()
        as_json = is_json(record.headers)
        fallback_id = f"{record.topic}/{record.partition}/{record.offset}"
        event: UploadEvent | None = None
        try:
            event = decode_upload(record.value, record.headers, fallback_id)
            await self._decide(event, as_json)
            return
        except _Abandoned:
            raise
        except InputError as exc:
            code, detail = exc.code, exc.detail
        except ProduceRefused as exc:
            self._metrics.produce_refused.labels("decision").inc()
            log.error("the broker refused the decision for good; the event is rejected as %s", DECISION_REFUSED,
                      extra={**_position(record), **_identity(event), "error": str(exc)})
            assert event is not None  # only a decided event has a decision to send
            await self._reject(record, as_json, event.event_id, event.namespace, event.image_id, DECISION_REFUSED,
                               "the broker refused the decision (too large?)", {})
            return
        except Exception:
            log.exception(
                "unexpected error; the event is rejected as %s", INTERNAL_ERROR,
                extra={**_position(record), **_identity(event)},
            )
            code, detail = INTERNAL_ERROR, "internal error while processing the event"
        if event is not None:
            await self._reject(
                record, as_json, event.event_id, event.namespace, event.image_id, code, detail, event.attributes
            )
        else:
            event_id, namespace, image_id = partial_identity(record.value, record.headers)
            await self._reject(record, as_json, event_id or fallback_id, namespace, image_id, code, detail, {})

    async def _decide(self, event: UploadEvent, as_json: bool) -> None:
        data = event.data if event.data is not None else await self._fetcher.fetch(event.url or "")
        registration = await self._retrying(
            lambda: self._dedup.register(
                event.namespace, event.image_id, data, event_id=event.event_id, source_uri=event.url
            ),
            "index",
        )
        decision = decision_from_record(
            registration.record,
            event_id=event.event_id,
            replayed=registration.replayed,
            attributes=event.attributes,
        )
        await self._send(
            self._settings.kafka_decisions_topic,
            f"{event.namespace}/{event.image_id}".encode(),
            encode_decision(decision, as_json=as_json),
            as_json,
        )
        # As over HTTP: decisions_total counts decisions made, replays_total the stored
        # decisions repeated for redelivered events.
        if registration.replayed:
            self._metrics.replays.labels("kafka").inc()
        else:
            self._metrics.decisions.labels("kafka", decision.verdict).inc()
        log.info(
            "decided",
            extra={**_identity(event), "verdict": decision.verdict, "duplicate_of": decision.duplicate_of},
        )

    async def _reject(
        self,
        record: ConsumerRecord[bytes, bytes],
        as_json: bool,
        event_id: str,
        namespace: str,
        image_id: str,
        code: str,
        detail: str,
        attributes: dict[str, str],
    ) -> None:
        message = rejection(
            event_id=event_id, namespace=namespace, image_id=image_id, code=code,
            detail=detail, attributes=attributes,
        )
        dlq_headers = [
            *[(k, v) for k, v in (record.headers or ()) if not k.startswith("imgdedup-")],
            ("imgdedup-error-code", code.encode()),
            ("imgdedup-error-detail", detail.encode()[:1000]),
            ("imgdedup-source", f"{record.topic}/{record.partition}/{record.offset}".encode()),
        ]
        # Dead-letter first: if we crash between the two sends, the record is
        # redelivered and both are produced again; never a decision without its DLQ copy,
        # unless the broker refuses the copy for good (larger than the DLQ topic accepts):
        # then the rejection goes out alone and the log says where the record was.
        dead_lettered = True
        try:
            await self._send_raw(self._settings.kafka_dlq_topic, record.key, record.value, dlq_headers)
        except ProduceRefused as exc:
            dead_lettered = False
            self._metrics.produce_refused.labels("dead_letter").inc()
            log.error("the broker refused the dead letter for good; only the rejection is produced",
                      extra={**_position(record), "event_id": event_id, "error": str(exc)})
        key = f"{namespace}/{image_id}".encode() if namespace or image_id else record.key
        await self._send(self._settings.kafka_decisions_topic, key, encode_decision(message, as_json=as_json), as_json)
        self._metrics.decisions.labels("kafka", "rejected").inc()
        self._metrics.rejections.labels("kafka", code).inc()
        if dead_lettered:
            self._metrics.dead_letters.inc()
        log.warning(
            "rejected",
            extra={"event_id": event_id, "namespace": namespace, "image_id": image_id, "error_code": code, "detail": detail},
        )

    async def publish(self, key: str, message: events_pb2.DedupDecision | None) -> None:
        """Put a decision the service made outside the pipeline (a reviewer's change) on
        the decisions topic, keyed `key`; None: a tombstone (empty value)."""
        if message is None:
            await self._send_raw(self._settings.kafka_decisions_topic, key.encode(), None, [])
            return
        await self._send(
            self._settings.kafka_decisions_topic, key.encode(), encode_decision(message, as_json=False), False
        )

    # --- producing, retries ------------------------------------------------------------
    async def _send(self, topic: str, key: bytes | None, value: bytes, as_json: bool) -> None:
        content_type = JSON_CONTENT_TYPE if as_json else PROTOBUF_CONTENT_TYPE
        await self._send_raw(topic, key, value, [("content-type", content_type.encode())])

    async def _send_raw(
        self, topic: str, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]
    ) -> None:
        assert self._producer is not None
        producer = self._producer

        async def send_and_wait() -> None:
            try:
                delivery = await producer.send(topic, value=value, key=key, headers=headers)
                await delivery
            except PERMANENT_PRODUCE_ERRORS as exc:
                raise ProduceRefused(topic, exc) from exc

        await self._retrying(send_and_wait, "kafka")

    async def _retrying(self, operation: Callable[[], Awaitable[T]], component: str) -> T:
        delay = 0.05
        ceiling = self._settings.kafka_max_retry_backoff_ms / 1000
        while True:
            try:
                return await operation()
            except TRANSIENT_ERRORS as exc:
                self._metrics.transient_errors.labels(component).inc()
                if isinstance(exc, IndexUnavailable):
                    self._metrics.redis_errors.labels("kafka").inc()
                if self._abandon.is_set():
                    raise _Abandoned() from exc
                log.warning("transient failure, retrying", extra={"component": component, "error": repr(exc), "retry_in_s": round(delay, 3)})
                try:
                    await asyncio.wait_for(self._abandon.wait(), delay)
                    raise _Abandoned() from exc
                except TimeoutError:
                    pass
                delay = min(ceiling, delay * 2) * random.uniform(0.8, 1.2)

    # --- offsets -----------------------------------------------------------------------
    async def _commit_loop(self) -> None:
        interval = self._settings.kafka_commit_interval_ms / 1000
        while True:
            await asyncio.sleep(interval)
            await self._commit()
            self._update_lag()

    async def _commit(self, only: set[TopicPartition] | None = None) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        assigned = consumer.assignment()
        offsets = {
            tp: offset
            for tp, offset in self._tracker.committable().items()
            if tp in assigned and (only is None or tp in only) and self._committed.get(tp) != offset
        }
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
            self._committed.update(offsets)
        except KafkaError as exc:
            # Typically a rebalance in progress; the next commit (or the new owner's
            # replay) covers it. Nothing is lost: uncommitted means redelivered.
            self._metrics.transient_errors.labels("kafka").inc()
            log.warning("offset commit failed", extra={"error": repr(exc)})

    def _update_lag(self) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        committable = self._tracker.committable()
        self._metrics.assigned_partitions.set(len(consumer.assignment()))
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            if highwater is None:
                continue
            position = committable.get(tp, self._committed.get(tp, highwater))
            self._metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(max(0, highwater - position))

    async def release_partitions(self, revoked: set[TopicPartition]) -> None:
        """Rebalance: finish what we started on these partitions, commit, let go."""
        deadline = time.monotonic() + self._settings.shutdown_timeout_s
        while self._tracker.in_flight(revoked) and time.monotonic() < deadline:  # noqa: ASYNC110 - rare path
            await asyncio.sleep(0.02)
        await self._commit(only=revoked)
        self._tracker.forget(revoked)
        for tp in revoked:
            self._committed.pop(tp, None)
            try:  # another replica reports this partition's lag now
                self._metrics.consumer_lag.remove(tp.topic, str(tp.partition))
            except KeyError:
                pass
        log.info("partitions revoked", extra={"partitions": sorted(str(tp) for tp in revoked)})

    async def _drain(self, timeout: float) -> None:
        tasks = list(self._tasks)
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        if pending:
            log.warning("drain timed out; abandoning in-flight records", extra={"count": len(pending)})
            self._abandon.set()
            await asyncio.wait(pending, timeout=2)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    @property
    def stats(self) -> dict[str, Any]:
        return {"in_flight": self._tracker.in_flight(), "committed": {str(k): v for k, v in self._committed.items()}}


def _position(record: ConsumerRecord[bytes, bytes]) -> dict[str, Any]:
    return {"topic": record.topic, "partition": record.partition, "offset": record.offset}


def _identity(event: UploadEvent | None) -> dict[str, str]:
    if event is None:
        return {}
    return {"event_id": event.event_id, "namespace": event.namespace, "image_id": event.image_id}

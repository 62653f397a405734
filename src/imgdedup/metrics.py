"""Prometheus metrics, on a registry owned by the application (no module-level globals).

Names follow Prometheus conventions: `_total` counters, `_seconds` histograms, base units.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.events_consumed = Counter(
            "imgdedup_events_consumed_total", "Kafka records read from the input topic.", ["topic"], registry=r
        )
        self.decisions = Counter(
            "imgdedup_decisions_total", "Decisions made, by source and verdict.", ["source", "verdict"], registry=r
        )
        self.rejections = Counter(
            "imgdedup_rejections_total", "Rejected inputs, by source and error code.", ["source", "code"], registry=r
        )
        self.replays = Counter(
            "imgdedup_replays_total", "Decisions served from the stored record (idempotent replay).", ["source"], registry=r
        )
        self.dead_letters = Counter(
            "imgdedup_dead_letters_total", "Raw events written to the dead-letter topic.", registry=r
        )
        self.produce_refused = Counter(
            "imgdedup_produce_refused_total",
            "Records the broker refused for good (too large, invalid or forbidden topic), by what they "
            "were: a decision or a dead letter.", ["record"], registry=r,
        )
        self.assigned_partitions = Gauge(
            "imgdedup_consumer_assigned_partitions",
            "Input partitions this consumer owns now (summed over replicas: fewer than the topic has means "
            "some are unowned, and nobody exports their imgdedup_consumer_lag).", registry=r,
        )
        self.transient_errors = Counter(
            "imgdedup_transient_errors_total",
            "Failures of Redis/Kafka/contention that were retried, by component.", ["component"], registry=r,
        )
        self.redis_errors = Counter(
            "imgdedup_redis_errors_total",
            "Redis connection and timeout errors, by the path that met them (retried on Kafka, 503 on HTTP).",
            ["source"], registry=r,
        )
        self.index_conflicts = Counter(
            "imgdedup_index_watch_conflicts_total",
            "Optimistic retries of Redis bucket rewrites and removals.", registry=r,
        )
        self.index_waits = Counter(
            "imgdedup_index_pending_waits_total",
            "Registrations that waited for a concurrent, earlier near-duplicate to be decided.", registry=r,
        )
        self.index_restarts = Counter(
            "imgdedup_index_restarts_total",
            "Registrations decided again (lease lost, or their match was removed meanwhile).", registry=r,
        )
        self.hash_seconds = Histogram(
            "imgdedup_hash_seconds", "Time to hash one image in the worker pool, queueing included.",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.index_seconds = Histogram(
            "imgdedup_index_seconds", "Index operation latency.", ["operation"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.decision_seconds = Histogram(
            "imgdedup_decision_seconds", "Receipt to decision, by source.", ["source"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.in_flight = Gauge("imgdedup_in_flight", "Images being processed now.", ["source"], registry=r)
        self.consumer_lag = Gauge(
            "imgdedup_consumer_lag", "Records behind the partition's high watermark.", ["topic", "partition"], registry=r,
        )
        self.http_requests = Counter(
            "imgdedup_http_requests_total", "HTTP requests, by route and status.", ["route", "method", "status"], registry=r,
        )
        self.http_body_bytes = Gauge(
            "imgdedup_http_body_bytes", "Request-body bytes reserved now (IMGDEDUP_MAX_BODY_BYTES_IN_FLIGHT).",
            registry=r,
        )
        self.http_body_bytes_peak = Gauge(
            "imgdedup_http_body_bytes_peak", "Most request-body bytes reserved at once since start.", registry=r,
        )
        self.http_body_waiting = Gauge(
            "imgdedup_http_body_waiting", "Requests waiting for room to read their body.", registry=r,
        )
        self.http_read_timeouts = Counter(
            "imgdedup_http_read_timeouts_total",
            "Connections closed because a request's head or body came too slowly, by phase.", ["phase"], registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

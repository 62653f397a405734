"""All configuration, from `IMGDEDUP_*` environment variables, validated once at start-up.

`Settings.from_env()` is the only place that reads the environment. Every problem is
collected and reported together in one `ConfigError`, so an operator fixes a broken
deployment in one round trip instead of one variable at a time.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

if TYPE_CHECKING:
    from imgdedup.decisions.rules import Policy
    from imgdedup.fingerprint import ImageLimits

PREFIX = "IMGDEDUP_"

#: Largest images whose bodies the HTTP server holds at once by default
#: (IMGDEDUP_MAX_BODY_BYTES_IN_FLIGHT=0).
BODY_BUDGET_IMAGES = 4

#: Most buckets one query may probe: beyond this a query reads megabytes from Redis.
MAX_PROBES = 5000


class ConfigError(ValueError):
    """Raised with every invalid or inconsistent setting listed, one per line."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(
            "invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems)
        )


def _doc(default: Any, doc: str, **meta: Any) -> Any:
    """A setting's default, its description (`imgdedup config`) and its checks (`lo`, `hi`,
    `choices`)."""
    return field(default=default, metadata={"doc": doc, **meta})


def _secret(doc: str) -> Any:
    """A text setting `redacted()` masks."""
    return _doc("", doc, secret=True)


def _file(doc: str) -> Any:
    """A path setting `file_problems()` checks for on this machine."""
    return _doc("", doc, file=True)


@dataclass(frozen=True)
class Settings:
    """Service settings. Field `foo_bar` is read from `IMGDEDUP_FOO_BAR`."""

    # --- index / storage -------------------------------------------------------------
    redis_url: str = _doc(
        "", "Redis URL (redis:// or rediss://). Empty: the embedded in-memory index "
        "(single process, nothing persisted)."
    )
    redis_cluster: bool = _doc(
        False, "IMGDEDUP_REDIS_URL is a seed node of a Redis Cluster: the service discovers the "
        "other nodes, sends each key to the master of its slot and follows MOVED/ASK redirections "
        "and failovers. Every key of a namespace shares the hash tag {namespace}, so a namespace "
        "lives in one slot (docs/scaling.md). The URL's database must be 0."
    )
    redis_cluster_nodes: str = _doc(
        "", "More seed nodes of the cluster (host:port,...), tried when the URL's node does not "
        "answer at start-up; scheme, user, password and TLS come from IMGDEDUP_REDIS_URL."
    )
    redis_wait_replicas: int = _doc(
        0, "Replicas that must have received a decision before it is reported (Redis WAIT after "
        "the commit; 0: do not wait). With 1, a decision reported as made survives the loss of "
        "its master; one not acknowledged in time is reported as a retryable error "
        "(`index_unavailable`) and decided or replayed again on retry (docs/scaling.md).",
        lo=0, hi=16,
    )
    redis_wait_timeout_ms: int = _doc(
        200, "Longest wait for IMGDEDUP_REDIS_WAIT_REPLICAS acknowledgements per decision.",
        lo=1, hi=60_000,
    )
    redis_prefix: str = _doc("imgdedup", "Prefix of every Redis key this service writes.")
    redis_username: str = _doc("", "Redis ACL user (overrides the URL's user).")
    redis_password: str = _secret("Redis password (overrides the URL's password).")
    redis_ssl_ca_file: str = _file("CA bundle to verify Redis TLS (rediss://) servers; empty: system store.")
    redis_ssl_certfile: str = _file("Client certificate for Redis mutual TLS.")
    redis_ssl_keyfile: str = _file("Private key of the Redis client certificate.")
    mih_substrings: int = _doc(
        4, "MIH substring count m for *new* namespaces (64-bit codes split in m parts); "
        "rule of thumb m ~ 64 / log2(expected images).", lo=1, hi=8
    )
    redis_mirror: bool = _doc(
        False, "Mirror layout for *new* Redis namespaces: no bucket keys; registrations are "
        "appended to a Redis stream per namespace and every replica answers near queries from "
        "its own in-process multi-index table of the namespace, caught up from the stream "
        "before each query (one small round trip instead of an MGET of every probed bucket). "
        "Redis holds less per code than the buckets take; each replica holds the table in "
        "memory, reads the whole stream on its first request for a namespace, and the stream "
        "is never compacted. Existing namespaces keep their layout. Turn on only once every "
        "replica runs a version that knows it (docs/design.md)."
    )
    # --- decisions ---------------------------------------------------------------------
    duplicate_radius: int = _doc(
        10, "Hamming distance at or below which a near match is a duplicate (unless its "
        "thumbnails rule it out: IMGDEDUP_MIN_SIMILARITY).", lo=0, hi=32
    )
    review_radius: int = _doc(
        12, "Largest distance at which a candidate counts: above the duplicate radius it is a "
        "duplicate when its thumbnails confirm it (IMGDEDUP_CONFIRM_SIMILARITY), else the "
        "verdict is `review`.", lo=0, hi=32
    )
    min_similarity: float = _doc(
        0.87, "Second look (thumbnail correlation, -1..1) a candidate within the duplicate "
        "radius needs to be a duplicate; below it the verdict is `review` (a look-alike).",
        lo=-1.0, hi=1.0
    )
    confirm_similarity: float = _doc(
        0.94, "Thumbnail correlation at or above which a candidate between the duplicate and "
        "the review radius (a crop, a heavier edit) is a duplicate instead of `review`.",
        lo=-1.0, hi=1.0
    )
    distinct_similarity: float = _doc(
        0.6, "Thumbnail correlation below which a candidate within the review radius is another "
        "picture (the codes met by chance): neither a duplicate nor `review`.",
        lo=-1.0, hi=1.0
    )
    # --- input limits ------------------------------------------------------------------
    max_image_bytes: int = _doc(
        25 * 1024 * 1024, "Largest accepted image, in bytes (HTTP body, event payload, URL "
        "download).", lo=1
    )
    max_image_pixels: int = _doc(50_000_000, "Largest accepted canvas in pixels (decompression-bomb guard).", lo=1)
    crop_windows: bool = _doc(
        True, "Also index codes of 33 crop windows per kept image, so later crops (up to ~30 % "
        "of the area removed) match it. Costs index memory for the window codes and hashing "
        "time per image (docs/performance.md); queries probe only whole-image codes."
    )
    match_rotations: bool = _doc(
        False, "Also match mirrored and rotated (90/180/270 degree) copies: every lookup "
        "probes the 7 mirror/rotation variants of each whole-image code as well: 8 times the "
        "probes per query. The index is unchanged, so it can be switched on at any time."
    )
    # --- hashing -----------------------------------------------------------------------
    hash_workers: int = _doc(0, "Hashing worker processes; 0 = one per CPU core.", lo=0, hi=256)
    hash_timeout_s: float = _doc(
        10.0, "Longest time fingerprinting one image may take. Workers that overrun it are killed "
        "and replaced; the images in flight are tried again, each alone in a new worker "
        "process, and one that overruns there too is refused (`hashing_timeout`).",
        lo=0.1, hi=3600,
    )
    max_in_flight: int = _doc(
        64, "Images being processed at once (back-pressure bound for Kafka and HTTP).",
        lo=1, hi=100_000
    )
    # --- Kafka -------------------------------------------------------------------------
    kafka_bootstrap: str = _doc("", "Kafka bootstrap servers (host:port,...). Empty: no consumer, HTTP only.")
    kafka_group_id: str = _doc("imgdedup", "Consumer group id.")
    kafka_input_topic: str = _doc("image-uploads", "Topic of ImageUploaded events.")
    kafka_decisions_topic: str = _doc("image-decisions", "Topic DedupDecision events go to.")
    kafka_dlq_topic: str = _doc("image-uploads.dlq", "Dead-letter topic for rejected events.")
    kafka_client_id: str = _doc("imgdedup", "Kafka client id.")
    kafka_security_protocol: str = _doc(
        "PLAINTEXT", "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.",
        choices=("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
    )
    kafka_sasl_mechanism: str = _doc(
        "", "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (with a SASL protocol).",
        choices=("", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"),
    )
    kafka_sasl_username: str = _doc("", "SASL user name.")
    kafka_sasl_password: str = _secret("SASL password.")
    kafka_ssl_cafile: str = _file("CA bundle for Kafka TLS (empty: system store).")
    kafka_ssl_certfile: str = _file("Client certificate for Kafka mutual TLS.")
    kafka_ssl_keyfile: str = _file("Private key of the Kafka client certificate.")
    kafka_fetch_max_wait_ms: int = _doc(
        100, "How long the broker may hold a fetch waiting for data: the floor of a quiet "
        "topic's latency (aiokafka's default of 500 ms would delay events by up to that much "
        "at low load).",
        lo=1, hi=60_000,
    )
    kafka_commit_interval_ms: int = _doc(1000, "How often finished offsets are committed.", lo=10, hi=600_000)
    kafka_max_retry_backoff_ms: int = _doc(
        30_000, "Ceiling of the back-off when Redis or the broker fails transiently.",
        lo=10, hi=3_600_000
    )
    # --- URL sources -------------------------------------------------------------------
    url_fetch_timeout_s: float = _doc(10.0, "Total timeout for fetching an event's `url` source.", lo=0.1, hi=600)
    allow_private_urls: bool = _doc(False, "Allow `url` sources on private, loopback and link-local addresses.")
    # --- HTTP --------------------------------------------------------------------------
    http_host: str = _doc("127.0.0.1", "HTTP listen address (0.0.0.0 in containers).")
    http_port: int = _doc(8080, "HTTP listen port.", lo=0, hi=65535)
    http_read_timeout_s: float = _doc(
        30.0, "Longest time a client may take to send one request's head and body (from its "
        "first byte, or from connecting); a slower connection is closed (slowloris guard). "
        "Must let your slowest client upload IMGDEDUP_MAX_IMAGE_BYTES.",
        lo=0.1, hi=3600,
    )
    max_body_bytes_in_flight: int = _doc(
        0, "Request-body bytes the HTTP server holds at once, reserved from Content-Length "
        "(chunked bodies: as they arrive) before a body is read and kept until its response; "
        "0 = 4 x IMGDEDUP_MAX_IMAGE_BYTES. At least IMGDEDUP_MAX_IMAGE_BYTES.",
        lo=0,
    )
    http_body_wait_s: float = _doc(
        5.0, "How long a request waits for room in IMGDEDUP_MAX_BODY_BYTES_IN_FLIGHT before it "
        "gets 503 `overloaded` (0: refuse at once). Below IMGDEDUP_HTTP_READ_TIMEOUT_S: the "
        "wait counts against it.",
        lo=0.0, hi=3600,
    )
    # --- authentication ----------------------------------------------------------------
    auth: str = _doc(
        "on", "on: every /v1 request needs `Authorization: Bearer <token>`, an API key "
        "(IMGDEDUP_API_KEYS_FILE) or an OIDC token (IMGDEDUP_OIDC_ISSUER), and start-up fails "
        "without either; off: no authentication at all, with a warning at start-up (only for a "
        "port nobody else can reach).", choices=("on", "off"),
    )
    api_keys_file: str = _file(
        "JSON file of API keys: per key a name, the SHA-256 of its token (never the token), "
        "its namespaces and roles (README, Authentication). Read once at start-up."
    )
    oidc_issuer: str = _doc(
        "", "OpenID Connect issuer URL, exactly the `iss` of its tokens (https, or http on a "
        "loopback address); its discovery document names the keys JWTs are verified with. "
        "Empty: JWTs are not accepted."
    )
    oidc_audience: str = _doc("", "The `aud` a JWT must carry; required with IMGDEDUP_OIDC_ISSUER.")
    oidc_namespaces_claim: str = _doc(
        "imgdedup_namespaces", "JWT claim listing the namespaces (exact or `prefix-*`) the caller may use."
    )
    oidc_roles_claim: str = _doc(
        "imgdedup_roles", "JWT claim listing the caller's roles; `imgdedup:<role>` entries of the "
        "`scope` claim count too."
    )
    rate_limit_per_key: float = _doc(
        200.0, "Sustained requests/s per credential (API key, or token subject), counted in "
        "each replica; 0 = unlimited. Beyond it: 429 `rate_limited` with Retry-After.",
        lo=0, hi=1_000_000,
    )
    rate_limit_burst: int = _doc(
        400, "Requests a credential may make at once before IMGDEDUP_RATE_LIMIT_PER_KEY paces "
        "it (the token bucket's size).", lo=1, hi=1_000_000,
    )
    # --- process -----------------------------------------------------------------------
    log_level: str = _doc("INFO", "DEBUG, INFO, WARNING or ERROR.", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    log_format: str = _doc("json", "json or text.", choices=("json", "text"))
    shutdown_timeout_s: float = _doc(
        25.0, "Longest graceful drain on SIGTERM before in-flight work is abandoned "
        "(it is redelivered: offsets are only committed after decisions are produced).",
        lo=0.1, hi=3600,
    )

    @property
    def index_backend(self) -> str:
        return "redis" if self.redis_url else "memory"

    @property
    def image_limits(self) -> ImageLimits:
        """The input limits and hashing options every hashing path uses (service, scan, CLI)."""
        from imgdedup.fingerprint import ImageLimits

        return ImageLimits(self.max_image_bytes, self.max_image_pixels, self.crop_windows, self.match_rotations)

    @property
    def policy(self) -> Policy:
        """The decision rules every path uses (service, scan, benchmarks)."""
        from imgdedup.decisions.rules import Policy

        return Policy(
            self.duplicate_radius, self.review_radius, self.min_similarity, self.confirm_similarity,
            self.match_rotations, self.distinct_similarity,
        )

    @property
    def effective_max_body_bytes_in_flight(self) -> int:
        return self.max_body_bytes_in_flight or BODY_BUDGET_IMAGES * self.max_image_bytes

    @property
    def effective_hash_workers(self) -> int:
        if self.hash_workers:
            return self.hash_workers
        try:  # the CPUs this process may run on (containers, taskset), not the host's count
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # pragma: no cover - not on Linux
            return os.cpu_count() or 1

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read, convert and validate; raise `ConfigError` listing every problem."""
        return cls._read(environ, overrides, ())

    @classmethod
    def from_env_checked(
        cls, checks: Sequence[Callable[[Settings], list[str]]], environ: Mapping[str, str] | None = None
    ) -> Settings:
        """`from_env`, with the problems of the extra `checks` (files that must exist where
        the service starts, the keys file) reported in the same `ConfigError`."""
        return cls._read(environ, {}, checks)

    @classmethod
    def _read(
        cls,
        environ: Mapping[str, str] | None,
        overrides: Mapping[str, Any],
        checks: Sequence[Callable[[Settings], list[str]]],
    ) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        problems: list[str] = []
        known = {PREFIX + f.name.upper() for f in dataclasses.fields(cls)}
        for key in env:
            if key.startswith(PREFIX) and key not in known:
                problems.append(f"{key}: unknown setting (typo?)")
        for f in dataclasses.fields(cls):
            name = PREFIX + f.name.upper()
            if f.name in overrides:
                values[f.name] = overrides[f.name]
                continue
            raw = env.get(name)
            if raw is None:
                continue
            try:
                values[f.name] = _CONVERTERS[type(f.default)](raw.strip())
            except ValueError as exc:
                problems.append(f"{name}={raw!r}: {exc}")
        # Validate what did convert (the rest keeps its default), so one start-up reports
        # conversion and range problems together.
        settings = cls(**values)
        problems.extend(settings.problems())
        for check in checks:
            problems.extend(check(settings))
        if problems:
            raise ConfigError(problems)
        return settings

    def validate(self) -> None:
        problems = self.problems()
        if problems:
            raise ConfigError(problems)

    def problems(self) -> list[str]:
        """Every invalid or inconsistent setting, as operator-facing sentences."""
        problems: list[str] = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            name = PREFIX + f.name.upper()
            lo, hi = f.metadata.get("lo"), f.metadata.get("hi")
            if isinstance(value, float) and not math.isfinite(value):
                problems.append(f"{name}={value}: must be a finite number")
                continue
            if lo is not None and value < lo:
                problems.append(f"{name}={value}: must be >= {lo}")
            if hi is not None and value > hi:
                problems.append(f"{name}={value}: must be <= {hi}")
            choices = f.metadata.get("choices")
            if choices is not None and value not in choices:
                problems.append(f"{name}={value!r}: must be one of {', '.join(map(repr, choices))}")
        if self.review_radius < self.duplicate_radius:
            problems.append(
                f"{PREFIX}REVIEW_RADIUS={self.review_radius} is below "
                f"{PREFIX}DUPLICATE_RADIUS={self.duplicate_radius}: the review band would be empty "
                "in a way that hides a typo; set them equal to disable review"
            )
        if self.distinct_similarity > self.min_similarity:
            problems.append(
                f"{PREFIX}DISTINCT_SIMILARITY={self.distinct_similarity} is above "
                f"{PREFIX}MIN_SIMILARITY={self.min_similarity}: a candidate cannot be both "
                "another picture and a duplicate"
            )
        if 0 < self.max_body_bytes_in_flight < self.max_image_bytes:
            problems.append(
                f"{PREFIX}MAX_BODY_BYTES_IN_FLIGHT={self.max_body_bytes_in_flight} is below "
                f"{PREFIX}MAX_IMAGE_BYTES={self.max_image_bytes}: the largest image could never be received"
            )
        if self.http_body_wait_s >= self.http_read_timeout_s:
            problems.append(
                f"{PREFIX}HTTP_BODY_WAIT_S={self.http_body_wait_s} must be below "
                f"{PREFIX}HTTP_READ_TIMEOUT_S={self.http_read_timeout_s}: a request waiting for "
                "room would be cut off before its body is read"
            )
        for certificate, key in (("redis_ssl_certfile", "redis_ssl_keyfile"), ("kafka_ssl_certfile", "kafka_ssl_keyfile")):
            if bool(getattr(self, certificate)) != bool(getattr(self, key)):
                problems.append(f"{PREFIX}{certificate.upper()} and {PREFIX}{key.upper()} go together")
        from imgdedup.index.mih import probe_count  # pure maths; imported here to keep config import-light

        if self.redis_mirror and not self.redis_url:
            problems.append(
                f"{PREFIX}REDIS_MIRROR=true needs {PREFIX}REDIS_URL: it is a layout of the Redis "
                "index (the in-memory index is a local table already)"
            )
        # Checked with the mirror layout too: namespaces created without it keep their
        # buckets and are still probed with one MGET per query.
        if 1 <= self.mih_substrings <= 8 and 0 <= self.review_radius <= 32:
            probed = probe_count(self.review_radius, self.mih_substrings)
            if probed > MAX_PROBES:
                problems.append(
                    f"{PREFIX}MIH_SUBSTRINGS={self.mih_substrings} with {PREFIX}REVIEW_RADIUS="
                    f"{self.review_radius} probes {probed} buckets per query (limit {MAX_PROBES}); "
                    "use more substrings or a smaller radius"
                )
        if self.redis_url and not re.match(r"^(redis|rediss|unix)://", self.redis_url):
            problems.append(
                f"{PREFIX}REDIS_URL={self.redis_url!r}: must start with redis://, rediss:// or unix://"
            )
        problems.extend(self._cluster_problems())
        if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", self.redis_prefix):
            problems.append(f"{PREFIX}REDIS_PREFIX={self.redis_prefix!r}: use 1-64 of [A-Za-z0-9_.:-]")
        problems.extend(self._oidc_problems())
        if self.kafka_bootstrap:
            for hostport in self.kafka_bootstrap.split(","):
                match = re.fullmatch(r"([^\s:,]+|\[[0-9a-fA-F:]+\]):(\d{1,5})", hostport.strip())
                if not match or not 1 <= int(match.group(2)) <= 65535:
                    problems.append(
                        f"{PREFIX}KAFKA_BOOTSTRAP: {hostport!r} is not host:port (port 1-65535)"
                    )
            topics = {self.kafka_input_topic, self.kafka_decisions_topic, self.kafka_dlq_topic}
            if len(topics) != 3:
                problems.append("the input, decisions and DLQ topics must be three different topics")
            if self.kafka_security_protocol.startswith("SASL") and not self.kafka_sasl_mechanism:
                problems.append(
                    f"{PREFIX}KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs "
                    f"{PREFIX}KAFKA_SASL_MECHANISM"
                )
        return problems

    def _cluster_problems(self) -> list[str]:
        problems: list[str] = []
        if (self.redis_cluster or self.redis_cluster_nodes) and not self.redis_url:
            problems.append(
                f"{PREFIX}REDIS_CLUSTER and {PREFIX}REDIS_CLUSTER_NODES need {PREFIX}REDIS_URL (a seed node)"
            )
        if self.redis_cluster_nodes and not self.redis_cluster:
            problems.append(f"{PREFIX}REDIS_CLUSTER_NODES is set but {PREFIX}REDIS_CLUSTER is not true")
        if self.redis_cluster and self.redis_url:
            parts = urlsplit(self.redis_url)
            if parts.scheme == "unix":
                problems.append(f"{PREFIX}REDIS_CLUSTER=true needs a redis:// or rediss:// URL, not unix://")
            elif parts.path.strip("/") not in ("", "0") or dict(parse_qsl(parts.query)).get("db", "0") != "0":
                problems.append(
                    f"{PREFIX}REDIS_URL={redact_url(self.redis_url)!r}: a Redis Cluster has only database 0"
                )
        for hostport in filter(None, (h.strip() for h in self.redis_cluster_nodes.split(","))):
            match = re.fullmatch(r"([^\s:,/@]+|\[[0-9a-fA-F:]+\]):(\d{1,5})", hostport)
            if not match or not 1 <= int(match.group(2)) <= 65535:
                problems.append(f"{PREFIX}REDIS_CLUSTER_NODES: {hostport!r} is not host:port (port 1-65535)")
        return problems

    def cluster_seed_nodes(self) -> list[tuple[str, int]]:
        """(host, port) of IMGDEDUP_REDIS_CLUSTER_NODES, in order."""
        out = []
        for hostport in filter(None, (h.strip() for h in self.redis_cluster_nodes.split(","))):
            host, _, port = hostport.rpartition(":")
            out.append((host.strip("[]"), int(port)))
        return out

    def _oidc_problems(self) -> list[str]:
        if bool(self.oidc_issuer) != bool(self.oidc_audience):
            return [
                f"{PREFIX}OIDC_ISSUER and {PREFIX}OIDC_AUDIENCE go together: without an audience a "
                "token the issuer made for any other application would be accepted"
            ]
        if not self.oidc_issuer:
            return []
        problems = []
        parts = urlsplit(self.oidc_issuer)
        loopback = parts.hostname in ("127.0.0.1", "::1", "localhost")
        if not parts.hostname or not (parts.scheme == "https" or (parts.scheme == "http" and loopback)):
            problems.append(
                f"{PREFIX}OIDC_ISSUER={self.oidc_issuer!r}: must be an https:// URL (http:// only "
                "on a loopback address)"
            )
        for name in ("oidc_namespaces_claim", "oidc_roles_claim"):
            if not getattr(self, name):
                problems.append(f"{PREFIX}{name.upper()} must name a claim")
        return problems

    def file_problems(self) -> list[str]:
        """TLS files that do not exist here. Apart from `problems()` because it depends on
        the machine: manifests are validated where these paths do not exist yet."""
        out = []
        for f in dataclasses.fields(self):
            path = getattr(self, f.name)
            if f.metadata.get("file") and path and not os.path.isfile(path):
                out.append(f"{PREFIX}{f.name.upper()}={path!r}: no such file")
        return out

    @classmethod
    def documentation(cls) -> list[tuple[str, str, str]]:
        """(variable, default, description) rows, for `imgdedup config` and the README."""
        rows = []
        for f in dataclasses.fields(cls):
            default = f.default
            shown = ("true" if default else "false") if isinstance(default, bool) else str(default)
            rows.append((PREFIX + f.name.upper(), shown if shown != "" else "(empty)", f.metadata["doc"]))
        return rows

    def redacted(self) -> dict[str, Any]:
        """Settings for logging, with secrets masked."""
        out = dataclasses.asdict(self)
        for f in dataclasses.fields(self):
            if f.metadata.get("secret") and out[f.name]:
                out[f.name] = "***"
        out["redis_url"] = redact_url(out["redis_url"])
        return out


def redact_url(url: str) -> str:
    """Mask the password of a URL: in the user-info (which may itself contain '@') and in a
    `password=` query parameter, both of which redis-py honours."""
    if not url:
        return url
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0] if ":" in userinfo else ""
        netloc = f"{user}:***@{hostport}" if ":" in userinfo else f"***@{hostport}"
    query = urlencode(
        [(k, "***" if k.lower() == "password" else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)],
        safe="*",
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _parse_bool(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected true/false")


def _parse_int(raw: str) -> int:
    try:
        return int(raw.replace("_", ""))
    except ValueError:
        raise ValueError("expected an integer") from None


def _parse_float(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError("expected a number") from None
    if not math.isfinite(value):
        raise ValueError("expected a finite number")
    return value


_CONVERTERS: dict[type, Callable[[str], Any]] = {
    str: str,
    int: _parse_int,
    float: _parse_float,
    bool: _parse_bool,
}

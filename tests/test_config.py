"""`Settings.from_env`: conversion, validation, error reporting and redaction."""

from __future__ import annotations

import dataclasses
import os

import pytest

from imgdedup.config import PREFIX, ConfigError, Settings


def load(**env: str) -> Settings:
    return Settings.from_env({f"{PREFIX}{k.upper()}": v for k, v in env.items()})


def problems_of(**env: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(**env)
    assert isinstance(info.value, ValueError)
    for problem in info.value.problems:
        assert problem in str(info.value)
    return info.value.problems


# --- defaults and conversions ---------------------------------------------------------------


def test_defaults_with_empty_env():
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.redis_url == ""
    assert settings.index_backend == "memory"
    assert settings.mih_substrings == 4
    assert settings.duplicate_radius == 10
    assert settings.review_radius == 12
    assert settings.max_image_bytes == 25 * 1024 * 1024
    assert settings.max_image_pixels == 50_000_000
    assert settings.allow_private_urls is False
    assert settings.url_fetch_timeout_s == 10.0
    assert settings.http_port == 8080
    assert settings.kafka_security_protocol == "PLAINTEXT"
    assert settings.effective_hash_workers >= 1


def test_unrelated_variables_are_ignored():
    settings = Settings.from_env({"PATH": "/bin", "IMGDEDUPX_FOO": "1", "HOME": "/root"})
    assert settings == Settings()


def test_reads_os_environ_by_default(monkeypatch):
    for key in list(os.environ):
        if key.startswith(PREFIX):
            monkeypatch.delenv(key)
    monkeypatch.setenv("IMGDEDUP_HTTP_PORT", "9191")
    assert Settings.from_env().http_port == 9191


def test_int_conversion():
    settings = load(
        http_port="9000", mih_substrings=" 6 ", max_image_pixels="1_000_000",
        duplicate_radius="4", review_radius="4",
    )
    assert settings.http_port == 9000
    assert settings.mih_substrings == 6  # whitespace stripped
    assert settings.max_image_pixels == 1_000_000  # underscores allowed
    assert (settings.duplicate_radius, settings.review_radius) == (4, 4)
    assert isinstance(settings.http_port, int)


@pytest.mark.parametrize("raw", ["abc", "1.5", "", "8080x"])
def test_bad_int(raw):
    problems = problems_of(http_port=raw)
    assert len(problems) == 1
    assert "IMGDEDUP_HTTP_PORT" in problems[0] and "integer" in problems[0]


def test_float_conversion():
    settings = load(url_fetch_timeout_s="2.5", shutdown_timeout_s="7")
    assert settings.url_fetch_timeout_s == 2.5
    assert settings.shutdown_timeout_s == 7.0
    assert isinstance(settings.shutdown_timeout_s, float)
    problems = problems_of(url_fetch_timeout_s="soon")
    assert "IMGDEDUP_URL_FETCH_TIMEOUT_S" in problems[0] and "number" in problems[0]


@pytest.mark.parametrize("raw, expected", [
    ("1", True), ("true", True), ("TRUE", True), ("yes", True), ("on", True), (" On ", True),
    ("0", False), ("false", False), ("No", False), ("off", False), ("", False),
])
def test_bool_conversion(raw, expected):
    assert load(allow_private_urls=raw).allow_private_urls is expected


@pytest.mark.parametrize("raw", ["maybe", "2", "y"])
def test_bad_bool(raw):
    problems = problems_of(allow_private_urls=raw)
    assert "IMGDEDUP_ALLOW_PRIVATE_URLS" in problems[0] and "true/false" in problems[0]


def test_string_settings_are_taken_verbatim():
    settings = load(
        kafka_group_id="workers-1", log_level="DEBUG", log_format="text",
        redis_prefix="svc.a:b-c_d",
    )
    assert settings.kafka_group_id == "workers-1"
    assert settings.log_level == "DEBUG"
    assert settings.log_format == "text"
    assert settings.redis_prefix == "svc.a:b-c_d"


def test_every_field_is_read_from_its_variable():
    # Each field must be reachable as IMGDEDUP_<FIELD>, with its own type's converter.
    samples = {int: "7", float: "3.5", bool: "true", str: "x"}
    for field in dataclasses.fields(Settings):
        raw = samples[type(field.default)]
        env = {f"{PREFIX}{field.name.upper()}": raw}
        try:
            settings = Settings.from_env(env)
        except ConfigError as exc:
            # Validation may refuse the sample value, but never as an unknown variable.
            assert not any("unknown setting" in p for p in exc.problems), field.name
            assert all(f"{PREFIX}{field.name.upper()}" in p for p in exc.problems), exc.problems
            continue
        assert getattr(settings, field.name) == type(field.default)(
            True if raw == "true" else raw
        ), field.name


def test_overrides_win_over_environment():
    settings = Settings.from_env({"IMGDEDUP_HTTP_PORT": "1234"}, http_port=4321)
    assert settings.http_port == 4321


# --- problems -------------------------------------------------------------------------------


def test_unknown_variable_reported():
    problems = problems_of(duplicate_raduis="5")
    assert problems == ["IMGDEDUP_DUPLICATE_RADUIS: unknown setting (typo?)"]


def test_several_problems_reported_together():
    problems = problems_of(
        http_port="eighty", allow_private_urls="perhaps", bogus_thing="1", url_fetch_timeout_s="x"
    )
    assert len(problems) == 4
    joined = "\n".join(problems)
    for name in ("HTTP_PORT", "ALLOW_PRIVATE_URLS", "BOGUS_THING", "URL_FETCH_TIMEOUT_S"):
        assert f"IMGDEDUP_{name}" in joined


def test_several_validation_problems_reported_together():
    problems = problems_of(
        mih_substrings="9", http_port="70000", log_level="LOUD", redis_prefix="has space",
        duplicate_radius="10", review_radius="5",
    )
    joined = "\n".join(problems)
    assert len(problems) == 5
    for name in ("MIH_SUBSTRINGS", "HTTP_PORT", "LOG_LEVEL", "REDIS_PREFIX", "REVIEW_RADIUS"):
        assert f"IMGDEDUP_{name}" in joined


def test_conversion_and_validation_problems_reported_together():
    problems = problems_of(http_port="abc", mih_substrings="99")
    joined = "\n".join(problems)
    assert "IMGDEDUP_HTTP_PORT" in joined
    assert "IMGDEDUP_MIH_SUBSTRINGS" in joined


@pytest.mark.parametrize("name, value, bound", [
    ("mih_substrings", "0", ">= 1"), ("mih_substrings", "9", "<= 8"),
    ("duplicate_radius", "33", "<= 32"), ("max_image_bytes", "0", ">= 1"),
    ("http_port", "65536", "<= 65535"), ("url_fetch_timeout_s", "0.01", ">= 0.1"),
    ("shutdown_timeout_s", "inf", "finite"), ("hash_workers", "-1", ">= 0"),
    ("confirm_similarity", "1.5", "<= 1.0"), ("min_similarity", "-1.5", ">= -1.0"),
    ("hash_timeout_s", "0", ">= 0.1"), ("hash_timeout_s", "-5", ">= 0.1"),
])
def test_range_checks(name, value, bound):
    problems = problems_of(**{name: value})
    assert any(f"IMGDEDUP_{name.upper()}" in p and bound in p for p in problems), problems


@pytest.mark.parametrize("name", ["url_fetch_timeout_s", "shutdown_timeout_s", "hash_timeout_s"])
def test_nan_timeout_refused(name):
    problems_of(**{name: "nan"})


@pytest.mark.parametrize("name, value", [
    ("log_level", "debug"), ("log_format", "xml"), ("kafka_security_protocol", "TLS"),
    ("kafka_sasl_mechanism", "GSSAPI"),
])
def test_choices(name, value):
    problems = problems_of(**{name: value})
    assert any(f"IMGDEDUP_{name.upper()}" in p and "must be one of" in p for p in problems)


def test_policy_comes_from_the_decision_settings():
    policy = load(duplicate_radius="6", review_radius="10", min_similarity="0.6", confirm_similarity="0.95",
                  match_rotations="true").policy
    assert (policy.duplicate_radius, policy.review_radius) == (6, 10)
    assert (policy.min_similarity, policy.confirm_similarity, policy.match_rotations) == (0.6, 0.95, True)


def test_review_below_duplicate_refused():
    problems = problems_of(duplicate_radius="9", review_radius="8")
    assert len(problems) == 1
    assert "IMGDEDUP_REVIEW_RADIUS=8" in problems[0]
    assert "IMGDEDUP_DUPLICATE_RADIUS=9" in problems[0]
    # Equal is the documented way to disable review.
    assert load(duplicate_radius="9", review_radius="9").review_radius == 9


def test_http_read_and_body_settings():
    settings = Settings.from_env({})
    assert settings.http_read_timeout_s == 30.0
    assert settings.effective_max_body_bytes_in_flight == 4 * settings.max_image_bytes
    explicit = load(max_image_bytes="1000", max_body_bytes_in_flight="2500", http_body_wait_s="0")
    assert (explicit.effective_max_body_bytes_in_flight, explicit.http_body_wait_s) == (2500, 0.0)
    assert load(max_image_bytes="1000").effective_max_body_bytes_in_flight == 4000


def test_body_budget_below_one_image_refused():
    problems = problems_of(max_image_bytes="1000", max_body_bytes_in_flight="999")
    assert len(problems) == 1 and "IMGDEDUP_MAX_BODY_BYTES_IN_FLIGHT=999" in problems[0]


@pytest.mark.parametrize("env", [
    {"http_read_timeout_s": "0"}, {"http_read_timeout_s": "nan"}, {"http_body_wait_s": "-1"},
    {"http_read_timeout_s": "5", "http_body_wait_s": "5"},
])
def test_bad_http_timeouts_refused(env):
    problems = problems_of(**env)
    assert any("IMGDEDUP_HTTP_" in p for p in problems), problems


@pytest.mark.parametrize("url", [
    "redis://localhost:6379/0", "rediss://user:pw@cache:6380/1", "unix:///run/redis.sock",
])
def test_good_redis_urls(url):
    settings = load(redis_url=url)
    assert settings.redis_url == url
    assert settings.index_backend == "redis"


@pytest.mark.parametrize("url", ["localhost:6379", "http://redis:6379", "redis:/x", " redis"])
def test_bad_redis_url_refused(url):
    problems = problems_of(redis_url=url)
    assert any("IMGDEDUP_REDIS_URL" in p for p in problems)


@pytest.mark.parametrize("prefix", ["", "a b", "x" * 65, "{ns}", "a/b"])
def test_bad_redis_prefix_refused(prefix):
    problems = problems_of(redis_prefix=prefix)
    assert any("IMGDEDUP_REDIS_PREFIX" in p for p in problems)


def test_good_bootstrap():
    settings = load(kafka_bootstrap="kafka-0:9092, kafka-1.example.com:19092,10.0.0.7:9093")
    assert settings.kafka_bootstrap.startswith("kafka-0:9092")


@pytest.mark.parametrize("bootstrap", [
    "kafka", "kafka:port", "kafka:9092,", "kafka:9092;kafka2:9092", "a b:9092", ":9092",
    "kafka:123456",
])
def test_bad_bootstrap_refused(bootstrap):
    problems = problems_of(kafka_bootstrap=bootstrap)
    assert any("IMGDEDUP_KAFKA_BOOTSTRAP" in p for p in problems), problems


def test_bootstrap_port_out_of_range_refused():
    problems = problems_of(kafka_bootstrap="kafka:99999")
    assert any("IMGDEDUP_KAFKA_BOOTSTRAP" in p for p in problems)


def test_bootstrap_cross_checks():
    problems = problems_of(
        kafka_bootstrap="k:9092", kafka_decisions_topic="image-uploads",
        kafka_security_protocol="SASL_SSL",
    )
    joined = "\n".join(problems)
    assert "three different topics" in joined
    assert "IMGDEDUP_KAFKA_SASL_MECHANISM" in joined
    ok = load(
        kafka_bootstrap="k:9092", kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="PLAIN"
    )
    assert ok.kafka_sasl_mechanism == "PLAIN"
    # Without a bootstrap, Kafka settings are not cross-checked (HTTP-only deployment).
    assert load(kafka_decisions_topic="image-uploads").kafka_bootstrap == ""


# --- redaction and docs ---------------------------------------------------------------------


def test_redacted_masks_passwords():
    settings = load(
        redis_url="redis://alice:s3cret@cache:6379/0",
        redis_password="hunter2",
        kafka_sasl_password="kafka-pw",
        kafka_sasl_username="bob",
    )
    out = settings.redacted()
    text = repr(out)
    for secret in ("s3cret", "hunter2", "kafka-pw"):
        assert secret not in text
    assert out["redis_password"] == "***"
    assert out["kafka_sasl_password"] == "***"
    assert out["redis_url"] == "redis://alice:***@cache:6379/0"  # the user name helps debugging
    assert out["kafka_sasl_username"] == "bob"
    # The settings object itself is untouched.
    assert settings.redis_password == "hunter2"


def test_redacted_leaves_empty_secrets_and_plain_urls():
    out = load(redis_url="redis://cache:6379/0").redacted()
    assert out["redis_password"] == ""
    assert out["redis_url"] == "redis://cache:6379/0"
    assert set(out) == {f.name for f in dataclasses.fields(Settings)}


@pytest.mark.parametrize("url, secret", [
    ("redis://user:pa@ss-word@cache:6379/0", "ss-word"),
    ("redis://cache:6379/0?password=query-secret", "query-secret"),
])
def test_redacted_masks_whole_password(url, secret):
    assert secret not in repr(load(redis_url=url).redacted())


def test_documentation_rows():
    rows = Settings.documentation()
    names = [r[0] for r in rows]
    assert len(names) == len(dataclasses.fields(Settings))
    assert "IMGDEDUP_REDIS_URL" in names
    as_dict = {r[0]: r[1] for r in rows}
    assert as_dict["IMGDEDUP_ALLOW_PRIVATE_URLS"] == "false"
    assert as_dict["IMGDEDUP_HTTP_PORT"] == "8080"
    assert as_dict["IMGDEDUP_REDIS_PREFIX"] == "imgdedup"
    assert as_dict["IMGDEDUP_REDIS_URL"] == "(empty)"
    assert all(r[2] for r in rows)


def test_substring_count_too_small_for_the_radius_is_refused():
    # m=3 at radius 12 probes 12,233 buckets per query: megabytes per lookup.
    problems = problems_of(mih_substrings="3", review_radius="12")
    assert any("IMGDEDUP_MIH_SUBSTRINGS=3" in p and "12233" in p for p in problems)
    assert load(mih_substrings="3", review_radius="8", duplicate_radius="6").mih_substrings == 3
    assert load(mih_substrings="5", review_radius="16").review_radius == 16


def test_every_tls_file_is_checked_and_each_certificate_needs_its_key(tmp_path):
    names = [
        "redis_ssl_ca_file", "redis_ssl_certfile", "redis_ssl_keyfile",
        "kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile",
    ]
    missing = Settings(**{name: str(tmp_path / f"{name}.pem") for name in names}).file_problems()
    assert [problem.split("=")[0] for problem in missing] == [PREFIX + name.upper() for name in names]
    problems = problems_of(redis_ssl_keyfile=str(tmp_path / "k.pem"))
    assert any("REDIS_SSL_CERTFILE and IMGDEDUP_REDIS_SSL_KEYFILE go together" in p for p in problems)


def test_tls_files_are_checked_and_reach_the_clients(tmp_path):
    from imgdedup.adapters.kafka_clients import connection_options
    from imgdedup.index.redis.client import redis_client

    problems = problems_of(kafka_ssl_certfile=str(tmp_path / "c.pem"))
    assert any("KAFKA_SSL_CERTFILE and IMGDEDUP_KAFKA_SSL_KEYFILE go together" in p for p in problems)
    missing = load(redis_ssl_ca_file=str(tmp_path / "missing.pem")).file_problems()
    assert len(missing) == 1 and "IMGDEDUP_REDIS_SSL_CA_FILE" in missing[0] and "no such file" in missing[0]
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked here")
    settings = load(redis_url="rediss://cache:6380/0", redis_ssl_ca_file=str(ca))
    client = redis_client(settings)
    assert client.connection_pool.connection_kwargs["ssl_ca_certs"] == str(ca)
    assert client.connection_pool.connection_class.__name__ == "SSLConnection"
    kafka = load(kafka_bootstrap="k:9093", kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-512",
                 kafka_sasl_username="svc", kafka_sasl_password="pw")
    options = connection_options(kafka)
    assert options["ssl_context"] is not None and options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_password"] == "pw"


def test_distinct_similarity_above_min_similarity_is_refused() -> None:
    with pytest.raises(ConfigError, match="DISTINCT_SIMILARITY"):
        Settings.from_env({"IMGDEDUP_DISTINCT_SIMILARITY": "0.9", "IMGDEDUP_MIN_SIMILARITY": "0.8"})

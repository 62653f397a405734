"""The command line as an operator meets it: start-up validation and clear failures."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from auth_helpers import write_keys_file
from helpers import SAMPLES_DIR
from imgdedup_devtools.broker import free_port


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("IMGDEDUP_")}
    return subprocess.run(
        [sys.executable, "-m", "imgdedup", *args], env={**base, **(env or {})},
        capture_output=True, text=True, timeout=timeout,
    )


def test_serve_refuses_invalid_configuration_listing_every_problem() -> None:
    result = run_cli("serve", env={
        "IMGDEDUP_HTTP_PORT": "eighty", "IMGDEDUP_REVIEW_RADIUS": "4", "IMGDEDUP_DUPLICATE_RADIUS": "6",
        "IMGDEDUP_KAFKA_BOOTSTRAP": "kafka", "IMGDEDUP_TYPO": "1",
    })
    assert result.returncode == 2
    for fragment in ("IMGDEDUP_HTTP_PORT", "IMGDEDUP_REVIEW_RADIUS=4", "IMGDEDUP_KAFKA_BOOTSTRAP", "IMGDEDUP_TYPO"):
        assert fragment in result.stderr, result.stderr


@pytest.mark.parametrize("variable, address", [
    ("IMGDEDUP_REDIS_URL", "redis://127.0.0.1:{port}/0"),
    ("IMGDEDUP_KAFKA_BOOTSTRAP", "127.0.0.1:{port}"),
])
def test_serve_says_which_dependency_is_unreachable(tmp_path, variable: str, address: str) -> None:
    write_keys_file(tmp_path / "keys.json")
    result = run_cli("serve", env={
        "IMGDEDUP_API_KEYS_FILE": str(tmp_path / "keys.json"), variable: address.format(port=free_port()),
        "IMGDEDUP_HTTP_PORT": "0", "IMGDEDUP_HASH_WORKERS": "1",
    })
    assert result.returncode == 1, result.stderr
    assert "does not answer" in result.stderr and variable in result.stderr


def test_config_lists_every_setting_and_check_redacts_secrets(tmp_path) -> None:
    listing = run_cli("config")
    assert listing.returncode == 0 and "`IMGDEDUP_DUPLICATE_RADIUS`" in listing.stdout
    write_keys_file(tmp_path / "keys.json")
    checked = run_cli("config", "--check", env={
        "IMGDEDUP_REDIS_URL": "redis://u:topsecret@h:6379/0", "IMGDEDUP_API_KEYS_FILE": str(tmp_path / "keys.json"),
    })
    assert checked.returncode == 0
    assert "topsecret" not in checked.stdout and "u:***@h:6379" in checked.stdout


def test_hash_prints_fingerprints_and_errors_per_file(tmp_path) -> None:
    good = tmp_path / "a.jpg"
    good.write_bytes((SAMPLES_DIR / "coffee.jpg").read_bytes())
    bad = tmp_path / "b.jpg"
    bad.write_bytes(b"not an image")
    result = run_cli("hash", str(good), str(bad))
    assert result.returncode == 1
    lines = result.stdout.strip().splitlines()
    assert '"format": "JPEG"' in lines[0] and '"error": "undecodable_image"' in lines[1]




def test_serve_refuses_missing_tls_files(tmp_path) -> None:
    result = run_cli("serve", env={"IMGDEDUP_REDIS_SSL_CA_FILE": str(tmp_path / "nope.pem")})
    assert result.returncode == 2 and "no such file" in result.stderr

"""An interrupted scan continues from its checkpoint: after --stop-after, Ctrl-C
(SIGINT) and a hard kill (SIGKILL), the resumed scan hashes only what is missing and
its result equals that of an uninterrupted scan."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from scan_helpers import checkpoint_rows, comparable, many_images, run

from imgdedup import cli as service_cli

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("many") / "src"
    return root, many_images(root, 50)


@pytest.fixture(scope="module")
def uninterrupted(source, tmp_path_factory: pytest.TempPathFactory):
    root, keys = source
    result = run(root, tmp_path_factory.mktemp("full"))
    assert result.report["totals"]["images"] == len(keys)
    assert result.report["totals"]["clusters"] == 10, "every fifth image has an exact copy"
    return result


def _assert_resumed(out: Path, resumed, before: int, keys: list[str], uninterrupted) -> None:
    assert resumed.report is not None and not resumed.interrupted
    assert resumed.reused == before and resumed.hashed == len(keys) - before
    rows = checkpoint_rows(out)
    assert sorted(k for k, _ok, _n in rows) == keys
    assert {n for _k, _ok, n in rows} == {1}, "no file was hashed twice"
    assert comparable(resumed.report) == comparable(uninterrupted.report)


def test_stop_after_then_resume(source, uninterrupted, tmp_path: Path) -> None:
    root, keys = source
    first = run(root, tmp_path, stop_after=7)
    assert first.interrupted and first.stop_reason == "stop-after" and first.report is None
    assert first.hashed == 7
    assert "run the same command again" in first.log
    assert not (tmp_path / "report.html").exists()
    assert len(checkpoint_rows(tmp_path)) == 7
    second = run(root, tmp_path, stop_after=10)
    assert second.interrupted and second.hashed == 10 and second.reused == 7
    _assert_resumed(tmp_path, run(root, tmp_path), 17, keys, uninterrupted)


def test_stop_after_exit_code(source, tmp_path: Path) -> None:
    root, _keys = source
    assert service_cli.main(["scan", str(root), "--out", str(tmp_path), "--stop-after", "3", "--workers", "1"]) == 3
    assert len(checkpoint_rows(tmp_path)) == 3


def _start_slow_scan(root: Path, out: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGDEDUP_")}
    return subprocess.Popen(
        [sys.executable, "-m", "imgdedup.scan", str(root), "--out", str(out), "--workers", "1",
         "--test-delay-ms", "40", "--progress-interval", "0.2"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _wait_for_rows(process: subprocess.Popen, out: Path, at_least: int) -> int:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1]
        try:
            rows = len(checkpoint_rows(out))
        except sqlite3.Error:
            rows = 0  # not created yet
        if rows >= at_least:
            return rows
        time.sleep(0.02)
    process.kill()
    raise AssertionError(f"the scan did not checkpoint {at_least} files within 60 s")


def test_ctrl_c_saves_the_checkpoint_and_the_scan_resumes(source, uninterrupted, tmp_path: Path) -> None:
    root, keys = source
    process = _start_slow_scan(root, tmp_path)
    _wait_for_rows(process, tmp_path, 5)
    process.send_signal(signal.SIGINT)
    _out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "SIGINT: finishing the images in flight" in err and "run the same command again" in err
    assert "imgdedup scan: hashing" in err, "periodic progress lines when not on a terminal"
    saved = len(checkpoint_rows(tmp_path))
    assert 5 <= saved < len(keys)
    _assert_resumed(tmp_path, run(root, tmp_path), saved, keys, uninterrupted)


def test_a_killed_scan_resumes_from_its_last_commit(source, uninterrupted, tmp_path: Path) -> None:
    root, keys = source
    process = _start_slow_scan(root, tmp_path)
    seen = _wait_for_rows(process, tmp_path, 5)
    process.kill()
    process.communicate(timeout=30)
    committed = len(checkpoint_rows(tmp_path))
    assert seen <= committed < len(keys)
    resumed = run(root, tmp_path)
    assert resumed.reused == committed
    _assert_resumed(tmp_path, resumed, committed, keys, uninterrupted)

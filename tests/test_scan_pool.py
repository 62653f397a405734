"""The worker pool behind the scan and the hasher (`imgdedup.process_pool`): an item that
kills its worker is blamed after one retry on its own, its neighbours still get their
results, work can be taken back before it starts, and workers die with their parent.
A scan reports an image that kills its worker, and gives up when every image does."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import Executor, ProcessPoolExecutor
from pathlib import Path

import pytest
from scan_helpers import many_images, run

from imgdedup.process_pool import RenewingPool, prepare_worker
from imgdedup.scan import ScanError
from imgdedup.scan.worker import HashResult, HashTask, hash_chunk

ROOT = Path(__file__).resolve().parent.parent
CRASH = "crash"


def _square_or_die(items: list[object]) -> list[object]:
    """Worker side: square numbers; the item CRASH kills the worker process."""
    out: list[object] = []
    for item in items:
        if item == CRASH:
            os.kill(os.getpid(), signal.SIGKILL)
        if isinstance(item, float):
            time.sleep(item)
        out.append(item * item if isinstance(item, int) else item)
    return out


def _poisoned_hash_chunk(spec, limits, tasks: list[HashTask], delay_s: float = 0.0) -> list[HashResult]:
    """Worker side: `hash_chunk`, except that a file named *poison* kills the worker."""
    if any("poison" in task.key for task in tasks):
        os.kill(os.getpid(), signal.SIGKILL)
    return hash_chunk(spec, limits, tasks, delay_s)


def _blamed(item: object) -> str:
    return f"blamed {item}"


def _new_executor() -> Executor:
    # One worker runs the retries in order, so the culprit dies with no neighbour queued.
    return ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                               initializer=prepare_worker)


@pytest.fixture
def pool():
    pool = RenewingPool(_new_executor)
    yield pool
    pool.close(cancel_futures=True)


async def test_a_batch_that_kills_its_worker_is_retried_item_by_item_and_the_culprit_blamed(
    pool: RenewingPool,
) -> None:
    assert await pool.run(_square_or_die, [1, 2, 3], _blamed) == [1, 4, 9]
    first = pool.executor()
    assert await pool.run(_square_or_die, [4, 5, CRASH], _blamed) == [16, 25, "blamed crash"]
    assert pool.executor() is not first, "the broken executor was replaced"
    assert pool.consecutive_crashes == 1
    assert await pool.run(_square_or_die, [6], _blamed) == [36]
    assert pool.consecutive_crashes == 0


async def test_blame_may_raise_for_the_caller(pool: RenewingPool) -> None:
    def refuse(item: object) -> object:
        raise ValueError(f"{item} crashed its worker twice")

    with pytest.raises(ValueError, match="crash crashed its worker twice"):
        await pool.run(_square_or_die, [CRASH], refuse)


async def test_drop_queued_takes_back_only_the_work_not_started(pool: RenewingPool) -> None:
    await pool.run(_square_or_die, [0.0], _blamed)  # the worker is up
    runs = [asyncio.ensure_future(pool.run(_square_or_die, [0.5, n], _blamed)) for n in range(6)]
    await asyncio.sleep(0.2)
    pool.drop_queued()
    results = await asyncio.gather(*runs)
    assert results[0] == [0.5, 0], "the running work finishes"
    assert [] in results, "work no worker had taken is dropped"
    assert all(r in ([], [0.5, n * n]) for n, r in enumerate(results))


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_workers_exit_when_their_parent_is_killed(method: str) -> None:
    script = textwrap.dedent(f"""
        import multiprocessing, time
        from concurrent.futures import ProcessPoolExecutor
        from imgdedup.process_pool import prepare_worker
        pool = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context({method!r}), initializer=prepare_worker)
        list(pool.map(time.sleep, [0.2, 0.2]))  # starts both workers
        print(" ".join(map(str, pool._processes)), flush=True)
        time.sleep(60)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        workers = [int(pid) for pid in parent.stdout.readline().split()]
    finally:
        parent.kill()
        parent.wait(10)
    assert len(workers) == 2
    deadline = time.monotonic() + 10
    while any(_running(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_running(pid) for pid in workers), "orphaned worker processes"


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's exit is reaped by whoever adopts it, if at all)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_a_scan_reports_the_image_that_kills_its_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = many_images(tmp_path / "src", 10)
    (tmp_path / "src" / "poison.jpg").write_bytes((tmp_path / "src" / keys[0]).read_bytes())
    monkeypatch.setattr("imgdedup.scan.hashing.hash_chunk", _poisoned_hash_chunk)
    result = run(tmp_path / "src", tmp_path / "out", chunk_size=4)
    assert result.report is not None
    unreadable = {u["key"]: u["error"] for u in result.report["unreadable"]}
    assert unreadable.get("poison.jpg") == "hashing_crashed"
    assert result.report["totals"]["images"] + len(unreadable) == len(keys) + 1


def test_a_scan_gives_up_when_every_image_kills_its_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for n in range(5):
        (source / f"poison-{n}.jpg").write_bytes(b"never read")
    monkeypatch.setattr("imgdedup.scan.hashing.hash_chunk", _poisoned_hash_chunk)
    monkeypatch.setattr("imgdedup.scan.hashing.MAX_CONSECUTIVE_CRASHES", 3)
    with pytest.raises(ScanError, match="in a row crashed their worker process"):
        run(source, tmp_path / "out")

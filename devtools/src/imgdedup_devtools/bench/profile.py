"""Summarise a py-spy `--format raw` profile (collapsed stacks, one `frames count` per
line; with --subprocesses the first frame names the process) by where the time goes:
the replica's event-loop process (Kafka client, Redis client, index logic, hashing
IPC, event codec, asyncio) and its hashing worker processes (decode, pHash, SHA-256)."""

from __future__ import annotations

import collections
import re
from pathlib import Path
from typing import Any

_LINE = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$")
_PROCESS = re.compile(r'^process (?P<pid>\d+):"(?P<cmd>[^"]*)"(?:;|$)')
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")

# (category, test on "function file") checked from the leaf frame towards the root
_MAIN_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("protobuf / event codec", ("google/protobuf", "imgdedup/adapters/events.py", "imgdedup/_gen/")),
    ("kafka client (aiokafka)", ("aiokafka/", "kafka/")),
    ("redis client (redis-py)", ("redis/",)),
    ("index logic (index, decision rules, numpy)", ("imgdedup/index/", "imgdedup/decisions/rules.py", "numpy/")),
    ("hashing IPC (pickle, pipes to workers)", ("concurrent/futures", "multiprocessing/")),
    ("http / metrics / logging", ("aiohttp/", "prometheus_client", "logging/", "imgdedup/logs.py", "imgdedup/metrics.py")),
    ("service glue (consumer, deduplicator)", ("imgdedup/adapters/kafka_consumer.py", "imgdedup/decisions/deduplicator.py",
                                              "imgdedup/hasher.py")),
    ("asyncio event loop", ("asyncio/", "selectors.py", "uvloop")),
)
_GENERIC = "asyncio event loop"
_WORKER_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("perceptual codes (trim, pHash DCT, crop windows)", ("perceptual_codes", "window_codes", "phash_from_pixels")),
    ("luminance / resize", ("to_luminance", "resize", "normalise_mode", "convert")),
    ("JPEG/PNG decode (PIL load)", ("decode_for_hashing", "PIL/")),
    ("SHA-256", ("sha256",)),
    ("worker IPC (pickle, pipes)", ("concurrent/futures", "multiprocessing/")),
)


def _hit(frame: str, needle: str) -> bool:
    """Path needles ("redis/") match at the start of a path component (py-spy prints
    paths relative to sys.path: "(redis/asyncio/client.py:1)"); others anywhere."""
    if "/" in needle:
        return f"({needle}" in frame or f"/{needle}" in frame
    return needle in frame


def _classify(frames: list[str], rules: tuple[tuple[str, tuple[str, ...]], ...]) -> str:
    """The category of the frame nearest the leaf that a specific rule matches; the
    event-loop rule (asyncio, selectors) only when nothing more specific is on the stack,
    since every coroutine runs under it."""
    specific = [rule for rule in rules if rule[0] != _GENERIC]
    for frame in reversed(frames):
        for name, needles in specific:
            if any(_hit(frame, needle) for needle in needles):
                return name
    for name, needles in rules:
        if name == _GENERIC and any(_hit(frame, needle) for frame in frames for needle in needles):
            return name
    return "other"


def _leaf(frame: str) -> str:
    match = _FRAME.match(frame)
    if not match:
        return frame
    path = match.group("file") or ""
    short = "/".join(path.split("/")[-2:])
    return f"{match.group('func')} ({short})"


def summarise_raw_profile(path: Path) -> dict[str, Any]:
    """{'samples', 'processes', 'by_process': {role: samples}, 'categories': {name: %},
    'top_leaves': [(leaf, %)]} over every sample of every process."""
    per_process: collections.Counter[str] = collections.Counter()
    categories: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    roots: dict[str, str] = {}
    total = 0
    for raw in path.read_text(errors="replace").splitlines():
        match = _LINE.match(raw)
        if not match:
            continue
        count = int(match.group("count"))
        stack = match.group("stack")
        pid, cmd = "?", ""
        # with --subprocesses every ancestor process is a frame (its command line may
        # contain ';'): the last one is the process sampled
        while process := _PROCESS.match(stack):
            pid, cmd = process.group("pid"), process.group("cmd")
            stack = stack[process.end():]
        frames = stack.split(";") if stack else []
        if pid not in roots:
            roots[pid] = "worker" if ("multiprocessing" in cmd or "forkserver" in cmd) else "main"
        role = roots[pid]
        rules = _WORKER_RULES if role == "worker" else _MAIN_RULES
        category = f"{'hash workers' if role == 'worker' else 'event loop'}: {_classify(frames, rules)}"
        categories[category] += count
        per_process[role] += count
        if frames:
            leaves[_leaf(frames[-1])] += count
        total += count
    if total == 0:
        return {"samples": 0, "processes": 0, "by_process": {}, "categories": {}, "top_leaves": []}

    def share(n: int) -> float:
        return round(100.0 * n / total, 1)

    return {
        "samples": total,
        "processes": len(roots),
        "by_process": {role: share(n) for role, n in per_process.items()},
        "categories": {name: share(n) for name, n in sorted(categories.items(), key=lambda kv: -kv[1])},
        "top_leaves": [(leaf, share(n)) for leaf, n in leaves.most_common(25)],
    }

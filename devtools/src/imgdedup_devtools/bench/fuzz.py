"""`imgdedup bench fuzz`: coverage-guided fuzzing (atheris/libFuzzer) of the decode path,
the event decoders or the HTTP handlers for a while; prints inputs executed and the
distinct failures (invariants in `imgdedup_devtools.fuzz_targets`).

The fuzzer runs in a child process (libFuzzer ends its process when time is up). A
failure does not stop the run: each distinct one (exception type and innermost frame)
is counted, and its first input is saved under --out for replay.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TARGETS = ("decode", "events", "http")
FAILURES_FILE = "failures.jsonl"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", choices=TARGETS, required=True)
    parser.add_argument("--seconds", type=int, default=60, help="how long to fuzz (default 60)")
    parser.add_argument("--seed", type=int, default=1, help="libFuzzer's random seed")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for failing inputs and the grown corpus (default: a temporary one, removed)")


def main(args: argparse.Namespace) -> int:
    try:
        import atheris  # noqa: F401
    except ImportError:
        print("imgdedup bench fuzz needs atheris: pip install 'atheris>=2.3,<4'", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="imgdedup-fuzz-") as scratch:
        out = args.out or Path(scratch)
        (out / "corpus").mkdir(parents=True, exist_ok=True)
        (out / FAILURES_FILE).unlink(missing_ok=True)
        command = [
            sys.executable, "-m", "imgdedup_devtools.bench.fuzz", args.target, str(out),
            f"-max_total_time={args.seconds}", f"-seed={args.seed}", "-print_final_stats=1",
            "-rss_limit_mb=3072", "-timeout=30", f"-artifact_prefix={out}/", str(out / "corpus"),
        ]
        print(f"fuzzing {args.target} for {args.seconds} s (atheris, libFuzzer seed {args.seed})", flush=True)
        started = time.monotonic()
        child = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, errors="replace")
        elapsed = time.monotonic() - started
        report = _report(args.target, child.stderr, out / FAILURES_FILE, elapsed)
        report["fuzzer_exit_code"] = child.returncode
        print(f"inputs executed:   {report['inputs_executed']:,} ({report['inputs_per_s']:.0f}/s)")
        print(f"coverage (edges):  {report['coverage_edges']}")
        print(f"distinct failures: {len(report['failures'])}")
        for failure in report["failures"]:
            print(f"  {failure['count']:>7} x {failure['signature']}: {failure['what'][:160]}")
            print(f"          first input: {failure['input']}")
        if child.returncode not in (0,) and not report["inputs_executed"]:
            print(child.stderr[-3000:], file=sys.stderr)
        print(json.dumps(report))
        return 0 if child.returncode == 0 else 1


def _report(target: str, stderr: str, failures_file: Path, elapsed: float) -> dict[str, Any]:
    executed = _last_int(r"stat::number_of_executed_units:\s*(\d+)", stderr)
    if executed is None:
        executed = _last_int(r"Done (\d+) runs", stderr) or 0
    edges = _last_int(r"\bcov: (\d+)", stderr)
    # libFuzzer's own clock: the fuzzing time, without start-up (imports, instrumentation)
    fuzzing_s = _last_int(r"Done \d+ runs in (\d+) second", stderr) or elapsed
    failures: dict[str, dict[str, Any]] = {}
    if failures_file.exists():
        for line in failures_file.read_text().splitlines():
            entry = json.loads(line)
            seen = failures.setdefault(entry["signature"], {**entry, "count": 0})
            seen["count"] += 1
    return {
        "benchmark": "fuzz", "target": target, "seconds": round(elapsed, 1), "fuzzing_seconds": fuzzing_s,
        "inputs_executed": executed, "inputs_per_s": round(executed / fuzzing_s, 1) if fuzzing_s else 0.0,
        "coverage_edges": edges, "failures": sorted(failures.values(), key=lambda f: -f["count"]),
    }


def _last_int(pattern: str, text: str) -> int | None:
    found = re.findall(pattern, text)
    return int(found[-1]) if found else None


# --- the fuzzing child ------------------------------------------------------------------


def _child(target: str, out: Path, libfuzzer_args: list[str]) -> None:
    import atheris

    from imgdedup_devtools.bench import fuzz_inputs
    from imgdedup_devtools.fuzz_targets import Escaped

    one_input, seeds = fuzz_inputs.TARGETS[target]()
    corpus = Path(libfuzzer_args[-1])
    for name, data in seeds.items():
        (corpus / f"seed-{name}").write_bytes(data)
    seen: set[str] = set()

    def test_one_input(data: bytes) -> None:
        try:
            one_input(data)
        except Escaped as failure:
            entry = {"signature": failure.signature, "what": str(failure)}
            if failure.signature not in seen:
                seen.add(failure.signature)
                path = out / f"failure-{len(seen)}.bin"
                path.write_bytes(data)
                entry["input"] = str(path)
            with (out / FAILURES_FILE).open("a") as log:
                log.write(json.dumps(entry) + "\n")

    atheris.instrument_all()
    atheris.Setup([sys.argv[0], *libfuzzer_args], test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    import warnings

    warnings.simplefilter("ignore")
    _child(sys.argv[1], Path(sys.argv[2]), sys.argv[3:])

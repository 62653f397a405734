"""Checks that keep the repository honest: lint clean, generated code in sync with proto/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_is_clean() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "src", "devtools", "tests", "scripts"],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_generated_protobuf_module_matches_the_schema(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    out.mkdir()
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'proto'}", f"--python_out={out}",
         str(ROOT / "proto/imgdedup/v1/events.proto")],
        check=True,
    )
    fresh = (out / "imgdedup/v1/events_pb2.py").read_text()
    committed = (ROOT / "src/imgdedup/_gen/imgdedup/v1/events_pb2.py").read_text()
    assert fresh == committed, "proto/ changed: run scripts/gen-proto and commit the result"


def test_readme_configuration_table_matches_settings() -> None:
    from imgdedup.config import Settings

    readme = (ROOT / "README.md").read_text()
    for name, default, doc in Settings.documentation():
        shown = default if default == "(empty)" else f"`{default}`"
        # The row `imgdedup config` prints: a changed default or meaning shows here.
        assert f"| `{name}` | {shown} | {doc} |" in readme, f"README's row for {name} is not what `imgdedup config` prints"

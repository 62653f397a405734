"""Checks that keep the repository honest: lint clean, generated code in sync with proto/."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
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


def test_mypy_is_clean() -> None:
    # Configuration (files, strictness, untyped libraries) is pyproject's [tool.mypy].
    result = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_wheel_carries_only_the_runtime_package(tmp_path: Path) -> None:
    """The service wheel (what the container image installs) holds the `imgdedup`
    package and nothing else: no benchmarks, demo or broker launcher (devtools/)."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True,
    )
    (wheel,) = tmp_path.glob("imgdedup-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"imgdedup"}, top_level
    assert "imgdedup/adapters/openapi.json" in names and "imgdedup/py.typed" in names
    assert not [name for name in names if "bench" in name or "demo" in name or "broker" in name or "samples" in name]


def _emitted_error_codes() -> set[str]:
    """Every error code in src/: InputError classes, literal `_error(STATUS, "code", ...)`
    answers, named constants in errors.py, and the two aiohttp errors the middleware
    renames (404, 405)."""
    import importlib
    import pkgutil

    import imgdedup
    from imgdedup.errors import InputError

    codes = {"not_found", "method_not_allowed"}
    for module in pkgutil.walk_packages(imgdedup.__path__, "imgdedup."):
        if not module.name.endswith("__main__"):
            importlib.import_module(module.name)
    pending: list[type[InputError]] = [InputError]
    while pending:
        cls = pending.pop()
        codes.add(cls.code)
        pending += cls.__subclasses__()
    codes.discard(InputError.code)  # the base class: never raised itself
    for path in (ROOT / "src/imgdedup").rglob("*.py"):
        codes |= set(re.findall(r'_error\(\s*\d{3},\s*"([a-z_]+)"', path.read_text()))
    codes |= set(re.findall(r'^[A-Z_]+ = "([a-z_]+)"$', (ROOT / "src/imgdedup/errors.py").read_text(), re.M))
    return codes


def test_readme_lists_every_error_code() -> None:
    readme = (ROOT / "README.md").read_text()
    start = readme.index('Errors are JSON `{"error": CODE, "detail": TEXT}`')
    listed = set(re.findall(r"`([a-z_]+)`", readme[start : readme.index("\n\n", start)]))
    codes = _emitted_error_codes()
    assert {"overloaded", "internal_error", "invalid_event", "url_refused", "image_too_large"} <= codes
    assert not codes - listed, f"README's error list misses {sorted(codes - listed)}"


def _scripts() -> list[Path]:
    return sorted([*ROOT.glob("scripts/*.py"), ROOT / "devtools" / "corpus" / "build-holdout-corpus"])


def test_scripts_import_only_names_that_exist() -> None:
    """Scripts outside the packages are not type-checked: a module move breaks them silently."""
    import ast
    import importlib

    missing = []
    for script in _scripts():
        for node in ast.walk(ast.parse(script.read_text(), str(script))):
            if not isinstance(node, ast.ImportFrom) or not node.module:
                continue
            if node.module.split(".")[0] not in {"imgdedup", "imgdedup_devtools"}:
                continue
            try:
                module = importlib.import_module(node.module)
            except ImportError:
                missing.append(f"{script.name}: {node.module}")
                continue
            missing += [f"{script.name}: {node.module}.{alias.name}" for alias in node.names
                        if not hasattr(module, alias.name)]
    assert not missing, missing

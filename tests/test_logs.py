"""Log formats: one line per record whatever the values, so clients cannot forge lines."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from imgdedup import logs

FORGED = 'x\n2025-01-07 10:00:00,000 ERROR imgdedup.http: forged  image_id=admin'


@pytest.fixture
def log_to() -> Iterator[io.StringIO]:
    """A buffer to configure logging to; the root logger is restored afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield io.StringIO()
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_an_id_with_a_newline_stays_on_one_line(log_to: io.StringIO, fmt: str) -> None:
    logs.configure("INFO", fmt, stream=log_to)
    logging.getLogger("imgdedup.http").info(
        "rejected: %s", FORGED, extra={"namespace": "shop", "image_id": FORGED, "path": "/v1/a b"}
    )
    lines = log_to.getvalue().splitlines()
    assert len(lines) == 1, lines
    if fmt == "json":
        assert json.loads(lines[0])["image_id"] == FORGED
        return
    line = lines[0]
    assert "namespace=shop" in line  # plain values stay bare
    assert f"image_id={json.dumps(FORGED)}" in line  # quoted, newline escaped
    assert 'path="/v1/a b"' in line
    assert "rejected: x\\n2025-01-07" in line  # the message's own line break is escaped


def test_other_control_characters_are_escaped_in_text(log_to: io.StringIO) -> None:
    logs.configure("INFO", "text", stream=log_to)
    logging.getLogger("imgdedup.http").info("id %s", "a\rb\x1b[31m\u2028c", extra={"image_id": "q\"uote"})
    line = log_to.getvalue()
    assert line.count("\n") == 1 and "\r" not in line and "\x1b" not in line and "\u2028" not in line
    assert "id a\\rb\\x1b[31m\\u2028c" in line
    assert 'image_id="q\\"uote"' in line


def test_tracebacks_keep_their_lines(log_to: io.StringIO) -> None:
    logs.configure("INFO", "text", stream=log_to)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("imgdedup.http").exception("failed")
    assert "Traceback (most recent call last):\n" in log_to.getvalue()

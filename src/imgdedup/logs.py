"""Structured logging: one JSON object per line, carrying event_id / image_id / namespace.

Fields passed with `extra=` become top-level keys, so log pipelines can filter on them
without parsing messages.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import TextIO

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                payload[key] = value
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str, separators=(",", ":"))


#: Values printed bare in the text format; anything else is quoted and escaped.
_BARE = re.compile(r"[A-Za-z0-9_.:/@+-]+")


class TextFormatter(logging.Formatter):
    """`TIME LEVEL LOGGER: MESSAGE  key=value ...` on one line. Values come from clients
    (ids, paths): they are quoted and escaped unless plainly safe, and control characters
    in the message are escaped, so a client cannot forge or split log lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        escaped = logging.makeLogRecord({**vars(record), "message": _escape_controls(record.message)})
        return super().formatMessage(escaped)

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        extras = {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}
        return base + ("  " + " ".join(f"{k}={_text_value(v)}" for k, v in extras.items()) if extras else "")


def _text_value(value: object) -> str:
    text = str(value)
    return text if _BARE.fullmatch(text) else json.dumps(text)


def _escape_controls(text: str) -> str:
    """Line breaks and other non-printable characters as escapes (\\n, \\x1b, \\u2028)."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


def configure(level: str, fmt: str, stream: TextIO | None = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        JsonFormatter() if fmt == "json" else TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Client libraries are chatty at INFO (every rebalance, every connection).
    for noisy in ("aiokafka", "kafka"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))

"""Logging for people (text) and for machines (`--log-format json`, one object per line)."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z"
    )


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "event": getattr(record, "event", None) or record.name,
            "message": record.getMessage(),
        }
        data.update(_extras(record))
        if record.exc_info and record.levelno >= logging.DEBUG and logging.getLogger("etl").isEnabledFor(logging.DEBUG):
            data["traceback"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = _extras(record)
        account = extras.pop("account", None)
        extras.pop("event", None)
        head = f"{_timestamp(record)} {record.levelname:<7} "
        if account:
            head += f"{account}: "
        line = head + record.getMessage()
        if extras:
            line += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at the time, so that log lines go above a progress
    display that has taken stderr over, instead of through it."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def setup(log_format: str = "text", verbosity: int = 0, stream: TextIO | None = None) -> None:
    """Configure the `etl` loggers: warnings by default, info with -v, debug with -vv."""
    handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger("etl")
    root.handlers[:] = [handler]
    root.propagate = False
    level = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    root.setLevel(level)

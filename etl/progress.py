"""What a running sync shows while it works.

- On a terminal (text logs): one bar per account with percent, calls/s and ETA, drawn by
  `rich` on stderr (`etl.bars`); an account's bar goes away when its summary line is printed.
- With `--log-format json`: a `progress` event per account on stderr when it starts reading
  and then at most every `ETL_PROGRESS_INTERVAL` seconds (default 5), for dashboards.
- Otherwise (a pipe, a file, cron): nothing.

Each takes the runner's callback `progress(account, calls_done, calls_expected)`.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Any

DEFAULT_INTERVAL = 5.0
_ECHO_LOCK = threading.Lock()


class Reporter:
    """Shows nothing: the display for pipes, files and `-q`."""

    def __call__(self, account: str, calls_done: int, calls_expected: int | None) -> None:
        return None

    def done(self, account: str) -> None:
        """The account has finished (its summary line comes next)."""

    def echo(self, line: str, *, err: bool = False) -> None:
        """Print a line of output without disturbing the display; whole lines only, even
        when several accounts finish at once (through sys.stdout / sys.stderr as they are
        now, which rich replaces while its bars are live)."""
        stream = sys.stderr if err else sys.stdout
        with _ECHO_LOCK:
            stream.write(line + "\n")
            stream.flush()

    def close(self) -> None:
        """The command is finishing: remove what is on screen."""


class JsonEvents(Reporter):
    """`progress` events through the JSON log handler, whatever the log level."""

    def __init__(self, interval: float = DEFAULT_INTERVAL) -> None:
        self.interval = interval
        self.log = logging.getLogger("etl.progress")
        self._lock = threading.Lock()
        self._first: dict[str, float] = {}
        self._last: dict[str, float] = {}

    def __call__(self, account: str, calls_done: int, calls_expected: int | None) -> None:
        now = time.monotonic()
        with self._lock:
            first = self._first.setdefault(account, now)
            last = self._last.get(account)
            if last is not None and now - last < self.interval:
                return
            self._last[account] = now
        elapsed = now - first
        rate = calls_done / elapsed if elapsed > 0 else None
        fields: dict[str, Any] = {
            "account": account,
            "event": "progress",
            "calls_done": calls_done,
            "calls_expected": calls_expected,
            "percent": (round(min(100.0, 100.0 * calls_done / calls_expected), 1)
                        if calls_expected else None),
            "calls_per_second": round(rate, 1) if rate else None,
            "eta_seconds": (round(max(0, calls_expected - calls_done) / rate, 1)
                            if rate and calls_expected is not None else None),
        }
        record = self.log.makeRecord(self.log.name, logging.INFO, __file__, 0,
                                     "%d of %s calls", (calls_done, calls_expected), None,
                                     extra=fields)
        self.log.handle(record)  # handlers only: progress is shown at every log level but -q

    def done(self, account: str) -> None:
        with self._lock:
            self._first.pop(account, None)
            self._last.pop(account, None)


def for_terminal(log_format: str, verbosity: int) -> Reporter:
    """The display this invocation gets (see the module's docstring)."""
    if verbosity < 0:
        return Reporter()
    if log_format == "json":
        return JsonEvents(_interval())
    if sys.stderr.isatty():
        from .bars import TerminalBars  # rich loads only for a terminal

        return TerminalBars()
    return Reporter()


def _interval() -> float:
    raw = os.environ.get("ETL_PROGRESS_INTERVAL", "").strip()
    try:
        return max(0.0, float(raw)) if raw else DEFAULT_INTERVAL
    except ValueError:
        return DEFAULT_INTERVAL

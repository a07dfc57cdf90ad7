"""The terminal's progress bars: one rich bar per account (see `etl.progress`)."""

from __future__ import annotations

import sys
import threading

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from .progress import Reporter


class _Rate(ProgressColumn):
    """Calls per second, averaged by rich over its last samples."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} calls/s" if speed else "- calls/s", style="progress.data.speed")


class TerminalBars(Reporter):
    """One rich progress bar per account on stderr."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self._bars = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.completed:,.0f}/{task.fields[expected]} calls"),
            _Rate(),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
            # Lines written to stdout go above the bars when both share the terminal.
            # (`echo` prints through sys.stdout / sys.stderr, which rich replaces while live.)
            redirect_stdout=sys.stdout.isatty(),
            redirect_stderr=True,
        )
        self._tasks: dict[str, TaskID] = {}
        self._lock = threading.Lock()
        self._started = False

    def __call__(self, account: str, calls_done: int, calls_expected: int | None) -> None:
        with self._lock:
            if not self._started:
                self._bars.start()
                self._started = True
            total = float(max(calls_expected, calls_done)) if calls_expected is not None else None
            expected = f"{calls_expected:,}" if calls_expected is not None else "?"
            task = self._tasks.get(account)
            if task is None:
                self._tasks[account] = self._bars.add_task(account, total=total,
                                                           completed=calls_done, expected=expected)
            else:
                self._bars.update(task, total=total, completed=calls_done, expected=expected)

    def done(self, account: str) -> None:
        with self._lock:
            task = self._tasks.pop(account, None)
            if task is not None:
                self._bars.remove_task(task)
                self._bars.refresh()

    def close(self) -> None:
        with self._lock:
            if self._started:
                self._bars.stop()
                self._started = False

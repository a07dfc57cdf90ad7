"""A clean stop: SIGTERM (systemd, Kubernetes, Dagster) and SIGINT (Ctrl-C) ask the running
syncs to stop between two batches.

The first signal sets a `StopToken`. Each account checks it before its next batch, so the
batch in flight is committed or rolled back whole; the account's run is then recorded as
`interrupted` and its lock released, and `etl` exits 143 (SIGTERM) or 130 (SIGINT). A retry
or rate-limit wait is cut short by the token too, so a stop takes a moment, not a backoff.
A second signal stops at once, as a second Ctrl-C does elsewhere (the locks die with the
process, and the next run closes its run-log rows as `died`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType

from .errors import EtlError

# What a shell reports for a process ended by these signals: 128 + the signal's number.
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class Interrupted(EtlError):
    """A stop was requested; raised between batches, never inside one."""

    def __init__(self, signum: int | None) -> None:
        self.signum = signum
        name = signal.Signals(signum).name if signum is not None else "a stop request"
        super().__init__(f"stopped by {name}")


class StopToken:
    """Set once by a signal handler (or a caller); checked by every account between batches."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signum: int | None = None

    def request(self, signum: int | None = None) -> None:
        if not self._event.is_set():
            self.signum = signum
            self._event.set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        """Raise `Interrupted` if a stop was requested."""
        if self._event.is_set():
            raise Interrupted(self.signum)

    def sleep(self, seconds: float) -> None:
        """Sleep like `time.sleep`, but wake up and raise `Interrupted` when a stop is requested."""
        if self._event.wait(max(0.0, seconds)):
            raise Interrupted(self.signum)

    @property
    def exit_code(self) -> int | None:
        return EXIT_CODES.get(signal.Signals(self.signum)) if self.signum is not None else None


@contextlib.contextmanager
def on_signals(token: StopToken) -> Iterator[StopToken]:
    """While inside, SIGTERM and SIGINT set `token`; a second one ends the process at once.

    Only the main thread may install handlers; elsewhere (a worker thread of a host program)
    this does nothing and the host's own handling stays in place.
    """
    if threading.current_thread() is not threading.main_thread():
        yield token
        return

    def handler(signum: int, _frame: FrameType | None) -> None:
        if token.requested:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        token.request(signum)

    previous = {sig: signal.signal(sig, handler) for sig in EXIT_CODES}
    try:
        yield token
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)

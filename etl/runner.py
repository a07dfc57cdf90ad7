"""Runs a command for each account: lock, plan, read pages, load batches, commit state, log.

One account's failure never stops the others; each account's result says what happened.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any

import requests
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from . import locks, stopping
from .client import VoxClient, describe
from .config import Account, Config
from .errors import EtlError, LockBusy, first_line
from .loader import LoadCounts, in_transaction, iso_utc, save_rejects, upsert_calls, utcnow
from .outcomes import Command, Outcome
from .plans import Batch, Extraction, Kind
from .state import (
    SyncState,
    Warehouse,
    close_dead_runs,
    deleted_count,
    finish_run,
    flag_absent,
    new_run_id,
    read_state,
    record_skip,
    restore_seen,
    save_state,
    start_run,
)
from .walks import Reader

log = logging.getLogger("etl.runner")

# progress(account, calls_done, calls_expected): calls read so far, and how many the run
# expects to read (None until it knows).
Progress = Callable[[str, int, int | None], None]


@dataclass
class AccountResult:
    """What one command did for one account."""

    account: str
    auth_id: str
    outcome: Outcome = Outcome.RUNNING
    counts: LoadCounts = field(default_factory=LoadCounts)
    pages: int = 0
    requests: int = 0
    retries: int = 0
    seconds: float = 0.0
    error: str | None = None
    deleted: int = 0
    # The newest start_time the run read, and the provider's window: its oldest listed call.
    watermark: datetime | None = None
    window_start: datetime | None = None
    notice: str | None = None
    # The exception that failed the account, for callers that classify it (Dagster retries).
    failure: BaseException | None = field(default=None, repr=False)

    def summary(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "outcome": self.outcome,
            "new": self.counts.new,
            "updated": self.counts.updated,
            "unchanged": self.counts.unchanged,
            "rejected": self.counts.rejected,
            "deleted": self.deleted,
            "pages": self.pages,
            "requests": self.requests,
            "retries": self.retries,
            "seconds": round(self.seconds, 2),
            **({"window_start": iso_utc(self.window_start)} if self.window_start else {}),
            **({"notice": self.notice} if self.notice else {}),
            **({"error": self.error} if self.error else {}),
        }


@dataclass
class Job:
    """A command for one account: `sync` (incremental or `full`) or `backfill` (a window)."""

    command: Command
    full: bool = False
    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        self.command = Command(self.command)  # "sync" and "backfill" name them as well


class AccountRun:
    """One account under one command: everything between taking its lock and releasing it."""

    def __init__(
        self,
        engine: Engine,
        config: Config,
        account: Account,
        job: Job,
        run_id: str,
        *,
        progress: Progress | None = None,
        stop: stopping.StopToken | None = None,
    ) -> None:
        self.engine = engine
        self.config = config
        self.account = account
        self.job = job
        self.run_id = run_id
        self.progress = progress
        self.stop = stop or stopping.StopToken()
        self.result = AccountResult(account.name, account.auth_id)
        self._deleted = 0  # the account's calls flagged deleted, so seen ones can be restored

    def run(self, *, wait: bool = False) -> AccountResult:
        started = time.monotonic()
        if self.stop.requested:  # stopped before this account's turn came: nothing to record
            self.result.outcome = Outcome.INTERRUPTED
            self.result.error = f"{stopping.Interrupted(self.stop.signum)} before it started"
            return self.result
        try:
            lock = locks.acquire(self.engine, self.account.auth_id, wait=wait, stop=self.stop)
        except stopping.Interrupted as exc:  # stopped while waiting for another run's lock
            self.result.outcome = Outcome.INTERRUPTED
            self.result.error = f"{exc} while waiting for the lock"
            return self.result
        except LockBusy as exc:
            self.result.outcome = Outcome.SKIPPED
            self.result.error = f"another run holds the lock of {self.account.name}; skipped"
            log.warning(str(exc), extra={"account": self.account.name, "event": "skipped"})
            with contextlib.suppress(SQLAlchemyError):
                record_skip(self.engine, self.run_id, self.job.command, self.account.auth_id,
                            self.account.name, self.result.error)
            return self.result
        with lock:
            client: VoxClient | None = None
            try:
                close_dead_runs(self.engine, self.account.auth_id, self.run_id)
                start_run(self.engine, self.run_id, self.job.command,
                          self.account.auth_id, self.account.name)
                client = VoxClient(self.account, self.config.api, self.account.token())
                client.policy.sleep = self.stop.sleep  # a stop cuts a retry's wait short
                self._execute(client)
                self.result.outcome = Outcome.OK
            except stopping.Interrupted as exc:
                self.result.outcome = Outcome.INTERRUPTED
                self.result.error = str(exc)
            except Exception as exc:
                self.result.outcome = Outcome.FAILED
                self.result.error = _explain(exc)
                self.result.failure = exc
                log.debug("account failed", exc_info=True,
                          extra={"account": self.account.name, "event": "failed"})
            except BaseException as exc:  # a host's own interrupt (Dagster's, KeyboardInterrupt)
                self.result.outcome = Outcome.INTERRUPTED
                self.result.error = f"stopped by {type(exc).__name__}"
                raise
            finally:
                if client is not None:
                    self.result.requests = client.requests
                    self.result.retries = client.retries
                    client.close()
                self.result.seconds = time.monotonic() - started
                try:
                    finish_run(
                        self.engine, self.run_id, self.account.auth_id,
                        self.result.outcome, self.result.error,
                        pages=self.result.pages, requests=self.result.requests,
                        new=self.result.counts.new, updated=self.result.counts.updated,
                        unchanged=self.result.counts.unchanged,
                        rejected=self.result.counts.rejected,
                    )
                except SQLAlchemyError as exc:
                    log.error("could not write the run log: %s", first_line(exc),
                              extra={"account": self.account.name, "event": "runlog"})
        return self.result

    def _execute(self, client: VoxClient) -> None:
        account_id = self.account.auth_id
        with self.engine.connect() as conn:
            state = read_state(conn, account_id)
            self._deleted = deleted_count(conn, account_id)
        api = self.config.api
        executor = ThreadPoolExecutor(api.concurrency, thread_name_prefix=f"fetch-{self.account.name}") \
            if api.concurrency > 1 else None
        try:
            reader = Reader(client.fetch_page, account_id, per_page=api.per_page,
                            concurrency=api.concurrency, executor=executor)
            extraction = Extraction(
                reader, Warehouse(self.engine, account_id), self._kind(state), state=state,
                lookback=self.config.sync.lookback, start_date=self.config.sync.start_date,
                since=self.job.since, until=self.job.until, label=self.account.name,
            )
            log.debug("plan: %s", extraction.kind,
                      extra={"account": self.account.name, "event": "plan"})
            self._load(extraction)
            self.result.window_start = extraction.window_start
            self.result.notice = extraction.notice
            if extraction.head is not None and extraction.kind is not Kind.BACKFILL:
                self.result.watermark = extraction.head.newest
        finally:
            if executor is not None:
                executor.shutdown(wait=True, cancel_futures=True)

    def _kind(self, state: SyncState | None) -> Kind:
        if self.job.command is Command.BACKFILL:
            return Kind.BACKFILL
        if self.job.full:
            return Kind.FULL
        return Kind.INCREMENTAL if state is not None else Kind.FIRST

    def _load(self, extraction: Extraction) -> None:
        account = self.account
        if self.progress is not None:
            self.progress(account.name, 0, None)
        with _ReadAhead(self._reported(extraction), _PAGES_PER_TRANSACTION,
                        name=f"read-{account.name}") as batches:
            for group in _groups(batches, _PAGES_PER_TRANSACTION):
                self.stop.check()
                counts = in_transaction(self.engine, partial(self._commit, batches=group))
                self.result.counts += counts
                self.result.pages += sum(batch.pages for batch in group)
        if extraction.kind is not Kind.BACKFILL:
            coverage = extraction.final_coverage()

            def finish(conn: Connection) -> None:
                save_state(conn, account.auth_id, account.name, coverage=coverage,
                           watermark=extraction.head.newest if extraction.head else None,
                           window_start=extraction.window_start,
                           total_count=extraction.head.total_count if extraction.head else None,
                           finished=True)
            in_transaction(self.engine, finish)

    def _reported(self, extraction: Extraction) -> Iterator[Batch]:
        """The extraction's batches, telling progress how many calls were read so far."""
        read = 0
        for batch in extraction.batches():
            read += len(batch.rows) + len(batch.rejects)
            if self.progress is not None and batch.pages:
                self.progress(self.account.name, read, extraction.expected)
            yield batch

    def _commit(self, conn: Connection, *, batches: list[Batch]) -> LoadCounts:
        written = write_batches(conn, self.account.auth_id, self.account.name, batches,
                                self.run_id, restore=self._deleted > 0)
        self._deleted += written.flagged - written.restored
        self.result.deleted += written.flagged
        return written.counts


@dataclass
class Written:
    """What one transaction of `write_batches` did."""

    counts: LoadCounts
    flagged: int = 0  # stored calls the pages prove gone, now marked deleted
    restored: int = 0  # calls marked deleted that the pages list again


def write_batches(conn: Connection, account_id: str, account_name: str, batches: list[Batch],
                  run_id: str, *, restore: bool) -> Written:
    """One transaction of a sync, in the caller's transaction: the pages' rows and rejects,
    what they prove gone or back (`restore`: the account has calls marked deleted, so listed
    ones may come back), then the coverage they complete. The loader benchmark
    (scripts/bench_loader.py) times this same function."""
    now = utcnow()
    rows = [row for batch in batches for row in batch.rows]
    counts = upsert_calls(conn, rows, now)
    counts.rejected = save_rejects(conn, [r for b in batches for r in b.rejects], run_id, now)
    seen = {u for b in batches for u in b.seen}
    restored = 0
    if restore:
        restored = restore_seen(conn, list(seen), now)
        counts.updated += restored
        counts.unchanged -= restored
    # A page proves absent only what it does not hold; a call another page of this
    # transaction holds is listed (read later, or listed again since).
    flagged = flag_absent(conn, account_id, [s for b in batches for s in b.spans], now,
                          listed=seen)
    # Backfill batches carry no coverage: it leaves the sync state alone.
    coverage = next((b.coverage for b in reversed(batches) if b.coverage is not None), None)
    if coverage is not None:
        save_state(conn, account_id, account_name, coverage=coverage)
    return Written(counts, flagged, restored)


class _ReadAhead:
    """The plan's batches, read in a thread of their own up to `depth` batches ahead of the
    loader, so that requests keep flowing while a transaction is written and committed (in
    the loader's thread, the walks would wait for every commit).

    A flush batch is a barrier, as it is for a plain generator: the plan goes on only once the
    loader has committed it and asks for the next batch. An error of the plan is raised in the
    loader's thread; leaving the block (a database error, a stop) closes the plan, which
    cancels its requests.
    """

    _END = object()

    def __init__(self, batches: Iterator[Batch], depth: int, *, name: str) -> None:
        self._source = batches
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max(1, depth))
        self._closing = threading.Event()
        self._resume = threading.Event()
        self._thread = threading.Thread(target=self._produce, name=name, daemon=True)

    def __enter__(self) -> Iterator[Batch]:
        self._thread.start()
        return self._consume()

    def __exit__(self, *exc_info: object) -> None:
        self._closing.set()
        self._thread.join()

    def _produce(self) -> None:
        try:
            for batch in self._source:
                if not self._put(batch):
                    return
                if batch.flush and not self._resumed():
                    return
            self._put(self._END)
        except BaseException as exc:  # handed to the loader's thread, raised there
            self._put(_Failure(exc))
        finally:
            close = getattr(self._source, "close", None)
            if close is not None:
                close()

    def _resumed(self) -> bool:
        """Wait until the loader has committed the flush batch; False if it left instead."""
        while not self._resume.wait(0.05):
            if self._closing.is_set():
                return False
        self._resume.clear()
        return not self._closing.is_set()

    def _put(self, item: object) -> bool:
        while not self._closing.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _consume(self) -> Iterator[Batch]:
        while True:
            try:
                item = self._queue.get(timeout=0.05)
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise RuntimeError("the plan's reader ended without a word") from None
                continue
            if item is self._END:
                return
            if isinstance(item, _Failure):
                raise item.error
            assert isinstance(item, Batch)
            yield item
            if item.flush:
                self._resume.set()  # committed: the plan may go on


@dataclass
class _Failure:
    error: BaseException


# Pages loaded per transaction, and the longest a batch is held before it is committed:
# fewer commits, while a crash (or a stop) loses at most this much work.
_PAGES_PER_TRANSACTION = 64
_SECONDS_PER_TRANSACTION = 1.0


def _groups(batches: Iterable[Batch], size: int,
            seconds: float = _SECONDS_PER_TRANSACTION) -> Iterable[list[Batch]]:
    group: list[Batch] = []
    started = time.monotonic()
    for batch in batches:
        if not group:
            started = time.monotonic()
        group.append(batch)
        if len(group) >= size or batch.flush or time.monotonic() - started >= seconds:
            yield group
            group = []
    if group:
        yield group


def _explain(exc: BaseException) -> str:
    """One line naming the cause, never a token."""
    if isinstance(exc, EtlError):
        return first_line(exc)
    if isinstance(exc, requests.RequestException):
        return f"request failed: {describe(exc)}"
    if isinstance(exc, SQLAlchemyError):
        return f"database error: {first_line(exc)}"
    if not str(exc).strip():
        return type(exc).__name__
    return f"{type(exc).__name__}: {first_line(exc)}"


def run_accounts(
    engine: Engine,
    config: Config,
    accounts: Iterable[Account],
    job: Job,
    *,
    jobs: int = 1,
    wait: bool = False,
    progress: Progress | None = None,
    on_result: Callable[[AccountResult], None] | None = None,
    stop: stopping.StopToken | None = None,
) -> list[AccountResult]:
    """Run `job` for every account, up to `jobs` at once; returns results in account order.

    Once `stop` is requested, running accounts stop before their next batch and the ones not
    started yet do not start; all of them come back `interrupted`."""
    run_id = new_run_id()
    accounts = list(accounts)
    stop = stop or stopping.StopToken()

    def one(account: Account) -> AccountResult:
        result = AccountRun(engine, config, account, job, run_id, progress=progress,
                            stop=stop).run(wait=wait)
        if on_result is not None:
            on_result(result)
        return result

    with _prompt_wakeups():
        if jobs <= 1 or len(accounts) <= 1:
            return [one(a) for a in accounts]
        workers = min(jobs, len(accounts))
        with ThreadPoolExecutor(workers, thread_name_prefix="account") as pool:
            return list(pool.map(one, accounts))


# A paced worker must wake on time: slots are 20 ms apart at 50 req/s, and with Python's default
# 5 ms GIL switch interval a worker waking behind the loading thread is late by up to 5 ms (the
# pace measured 79 % of a 50 req/s ceiling with a busy loader, 96 % at this interval).
_SWITCH_INTERVAL = 0.0005


@contextlib.contextmanager
def _prompt_wakeups() -> Iterator[None]:
    before = sys.getswitchinterval()
    sys.setswitchinterval(min(before, _SWITCH_INTERVAL))
    try:
        yield
    finally:
        sys.setswitchinterval(before)


"""The scheduler of requests in flight: walks down the list, several at once.

A walk reads consecutive pages toward older calls, one request at a time, so every page is
asked for only after the one before it was answered. Then arrivals at the head can only make
two neighbouring pages overlap, never leave a gap between them (`sheets.follows`). Several
walks run at once, each over its own stretch of pages; a walk that reaches the stretch of the
walk below reads on until one of its pages overlaps that walk's first page, which proves the
two stretches meet whatever moved in between.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from dataclasses import dataclass

from .client import Page
from .errors import ListingError
from .sheets import Sheet, page_number

log = logging.getLogger("etl.walks")

Fetch = Callable[[int, int], Page]


@dataclass(eq=False)
class Walk:
    """One chain of pages read in order from page `start`.

    `stop(sheet)` says whether a page ends the walk (it reached the stretch below, the end of
    the list, or the oldest second wanted). `joins` is the first page of the walk below, which
    this walk must overlap before it may stop; `above` the page this walk continues (the head,
    or a located page)."""

    start: int
    stop: Callable[[Sheet], bool]
    above: Sheet | None = None
    joins: Walk | None = None
    limit: int = 1_000_000
    # Only the ends of the chain are kept: memory stays flat however long the walk.
    first: Sheet | None = None
    newest_read: Sheet | None = None
    pages: int = 0
    done: bool = False
    met: bool = False  # done because it overlapped the first page of the walk below

    @property
    def last(self) -> Sheet | None:
        return self.newest_read or self.above

    def add(self, sheet: Sheet) -> None:
        if self.first is None:
            self.first = sheet
        self.newest_read = sheet
        self.pages += 1

    @property
    def top(self) -> Sheet | None:
        return self.above or self.first

    def met_below(self, sheet: Sheet) -> bool:
        """True when `sheet` overlaps the first page of the walk below (or lies past it)."""
        below = self.joins.first if self.joins else None
        if below is None or sheet.number < below.number:
            return False
        if sheet.overlaps(below):
            return True
        # Entirely older than that page: the stretch between was read in order.
        return below.oldest is not None and sheet.newest is not None and sheet.newest <= below.oldest


class Reader:
    """Reads pages of one account, in this thread or through an executor, and numbers the
    answers in the order they arrived."""

    def __init__(self, fetch: Fetch, account_id: str, *, per_page: int = 100,
                 concurrency: int = 1, executor: Executor | None = None) -> None:
        self._fetch = fetch
        self.account_id = account_id
        self.per_page = per_page
        self.concurrency = max(1, concurrency)
        self.executor = executor if self.concurrency > 1 else None
        self._answers = itertools.count(1)
        self._lock = threading.Lock()

    def _read(self, number: int, per_page: int) -> Sheet:
        page = self._fetch(number, per_page)
        with self._lock:
            answered = next(self._answers)
        if page.per_page < min(per_page, self.per_page):
            log.info("server caps per_page", extra={"event": "per_page", "per_page": page.per_page})
            self.per_page = page.per_page
        sheet = Sheet.read(page, self.account_id, answered)
        expected = min(page.per_page, max(0, page.total_count - sheet.first_rank))
        if len(sheet.items) != expected:
            raise ListingError(
                f"page {page.number} holds {len(sheet.items)} calls where its own pagination "
                f"says {expected}"
            )
        return sheet

    def read(self, number: int, per_page: int | None = None) -> Sheet:
        """One page, now, in this thread."""
        return self._read(number, per_page or self.per_page)

    def read_many(self, numbers: list[int]) -> list[Sheet]:
        """Several pages at once; returned in the order asked."""
        if self.executor is None or len(numbers) <= 1:
            return [self.read(n) for n in numbers]
        futures = [self.executor.submit(self._read, n, self.per_page) for n in numbers]
        try:
            return [f.result() for f in futures]
        finally:
            for f in futures:
                f.cancel()

    def submit(self, number: int) -> Future[Sheet]:
        if self.executor is not None:
            return self.executor.submit(self._read, number, self.per_page)
        future: Future[Sheet] = Future()
        try:
            future.set_result(self._read(number, self.per_page))
        except BaseException as exc:
            future.set_exception(exc)
        return future

    def walk(self, walks: list[Walk]) -> Iterator[tuple[Walk, Sheet]]:
        """Run the walks, one request in flight each, yielding pages as they are answered.
        A walk's next request is sent before its page is handed on, so fetching never
        waits for loading."""
        inflight: dict[Future[Sheet], Walk] = {}
        pending = [w for w in walks if not w.done]
        try:
            for w in pending:
                inflight[self.submit(w.start)] = w
            while inflight:
                finished, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
                for future in sorted(finished, key=lambda f: inflight[f].start):
                    w = inflight.pop(future)
                    sheet = future.result()
                    self._advance(w, sheet, inflight)
                    yield w, sheet
        finally:
            for future in inflight:
                future.cancel()

    def _advance(self, w: Walk, sheet: Sheet, inflight: dict[Future[Sheet], Walk]) -> None:
        # Each request is sent after the page before it was answered, so `follows` holds.
        w.add(sheet)
        if w.met_below(sheet):
            w.done = w.met = True
            return
        if w.stop(sheet) or sheet.is_end:
            w.done = True
            return
        if w.pages >= w.limit:
            raise ListingError(
                f"the list moved faster than it could be read ({w.pages} pages in one "
                "stretch without reaching its end)"
            )
        inflight[self.submit(page_number(sheet.end_rank, self.per_page))] = w

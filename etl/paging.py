"""The paginator: covers ranges of positions in a list that drifts while it is read.

The API lists an account's calls newest first, by page number, and new calls arrive at the
head while we page. Counted from the oldest call, a call's position never changes, and every
page tells which positions it holds (`Page.top_seq`, `Page.low_seq`, from its own
`total_count`). So instead of "page 7" the paginator asks "positions 600-699": it turns the
positions it still needs into page numbers with the newest `total_count` it knows, reads
those pages (several at once if asked), marks what each page really covered, and goes on
until nothing needed is left. Drift can only make a page cover newer positions than
planned; the gap it leaves is still needed, so it is read again. Nothing is skipped, and
nothing is read twice in one pass.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from dataclasses import dataclass, field
from datetime import datetime

from .client import Page
from .errors import ListingError
from .records import CallRow, Reject, parse_call

log = logging.getLogger("etl.paging")

Fetch = Callable[[int, int], Page]


class Coverage:
    """A set of positions kept as sorted, disjoint half-open intervals."""

    def __init__(self, intervals: Sequence[tuple[int, int]] = ()) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        for start, end in intervals:
            self.add(start, end)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(zip(self._starts, self._ends, strict=True))

    def __bool__(self) -> bool:
        return bool(self._starts)

    def add(self, start: int, end: int) -> None:
        if end <= start:
            return
        i = bisect.bisect_left(self._ends, start)
        j = bisect.bisect_right(self._starts, end)
        if i < j:
            start = min(start, self._starts[i])
            end = max(end, self._ends[j - 1])
        self._starts[i:j] = [start]
        self._ends[i:j] = [end]

    def contains(self, seq: int) -> bool:
        i = bisect.bisect_right(self._starts, seq) - 1
        return i >= 0 and seq < self._ends[i]

    def next_missing(self, seq: int) -> int:
        """The first position at or after `seq` not in the set."""
        i = bisect.bisect_right(self._starts, seq) - 1
        if i >= 0 and seq < self._ends[i]:
            return self._ends[i]
        return seq

    def first_gap(self, need: Coverage) -> int | None:
        """The lowest position of `need` not in this set, or None."""
        for start, end in need:
            seq = self.next_missing(start)
            if seq < end:
                return seq
        return None


@dataclass(frozen=True, slots=True)
class Mark:
    """A known position: the call at `seq` started at `start_time`."""

    seq: int
    start_time: datetime
    call_uuid: str


class Positions:
    """What is known of where calls sit in an account's list: marks saved by earlier runs plus
    everything seen in this one. Lets a sync reach any stored call with one request."""

    def __init__(self, marks: Sequence[Mark] = ()) -> None:
        self._marks: dict[int, Mark] = {m.seq: m for m in marks}
        self._seqs = sorted(self._marks)
        self._by_uuid: dict[str, int] = {m.call_uuid: m.seq for m in marks}
        self._saved = set(self._marks)  # in the database, or about to be (in `new`)
        self.new: list[Mark] = []

    def __len__(self) -> int:
        return len(self._seqs)

    def get(self, seq: int) -> Mark | None:
        return self._marks.get(seq)

    def seq_of(self, call_uuid: str) -> int | None:
        return self._by_uuid.get(call_uuid)

    def add(self, mark: Mark, *, persist: bool = True) -> None:
        """Learn a mark; `persist` also queues it for saving (once) with the next batch."""
        if mark.seq not in self._marks:
            self._marks[mark.seq] = mark
            bisect.insort(self._seqs, mark.seq)
            self._by_uuid[mark.call_uuid] = mark.seq
        if persist and mark.seq not in self._saved:
            self._saved.add(mark.seq)
            self.new.append(self._marks[mark.seq])

    def take_new(self) -> list[Mark]:
        marks, self.new = self.new, []
        return marks

    def bracket(self, moment: datetime, low: int, high: int) -> tuple[int, int]:
        """Narrow (low, high) so that the first position starting at or after `moment` is in
        (low, high]; start times never decrease with position, so marks bound it."""
        lo_i = bisect.bisect_right(self._seqs, low)
        hi_i = bisect.bisect_left(self._seqs, high)
        seqs = self._seqs[lo_i:hi_i]
        # the marks between low and high, searched by start_time
        left, right = 0, len(seqs)
        while left < right:
            mid = (left + right) // 2
            if self._marks[seqs[mid]].start_time < moment:
                left = mid + 1
            else:
                right = mid
        if left > 0:
            low = seqs[left - 1]
        if left < len(seqs):
            high = seqs[left]
        return low, high

    def time_at(self, seq: int) -> datetime | None:
        mark = self._marks.get(seq)
        return mark.start_time if mark else None


class PositionsStale(ListingError):
    """A stored mark disagrees with the API: the list changed in a way positions cannot follow."""


@dataclass
class Batch:
    """What one round of reading yields, to be committed together, in order."""

    rows: list[CallRow] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    marks: list[Mark] = field(default_factory=list)
    pages: int = 0
    frontier: int | None = None
    watermark: datetime | None = None


@dataclass
class Window:
    """Which rows to keep by start_time: since <= start_time < until (either open)."""

    since: datetime | None = None
    until: datetime | None = None

    def keeps(self, moment: datetime) -> bool:
        return (self.since is None or moment >= self.since) and (
            self.until is None or moment < self.until
        )


class Paginator:
    """Reads positions of one account's list through a `fetch(page, per_page)` function."""

    def __init__(
        self,
        fetch: Fetch,
        account_id: str,
        *,
        per_page: int = 100,
        concurrency: int = 1,
        executor: Executor | None = None,
        positions: Positions | None = None,
        max_stalls: int = 8,
        label: str | None = None,
    ) -> None:
        self._fetch = fetch
        self.account_id = account_id
        self.label = label or account_id  # how logs name the account
        self.per_page = per_page
        self.concurrency = max(1, concurrency)
        self.executor = executor if self.concurrency > 1 else None
        self.positions = positions or Positions()
        self.max_stalls = max_stalls
        self.total: int | None = None
        self.pages_read = 0
        self._cache: dict[int, tuple[Page, list[CallRow | Reject]]] = {}
        self.seen_uuids: set[str] = set()
        self.watch: set[str] = set()

    # -- reading pages -------------------------------------------------------------------

    def head(self) -> Page:
        """Read page 1: it tells the list's size and the page size the server grants."""
        return self._read(1)

    def page_for(self, seq: int) -> int:
        assert self.total is not None
        return (self.total - 1 - seq) // self.per_page + 1

    def _read(self, number: int) -> Page:
        """One page, now, in this thread (the head and bisection probes)."""
        page = self._fetch(number, self.per_page)
        self._account_for(page)
        return page

    def _account_for(self, page: Page) -> None:
        """Learn the list's size and the granted page size from a page, and check it."""
        self.pages_read += 1
        if self.total is None or page.total_count > self.total:
            self.total = page.total_count
        if page.per_page < self.per_page:
            log.info(
                "server caps per_page",
                extra={"account": self.label, "event": "per_page", "per_page": page.per_page},
            )
            self.per_page = page.per_page
        self._check(page)

    def _check(self, page: Page) -> None:
        expected = min(page.per_page, max(0, page.total_count - (page.number - 1) * page.per_page))
        if len(page.records) != expected:
            raise ListingError(
                f"page {page.number} holds {len(page.records)} calls where its own pagination "
                f"says {expected}"
            )

    def parsed(self, page: Page) -> list[CallRow | Reject]:
        cached = self._cache.get(page.low_seq)
        if cached is not None and cached[0] is page:
            return cached[1]
        items = [parse_call(record, self.account_id) for record in page.records]
        for index, item in enumerate(items):
            if isinstance(item, CallRow):
                mark = self.positions.get(page.seq_of(index))
                if mark is not None and mark.call_uuid != item.call_uuid:
                    raise PositionsStale(
                        f"the API now lists call {item.call_uuid} at the position where "
                        f"{mark.call_uuid} was; calls were removed or reordered"
                    )
        return items

    # -- finding positions by start_time -------------------------------------------------

    def seek(self, moment: datetime, *, low: int = -1, high: int | None = None) -> tuple[int, int]:
        """Bracket (low, high] around the first position whose call starts at or after `moment`,
        no wider than a page: marks first, then bisection over the API (interpolated on time)."""
        assert self.total is not None
        high = self.total if high is None else high
        low, high = self.positions.bracket(moment, low, high)
        halve_next = False
        probes = 0
        while high - low - 1 > self.per_page:
            probes += 1
            if probes > 64:
                raise ListingError("bisection did not converge; the list is not sorted by start_time")
            seq = self._probe_target(moment, low, high, halve_next)
            width = high - low
            page = self._cached_read(self.page_for(seq))
            items = self.parsed(page)
            self._cache[page.low_seq] = (page, items)
            for index, item in enumerate(items):
                if isinstance(item, CallRow):
                    at = page.seq_of(index)
                    self.positions.add(Mark(at, item.start_time, item.call_uuid), persist=False)
                    if item.start_time < moment:
                        low = max(low, at)
                    elif at > low:
                        high = min(high, at)
            if not items:
                break
            halve_next = (high - low) * 2 > width
        return low, high

    def _probe_target(self, moment: datetime, low: int, high: int, halve: bool) -> int:
        t_low = self.positions.time_at(low)
        t_high = self.positions.time_at(high)
        middle = (low + high) // 2
        if halve or t_low is None or t_high is None or t_high <= t_low:
            return max(low + 1, min(high - 1, middle))
        fraction = (moment - t_low) / (t_high - t_low)
        guess = low + round(fraction * (high - low))
        return max(low + 1, min(high - 1, guess))

    def _cached_read(self, number: int) -> Page:
        for page, _ in self._cache.values():
            if page.number == number and page.total_count == self.total:
                return page
        return self._read(number)

    # -- covering ranges -------------------------------------------------------------------

    def cover(
        self,
        need: Coverage,
        *,
        window: Window | None = None,
        frontier_from: int | None = None,
        stop_at: datetime | None = None,
        first: Page | None = None,
    ) -> Iterator[Batch]:
        """Read every position in `need`, yielding each page's rows in a Batch.

        `concurrency` requests stay in flight and as many more wait queued: while one page's
        batch is being loaded, the next pages are already on their way. `frontier_from`: report in each batch the
        first position from there on not yet read (what a sync may commit as done).
        `stop_at`: positions whose call starts at or after it are not needed (a backfill's
        `until`). `first`: an already read page to use.
        """
        reading = _Reading(need, window or Window(), frontier_from, stop_at)
        known = [first] if first is not None else []
        known += [page for page, _ in self._cache.values()]
        for page in sorted(known, key=lambda p: p.low_seq):
            yield self._take(reading, page)
        inflight: dict[Future[Page], tuple[int, int]] = {}
        misses: dict[int, int] = {}
        try:
            while True:
                self._top_up(reading, inflight, misses)
                if not inflight:
                    return
                finished, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
                for future in sorted(finished, key=lambda f: inflight[f][0]):
                    gap, _ = inflight.pop(future)
                    page = future.result()
                    self._account_for(page)
                    if page.low_seq > gap:  # aimed too new: the gap sits in an older page
                        misses[gap] = 1
                    elif page.top_seq < gap:  # aimed too old
                        misses[gap] = -1
                    yield self._take(reading, page)
        finally:
            for future in inflight:
                future.cancel()

    def _top_up(self, reading: _Reading, inflight: dict[Future[Page], tuple[int, int]],
                misses: dict[int, int]) -> None:
        """Send requests for the lowest needed positions that no request in flight is aimed
        at. Each is aimed with the newest total known: drift can only make a page land on
        newer positions, still needed. A gap that a page has already missed also gets the
        neighbouring page on the side it was missed, so drift cannot step over it forever."""
        assert self.total is not None
        aimed = Coverage(list(reading.done))
        for target, sent_total in inflight.values():
            number = (sent_total - 1 - target) // self.per_page + 1
            aimed.add(target, sent_total - (number - 1) * self.per_page)
        # Twice the workers: the executor's queue keeps them busy while this thread loads.
        while len(inflight) < 2 * self.concurrency:
            gap = aimed.first_gap(reading.need)
            if gap is None:
                return
            if inflight and reading.stop_at is not None and gap > self._estimate(reading.stop_at):
                return  # probably past the window's end: wait for what is in flight to tell
            total = self.total
            number = (total - 1 - gap) // self.per_page + 1
            numbers = [number, number + misses[gap]] if gap in misses else [number]
            for n in numbers:
                if n >= 1:
                    inflight[self._submit(n)] = (gap, total)
            aimed.add(gap, total - (number - 1) * self.per_page)

    def _estimate(self, moment: datetime) -> int:
        """Where the first call starting at `moment` probably sits (a page beyond, to be safe),
        interpolated on time between the nearest known marks."""
        assert self.total is not None
        low, high = self.positions.bracket(moment, -1, self.total)
        t_low, t_high = self.positions.time_at(low), self.positions.time_at(high)
        if t_low is None or t_high is None or t_high <= t_low:
            return high
        fraction = (moment - t_low) / (t_high - t_low)
        return low + round(fraction * (high - low)) + self.per_page

    def _submit(self, number: int) -> Future[Page]:
        if self.executor is not None:
            return self.executor.submit(self._fetch, number, self.per_page)
        future: Future[Page] = Future()
        try:
            future.set_result(self._fetch(number, self.per_page))
        except BaseException as exc:
            future.set_exception(exc)
        return future

    def _take(self, reading: _Reading, page: Page) -> Batch:
        """Turn a read page into a Batch of the positions not read before."""
        cached = self._cache.pop(page.low_seq, None)
        items = cached[1] if cached and cached[0] is page else self.parsed(page)
        done, batch = reading.done, Batch(pages=1)
        remaining = _missing(reading.need, done)
        for index, item in enumerate(items):
            seq = page.seq_of(index)
            if done.contains(seq):
                continue
            if isinstance(item, Reject):
                batch.rejects.append(item)
                continue
            if item.call_uuid in self.watch:
                self.seen_uuids.add(item.call_uuid)
            if reading.stop_at is not None and item.start_time >= reading.stop_at:
                reading.need = _clip(reading.need, seq)
            if reading.window.keeps(item.start_time):
                batch.rows.append(item)
            if reading.frontier_from is not None:
                reading.times[seq] = item.start_time
            if item.is_open or index in (0, len(items) - 1):
                self.positions.add(Mark(seq, item.start_time, item.call_uuid))
        done.add(page.low_seq, page.top_seq + 1)
        if _missing(reading.need, done) >= remaining:
            reading.stalls += 1
            if reading.stalls > self.max_stalls * self.concurrency:
                raise ListingError(
                    "the list moved faster than it could be read "
                    f"({reading.stalls} pages in a row without a needed position)"
                )
        else:
            reading.stalls = 0
        if reading.frontier_from is not None:
            frontier = done.next_missing(reading.frontier_from)
            for seq in [s for s in reading.times if s < frontier]:
                moment = reading.times.pop(seq)
                if reading.watermark is None or moment > reading.watermark:
                    reading.watermark = moment
            batch.frontier = frontier
            batch.watermark = reading.watermark
        batch.marks = self.positions.take_new()
        return batch


@dataclass
class _Reading:
    """The state of one `cover` call."""

    need: Coverage
    window: Window
    frontier_from: int | None
    stop_at: datetime | None
    done: Coverage = field(default_factory=Coverage)
    times: dict[int, datetime] = field(default_factory=dict)
    watermark: datetime | None = None
    stalls: int = 0


def _missing(need: Coverage, done: Coverage) -> int:
    """How many positions of `need` are not yet in `done`."""
    count = 0
    for lo, hi in need:
        seq = lo
        while seq < hi:
            seq = done.next_missing(seq)
            if seq >= hi:
                break
            nxt = _next_covered(done, seq, hi)
            count += nxt - seq
            seq = nxt
    return count


def _next_covered(done: Coverage, start: int, end: int) -> int:
    for lo, _ in done:
        if lo > start:
            return min(lo, end)
    return end


def _clip(need: Coverage, end: int) -> Coverage:
    return Coverage([(lo, min(hi, end)) for lo, hi in need if lo < end])


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
import math
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor
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
        self.new: list[Mark] = []

    def __len__(self) -> int:
        return len(self._seqs)

    def get(self, seq: int) -> Mark | None:
        return self._marks.get(seq)

    def seq_of(self, call_uuid: str) -> int | None:
        return self._by_uuid.get(call_uuid)

    def add(self, mark: Mark, *, persist: bool = True) -> None:
        if mark.seq in self._marks:
            return
        self._marks[mark.seq] = mark
        bisect.insort(self._seqs, mark.seq)
        self._by_uuid[mark.call_uuid] = mark.seq
        if persist:
            self.new.append(mark)

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
    ) -> None:
        self._fetch = fetch
        self.account_id = account_id
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
        page = self._read([1])[0]
        return page

    def page_for(self, seq: int) -> int:
        assert self.total is not None
        return (self.total - 1 - seq) // self.per_page + 1

    def _read(self, numbers: list[int]) -> list[Page]:
        asked = self.per_page
        if self.executor is not None and len(numbers) > 1:
            pages = list(self.executor.map(lambda n: self._fetch(n, asked), numbers))
        else:
            pages = [self._fetch(n, asked) for n in numbers]
        for page in pages:
            self.pages_read += 1
            if self.total is None or page.total_count > self.total:
                self.total = page.total_count
            if page.per_page < self.per_page:
                log.info(
                    "server caps per_page",
                    extra={"account": self.account_id, "event": "per_page", "per_page": page.per_page},
                )
                self.per_page = page.per_page
            self._check(page)
        return pages

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
        # aim half a page off the guess so one read can bracket it from either side
        return max(low + 1, min(high - 1, guess))

    def _cached_read(self, number: int) -> Page:
        for page, _ in self._cache.values():
            if page.number == number and page.total_count == self.total:
                return page
        return self._read([number])[0]

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
        """Read every position in `need`, oldest first, yielding each round's rows in a Batch.

        `frontier_from`: report in each batch the first position from there on not yet read
        (what the sync may commit as done). `stop_at`: positions whose call starts at or after
        it are not needed (a backfill's `until`). `first`: an already read page to use.
        """
        window = window or Window()
        done = Coverage()
        stalls = 0
        times: dict[int, datetime] = {}
        watermark: datetime | None = None
        known = [first] if first is not None else []
        known += [page for page, _ in self._cache.values()]
        pending = known
        drift = 0.0  # how much the list grew per request in the last round
        last_gap: int | None = None
        while True:
            remaining = _missing(need, done)
            if pending:
                pages, pending = pending, []
            else:
                gap = done.first_gap(need)
                if gap is None:
                    return
                before = self.total or 0
                planned = self._plan_pages(gap, need, done, drift, stuck=gap == last_gap)
                pages = self._read(planned)
                drift = max(0.0, ((self.total or 0) - before) / max(1, len(planned)))
                last_gap = gap
            batch = Batch()
            for page in sorted(pages, key=lambda p: p.low_seq):
                cached = self._cache.pop(page.low_seq, None)
                items = cached[1] if cached and cached[0] is page else self.parsed(page)
                for index, item in enumerate(items):
                    seq = page.seq_of(index)
                    if done.contains(seq):
                        continue
                    if isinstance(item, Reject):
                        batch.rejects.append(item)
                        continue
                    if item.call_uuid in self.watch:
                        self.seen_uuids.add(item.call_uuid)
                    if stop_at is not None and item.start_time >= stop_at:
                        need = _clip(need, seq)
                    if window.keeps(item.start_time):
                        batch.rows.append(item)
                    if frontier_from is not None:
                        times[seq] = item.start_time
                    if item.is_open or index in (0, len(items) - 1):
                        self.positions.add(Mark(seq, item.start_time, item.call_uuid))
                done.add(page.low_seq, page.top_seq + 1)
                batch.pages += 1
            if _missing(need, done) >= remaining:
                stalls += 1
                if stalls > self.max_stalls:
                    raise ListingError(
                        "the list moved faster than it could be read "
                        f"({stalls} rounds without a new position)"
                    )
            else:
                stalls = 0
            if frontier_from is not None:
                frontier = done.next_missing(frontier_from)
                for seq in [s for s in times if s < frontier]:
                    moment = times.pop(seq)
                    if watermark is None or moment > watermark:
                        watermark = moment
                batch.frontier = frontier
                batch.watermark = watermark
            batch.marks = self.positions.take_new()
            yield batch

    def _plan_pages(
        self, gap: int, need: Coverage, done: Coverage, drift: float, *, stuck: bool
    ) -> list[int]:
        """Page numbers for the next round: the page holding `gap`, then the pages above it
        that hold still-needed positions, up to the concurrency. Each is aimed at where the
        list will be when the request lands (it grew by `drift` per request last round); if
        the lowest gap survived the last round, the next older page is read too, so a gap
        narrower than the drift cannot be stepped over forever."""
        assert self.total is not None
        numbers: list[int] = []
        seq: int | None = gap
        while seq is not None and len(numbers) < self.concurrency:
            total = self.total + math.ceil(drift * (len(numbers) + 1))
            number = (total - 1 - seq) // self.per_page + 1
            if number < 1:
                break
            if stuck and not numbers:
                numbers.append(number + 1)
            if number not in numbers:
                numbers.append(number)
            top = total - 1 - (number - 1) * self.per_page
            seq = _next_needed(need, done, top + 1)
        return numbers


def _next_needed(need: Coverage, done: Coverage, start: int) -> int | None:
    for lo, hi in need:
        if hi <= start:
            continue
        seq = done.next_missing(max(lo, start))
        if seq < hi:
            return seq
    return None


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

"""Extraction plans: what each command reads of an account's list, in what order, and why.

- first sync / `--full`: the whole list (back to `start_date`), split into walks that run at
  once and prove they meet;
- incremental: from the head down into what earlier syncs covered (re-reading `lookback`),
  every stretch they did not cover, each stored open call where its rank says it is, and
  the list's oldest page, whose count checks the rest (etl.audit);
- backfill: the stretch [since, until), found by seeking, within the provider's window.

A plan yields `Batch`es in the order they may be committed; each says what the account's
coverage is once it is (etl.coverage), so coverage never runs ahead of the rows.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from .audit import Audit
from .coverage import TICK, Interval, chain_interval, gaps, merge
from .records import CallRow, Reject
from .seek import Seeker
from .sheets import Sheet, Span, last_page_number, page_number, span_of
from .state import SyncState, Warehouse
from .walks import Reader, Walk

log = logging.getLogger("etl.plans")

# A stretch of fewer pages than this is read by one walk: splitting it costs more
# (one extra page where two walks meet) than it saves.
PAGES_PER_WALK = 8
Stop = Callable[[Sheet], bool]

# Calls remembered to tell a page read twice from a new one (about 40 pages' worth).
_RECENT = 4000


class Kind(StrEnum):
    FIRST = "first"
    FULL = "full"
    INCREMENTAL = "incremental"
    BACKFILL = "backfill"


@dataclass
class Batch:
    """What one page (or one step) yields, committed together and in order."""

    rows: list[CallRow] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)
    pages: int = 0
    coverage: list[Interval] | None = None
    flush: bool = False  # commit everything so far before the plan goes on


@dataclass(frozen=True)
class Window:
    """Which rows to keep by start_time: since <= start_time < until (either open)."""

    since: datetime | None = None
    until: datetime | None = None

    def keeps(self, moment: datetime | None) -> bool:
        if moment is None:
            return True
        return (self.since is None or moment >= self.since) and (
            self.until is None or moment < self.until
        )


class Extraction:
    """One command's reading of one account's list."""

    def __init__(
        self,
        reader: Reader,
        warehouse: Warehouse,
        kind: Kind,
        *,
        state: SyncState | None = None,
        lookback: timedelta = timedelta(0),
        start_date: datetime | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        label: str = "",
    ) -> None:
        self.reader = reader
        self.warehouse = warehouse
        self.kind = kind
        self.state = state
        self.lookback = lookback
        self.start_date = start_date
        self.window = Window(since, until) if kind is Kind.BACKFILL else Window(start_date)
        self.label = label
        self.seeker = Seeker(reader, self._estimate)
        self.covered: list[Interval] = list(state.coverage) if state and kind is Kind.INCREMENTAL else []
        self.walks: list[Walk] = []
        self._walking = False  # pages yielded now belong to a walk's chain
        self.seen: set[str] = set()
        self.head: Sheet | None = None
        self.window_start: datetime | None = None
        self.expected: int | None = None
        self.notice: str | None = None
        self._recent: OrderedDict[str, tuple[object, ...]] = OrderedDict()
        self._firsts: dict[str, tuple[object, ...]] = {}  # the first page of every walk
        self._anchor: tuple[datetime, int] | None = None  # a clean boundary of the newest page read

    # -- the plans ---------------------------------------------------------------------------

    def batches(self) -> Iterator[Batch]:
        head = self.head = self.reader.read(1)
        self.seeker.learn(head)
        if self.kind is Kind.BACKFILL:
            yield from self._backfill(head)
            return
        whole = not (self.kind is Kind.INCREMENTAL and self.covered)
        if whole:
            self.expected = head.total_count
        yield self._batch(head, covering=True)
        if whole:
            yield from self._whole(head)
        else:
            yield from self._incremental(head)

    def final_coverage(self) -> list[Interval]:
        """What the account's coverage is once every batch is committed."""
        return self._coverage()

    def _whole(self, head: Sheet) -> Iterator[Batch]:
        """The whole list (to `start_date`), in walks over equal stretches of pages."""
        if head.is_end or self._below(head, self.start_date):
            self._note_end(head)
            return
        if self.start_date is not None:
            bottom = self.seeker.page_at(self.start_date, head)
            yield self._batch(bottom)
            last_page = bottom.number
        else:
            last_page = last_page_number(head.total_count, self.reader.per_page)
        yield from self._walk_stretches([(head, last_page, self._stopper(self.start_date))])

    def _incremental(self, head: Sheet) -> Iterator[Batch]:
        state = self.state
        assert state is not None
        floor = self._floor
        todo = gaps(self.covered, lookback=self.lookback, floor=floor)
        stretches: list[tuple[Sheet, int, Stop]] = []
        for gap in todo:
            stop = self._stopper(gap.before)
            if gap.after is None:
                start = head
                stop = self._head_stopper(gap.before, state.watermark)
            else:
                start = self.seeker.page_at(gap.after + TICK, head)
                yield self._batch(start, covering=True)
            if stop(start) or start.is_end:
                continue
            end_rank = self._rank_of(gap.before) if gap.before is not None else start.total_count
            last_page = page_number(max(end_rank, start.end_rank), self.reader.per_page)
            stretches.append((start, last_page, stop))
        self.expected = max(0, head.total_count - self.warehouse.count_since(floor or _EPOCH))
        yield from self._walk_stretches(stretches)
        yield Batch(flush=True)
        yield from self._open_calls()
        tail = self._tail(head)
        if tail is not None:
            yield self._batch(tail)
            yield Batch(flush=True)
            audit = Audit(self.reader, self.warehouse, head, tail, label=self.label)
            for sheet in audit.run(self.seen):
                yield self._batch(sheet)
                yield Batch(flush=True)

    def _backfill(self, head: Sheet) -> Iterator[Batch]:
        since, until = self.window.since, self.window.until
        assert since is not None and until is not None
        tail = self._tail(head)
        if tail is not None:
            self.seeker.learn(tail)
        start_of_window = self.window_start
        if start_of_window is not None and until <= start_of_window:
            self.notice = (f"the provider lists calls from {start_of_window:%Y-%m-%d %H:%M:%SZ} on; "
                           "nothing in the range is still listed, nothing changed")
            return
        if start_of_window is not None and since < start_of_window:
            self.notice = (f"the provider lists calls from {start_of_window:%Y-%m-%d %H:%M:%SZ} on; "
                           "backfilled the part of the range still listed")
        start = self.seeker.page_at(until, head)
        yield self._batch(start)
        if self._below(start, since) or start.is_end:
            return
        end_rank = self.seeker.rank_at(since)
        if end_rank is None:
            end_rank = self._rank_of(since)
        last_page = page_number(max(end_rank, start.end_rank), self.reader.per_page)
        yield from self._walk_stretches([(start, last_page, self._stopper(since))], covering=False)

    # -- walking -----------------------------------------------------------------------------

    def _walk_stretches(self, stretches: list[tuple[Sheet, int, Stop]], *,
                        covering: bool = True) -> Iterator[Batch]:
        """Walk each stretch from the page after `start` to about `last_page`, splitting long
        stretches into walks that run at once."""
        walks: list[Walk] = []
        # One walk per connection: each walk keeps one request in flight, and every walk more
        # costs a page where it meets the next.
        budget = self.reader.concurrency if self.reader.executor else 1
        total_pages = sum(max(1, last - start.number) for start, last, _ in stretches)
        for start, last_page, stop in stretches:
            pages = max(1, last_page - start.number)
            share = max(1, round(budget * pages / total_pages)) if budget > 1 else 1
            count = max(1, min(share, pages // PAGES_PER_WALK))
            firsts = [start.number + 1 + (i * pages) // count for i in range(count)]
            limit = 3 * math.ceil(pages / count) + 20
            stretch = [Walk(first, stop, limit=limit) for first in firsts]
            stretch[0].above = start
            for upper, lower in itertools.pairwise(stretch):
                upper.joins = lower
            walks.extend(stretch)
        self.walks.extend(walks if covering else [])
        self._walking = True
        try:
            for walk, sheet in self.reader.walk(walks):
                batch = self._batch(sheet, covering=covering)
                if walk.first is sheet:  # the walk above re-reads it where they meet
                    self._firsts.update((c.call_uuid, _values(c)) for c in sheet.calls)
                yield batch
                if walk.done and walk.joins is None:
                    self._note_end(sheet)
        finally:
            self._walking = False

    def _stopper(self, before: datetime | None) -> Stop:
        return lambda sheet: self._below(sheet, before)

    def _head_stopper(self, before: datetime | None, watermark: datetime | None) -> Stop:
        """From the head down into what the last sync read: past `before`, and past the
        watermark's own second or onto a call of it already stored (calls that share the
        watermark's second and arrived since must not be taken for the old ones)."""
        if watermark is None:
            return self._stopper(before)
        ties = self.warehouse.uuids_since(watermark)

        def stop(sheet: Sheet) -> bool:
            if not self._below(sheet, before):
                return False
            assert sheet.oldest is not None
            return sheet.oldest < watermark or bool(sheet.uuids & ties)
        return stop

    @staticmethod
    def _below(sheet: Sheet, moment: datetime | None) -> bool:
        """True when the page reaches calls older than `moment` (never, for None)."""
        return moment is not None and sheet.oldest is not None and sheet.oldest < moment

    def _note_end(self, sheet: Sheet) -> None:
        if sheet.is_end and sheet.oldest is not None:
            self.window_start = sheet.oldest

    # -- open calls and the oldest page --------------------------------------------------------

    def _open_calls(self) -> Iterator[Batch]:
        """Read the page of each stored open call not met yet, where its rank says it is."""
        floor = self._floor
        targets = [(uuid, started) for uuid, started in self.warehouse.open_calls()
                   if uuid not in self.seen and (floor is None or started >= floor)]
        per_page = self.reader.per_page
        for attempt in range(3):
            if not targets:
                return
            wanted: dict[int, list[tuple[str, datetime]]] = {}
            offset = self._head_offset()
            for uuid, started in targets:
                rank = self.warehouse.count_since(started) + offset
                wanted.setdefault(page_number(rank, per_page), []).append((uuid, started))
            sheets = self.reader.read_many(sorted(wanted))
            retry: list[tuple[str, datetime]] = []
            for sheet in sheets:
                yield self._batch(sheet)
                for uuid, started in wanted[sheet.number]:
                    if uuid in sheet.uuids:
                        continue
                    if sheet.oldest is not None and sheet.newest is not None \
                            and sheet.oldest < started < sheet.newest:
                        continue  # proven gone: the page's span flags it deleted
                    retry.append((uuid, started))
            targets = retry
            if attempt < 2:
                yield Batch(flush=True)
        if targets:
            log.warning("%d open call(s) were not found where the list should hold them",
                        len(targets), extra={"account": self.label, "event": "open_missing",
                                             "calls": [u for u, _ in targets][:5]})

    def _tail(self, head: Sheet) -> Sheet | None:
        """The list's last page (its oldest calls), read now."""
        if head.is_end:
            self._note_end(head)
            return None
        total = head.total_count
        for _ in range(4):
            sheet = self.reader.read(last_page_number(total, self.reader.per_page))
            if sheet.is_end and sheet.calls:
                self._note_end(sheet)
                return sheet
            total = sheet.total_count  # the list grew or shrank past a page edge meanwhile
        return None

    # -- estimates ---------------------------------------------------------------------------

    def _estimate(self, moment: datetime) -> int | None:
        """The warehouse's guess at a moment's head rank, where earlier syncs covered it."""
        if self.head is None or self.state is None or self.kind is not Kind.INCREMENTAL:
            return None
        if not any(i.lower <= moment <= i.upper for i in self.state.coverage):
            return None
        return self._rank_of(moment)

    def _head_offset(self) -> int:
        """How many more listed calls than stored ones the newest page with a clean boundary
        counted above it: what the warehouse's count of a moment's rank is short by."""
        if self._anchor is None:
            return 0
        second, count = self._anchor
        return count - self.warehouse.count_since(second + TICK)

    @property
    def _floor(self) -> datetime | None:
        """The oldest second still wanted: `start_date`, or where the provider's window began
        at the last sync (it only moves on)."""
        return _latest(self.start_date, self.state.window_start if self.state else None)

    def _rank_of(self, moment: datetime) -> int:
        """About where `moment` sits, counted from the head, before the head was loaded:
        the list's size less the stored calls older than `moment`."""
        assert self.head is not None
        floor = self._floor or _EPOCH
        older = self.warehouse.count_since(floor) - self.warehouse.count_since(moment)
        return max(0, self.head.total_count - older)

    # -- batches -----------------------------------------------------------------------------

    def _batch(self, sheet: Sheet, *, covering: bool = False) -> Batch:
        rows = [c for c in sheet.calls if self.window.keeps(c.start_time) and not self._again(c)]
        rejects = [r for r in sheet.items if isinstance(r, Reject) and self.window.keeps(r.start_time)]
        span = span_of(sheet)
        if self.kind is Kind.INCREMENTAL:
            self.seen.update(sheet.uuids)
        batch = Batch(rows=rows, rejects=rejects, spans=[span] if span else [],
                      seen=list(sheet.uuids), pages=1)
        if covering and self.kind is not Kind.BACKFILL:
            own = chain_interval(sheet, sheet, head=sheet.number == 1)
            if own is not None and not self._walking:
                self.covered.append(own)
            batch.coverage = self._coverage()
        for boundary in sheet.boundaries()[-1:]:
            self._anchor = boundary
        return batch

    def _again(self, call: CallRow) -> bool:
        """True for a call this run has just loaded with the same values (pages that overlap
        read some calls twice); the copies loaded last are remembered, a bounded number."""
        values = _values(call)
        if self._firsts.get(call.call_uuid) == values:
            return True
        known = self._recent.get(call.call_uuid)
        self._recent[call.call_uuid] = values
        self._recent.move_to_end(call.call_uuid)
        while len(self._recent) > _RECENT:
            self._recent.popitem(last=False)
        return known == values

    def _coverage(self) -> list[Interval]:
        """The account's coverage with every chain this run has read so far, clipped to the
        oldest second kept (rows older than `start_date` are not stored). Walks that met the
        walk below them form one chain: their stretches meet by proof, not by time."""
        intervals = list(self.covered)
        top: Sheet | None = None
        for walk in self.walks:
            if top is None:
                top = walk.top
            bottom = walk.last
            if walk.met and walk.joins is not None and walk.joins.first is not None:
                continue  # the chain goes on through the walk below
            if top is not None and bottom is not None:
                interval = chain_interval(top, bottom, head=top.number == 1)
                if interval is not None:
                    intervals.append(interval)
            top = None
        if self.start_date is not None:
            floor = self.start_date - TICK
            intervals = [Interval(max(i.lower, floor), i.upper) for i in intervals]
        return merge(intervals)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _values(call: CallRow) -> tuple[object, ...]:
    return (call.status, call.end_time, call.raw)


def _latest(*moments: datetime | None) -> datetime | None:
    present = [m for m in moments if m is not None]
    return max(present) if present else None

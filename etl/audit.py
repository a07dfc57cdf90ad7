"""The count check: does the warehouse hold exactly the calls the provider lists?

A page tells exactly how many listed calls started after a second inside it (`Sheet.
boundaries`); the warehouse can count its own stored, not deleted calls after that second.
Their difference is zero down the whole list unless a call was listed late (the warehouse
has one too few from there on) or vanished from inside the window (one too many). So the
oldest page's difference checks the whole window in one request, and where it is not zero,
bisection over pages finds the stretch where it changes; each page read on the way is
compared call by call, which stores a late call and flags a vanished one (etl.state.flag_absent).

Counts taken at different moments differ by the calls that arrived in between; that is
measured (page 1 read again) before a difference is believed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from .coverage import TICK
from .sheets import Sheet, last_page_number, page_number
from .state import Warehouse
from .walks import Reader

log = logging.getLogger("etl.audit")


@dataclass(frozen=True, order=True)
class Anchor:
    """`count` listed calls started after `second` when page `number` was answered, by which
    time the warehouse held `arrived` of the calls that arrived since the sync read page 1."""

    count: int
    second: datetime
    number: int
    arrived: int = 0


def anchor_of(sheet: Sheet, near: int | None = None, arrived: int = 0) -> Anchor | None:
    """The page's clean boundary closest to head rank `near` (the deepest one by default).
    The last page has one more, below its oldest call: the whole list started after it; and
    page 1 one above its newest: nothing listed started after that."""
    boundaries = sheet.boundaries()
    if sheet.is_end and sheet.oldest is not None:
        boundaries.append((sheet.oldest - TICK, sheet.total_count))
    if sheet.number == 1 and sheet.newest is not None:
        boundaries.insert(0, (sheet.newest, 0))
    if not boundaries:
        return None
    if near is None:
        second, count = boundaries[-1]
    else:
        second, count = min(boundaries, key=lambda b: abs(b[1] - near))
    return Anchor(count, second, sheet.number, arrived)


class Audit:
    """Checks one account's window against the warehouse, after the sync read its head."""

    def __init__(self, reader: Reader, warehouse: Warehouse, head: Sheet, tail: Sheet, *,
                 label: str = "") -> None:
        self.reader = reader
        self.warehouse = warehouse
        self.head = head
        self.tail = tail
        self.label = label
        self.pages = last_page_number(tail.total_count, reader.per_page)
        self.max_probes = 0
        self.probes = 0
        self.found = False
        self.drifting = False

    def arrivals(self) -> int:
        """Calls stored since the sync read page 1 that are newer than all it held."""
        assert self.head.newest is not None
        return self.warehouse.count_since(self.head.newest + TICK)

    def difference(self, anchor: Anchor, arrivals: int | None = None) -> int:
        """Stored minus listed, for the calls that started after the anchor's second — the
        anchor's count carried forward by the arrivals stored since it was taken."""
        arrivals = self.arrivals() if arrivals is None else arrivals
        listed = anchor.count + arrivals - anchor.arrived
        return self.warehouse.count_since(anchor.second + TICK) - listed

    def run(self, seen: set[str]) -> Iterator[Sheet]:
        """Yield pages to be loaded (the caller commits each before going on)."""
        top, bottom = anchor_of(self.head), anchor_of(self.tail)
        if top is None or bottom is None or bottom.count <= top.count:
            return
        gap = self.difference(bottom) - self.difference(top)
        if gap == 0:
            return
        # Calls may have arrived after page 1 was read, and the last page counted them: read
        # page 1 again, then the last page, so both counts see the same arrivals.
        fresh = self.reader.read(1)
        self.probes += 1
        self.drifting = bool(fresh.uuids - seen)
        yield fresh
        if self.drifting:
            tail = self.reader.read(self.tail.number)
            self.probes += 1
            yield tail
            bottom = anchor_of(tail, arrived=self.arrivals()) or bottom
            top = anchor_of(fresh, arrived=self.arrivals()) or top
        gap = self.difference(bottom) - self.difference(top)
        if gap == 0:
            return
        self.found = True
        # About log2(pages) pages for each call that differs, never more than the list itself.
        self.max_probes = min(self.pages + 2,
                              (abs(gap) + 1) * (math.ceil(math.log2(self.pages + 1)) + 2) + 4)
        log.info("the warehouse and the list differ by %+d call(s) in the window; locating",
                 gap, extra={"account": self.label, "event": "audit", "difference": gap})
        yield from self._bisect([top, bottom])

    def _read(self, number: int, per_page: int | None = None) -> Iterator[Sheet]:
        """A probe; on a moving list, page 1 first, so the probe's count and the warehouse's
        see the same arrivals."""
        if self.drifting:
            self.probes += 1
            yield self.reader.read(1)
        self.probes += 1
        yield self.reader.read(number, per_page)

    def _bisect(self, anchors: list[Anchor]) -> Iterator[Sheet]:
        per_page = self.reader.per_page
        settled: set[tuple[int, int]] = set()
        while self.probes < self.max_probes:
            anchors.sort()
            arrivals = self.arrivals()
            differences = [self.difference(a, arrivals) for a in anchors]
            pair = next(
                (i for i in range(len(anchors) - 1)
                 if differences[i] != differences[i + 1]
                 and (anchors[i].count, anchors[i + 1].count) not in settled),
                None,
            )
            if pair is None:
                return
            upper, lower = anchors[pair], anchors[pair + 1]
            if lower.count - upper.count <= per_page:
                # Within about a page: read what lies between, call by call, and the seam of
                # two neighbouring pages through a page of another size that straddles it.
                settled.add((upper.count, lower.count))
                for number in range(page_number(upper.count, per_page) + 1,
                                    page_number(lower.count, per_page)):
                    yield from self._read(number)
                seam = page_number(lower.count, per_page)
                if seam != page_number(upper.count, per_page):
                    size = per_page - 1
                    yield from self._read(page_number((seam - 1) * per_page, size), size)
                continue
            middle = (upper.count + lower.count) // 2
            sheet = None
            for sheet in self._read(page_number(middle, per_page)):
                yield sheet
            assert sheet is not None
            anchor = anchor_of(sheet, near=middle, arrived=self.arrivals())
            if anchor is None or anchor.count <= upper.count or anchor.count >= lower.count:
                settled.add((upper.count, lower.count))
                continue
            anchors.append(anchor)
        log.info("the count check stopped after %d pages; what differs is left for the next sync",
                 self.probes, extra={"account": self.label, "event": "audit_incomplete"})

"""Seeking by time: find the page where the list crosses a given second.

The list is sorted by start_time, so the page holding the first call older than a moment can
be found by bisection over page numbers, each probe narrowing a bracket of head ranks. Two
things aim the probes better than halving: the warehouse, which can count its stored calls
since that moment (corrected by what the pages read so far say about the difference), and
interpolation on time between the pages already read. Ranks move while we search, so the
bracket is re-checked against each page and the search is bounded.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from datetime import datetime

from .errors import ListingError
from .records import CallRow
from .sheets import Sheet, page_number
from .walks import Reader

# The warehouse's estimate of how many listed calls started at or after a moment.
Estimate = Callable[[datetime], int | None]

MAX_PROBES = 64


class Seeker:
    """Finds pages by time for one account, learning from every page it is shown."""

    def __init__(self, reader: Reader, estimate: Estimate | None = None) -> None:
        self.reader = reader
        self.estimate = estimate
        self._ranks: list[int] = []  # sorted head ranks of known calls
        self._times: dict[int, datetime] = {}
        self.total: int | None = None
        self.probes = 0

    def learn(self, sheet: Sheet) -> None:
        """Remember where this page's calls sat (for interpolation) and the list's size."""
        self.total = sheet.total_count
        for index, item in enumerate(sheet.items):
            if isinstance(item, CallRow):
                rank = sheet.first_rank + index
                if rank not in self._times:
                    bisect.insort(self._ranks, rank)
                self._times[rank] = item.start_time

    def page_at(self, moment: datetime, head: Sheet) -> Sheet:
        """A page whose newest call started at or after `moment` and whose oldest before it
        (or page 1 when nothing is that new, or the last page when nothing is that old):
        a walk from there toward older calls covers everything before `moment`."""
        if head.newest is None or head.newest < moment or head.oldest is None or head.oldest < moment:
            return head
        self.learn(head)
        low, high = head.first_rank + len(head.items) - 1, head.total_count  # st >= moment / < moment
        halve = False
        for _ in range(MAX_PROBES):
            target = self._aim(moment, low, high, halve)
            sheet = self.reader.read(page_number(target, self.reader.per_page))
            self.probes += 1
            self.learn(sheet)
            if not sheet.calls:
                high = min(high, sheet.first_rank)
                if sheet.number == 1:
                    return sheet
                halve = True
                continue
            assert sheet.newest is not None and sheet.oldest is not None
            if sheet.newest >= moment > sheet.oldest:
                return sheet
            if sheet.oldest >= moment and sheet.is_end:
                return sheet
            width = high - low
            if sheet.oldest >= moment:
                low = max(low, sheet.end_rank - 1)
            else:
                high = min(high, sheet.first_rank)
            if high <= low:  # the list moved under us: widen and go on
                low, high = max(-1, high - self.reader.per_page), low + self.reader.per_page
            halve = (high - low) * 2 > width
        raise ListingError("bisection did not converge; the list is not sorted by start_time")

    def rank_at(self, moment: datetime) -> int | None:
        """Where `moment` about sits, by interpolation between the pages read so far."""
        if not self._ranks:
            return None
        return self._interpolate(moment, -1, (self.total or 0) + 1)

    def _aim(self, moment: datetime, low: int, high: int, halve: bool) -> int:
        """A head rank to probe, strictly inside (low, high)."""
        guess: int | None = None
        if not halve and self.estimate is not None:
            guess = self.estimate(moment)
        if guess is None and not halve:
            guess = self._interpolate(moment, low, high)
        if guess is None:
            guess = (low + high) // 2
        return max(low + 1, min(high - 1, guess))

    def _interpolate(self, moment: datetime, low: int, high: int) -> int | None:
        i = bisect.bisect_right(self._ranks, low)
        j = bisect.bisect_left(self._ranks, high)
        inside = self._ranks[max(0, i - 1): j + 1]
        newer = [r for r in inside if self._times[r] >= moment]
        older = [r for r in inside if self._times[r] < moment]
        if not newer or not older:
            return None
        r0, r1 = max(newer), min(older)
        t0, t1 = self._times[r0], self._times[r1]
        if r1 <= r0 or t0 <= t1:
            return None
        fraction = (t0 - moment) / (t0 - t1)
        return r0 + round(fraction * (r1 - r0))

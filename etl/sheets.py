"""What one page of the list proves: page arithmetic and the facts a read page establishes.

The API lists an account's calls newest first by `start_time`, by page number. The list
changes at both ends while it is read: calls arrive at the head, the oldest leave the
provider's window, a call may vanish from the middle or be listed late. No position stays
put, so positions are only used to aim a request. What a page does prove:

- it is a contiguous slice of the order at the moment it was answered: every call listed at
  that moment whose `start_time` lies strictly between the page's oldest and newest call is
  on it (`Sheet.spans`);
- its calls sit at head ranks `(number - 1) * per_page ...` at that moment, counting from the
  newest call, so inside the page the number of listed calls that started after a given
  second is known exactly (`Sheet.boundaries`);
- two pages whose time ranges overlap, or that share a call, leave no gap between them for any
  call listed while both were read (`Sheet.overlaps`);
- the page after it, asked for later, follows it unless calls vanished above it meanwhile:
  arrivals only push it toward older calls, which makes the two overlap (`follows`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from .client import Page
from .errors import ListingError
from .records import CallRow, Reject, parse_call


def page_number(rank: int, per_page: int) -> int:
    """The page that holds the call at head rank `rank` (0 = the newest call)."""
    return max(0, rank) // per_page + 1


def last_page_number(total_count: int, per_page: int) -> int:
    """The number of a list's last page (1 for an empty list): the page of its oldest call."""
    return page_number(total_count - 1, per_page)


@dataclass(eq=False)
class Sheet:
    """A page as read: its parsed items, where it sat, and the order it was answered in."""

    number: int
    per_page: int
    total_count: int
    items: list[CallRow | Reject]
    answered: int
    calls: list[CallRow] = field(init=False)
    uuids: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        self.calls = [item for item in self.items if isinstance(item, CallRow)]
        self.uuids = frozenset(call.call_uuid for call in self.calls)
        for newer, older in zip(self.calls, self.calls[1:], strict=False):
            if older.start_time > newer.start_time:
                raise ListingError(
                    f"page {self.number} is not sorted by start_time, newest first "
                    f"({newer.call_uuid} at {newer.start_time:%Y-%m-%d %H:%M:%S} comes before "
                    f"{older.call_uuid} at {older.start_time:%Y-%m-%d %H:%M:%S})"
                )

    @classmethod
    def read(cls, page: Page, account_id: str, answered: int) -> Sheet:
        items = [parse_call(record, account_id) for record in page.records]
        return cls(page.number, page.per_page, page.total_count, items, answered)

    @property
    def first_rank(self) -> int:
        """Head rank of the page's first item when it was answered."""
        return (self.number - 1) * self.per_page

    @property
    def end_rank(self) -> int:
        """Head rank just past the page's last item."""
        return self.first_rank + len(self.items)

    @property
    def newest(self) -> datetime | None:
        return self.calls[0].start_time if self.calls else None

    @property
    def oldest(self) -> datetime | None:
        return self.calls[-1].start_time if self.calls else None

    @property
    def is_end(self) -> bool:
        """The last page (or one past it): the list ended here when it was answered."""
        return self.end_rank >= self.total_count

    def overlaps(self, other: Sheet) -> bool:
        """True when the two pages share a call or their open time ranges overlap: then no
        call listed while both were read can lie between them unread."""
        if self.uuids & other.uuids:
            return True
        if self.newest is None or other.newest is None:
            return False
        assert self.oldest is not None and other.oldest is not None
        return self.oldest < other.newest and other.oldest < self.newest

    def boundaries(self) -> list[tuple[datetime, int]]:
        """(second, count) pairs: exactly `count` listed items started after `second` when the
        page was answered. Only seconds where the start time steps down inside the page
        qualify: at the page's top edge, calls of the same second may sit on the page before."""
        out = []
        previous: datetime | None = None
        for index, item in enumerate(self.items):
            if not isinstance(item, CallRow):
                continue
            if previous is not None and item.start_time < previous:
                out.append((item.start_time, self.first_rank + index))
            previous = item.start_time
        return out


def follows(newer: Sheet, older: Sheet) -> bool:
    """True when `older` continues `newer` with nothing unread between: they overlap, or
    `older` was asked for after `newer` was answered and starts no later than its end rank
    (only a call vanishing above it in between could then open a gap)."""
    if newer.overlaps(older):
        return True
    return older.answered > newer.answered and older.first_rank <= newer.end_rank


@dataclass(frozen=True)
class Span:
    """An exact stretch of the list: every call listed at that moment with a start time
    strictly between `oldest` and `newest` is one of `uuids`."""

    oldest: datetime
    newest: datetime
    uuids: frozenset[str]


def span_of(sheet: Sheet) -> Span | None:
    """What one page proves listed, and not, between its oldest and newest call."""
    if sheet.newest is None or sheet.oldest is None:
        return None
    return Span(oldest=sheet.oldest, newest=sheet.newest, uuids=sheet.uuids)

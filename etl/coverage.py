"""Coverage: which stretches of start_time an account's syncs have read in full.

An interval (lower, upper) says: when it was read, every listed call that started strictly
after `lower` and strictly before `upper` was stored. That stays true as the list changes at
both ends — calls leaving the provider's window take nothing from it, new calls land above
it — and is what sync state keeps. Late listings and deletions inside an interval are found
by counting (etl.audit), not assumed away.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from .sheets import Sheet

# A stretch that reaches the end of the list covers its oldest second too.
TICK = timedelta(microseconds=1)


@dataclass(frozen=True, order=True)
class Interval:
    lower: datetime
    upper: datetime


def merge(intervals: Iterable[Interval]) -> list[Interval]:
    """The union, newest first; intervals that only touch stay apart (the second they share
    is not known to be covered)."""
    out: list[Interval] = []
    for interval in sorted(intervals, key=lambda i: i.lower):
        if interval.upper <= interval.lower:
            continue
        if out and out[-1].upper > interval.lower:
            if interval.upper > out[-1].upper:
                out[-1] = Interval(out[-1].lower, interval.upper)
        else:
            out.append(interval)
    return sorted(out, key=lambda i: i.upper, reverse=True)


def chain_interval(top: Sheet, bottom: Sheet, *, head: bool = False) -> Interval | None:
    """What a chain of pages read from `top` down to `bottom` covers. A chain that ends the
    list covers its oldest second too; one that starts at page 1 its newest (nothing newer
    was listed: calls of that second listed later are what `lookback` re-reads)."""
    if top.newest is None or bottom.oldest is None:
        return None
    lower = bottom.oldest - TICK if bottom.is_end else bottom.oldest
    upper = top.newest + TICK if head else top.newest
    return Interval(lower, upper)


@dataclass(frozen=True)
class Gap:
    """A stretch to read: a chain of pages from one whose newest call started after `after`
    (None: from the head, page 1) down to one whose oldest call started before `before`
    (None: to the end of the list)."""

    after: datetime | None
    before: datetime | None


def gaps(covered: Sequence[Interval], *, lookback: timedelta, floor: datetime | None) -> list[Gap]:
    """What an incremental sync must read, newest first: from the head down into the newest
    interval (shrunk by `lookback`, so that stretch is read again), between intervals, and
    below the oldest one unless it reaches `floor` (the oldest second still wanted, or None
    when the account's whole list is)."""
    intervals = merge(covered)
    if intervals:
        top = intervals[0]
        shrunk = Interval(top.lower, top.upper - lookback)
        intervals = ([shrunk] if shrunk.upper > shrunk.lower else []) + intervals[1:]
    out: list[Gap] = []
    after: datetime | None = None
    for interval in intervals:
        if floor is not None and interval.upper <= floor:
            break
        out.append(Gap(after, interval.upper))
        after = interval.lower
        if floor is not None and interval.lower < floor:
            return out
    out.append(Gap(after, floor))
    return out

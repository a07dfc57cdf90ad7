"""Extraction plans: which positions of an account's list a command must read, and why.

- incremental: everything above what the last sync covered, re-reading `lookback` behind the
  watermark, plus the position of every stored call that is still open;
- full: the whole list (back to `start_date`);
- backfill: the positions whose calls start in [since, until), found by bisection.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from .paging import Coverage, Paginator, PositionsStale, Window
from .state import SyncState


@dataclass
class Plan:
    kind: str
    need: Coverage
    window: Window = field(default_factory=Window)
    frontier_from: int | None = None
    base_seq: int = 0
    stop_at: datetime | None = None
    open_targets: dict[str, datetime] = field(default_factory=dict)
    total_count: int = 0

    def describe(self) -> str:
        spans = ", ".join(f"{lo}-{hi - 1}" for lo, hi in self.need) or "nothing"
        return f"{self.kind}: positions {spans}"


def _base(paginator: Paginator, start_date: datetime | None) -> int:
    if start_date is None:
        return 0
    low, _ = paginator.seek(start_date)
    return low + 1


def incremental_plan(
    paginator: Paginator,
    state: SyncState | None,
    *,
    lookback: timedelta,
    start_date: datetime | None,
    open_calls: list[tuple[str, datetime]],
    full: bool = False,
) -> Plan:
    """What `etl sync` reads; `paginator.head()` must have been read."""
    total = paginator.total or 0
    window = Window(since=start_date)
    if state is None or full:
        base = _base(paginator, start_date)
        plan = Plan("full" if full else "first", Coverage([(base, total)]), window, base, base)
    else:
        if total < state.synced_seq:
            raise PositionsStale(
                f"the API lists {total} calls where {state.synced_seq} were already synced"
            )
        start = state.synced_seq
        if state.watermark is not None:
            low, _ = paginator.positions.bracket(state.watermark - lookback, -1, start)
            start = min(start, low + 1)
        start = max(start, state.base_seq)
        plan = Plan("incremental", Coverage([(start, total)]), window, state.synced_seq, state.base_seq)
    plan.total_count = total
    for call_uuid, started in open_calls:
        plan.open_targets[call_uuid] = started
        add_target(paginator, plan.need, call_uuid, started)
    return plan


def add_target(paginator: Paginator, need: Coverage, call_uuid: str, started: datetime) -> None:
    """Add the position of a stored call to `need`: exact when a mark names it, otherwise the
    few positions its start_time allows (bisecting over the API if marks are too sparse)."""
    seq = paginator.positions.seq_of(call_uuid)
    if seq is not None:
        need.add(seq, seq + 1)
        return
    low, _high = paginator.seek(started)
    # (low, high] holds the first call starting at `started`; calls sharing that second follow it
    _, after = paginator.seek(started + timedelta(microseconds=1), low=low)
    need.add(low + 1, after)


def backfill_plan(paginator: Paginator, since: datetime, until: datetime) -> Plan:
    """What `etl backfill` reads: bisect to `since`, then page toward newer calls until `until`."""
    total = paginator.total or 0
    low, _ = paginator.seek(since)
    # What the bisection saw may already bound the window's end; no request is spent on it.
    _, end = paginator.positions.bracket(until, low, total)
    plan = Plan("backfill", Coverage([(low + 1, end)]), Window(since, until), None, 0, until)
    plan.total_count = total
    return plan

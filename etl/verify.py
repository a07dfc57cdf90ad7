"""Reconcile stored rows with the API's own counts, within the provider's current window.

The API can count for us: `total_count` of a one-call page, overall and filtered by each
status and direction. Three things would make a naive comparison cry wolf, and each is
taken out exactly:

- calls older than the provider's window (the archive keeps them; the API no longer lists
  them): the list's last page says where the window starts, and only stored calls from there
  on are counted;
- calls that arrived since the last sync: the head pages are read down to the last sync's
  watermark, and the listed calls not stored yet are left out of the API's counts;
- a call stored while open may have finished since: each stored open call's page is read
  (found by its rank), and such a call is counted under its stored status on both sides
  (reported as "changed since the last sync", which the next sync brings up to date).

The head and the last page are read before and after the counts; if the list moved in
between, everything is counted again.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select

from .client import VoxClient
from .coverage import TICK
from .errors import ListingError
from .records import KNOWN_DIRECTIONS, KNOWN_STATUSES, OPEN_STATUSES
from .schema import calls, rejects
from .seek import Seeker
from .sheets import Sheet, page_number
from .state import Warehouse, read_state
from .walks import Reader


@dataclass
class Difference:
    measure: str
    api: int
    stored: int

    @property
    def delta(self) -> int:
        return self.stored - self.api


@dataclass
class Reconciliation:
    account: str
    auth_id: str
    compared: dict[str, tuple[int, int]] = field(default_factory=dict)
    differences: list[Difference] = field(default_factory=list)
    arrived_since_sync: int = 0
    changed_since_sync: int = 0
    aged_out: int = 0
    window_start: datetime | None = None
    requests: int = 0
    note: str | None = None

    @property
    def ok(self) -> bool:
        return not self.differences and self.note is None


@dataclass
class _Snapshot:
    """What the head, the last page and the stored open calls' pages said."""

    total: int
    window_start: datetime | None
    arrived: list[dict[str, Any]]          # listed records not stored yet
    open_now: dict[str, tuple[Any, Any]]  # stored open call -> (status, direction) listed now
    tail_second: set[str]                 # stored calls of the window's first second still listed

    def same_as(self, other: _Snapshot) -> bool:
        return (self.total, self.window_start, self.open_now, self.tail_second) == (
            other.total, other.window_start, other.open_now, other.tail_second) and \
            [r.get("call_uuid") for r in self.arrived] == [r.get("call_uuid") for r in other.arrived]


class _Moved(Exception):
    pass


def _fields(record: Any) -> tuple[str | None, Any, Any]:
    """A raw record's call_uuid (if it has a usable one), status and direction."""
    if not isinstance(record, dict):
        return None, None, None
    uuid = record.get("call_uuid")
    return (uuid if isinstance(uuid, str) and uuid else None,
            record.get("status"), record.get("direction"))


def _bucket(counter: Counter[str], status: Any, direction: Any, weight: int = 1) -> None:
    counter["total"] += weight
    key = f"status={status}" if status in KNOWN_STATUSES else "status=(other)"
    counter[key] += weight
    key = f"direction={direction}" if direction in KNOWN_DIRECTIONS else "direction=(other)"
    counter[key] += weight


class _Verifier:
    def __init__(self, engine: Engine, client: VoxClient, name: str) -> None:
        self.engine = engine
        self.client = client
        self.name = name
        self.account_id = client.account.auth_id
        self.reader = Reader(client.fetch_page, self.account_id, per_page=client.api.per_page)
        self.warehouse = Warehouse(engine, self.account_id)

    def stored(self) -> tuple[dict[str, tuple[Any, Any, datetime]], list[Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(calls.c.call_uuid, calls.c.status, calls.c.direction, calls.c.start_time)
                .where(calls.c.account_id == self.account_id, calls.c.deleted_at.is_(None))
            ).all()
            kept = conn.execute(
                select(rejects.c.record, rejects.c.start_time)
                .where(rejects.c.account_id == self.account_id)
            ).all()
        return {u: (s, d, t) for u, s, d, t in rows}, list(kept)

    def snapshot(self, stored: dict[str, tuple[Any, Any, datetime]],
                 watermark: datetime | None) -> _Snapshot:
        head = self.reader.read(1)
        pages = [head]
        sheet = head
        while not sheet.is_end and watermark is not None and sheet.oldest is not None \
                and sheet.oldest >= watermark:
            sheet = self.reader.read(sheet.number + 1)
            if sheet.total_count != head.total_count:
                raise _Moved()
            pages.append(sheet)
        tail = sheet if sheet.is_end else self.reader.read(
            page_number(head.total_count - 1, self.reader.per_page))
        if tail.total_count != head.total_count or not tail.is_end:
            raise _Moved()
        arrived = [item.raw for page in pages for item in page.calls
                   if item.call_uuid not in stored
                   and (watermark is None or item.start_time >= watermark)]
        window_start = tail.oldest
        first_second: set[str] = set()
        if window_start is not None:
            first_second = {c.call_uuid for c in tail.calls if c.start_time == window_start}
            if tail.calls and tail.calls[0].start_time == window_start:
                first_second = {u for u, (_, _, t) in stored.items() if t == window_start}
        open_now = self._open_calls(stored, [*pages, tail])
        return _Snapshot(head.total_count, window_start, arrived, open_now, first_second)

    def _open_calls(self, stored: dict[str, tuple[Any, Any, datetime]],
                    read: list[Sheet]) -> dict[str, tuple[Any, Any]]:
        """Where the list holds each stored open call now, and its listed status: on a page
        already read, or on the page its rank (the stored calls newer than it) points at."""
        sheets = {s.number: s for s in read}
        found: dict[str, tuple[Any, Any]] = {}
        wanted = sorted(((u, t) for u, (s, _, t) in stored.items() if s in OPEN_STATUSES),
                        key=lambda item: item[1], reverse=True)
        for uuid, started in wanted:
            number = page_number(self.warehouse.count_since(started + TICK), self.reader.per_page)
            for _ in range(3):
                sheet = sheets.get(number) or sheets.setdefault(number, self.reader.read(number))
                call = next((c for c in sheet.calls if c.call_uuid == uuid), None)
                if call is not None:
                    found[uuid] = (call.status, call.direction)
                    break
                if sheet.oldest is None or sheet.newest is None:
                    break
                if started > sheet.newest or (started == sheet.newest and number > 1):
                    number = max(1, number - 1)
                elif started <= sheet.oldest and not sheet.is_end:
                    number += 1
                else:
                    break  # inside the page yet not on it: gone from the list
        return found

    def api_counts(self) -> dict[str, int]:
        fetch = self.client.fetch_page
        counts = {"total": fetch(1, 1).total_count}
        for status in KNOWN_STATUSES:
            counts[f"status={status}"] = fetch(1, 1, status=status).total_count
        for direction in KNOWN_DIRECTIONS:
            counts[f"direction={direction}"] = fetch(1, 1, direction=direction).total_count
        return counts


def reconcile(engine: Engine, client: VoxClient, name: str, *, start_date: datetime | None = None,
              attempts: int = 3) -> Reconciliation:
    """Compare one account's stored calls with the API's counts, within the current window."""
    verifier = _Verifier(engine, client, name)
    result = Reconciliation(name, verifier.account_id)
    with engine.connect() as conn:
        state = read_state(conn, verifier.account_id)
    if state is None:
        result.note = "never synced; run etl sync first"
        return result
    stored, kept = verifier.stored()
    for _ in range(attempts):
        try:
            before = verifier.snapshot(stored, state.watermark)
            api = verifier.api_counts()
            after = verifier.snapshot(stored, state.watermark)
        except _Moved:
            continue
        if before.same_as(after) and before.total == api["total"]:
            break
    else:
        result.requests = client.requests
        raise ListingError("the API kept changing while being counted; try again when it is quieter")
    result.window_start = after.window_start

    # The API's side, less the calls that arrived since the last sync.
    api_side: Counter[str] = Counter(api)
    for record in after.arrived:
        _, status, direction = _fields(record)
        _bucket(api_side, status, direction, -1)
    result.arrived_since_sync = len(after.arrived)
    for uuid, (now_status, direction) in after.open_now.items():
        stored_status = stored[uuid][0]
        if now_status != stored_status:
            result.changed_since_sync += 1
            _bucket(api_side, now_status, direction, -1)
            _bucket(api_side, stored_status, direction, +1)
    api_side["status=(other)"] = api_side["total"] - sum(
        api_side[f"status={s}"] for s in KNOWN_STATUSES)
    api_side["direction=(other)"] = api_side["total"] - sum(
        api_side[f"direction={d}"] for d in KNOWN_DIRECTIONS)

    # Our side: stored rows and kept rejects within the window.
    start = after.window_start
    floor = state.window_start if start is None else start
    ours: Counter[str] = Counter()
    for uuid, (status, direction, started) in stored.items():
        if start is not None and (started < start or (started == start
                                                       and uuid not in after.tail_second)):
            result.aged_out += 1
            continue
        _bucket(ours, status, direction)
    for text, started in kept:
        if floor is not None and started is not None and started < floor:
            continue
        try:
            kept_record: Any = json.loads(text)
        except ValueError:
            kept_record = None
        _, status, direction = _fields(kept_record)
        _bucket(ours, status, direction)

    measures = ["total", *(f"status={s}" for s in KNOWN_STATUSES), "status=(other)",
                *(f"direction={d}" for d in KNOWN_DIRECTIONS), "direction=(other)"]
    if start_date is not None and (start is None or start_date > start):
        # Calls before start_date are not stored: only the total of what is compares.
        measures = ["total"]
        sheet = Seeker(verifier.reader).page_at(start_date, verifier.reader.read(1))
        listed = sheet.first_rank + sum(1 for c in sheet.calls if c.start_time >= start_date)
        api_side["total"] = listed - len(after.arrived)
        ours["total"] = sum(1 for (_, _, t) in stored.values() if t >= start_date)
    for measure in measures:
        result.compared[measure] = (api_side[measure], ours[measure])
        if api_side[measure] != ours[measure]:
            result.differences.append(Difference(measure, api_side[measure], ours[measure]))
    result.requests = client.requests
    return result

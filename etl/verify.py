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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select

from .client import VoxClient
from .config import Account, Config
from .coverage import TICK
from .errors import EtlError, ListingError
from .records import KNOWN_DIRECTIONS, KNOWN_STATUSES, OPEN_STATUSES
from .schema import calls, rejects
from .seek import Seeker
from .sheets import Sheet, last_page_number, page_number
from .state import Warehouse, read_state
from .walks import Reader, Walk

# What is compared: the total, then per status and per direction (the API's own filters),
# each with an "(other)" bucket for values outside the documented ones.
MEASURES = ("total", *(f"status={s}" for s in KNOWN_STATUSES), "status=(other)",
            *(f"direction={d}" for d in KNOWN_DIRECTIONS), "direction=(other)")

# A stored call: call_uuid -> (status, direction, start_time); a kept reject: (record, start_time).
Stored = dict[str, tuple[Any, Any, datetime]]
Kept = list[tuple[str, datetime | None]]


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
    """One account's verification: each measure compared, or why it could not be (`note`: it
    was never synced; `error`: the API could not be counted)."""

    account: str
    auth_id: str
    compared: dict[str, tuple[int, int]] = field(default_factory=dict)
    differences: list[Difference] = field(default_factory=list)
    arrived_since_sync: int = 0
    changed_since_sync: int = 0
    requests: int = 0
    note: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return not self.differences and self.note is None and self.error is None


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

    def changed(self, stored: Stored) -> list[tuple[Any, Any, Any]]:
        """Stored open calls listed under another status now: (status now, direction,
        stored status)."""
        return [(status, direction, stored[uuid][0])
                for uuid, (status, direction) in self.open_now.items()
                if status != stored[uuid][0]]


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

    def stored(self) -> tuple[Stored, Kept]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(calls.c.call_uuid, calls.c.status, calls.c.direction, calls.c.start_time)
                .where(calls.c.account_id == self.account_id, calls.c.deleted_at.is_(None))
            ).all()
            kept = conn.execute(
                select(rejects.c.record, rejects.c.start_time)
                .where(rejects.c.account_id == self.account_id)
            ).all()
        return {u: (s, d, t) for u, s, d, t in rows}, [(r, t) for r, t in kept]

    def settled(self, stored: Stored, watermark: datetime | None,
                attempts: int) -> tuple[_Snapshot, dict[str, int]]:
        """The API's counts, with snapshots taken before and after that agree with them; the
        list may not move in between."""
        for _ in range(attempts):
            try:
                before = self.snapshot(stored, watermark)
                api = self.api_counts()
                after = self.snapshot(stored, watermark)
            except _Moved:
                continue
            if before.same_as(after) and before.total == api["total"]:
                return after, api
        raise ListingError("the API kept changing while being counted; try again when it is quieter")

    def snapshot(self, stored: Stored, watermark: datetime | None) -> _Snapshot:
        head = self.reader.read(1)
        pages = [head]
        if watermark is not None and not head.is_end and head.oldest is not None \
                and head.oldest >= watermark:
            # Down from the head to the last sync's watermark: what arrived since.
            down = Walk(page_number(head.end_rank, self.reader.per_page), above=head,
                        stop=lambda sheet: sheet.oldest is None or sheet.oldest < watermark)
            for _, sheet in self.reader.walk([down]):
                if sheet.total_count != head.total_count:
                    raise _Moved()
                pages.append(sheet)
        sheet = pages[-1]
        tail = sheet if sheet.is_end else self.reader.read(
            last_page_number(head.total_count, self.reader.per_page))
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

    def _open_calls(self, stored: Stored, read: list[Sheet]) -> dict[str, tuple[Any, Any]]:
        """Where the list holds each stored open call now, and its listed status: on a page
        already read, or on the page its rank (the stored calls newer than it) points at,
        corrected by at most two steps when calls moved it to a neighbouring page."""
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
        """`total_count` of a one-call page, overall and for each status and direction."""
        fetch = self.client.fetch_page
        counts = {"total": fetch(1, 1).total_count}
        for status in KNOWN_STATUSES:
            counts[f"status={status}"] = fetch(1, 1, status=status).total_count
        for direction in KNOWN_DIRECTIONS:
            counts[f"direction={direction}"] = fetch(1, 1, direction=direction).total_count
        return counts

    def listed_since(self, moment: datetime) -> int:
        """How many listed calls started at or after `moment`, from the page it falls on."""
        sheet = Seeker(self.reader).page_at(moment, self.reader.read(1))
        return sheet.first_rank + sum(1 for c in sheet.calls if c.start_time >= moment)


def listed_counts(api: dict[str, int], snapshot: _Snapshot, stored: Stored) -> Counter[str]:
    """The API's side: its counts less the calls that arrived since the last sync, and each
    stored open call that has finished since counted under its stored status (the next sync
    brings it up to date), so only a real difference remains."""
    side: Counter[str] = Counter(api)
    for record in snapshot.arrived:
        _, status, direction = _fields(record)
        _bucket(side, status, direction, -1)
    for now_status, direction, stored_status in snapshot.changed(stored):
        _bucket(side, now_status, direction, -1)
        _bucket(side, stored_status, direction, +1)
    side["status=(other)"] = side["total"] - sum(side[f"status={s}"] for s in KNOWN_STATUSES)
    side["direction=(other)"] = side["total"] - sum(
        side[f"direction={d}"] for d in KNOWN_DIRECTIONS)
    return side


def stored_counts(stored: Stored, kept: Kept, snapshot: _Snapshot,
                  floor: datetime | None) -> Counter[str]:
    """The warehouse's side: stored calls still inside the provider's window (those of its
    first second only if still listed), and kept rejects from `floor` on."""
    start = snapshot.window_start
    ours: Counter[str] = Counter()
    for uuid, (status, direction, started) in stored.items():
        if start is not None and (started < start or (started == start
                                                       and uuid not in snapshot.tail_second)):
            continue  # aged out of the window: the archive keeps it, the API no longer lists it
        _bucket(ours, status, direction)
    for text, kept_start in kept:
        if floor is not None and kept_start is not None and kept_start < floor:
            continue
        try:
            record: Any = json.loads(text)
        except ValueError:
            record = None
        _, status, direction = _fields(record)
        _bucket(ours, status, direction)
    return ours


def compare(listed: Counter[str], held: Counter[str],
            measures: Iterable[str]) -> tuple[dict[str, tuple[int, int]], list[Difference]]:
    """(api, stored) for each measure, and the measures where they differ."""
    compared = {measure: (listed[measure], held[measure]) for measure in measures}
    differences = [Difference(measure, api, ours)
                   for measure, (api, ours) in compared.items() if api != ours]
    return compared, differences


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
    snapshot, api = verifier.settled(stored, state.watermark, attempts)
    start = snapshot.window_start
    listed = listed_counts(api, snapshot, stored)
    held = stored_counts(stored, kept, snapshot, state.window_start if start is None else start)
    measures: Iterable[str] = MEASURES
    if start_date is not None and (start is None or start_date > start):
        # Calls before start_date are not stored: only the total of what is compares.
        measures = ["total"]
        listed["total"] = verifier.listed_since(start_date) - len(snapshot.arrived)
        held["total"] = sum(1 for (_, _, t) in stored.values() if t >= start_date)
    result.compared, result.differences = compare(listed, held, measures)
    result.arrived_since_sync = len(snapshot.arrived)
    result.changed_since_sync = len(snapshot.changed(stored))
    result.requests = client.requests
    return result


def verify_accounts(engine: Engine, config: Config, accounts: Iterable[Account], *,
                    on_result: Callable[[Reconciliation], None] | None = None,
                    ) -> list[Reconciliation]:
    """Reconcile each account in turn, as `etl verify` does. An account whose calls the API
    could not count comes back with `error` set, and the others go on."""
    results = []
    for account in accounts:
        client = VoxClient(account, config.api, account.token())
        try:
            result = reconcile(engine, client, account.name, start_date=config.sync.start_date)
        except EtlError as exc:
            result = Reconciliation(account.name, account.auth_id, error=str(exc),
                                    requests=client.requests)
        finally:
            client.close()
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results

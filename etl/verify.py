"""Reconcile stored rows with the API's own counts, in a few requests per account.

The API can count for us: `total_count` of a one-call page, overall and filtered by each
status and direction. Two things would make a naive comparison cry wolf, and both are
taken out exactly:

- calls that arrived since the last sync (positions at or above the sync frontier) are read
  from the head pages and left out of the API's counts;
- a call stored while open may have finished since: the pages holding the stored open calls
  are read, and such a call is counted under its stored status on both sides (it is reported
  as "changed since the last sync", which the next sync brings up to date, not a mismatch).

The head pages and open-call pages are read before and after the counts; if anything moved
in between (new calls, a status change), the snapshot is taken again.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, select

from .client import VoxClient
from .errors import ListingError
from .loader import load_marks
from .paging import Coverage, Paginator, Positions
from .records import KNOWN_DIRECTIONS, KNOWN_STATUSES, OPEN_STATUSES
from .schema import calls, rejects
from .state import read_state


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
    requests: int = 0
    note: str | None = None

    @property
    def ok(self) -> bool:
        return not self.differences and self.note is None


def _snapshot(paginator: Paginator, client: VoxClient, frontier: int, open_seqs: list[int]
              ) -> tuple[int, dict[str, tuple[Any, Any]], list[Any]]:
    """Read the head (positions >= frontier) and the pages of the stored open calls."""
    head = paginator.head()
    total = head.total_count
    need = Coverage([(frontier, total)] + [(s, s + 1) for s in open_seqs])
    records: dict[int, Any] = {}
    pages = [head]
    gap = Coverage([(head.low_seq, head.top_seq + 1)]).first_gap(need)
    while gap is not None:
        page = client.fetch_page(paginator.page_for(gap), paginator.per_page)
        if page.total_count != total or not page.records:
            raise _Moved()
        pages.append(page)
        covered = Coverage([(p.low_seq, p.top_seq + 1) for p in pages])
        gap = covered.first_gap(need)
    for page in pages:
        for index, record in enumerate(page.records):
            records[page.seq_of(index)] = record
    seen = {}
    for seq, record in records.items():
        if seq >= frontier or seq in open_seqs:
            uuid, status, direction = _fields(record)
            seen[uuid or f"#{seq}"] = (status, direction)
    head_records = [records[s] for s in sorted(records) if s >= frontier]
    return total, seen, head_records


class _Moved(Exception):
    pass


def _fields(record: Any) -> tuple[str | None, Any, Any]:
    """A raw record's call_uuid (if it has a usable one), status and direction."""
    if not isinstance(record, dict):
        return None, None, None
    uuid = record.get("call_uuid")
    return (uuid if isinstance(uuid, str) and uuid else None,
            record.get("status"), record.get("direction"))


def _api_counts(client: VoxClient) -> dict[str, int]:
    counts = {"total": client.fetch_page(1, 1).total_count}
    for status in KNOWN_STATUSES:
        counts[f"status={status}"] = client.fetch_page(1, 1, status=status).total_count
    for direction in KNOWN_DIRECTIONS:
        counts[f"direction={direction}"] = client.fetch_page(1, 1, direction=direction).total_count
    return counts


def _bucket(counter: Counter[str], status: Any, direction: Any, weight: int = 1) -> None:
    counter["total"] += weight
    key = f"status={status}" if status in KNOWN_STATUSES else "status=(other)"
    counter[key] += weight
    key = f"direction={direction}" if direction in KNOWN_DIRECTIONS else "direction=(other)"
    counter[key] += weight


def reconcile(engine: Engine, client: VoxClient, name: str, *, attempts: int = 3) -> Reconciliation:
    account_id = client.account.auth_id
    result = Reconciliation(name, account_id)
    with engine.connect() as conn:
        state = read_state(conn, account_id)
        if state is None:
            result.note = "never synced; run etl sync first"
            return result
        positions = Positions(load_marks(conn, account_id))
        stored_rows = conn.execute(
            select(calls.c.call_uuid, calls.c.status, calls.c.direction).where(
                calls.c.account_id == account_id
            )
        ).all()
        reject_records = conn.execute(
            select(rejects.c.record).where(rejects.c.account_id == account_id)
        ).scalars().all()
    stored = {uuid: (status, direction) for uuid, status, direction in stored_rows}
    open_uuids = [u for u, (s, _) in stored.items() if s in OPEN_STATUSES]
    open_seqs = sorted({s for u in open_uuids if (s := positions.seq_of(u)) is not None
                        and s < state.synced_seq})
    paginator = Paginator(client.fetch_page, account_id, per_page=client.api.per_page,
                          positions=positions, label=name)
    frontier = state.synced_seq
    for _ in range(attempts):
        try:
            total, before, head_records = _snapshot(paginator, client, frontier, open_seqs)
            api = _api_counts(client)
            total_after, after, _ = _snapshot(paginator, client, frontier, open_seqs)
        except _Moved:
            continue
        if total == total_after == api["total"] and before == after:
            break
    else:
        result.requests = client.requests
        raise ListingError("the API kept changing while being counted; try again when it is quieter")

    # The API's side, limited to what the last sync covered.
    api_side: Counter[str] = Counter(api)
    head_uuids = set()
    for record in head_records:
        uuid, status, direction = _fields(record)
        _bucket(api_side, status, direction, -1)
        if uuid is not None:
            head_uuids.add(uuid)
    result.arrived_since_sync = len(head_records)
    for uuid in open_uuids:
        if uuid in head_uuids or uuid not in after:
            continue
        now_status, direction = after[uuid]
        stored_status = stored[uuid][0]
        if now_status != stored_status:
            result.changed_since_sync += 1
            _bucket(api_side, now_status, direction, -1)
            _bucket(api_side, stored_status, direction, +1)
    api_side["status=(other)"] = api_side["total"] - sum(
        api_side[f"status={s}"] for s in KNOWN_STATUSES)
    api_side["direction=(other)"] = api_side["total"] - sum(
        api_side[f"direction={d}"] for d in KNOWN_DIRECTIONS)

    # Our side: stored rows and kept rejects, less what sits above the frontier.
    ours: Counter[str] = Counter()
    for uuid, (status, direction) in stored.items():
        if uuid not in head_uuids:
            _bucket(ours, status, direction)
    for text in reject_records:
        try:
            record = json.loads(text)
        except ValueError:
            record = None
        uuid, status, direction = _fields(record)
        if uuid not in head_uuids:
            _bucket(ours, status, direction)

    measures = ["total", *(f"status={s}" for s in KNOWN_STATUSES), "status=(other)",
                *(f"direction={d}" for d in KNOWN_DIRECTIONS), "direction=(other)"]
    if state.base_seq > 0:
        measures = ["total"]  # calls before start_date are not stored; only the total compares
        api_side["total"] = frontier - state.base_seq
    for measure in measures:
        result.compared[measure] = (api_side[measure], ours[measure])
        if api_side[measure] != ours[measure]:
            result.differences.append(Difference(measure, api_side[measure], ours[measure]))
    result.requests = client.requests
    return result

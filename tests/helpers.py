"""Assertions shared by the end-to-end tests."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, select

from etl.records import CallRow, parse_call, parse_timestamp
from etl.schema import calls
from etl.simulator import Simulator

COLUMNS = [c.name for c in calls.columns if c.name not in ("first_seen_at", "updated_at", "deleted_at")]


def stored_rows(engine: Engine, account_id: str | None = None) -> dict[str, dict[str, Any]]:
    query = select(calls)
    if account_id is not None:
        query = query.where(calls.c.account_id == account_id)
    with engine.connect() as conn:
        return {row.call_uuid: dict(row._mapping) for row in conn.execute(query)}


def expected_rows(sim: Simulator, auth_id: str) -> dict[str, dict[str, Any]]:
    out = {}
    for record in sim.calls(auth_id):
        item = parse_call(record, auth_id)
        if isinstance(item, CallRow):
            out[item.call_uuid] = item.values()
    return out


def assert_matches_simulator(engine: Engine, sim: Simulator, auth_ids: list[str] | None = None) -> int:
    """The `calls` table holds exactly the simulator's calls, field by field; returns the count."""
    auth_ids = auth_ids or [a.auth_id for a in sim.accounts]
    total = 0
    for auth_id in auth_ids:
        want = expected_rows(sim, auth_id)
        have = stored_rows(engine, auth_id)
        missing = sorted(set(want) - set(have))
        extra = sorted(set(have) - set(want))
        assert not missing, f"{auth_id}: {len(missing)} calls missing, e.g. {missing[:3]}"
        assert not extra, f"{auth_id}: {len(extra)} calls that the API does not list, e.g. {extra[:3]}"
        wrong = [
            (uuid, column, have[uuid][column], want[uuid][column])
            for uuid in want
            for column in COLUMNS
            if have[uuid][column] != want[uuid][column]
        ]
        assert not wrong, f"{auth_id}: {len(wrong)} values differ, e.g. {wrong[:3]}"
        total += len(want)
    return total


def assert_window_matches(engine, sim, auth_id):
    """Within the provider's window the live rows equal the list; older rows are kept."""
    listed = {c["call_uuid"]: c for c in sim.calls(auth_id)
              if isinstance(parse_call(c, auth_id), CallRow)}
    rows = stored_rows(engine, auth_id)
    live = {u for u, r in rows.items() if r["deleted_at"] is None}
    missing = set(listed) - live
    assert not missing, f"{len(missing)} listed calls not stored (live), e.g. {sorted(missing)[:3]}"
    oldest = min(parse_timestamp(c["start_time"]) for c in listed.values())
    extra = {u for u in live - set(listed) if rows[u]["start_time"] > oldest}
    assert not extra, f"{len(extra)} live rows inside the window that the API does not list"
    for uuid, call in listed.items():
        assert rows[uuid]["status"] == call["status"], (uuid, rows[uuid]["status"], call["status"])

"""Sync state and run log: what each account's syncs have covered, and what each run did."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, func, select

from .loader import utcnow
from .records import OPEN_STATUSES
from .schema import calls, rejects, sync_runs, sync_state


@dataclass(frozen=True)
class SyncState:
    """How far an account's incremental sync has reached.

    `synced_seq`: every call at a position below it (and at or above `base_seq`) is stored.
    `watermark`: the start_time of the newest of those calls.
    """

    account_id: str
    synced_seq: int
    base_seq: int
    watermark: datetime | None
    last_total_count: int | None
    last_success_at: datetime | None


def read_state(conn: Connection, account_id: str) -> SyncState | None:
    row = conn.execute(select(sync_state).where(sync_state.c.account_id == account_id)).first()
    if row is None:
        return None
    return SyncState(
        account_id=row.account_id,
        synced_seq=row.synced_seq,
        base_seq=row.base_seq,
        watermark=row.watermark,
        last_total_count=row.last_total_count,
        last_success_at=row.last_success_at,
    )


def advance_state(
    conn: Connection,
    account_id: str,
    account_name: str,
    *,
    synced_seq: int,
    base_seq: int,
    watermark: datetime | None,
    total_count: int | None = None,
    finished: bool = False,
) -> None:
    """Move the account's state forward (never back), in the caller's transaction."""
    now = utcnow()
    current = read_state(conn, account_id)
    values: dict[str, Any] = {"account_name": account_name, "updated_at": now}
    if current is None:
        values.update(
            account_id=account_id,
            synced_seq=synced_seq,
            base_seq=base_seq,
            watermark=watermark,
            last_total_count=total_count,
            last_success_at=now if finished else None,
        )
        conn.execute(sync_state.insert().values(**values))
        return
    values["synced_seq"] = max(current.synced_seq, synced_seq)
    values["base_seq"] = min(current.base_seq, base_seq)
    if watermark is not None and (current.watermark is None or watermark > current.watermark):
        values["watermark"] = watermark
    if total_count is not None:
        values["last_total_count"] = total_count
    if finished:
        values["last_success_at"] = now
    conn.execute(sync_state.update().where(sync_state.c.account_id == account_id).values(**values))


def reset_state(conn: Connection, account_id: str) -> None:
    """Forget how far the account got, so the next sync re-reads its whole list."""
    conn.execute(sync_state.delete().where(sync_state.c.account_id == account_id))


def open_calls(conn: Connection, account_id: str) -> list[tuple[str, datetime]]:
    """Stored calls still ringing or in progress: (call_uuid, start_time), oldest first."""
    query = (
        select(calls.c.call_uuid, calls.c.start_time)
        .where(calls.c.account_id == account_id, calls.c.status.in_(sorted(OPEN_STATUSES)))
        .order_by(calls.c.start_time)
    )
    return [(uuid, start) for uuid, start in conn.execute(query)]


def new_run_id() -> str:
    return str(uuid.uuid4())


def start_run(engine: Engine, run_id: str, command: str, account_id: str, name: str) -> None:
    """Log that this run started on this account (committed at once: a killed run shows)."""
    with engine.begin() as conn:
        conn.execute(
            sync_runs.insert().values(
                run_id=run_id,
                command=command,
                account_id=account_id,
                account_name=name,
                started_at=utcnow(),
                outcome="running",
                pages=0,
                requests=0,
                new=0,
                updated=0,
                unchanged=0,
                rejected=0,
            )
        )


def finish_run(engine: Engine, run_id: str, account_id: str, outcome: str, error: str | None,
               **counts: int) -> None:
    with engine.begin() as conn:
        conn.execute(
            sync_runs.update()
            .where(sync_runs.c.run_id == run_id, sync_runs.c.account_id == account_id)
            .values(outcome=outcome, error=error, finished_at=utcnow(), **counts)
        )


def record_skip(engine: Engine, run_id: str, command: str, account_id: str, name: str, why: str) -> None:
    start_run(engine, run_id, command, account_id, name)
    finish_run(engine, run_id, account_id, "skipped", why)


# A run-log row says `running` from the moment its run holds the account's lock until it
# finishes. A `running` row whose lock is free therefore belongs to a process that died
# (kill -9, a lost machine or connection) before it could write its outcome.
DIED_ERROR = "the process running it stopped without recording an outcome (killed or lost)"


def close_dead_runs(engine: Engine, account_id: str, run_id: str) -> int:
    """Record the account's `running` rows of other runs as `died`; returns how many.

    Call it only while holding the account's lock: then no live run can own those rows."""
    with engine.begin() as conn:
        result = conn.execute(
            sync_runs.update()
            .where(sync_runs.c.account_id == account_id, sync_runs.c.outcome == "running",
                   sync_runs.c.run_id != run_id)
            .values(outcome="died", error=DIED_ERROR)
        )
    return int(result.rowcount or 0)


def flag_dead_runs(engine: Engine, statuses: list[AccountStatus]) -> None:
    """Show an account whose last run says `running` but whose lock is free as `died`
    (without writing anything: the next run of that account records it)."""
    from . import locks

    for status in statuses:
        if status.last_outcome == "running" and not locks.is_held(engine, status.account_id):
            status.last_outcome = "died"
            status.last_error = DIED_ERROR


@dataclass
class AccountStatus:
    account_id: str
    account_name: str
    last_success_at: datetime | None
    watermark: datetime | None
    calls: int
    open_calls: int
    rejects: int
    last_outcome: str | None
    last_run_started_at: datetime | None
    last_error: str | None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.__dict__)
        for key, value in out.items():
            if isinstance(value, datetime):
                out[key] = value.isoformat().replace("+00:00", "Z")
        return out


def account_status(conn: Connection, accounts: list[tuple[str, str]]) -> list[AccountStatus]:
    """Per account (auth_id, name): state, stored and open calls, and the last run's outcome.
    Accounts in the database but no longer configured are listed too."""
    names = dict(accounts)
    for account_id, name in conn.execute(select(sync_state.c.account_id, sync_state.c.account_name)):
        names.setdefault(account_id, name)
    for account_id, name in conn.execute(
        select(sync_runs.c.account_id, sync_runs.c.account_name).distinct()
    ):
        names.setdefault(account_id, name)
    stored: dict[str, int] = dict(
        conn.execute(select(calls.c.account_id, func.count()).group_by(calls.c.account_id)).tuples().all()
    )
    still_open: dict[str, int] = dict(
        conn.execute(
            select(calls.c.account_id, func.count())
            .where(calls.c.status.in_(sorted(OPEN_STATUSES)))
            .group_by(calls.c.account_id)
        ).tuples().all()
    )
    broken: dict[str, int] = dict(
        conn.execute(select(rejects.c.account_id, func.count()).group_by(rejects.c.account_id)).tuples().all()
    )
    out = []
    for account_id, name in names.items():
        state = read_state(conn, account_id)
        last = conn.execute(
            select(sync_runs.c.outcome, sync_runs.c.started_at, sync_runs.c.error)
            .where(sync_runs.c.account_id == account_id)
            .order_by(sync_runs.c.started_at.desc())
            .limit(1)
        ).first()
        out.append(
            AccountStatus(
                account_id=account_id,
                account_name=name,
                last_success_at=state.last_success_at if state else None,
                watermark=state.watermark if state else None,
                calls=int(stored.get(account_id, 0)),
                open_calls=int(still_open.get(account_id, 0)),
                rejects=int(broken.get(account_id, 0)),
                last_outcome=last.outcome if last else None,
                last_run_started_at=last.started_at if last else None,
                last_error=last.error if last else None,
            )
        )
    return out

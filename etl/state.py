"""Sync state and run log: what each account's syncs have covered, and what each run did."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, func, select, update

from .coverage import Interval, merge
from .db import is_psycopg, pipelined
from .loader import iso_utc, sqlite_text, utcnow
from .outcomes import Command, Outcome
from .records import OPEN_STATUSES
from .schema import calls, rejects, sync_coverage, sync_runs, sync_state
from .sheets import Span


@dataclass(frozen=True)
class SyncState:
    """What an account's syncs know that stays true while the list changes at both ends.

    `coverage`: the stretches of start_time read in full (see etl.coverage), newest first.
    `watermark`: the start_time of the newest call the last sync read.
    `window_start`: the start_time of the oldest call the provider still listed then.
    """

    account_id: str
    watermark: datetime | None
    window_start: datetime | None
    last_total_count: int | None
    last_success_at: datetime | None
    coverage: tuple[Interval, ...] = ()


def read_state(conn: Connection, account_id: str) -> SyncState | None:
    row = conn.execute(select(sync_state).where(sync_state.c.account_id == account_id)).first()
    if row is None:
        return None
    return SyncState(
        account_id=row.account_id,
        watermark=row.watermark,
        window_start=row.window_start,
        last_total_count=row.last_total_count,
        last_success_at=row.last_success_at,
        coverage=tuple(read_coverage(conn, account_id)),
    )


def read_coverage(conn: Connection, account_id: str) -> list[Interval]:
    query = select(sync_coverage.c.lower_time, sync_coverage.c.upper_time).where(
        sync_coverage.c.account_id == account_id)
    return merge(Interval(lower, upper) for lower, upper in conn.execute(query))


def save_state(
    conn: Connection,
    account_id: str,
    account_name: str,
    *,
    coverage: list[Interval],
    watermark: datetime | None = None,
    window_start: datetime | None = None,
    total_count: int | None = None,
    finished: bool = False,
) -> None:
    """Record what the account's sync has covered, in the caller's transaction (the same one
    as the rows it covers, so coverage never runs ahead of committed rows)."""
    now = utcnow()
    current = conn.execute(
        select(sync_state.c.watermark).where(sync_state.c.account_id == account_id)
    ).first()
    values: dict[str, Any] = {"account_name": account_name, "updated_at": now}
    if watermark is not None and (current is None or current.watermark is None
                                  or watermark > current.watermark):
        values["watermark"] = watermark
    if window_start is not None:
        values["window_start"] = window_start
    if total_count is not None:
        values["last_total_count"] = total_count
    if finished:
        values["last_success_at"] = now
    if current is None:
        conn.execute(sync_state.insert().values(account_id=account_id, **values))
    else:
        conn.execute(sync_state.update().where(sync_state.c.account_id == account_id).values(**values))
    conn.execute(sync_coverage.delete().where(sync_coverage.c.account_id == account_id))
    rows = [{"account_id": account_id, "lower_time": i.lower, "upper_time": i.upper}
            for i in merge(coverage)]
    if rows:
        conn.execute(sync_coverage.insert(), rows)


def _live(account_id: str) -> Any:
    return (calls.c.account_id == account_id) & calls.c.deleted_at.is_(None)


def open_calls(conn: Connection, account_id: str) -> list[tuple[str, datetime]]:
    """Stored calls still ringing or in progress: (call_uuid, start_time), newest first."""
    query = (
        select(calls.c.call_uuid, calls.c.start_time)
        .where(_live(account_id), calls.c.status.in_(sorted(OPEN_STATUSES)))
        .order_by(calls.c.start_time.desc())
    )
    return [(uuid, start) for uuid, start in conn.execute(query)]


def count_since(conn: Connection, account_id: str, moment: datetime,
                until: datetime | None = None) -> int:
    """Stored, not deleted calls (and kept rejects) that started at or after `moment` (and
    before `until`): the warehouse's own count of that stretch of the list."""
    query = select(func.count()).select_from(calls).where(_live(account_id),
                                                          calls.c.start_time >= moment)
    bad = select(func.count()).select_from(rejects).where(
        rejects.c.account_id == account_id, rejects.c.start_time >= moment)
    if until is not None:
        query = query.where(calls.c.start_time < until)
        bad = bad.where(rejects.c.start_time < until)
    return int(conn.execute(query).scalar_one()) + int(conn.execute(bad).scalar_one())


def flag_absent(conn: Connection, account_id: str, spans: list[Span], now: datetime, *,
                listed: set[str] | frozenset[str] = frozenset()) -> int:
    """Mark stored calls that a page proves gone from inside the window as deleted: a call
    that started strictly between a page's oldest and newest call, yet is not on it (nor
    `listed`). Calls older than the window are never inside a page, so ageing out flags
    nothing."""
    # dict.fromkeys: the spans of one transaction may share a call their ranges both hold
    gone = list(dict.fromkeys(u for u in _unlisted(conn, account_id, spans) if u not in listed))
    for start in range(0, len(gone), 500):
        conn.execute(update(calls).where(calls.c.call_uuid.in_(gone[start:start + 500]))
                     .values(deleted_at=now))
    return len(gone)


_SQLITE_UNLISTED = ("SELECT call_uuid FROM calls WHERE account_id = ? AND deleted_at IS NULL "
                    "AND start_time > ? AND start_time < ? AND call_uuid NOT IN ")
_PG_UNLISTED = ("SELECT call_uuid FROM calls WHERE account_id = %s AND deleted_at IS NULL "
                "AND start_time > %s AND start_time < %s AND call_uuid <> ALL(%s::text[])")


def _unlisted(conn: Connection, account_id: str, spans: list[Span]) -> list[str]:
    """The account's live stored calls that started strictly inside one of the spans but are
    not among that span's calls. Nearly always none: on SQLite and PostgreSQL (psycopg 3) the
    query leaves the span's calls out itself, one statement with the page's keys bound by the
    driver, instead of reading every one of them back (on SQLite 125 µs a page instead of
    290, measured on a 100-call page); on PostgreSQL the spans' statements go out pipelined,
    one round trip for all of them; elsewhere each range is read and filtered here."""
    dialect = conn.dialect
    if dialect.name == "sqlite":
        out = []
        for span in spans:
            keys = sorted(span.uuids)
            sql = _SQLITE_UNLISTED + "(" + ",".join("?" * len(keys)) + ")"
            found = conn.exec_driver_sql(
                sql, (account_id, sqlite_text(span.oldest), sqlite_text(span.newest), *keys))
            out += [uuid for (uuid,) in found]
        return out
    if is_psycopg(conn):
        cursors = []
        with pipelined(conn, "deletion check") as driver:
            for span in spans:
                cursor = driver.cursor()
                cursor.execute(_PG_UNLISTED,
                               (account_id, span.oldest, span.newest, sorted(span.uuids)))
                cursors.append(cursor)
        return [uuid for cursor in cursors for (uuid,) in cursor.fetchall()]
    return [
        uuid
        for span in spans
        for (uuid,) in conn.execute(
            select(calls.c.call_uuid).where(_live(account_id), calls.c.start_time > span.oldest,
                                            calls.c.start_time < span.newest))
        if uuid not in span.uuids
    ]


def restore_seen(conn: Connection, uuids: list[str], now: datetime) -> int:
    """Clear `deleted_at` of calls that are listed again."""
    restored = 0
    for start in range(0, len(uuids), 500):
        chunk = uuids[start:start + 500]
        result = conn.execute(
            update(calls).where(calls.c.call_uuid.in_(chunk), calls.c.deleted_at.is_not(None))
            .values(deleted_at=None, updated_at=now))
        restored += result.rowcount or 0
    return restored


def deleted_count(conn: Connection, account_id: str) -> int:
    return int(conn.execute(
        select(func.count()).select_from(calls).where(
            calls.c.account_id == account_id, calls.c.deleted_at.is_not(None))
    ).scalar_one())


def new_run_id() -> str:
    return str(uuid.uuid4())


def start_run(engine: Engine, run_id: str, command: Command, account_id: str, name: str) -> None:
    """Log that this run started on this account (committed at once: a killed run shows)."""
    with engine.begin() as conn:
        conn.execute(
            sync_runs.insert().values(
                run_id=run_id,
                command=command,
                account_id=account_id,
                account_name=name,
                started_at=utcnow(),
                outcome=Outcome.RUNNING,
                pages=0,
                requests=0,
                new=0,
                updated=0,
                unchanged=0,
                rejected=0,
            )
        )


def finish_run(engine: Engine, run_id: str, account_id: str, outcome: Outcome, error: str | None,
               **counts: int) -> None:
    with engine.begin() as conn:
        conn.execute(
            sync_runs.update()
            .where(sync_runs.c.run_id == run_id, sync_runs.c.account_id == account_id)
            .values(outcome=outcome, error=error, finished_at=utcnow(), **counts)
        )


def record_skip(engine: Engine, run_id: str, command: Command, account_id: str, name: str, why: str) -> None:
    start_run(engine, run_id, command, account_id, name)
    finish_run(engine, run_id, account_id, Outcome.SKIPPED, why)


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
            .where(sync_runs.c.account_id == account_id, sync_runs.c.outcome == Outcome.RUNNING,
                   sync_runs.c.run_id != run_id)
            .values(outcome=Outcome.DIED, error=DIED_ERROR)
        )
    return int(result.rowcount or 0)


def flag_dead_runs(engine: Engine, statuses: list[AccountStatus]) -> None:
    """Show an account whose last run says `running` but whose lock is free as `died`
    (without writing anything: the next run of that account records it)."""
    from . import locks

    for status in statuses:
        if status.last_outcome == Outcome.RUNNING and not locks.is_held(engine, status.account_id):
            status.last_outcome = Outcome.DIED
            status.last_error = DIED_ERROR


@dataclass
class AccountStatus:
    account_id: str
    account_name: str
    last_success_at: datetime | None
    watermark: datetime | None
    window_start: datetime | None
    calls: int
    open_calls: int
    deleted_calls: int
    rejects: int
    last_outcome: str | None
    last_run_started_at: datetime | None
    last_error: str | None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.__dict__)
        for key, value in out.items():
            if isinstance(value, datetime):
                out[key] = iso_utc(value)
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
        conn.execute(select(calls.c.account_id, func.count()).group_by(calls.c.account_id)).all()
    )
    still_open: dict[str, int] = dict(
        conn.execute(
            select(calls.c.account_id, func.count())
            .where(calls.c.status.in_(sorted(OPEN_STATUSES)), calls.c.deleted_at.is_(None))
            .group_by(calls.c.account_id)
        ).all()
    )
    gone: dict[str, int] = dict(
        conn.execute(
            select(calls.c.account_id, func.count())
            .where(calls.c.deleted_at.is_not(None))
            .group_by(calls.c.account_id)
        ).all()
    )
    broken: dict[str, int] = dict(
        conn.execute(select(rejects.c.account_id, func.count()).group_by(rejects.c.account_id)).all()
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
                window_start=state.window_start if state else None,
                calls=int(stored.get(account_id, 0)),
                open_calls=int(still_open.get(account_id, 0)),
                deleted_calls=int(gone.get(account_id, 0)),
                rejects=int(broken.get(account_id, 0)),
                last_outcome=last.outcome if last else None,
                last_run_started_at=last.started_at if last else None,
                last_error=last.error if last else None,
            )
        )
    return out


class Warehouse:
    """The warehouse's own answers about one account, read between batches: how many calls
    it holds in a stretch of time, and which stored calls are still open."""

    def __init__(self, engine: Engine, account_id: str) -> None:
        self.engine = engine
        self.account_id = account_id

    def count_since(self, moment: datetime, until: datetime | None = None) -> int:
        with self.engine.connect() as conn:
            return count_since(conn, self.account_id, moment, until)

    def open_calls(self) -> list[tuple[str, datetime]]:
        with self.engine.connect() as conn:
            return open_calls(conn, self.account_id)

    def uuids_since(self, moment: datetime) -> set[str]:
        """The stored calls (deleted or not) that started at or after `moment`."""
        with self.engine.connect() as conn:
            return set(conn.execute(select(calls.c.call_uuid).where(
                calls.c.account_id == self.account_id, calls.c.start_time >= moment)).scalars())

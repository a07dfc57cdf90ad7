"""The loader: dialect-aware upserts by `call_uuid`, writing a row only when a value changed.

Each batch — rows, rejects, position marks and the account's sync state — is one
transaction, retried whole (`in_transaction`, through tenacity) on a dropped connection, a
deadlock or a locked database, so a batch is never half-applied and the watermark never
runs ahead of the rows it covers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, select, tuple_
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.exc import DBAPIError
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from .errors import first_line
from .records import CallRow, Reject
from .schema import calls, rejects

log = logging.getLogger("etl.loader")

_CHUNK = 500
_COLUMNS = tuple(c.name for c in calls.columns
                 if c.name not in ("first_seen_at", "updated_at", "deleted_at"))
_UPDATED = (*tuple(c for c in _COLUMNS if c != "call_uuid"), "updated_at")


@dataclass
class LoadCounts:
    new: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0

    def __iadd__(self, other: LoadCounts) -> LoadCounts:
        self.new += other.new
        self.updated += other.updated
        self.unchanged += other.unchanged
        self.rejected += other.rejected
        return self


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso_utc(moment: datetime) -> str:
    """A moment as ISO-8601 in UTC with a `Z` (a naive one is taken to be UTC already)."""
    value = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return value.isoformat().replace("+00:00", "Z")


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def upsert_calls(conn: Connection, rows: Sequence[CallRow], now: datetime) -> LoadCounts:
    """Insert new calls and rewrite changed ones; unchanged rows are not touched at all."""
    counts = LoadCounts()
    latest: dict[str, CallRow] = {}
    for row in rows:  # a call met twice in one batch (drift overlap): the later copy wins
        latest[row.call_uuid] = row
    if not latest:
        return counts
    stored: dict[str, tuple[Any, ...]] = {}
    columns = [calls.c[name] for name in _COLUMNS]
    for keys in _chunks(list(latest)):
        for record in conn.execute(select(*columns).where(calls.c.call_uuid.in_(keys))):
            stored[record[0]] = tuple(record)
    writes: list[dict[str, Any]] = []
    for uuid, row in latest.items():
        values = row.values()
        before = stored.get(uuid)
        if before is None:
            counts.new += 1
        elif before == tuple(values[name] for name in _COLUMNS):
            counts.unchanged += 1
            continue
        else:
            counts.updated += 1
        values["first_seen_at"] = now
        values["updated_at"] = now
        writes.append(values)
    if writes:
        if conn.dialect.name in ("sqlite", "duckdb"):
            _direct_upsert(conn, writes)
        elif conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg":
            _unnest_upsert(conn, writes)
        else:
            conn.execute(_upsert_statement(conn), writes)
    return counts


_ALL = (*_COLUMNS, "first_seen_at", "updated_at")


_ARRAY_TYPES = {"duration": "integer[]", "raw": "jsonb[]"}


def _unnest_upsert(conn: Connection, writes: list[dict[str, Any]]) -> None:
    """PostgreSQL's fastest upsert short of COPY: one short statement whose rows arrive as one
    array per column (`unnest`), so neither the driver nor the server parses thousands of
    placeholders, and the statement text is the same for every batch."""
    arrays = ", ".join(
        "%b::" + _ARRAY_TYPES.get(name, "timestamptz[]" if name in _TIMES else "text[]")
        for name in _ALL
    )
    updates = ", ".join(f"{name} = excluded.{name}" for name in _UPDATED)
    sql = (
        f"INSERT INTO calls ({', '.join(_ALL)}) SELECT * FROM unnest({arrays}) "
        f"ON CONFLICT (call_uuid) DO UPDATE SET {updates}"
    )
    for chunk in _chunks(writes, 1000):
        columns = [
            [json.dumps(v["raw"]) for v in chunk] if name == "raw" else [v[name] for v in chunk]
            for name in _ALL
        ]
        conn.exec_driver_sql(sql, tuple(columns))


_TIMES = frozenset({"start_time", "answer_time", "end_time", "first_seen_at", "updated_at"})


def _direct_upsert(conn: Connection, writes: list[dict[str, Any]]) -> None:
    """The embedded databases' upsert, written by hand: converting and compiling each row
    through SQLAlchemy costs more than the insert itself (and DuckDB runs an executemany row
    by row), so send one multi-row upsert per chunk, values already in storage form: JSON
    text, and timestamps as SQLAlchemy would store them (naive UTC text on SQLite)."""
    sqlite_text = conn.dialect.name == "sqlite"
    updates = ", ".join(f"{name} = excluded.{name}" for name in _UPDATED)
    row = "(" + ", ".join("?" for _ in _ALL) + ")"
    for chunk in _chunks(writes, 200):
        sql = (
            f"INSERT INTO calls ({', '.join(_ALL)}) VALUES {', '.join([row] * len(chunk))} "
            f"ON CONFLICT (call_uuid) DO UPDATE SET {updates}"
        )
        params: list[Any] = []
        for values in chunk:
            for name in _ALL:
                value = values[name]
                if name == "raw":
                    value = json.dumps(value)
                elif sqlite_text and name in _TIMES and value is not None:
                    if value.tzinfo is not UTC:
                        value = value.astimezone(UTC)
                    value = value.replace(tzinfo=None).isoformat(" ", "microseconds")
                params.append(value)
        conn.exec_driver_sql(sql, tuple(params))


def _upsert_statement(conn: Connection) -> Any:
    """SQLAlchemy's upsert, for the dialects without a hand-written path."""
    dialect = conn.dialect.name
    if dialect == "postgresql":  # with a driver other than psycopg 3
        pg = postgresql.insert(calls)
        return pg.on_conflict_do_update(
            index_elements=[calls.c.call_uuid],
            set_={name: pg.excluded[name] for name in _UPDATED},
        )
    if dialect in ("mysql", "mariadb"):
        my = mysql.insert(calls)
        return my.on_duplicate_key_update({name: my.inserted[name] for name in _UPDATED})
    raise NotImplementedError(f"no upsert for the {dialect} dialect")


def save_rejects(
    conn: Connection, items: Sequence[Reject], run_id: str, now: datetime
) -> int:
    """Keep each broken record once per account, verbatim, with the reason; returns how many
    were met (known ones included)."""
    if not items:
        return 0
    fresh: dict[tuple[str, str], Reject] = {}
    for item in items:
        digest = hashlib.sha256(item.record.encode("utf-8", "surrogatepass")).hexdigest()
        fresh.setdefault((item.account_id, digest), item)
    known = set(
        conn.execute(
            select(rejects.c.account_id, rejects.c.record_sha256).where(
                tuple_(rejects.c.account_id, rejects.c.record_sha256).in_(list(fresh))
            )
        ).tuples()
    )
    new = [
        {
            "account_id": account_id,
            "run_id": run_id,
            "call_uuid": (item.call_uuid or None) and item.call_uuid[:255],
            "start_time": item.start_time,
            "reason": item.reason,
            "record": item.record,
            "record_sha256": digest,
            "first_seen_at": now,
        }
        for (account_id, digest), item in fresh.items()
        if (account_id, digest) not in known
    ]
    if new:
        conn.execute(rejects.insert(), new)
    return len(items)


T = TypeVar("T")

# What a retry can cure, by the codes the drivers give: PostgreSQL's SQLSTATE (class 08, a
# connection exception; a serialization failure or deadlock; the server shutting down or
# terminating this backend), MySQL/MariaDB's errno (lock wait timeout, deadlock, server gone
# away, connection lost during a query), SQLite's primary result code (SQLITE_BUSY,
# SQLITE_LOCKED).
_PG_SQLSTATES = frozenset({"40001", "40P01", "57P01", "57P02", "57P03"})
_MYSQL_ERRNOS = frozenset({1205, 1213, 2006, 2013})
_SQLITE_CODES = frozenset({5, 6})
# A driver that gives no code: the wording of the same faults, never a bare "connection".
_PHRASES = (
    "database is locked",
    "database is busy",
    "database table is locked",
    "server closed the connection",
    "terminating connection",
    "server has gone away",
    "lost connection to",
    "deadlock detected",
    "deadlock found",
    "lock wait timeout exceeded",
    "could not serialize access",
)


def is_transient(exc: BaseException) -> bool:
    """A database error a retry can cure: a dropped connection, a deadlock or serialization
    failure, a locked or busy database. Decided by the driver's error code where it has one,
    so a constraint violation or a syntax error that mentions "connection" is not retried."""
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    orig = exc.orig
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int) and not isinstance(args[0], bool):
        return args[0] in _MYSQL_ERRNOS  # (errno, message); its SQLSTATE is often just HY000
    sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if isinstance(sqlstate, str) and sqlstate:
        return sqlstate.startswith("08") or sqlstate in _PG_SQLSTATES
    sqlite_code = getattr(orig, "sqlite_errorcode", None)
    if isinstance(sqlite_code, int):
        return sqlite_code & 0xFF in _SQLITE_CODES
    text = str(orig if orig is not None else exc).lower()
    return any(phrase in text for phrase in _PHRASES)


@dataclass
class TransactionPolicy:
    """When to run a transaction again: on a transient fault (`is_transient`), a bounded
    number of attempts, with exponential backoff from `first_wait` seconds."""

    attempts: int = 5
    first_wait: float = 0.2
    sleep: Callable[[float], None] = time.sleep

    def retrying(self, what: str = "batch") -> Retrying:
        def logged(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.warning(
                "database fault, retrying",
                extra={"event": "db_retry", "attempt": state.attempt_number,
                       "wait": state.next_action.sleep if state.next_action else None,
                       "error": first_line(exc)[:200] if exc else "", "what": what},
            )

        return Retrying(
            retry=retry_if_exception(is_transient),
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential(multiplier=self.first_wait, max=float("inf")),
            sleep=self.sleep,
            reraise=True,
            before_sleep=logged,
        )


def in_transaction(
    engine: Engine,
    work: Callable[[Connection], T],
    *,
    attempts: int = 5,
    first_wait: float = 0.2,
    what: str = "batch",
) -> T:
    """Run `work` in one transaction; on a transient database fault roll back and run it
    again, a bounded number of times, with backoff."""

    def attempt() -> T:
        with engine.begin() as conn:
            return work(conn)

    return TransactionPolicy(attempts, first_wait).retrying(what)(attempt)

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
from sqlalchemy.exc import DBAPIError
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from .db import is_psycopg, pipelined
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
    latest: dict[str, CallRow] = {}
    for row in rows:  # a call met twice in one batch (drift overlap): the later copy wins
        latest[row.call_uuid] = row
    if not latest:
        return LoadCounts()
    dialect = conn.dialect
    if dialect.name == "sqlite":
        return _sqlite_upsert(conn, latest, now)
    if is_psycopg(conn):
        return _unnest_upsert(conn, latest, now)
    return _compared_upsert(conn, latest, now)


_ALL = (*_COLUMNS, "first_seen_at", "updated_at")
_TIMES = frozenset({"start_time", "answer_time", "end_time", "first_seen_at", "updated_at"})
_SET = ", ".join(f"{name} = excluded.{name}" for name in _UPDATED)


def sqlite_text(moment: datetime | None) -> str | None:
    """A timestamp as SQLAlchemy's DateTime stores it on SQLite: naive UTC text."""
    if moment is None:
        return None
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    return moment.isoformat(" ", "microseconds")[:26]  # drop the "+00:00"


def _sqlite_time(row: CallRow, key: str, moment: datetime | None) -> str | None:
    """`sqlite_text(moment)`, cut straight from the text received when that is the plain
    `YYYY-MM-DDTHH:MM:SSZ` the parser read it from: formatting a datetime costs about
    1 µs, three times per call."""
    text = row.raw.get(key)
    if (
        moment is not None and type(text) is str and len(text) == 20 and text[19] == "Z"
        and text[10] == "T" and text[4] == "-" == text[7] and text[13] == ":" == text[16]
    ):
        return f"{text[:10]} {text[11:19]}.000000"
    return sqlite_text(moment)


_SQLITE_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM calls WHERE call_uuid IN "
_SQLITE_UPSERT = (
    f"INSERT INTO calls ({', '.join(_ALL)}) VALUES ({', '.join('?' for _ in _ALL)}) "
    f"ON CONFLICT (call_uuid) DO UPDATE SET {_SET}"
)


def _sqlite_upsert(conn: Connection, latest: dict[str, CallRow], now: datetime) -> LoadCounts:
    """SQLite: each row put in storage form once (naive UTC text timestamps, `raw` as the text
    received), compared with the stored row in that same form, and the new or changed ones
    written by one prepared upsert through `executemany`: neither SQLAlchemy's per-row type
    processing nor SQL text rebuilt per chunk."""
    stamp = sqlite_text(now)
    wanted: dict[str, tuple[Any, ...]] = {}
    for uuid, row in latest.items():
        wanted[uuid] = (
            uuid, row.account_id, row.from_number, row.to_number, row.direction, row.status,
            row.end_reason, row.duration, _sqlite_time(row, "start_time", row.start_time),
            _sqlite_time(row, "answer_time", row.answer_time),
            _sqlite_time(row, "end_time", row.end_time), row.raw_json,
        )
    counts = LoadCounts()
    unchanged: set[str] = set()
    keys = list(wanted)
    for start in range(0, len(keys), _CHUNK):
        chunk = keys[start : start + _CHUNK]
        sql = _SQLITE_SELECT + "(" + ",".join("?" * len(chunk)) + ")"
        for stored in conn.exec_driver_sql(sql, tuple(chunk)):
            uuid = stored[0]
            if tuple(stored) == wanted[uuid] or _same_but_text(stored, wanted[uuid]):
                unchanged.add(uuid)
            else:
                counts.updated += 1
    counts.unchanged = len(unchanged)
    counts.new = len(wanted) - counts.unchanged - counts.updated
    writes = [(*values, stamp, stamp) for uuid, values in wanted.items() if uuid not in unchanged]
    if writes:
        conn.exec_driver_sql(_SQLITE_UPSERT, writes)
    return counts


def _same_but_text(stored: Sequence[Any], wanted: tuple[Any, ...]) -> bool:
    """Equal except for how `raw` is spelled (a row written by an older version, which
    re-encoded it): then the same JSON value means the same row."""
    if tuple(stored[:-1]) != wanted[:-1]:
        return False
    try:
        return bool(json.loads(stored[-1]) == json.loads(wanted[-1]))
    except (TypeError, ValueError):
        return False


_ARRAY_TYPES = {"duration": "integer[]", "raw": "jsonb[]"}
_PG_ARRAYS = ", ".join(
    "%b::" + _ARRAY_TYPES.get(name, "timestamptz[]" if name in _TIMES else "text[]")
    for name in _COLUMNS
)
_PG_ROW = ", ".join(f"{{0}}.{name}" for name in _COLUMNS[1:])
_PG_CHUNK = 1000  # rows per statement
# One statement per chunk: the upsert writes a conflicting row only when a value differs, and
# says of each row it wrote whether it inserted it: a new row has first_seen_at = updated_at =
# this transaction's `now`, a rewritten one keeps the first_seen_at of its first write. (A
# count of the keys already stored, looked up per key before the insert, cost the server
# about 2 µs per call more.)
_PG_UPSERT = f"""
WITH written AS (
    INSERT INTO calls ({", ".join(_ALL)})
    SELECT *, %b::timestamptz, %b::timestamptz FROM unnest({_PG_ARRAYS})
    ON CONFLICT (call_uuid) DO UPDATE SET {_SET}
    WHERE ({_PG_ROW.format("calls")}) IS DISTINCT FROM ({_PG_ROW.format("excluded")})
    RETURNING first_seen_at = updated_at AS fresh
)
SELECT count(*) FILTER (WHERE fresh), count(*) FROM written
"""


def pg_arrays(chunk: Sequence[CallRow]) -> tuple[list[Any], ...]:
    """The rows as one array per column, in `_COLUMNS` order (what `_PG_ARRAYS` unnests)."""
    return (
        [r.call_uuid for r in chunk], [r.account_id for r in chunk],
        [r.from_number for r in chunk], [r.to_number for r in chunk],
        [r.direction for r in chunk], [r.status for r in chunk],
        [r.end_reason for r in chunk], [r.duration for r in chunk],
        [r.start_time for r in chunk], [r.answer_time for r in chunk],
        [r.end_time for r in chunk], [r.raw_json for r in chunk],
    )


def _unnest_upsert(conn: Connection, latest: dict[str, CallRow], now: datetime) -> LoadCounts:
    """PostgreSQL (psycopg 3): one statement per chunk, the same text every time, its rows
    sent as one array per column (`unnest`) in binary, `raw` as the text received. The server
    compares each conflicting row with the stored one and rewrites it only when a value
    differs, so nothing is read back into Python. (An unchanged row is locked, as ON CONFLICT
    does, but keeps its row version and its updated_at.) The chunks go out pipelined: the
    server writes one while the next is built, and a transaction's chunks cost one round trip."""
    rows = list(latest.values())
    sent: list[tuple[int, Any]] = []
    with pipelined(conn, "upsert calls") as driver:
        for start in range(0, len(rows), _PG_CHUNK):
            chunk = rows[start : start + _PG_CHUNK]
            cursor = driver.cursor()
            cursor.execute(_PG_UPSERT, (now, now, *pg_arrays(chunk)))
            sent.append((len(chunk), cursor))
    counts = LoadCounts()
    for size, cursor in sent:
        new, written = cursor.fetchone()
        counts.new += new
        counts.updated += written - new
        counts.unchanged += size - written
    return counts


def _compared_upsert(conn: Connection, latest: dict[str, CallRow], now: datetime) -> LoadCounts:
    """The other dialects (DuckDB, MariaDB/MySQL, PostgreSQL through another driver): read the
    stored rows through SQLAlchemy's types, compare in Python, write the new and changed."""
    counts = LoadCounts()
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
        if conn.dialect.name == "duckdb":
            values["raw"] = row.raw_json
        writes.append(values)
    if writes:
        if conn.dialect.name == "duckdb":
            _direct_upsert(conn, writes)
        else:
            conn.execute(_upsert_statement(conn), writes)
    return counts


def _direct_upsert(conn: Connection, writes: list[dict[str, Any]]) -> None:
    """DuckDB's upsert, written by hand: converting and compiling each row through SQLAlchemy
    costs more than the insert itself, and DuckDB runs an executemany row by row, so send one
    multi-row upsert per chunk, `raw` already JSON text."""
    row = "(" + ", ".join("?" for _ in _ALL) + ")"
    for chunk in _chunks(writes, 200):
        sql = (
            f"INSERT INTO calls ({', '.join(_ALL)}) VALUES {', '.join([row] * len(chunk))} "
            f"ON CONFLICT (call_uuid) DO UPDATE SET {_SET}"
        )
        conn.exec_driver_sql(sql, tuple(value for values in chunk for value in
                                        (values[name] for name in _ALL)))


def _upsert_statement(conn: Connection) -> Any:
    """SQLAlchemy's upsert, for the dialects without a hand-written path."""
    dialect = conn.dialect.name
    if dialect == "postgresql":  # with a driver other than psycopg 3
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        pg = pg_insert(calls)
        return pg.on_conflict_do_update(
            index_elements=[calls.c.call_uuid],
            set_={name: pg.excluded[name] for name in _UPDATED},
        )
    if dialect in ("mysql", "mariadb"):
        from sqlalchemy.dialects.mysql import insert as my_insert

        my = my_insert(calls)
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
    known = {
        (account_id, digest)
        for account_id, digest in conn.execute(
            select(rejects.c.account_id, rejects.c.record_sha256).where(
                tuple_(rejects.c.account_id, rejects.c.record_sha256).in_(list(fresh))
            )
        )
    }
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

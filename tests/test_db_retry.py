"""Database retries: which faults a batch is run again for, on real servers where they can be
provoked, and the classifier on the drivers' own exception classes."""

from __future__ import annotations

import sqlite3
import threading
import time

import psycopg
import pymysql
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from etl.loader import in_transaction, is_transient, upsert_calls, utcnow
from etl.migrate import upgrade
from etl.records import CallRow, parse_call


def _wrapped(orig: BaseException, cls: type[DBAPIError] = OperationalError) -> DBAPIError:
    """A driver's exception as SQLAlchemy hands it on."""
    return cls("SELECT 1", {}, orig)


@pytest.mark.parametrize("orig", [
    psycopg.errors.lookup("40P01")("deadlock detected"),
    psycopg.errors.lookup("40001")("could not serialize access due to concurrent update"),
    psycopg.errors.lookup("57P01")("terminating connection due to administrator command"),
    psycopg.errors.lookup("57P03")("the database system is starting up"),
    psycopg.errors.lookup("08006")("connection failure"),
    pymysql.err.OperationalError(1213, "Deadlock found when trying to get lock"),
    pymysql.err.OperationalError(1205, "Lock wait timeout exceeded; try restarting transaction",
                                 sqlstate="HY000"),
    pymysql.err.OperationalError(2006, "MySQL server has gone away"),
    pymysql.err.OperationalError(2013, "Lost connection to MySQL server during query"),
    sqlite3.OperationalError("database is locked"),
    Exception("server closed the connection unexpectedly"),
], ids=lambda e: f"{type(e).__name__}:{str(e)[:24]}")
def test_faults_a_retry_can_cure_are_transient(orig):
    assert is_transient(_wrapped(orig))


@pytest.mark.parametrize("orig", [
    # Errors that mention a connection, or something lost, and that no retry cures.
    psycopg.errors.lookup("3D000")('connection to server failed: database "gone" does not exist'),
    psycopg.errors.lookup("28P01")('connection failed: password authentication failed'),
    psycopg.errors.lookup("53100")("could not extend file: No space left on device (lost write)"),
    pymysql.err.OperationalError(1045, "Access denied for user 'root'@'localhost' (connection)"),
    pymysql.err.OperationalError(1049, "Unknown database 'lost'", sqlstate="42000"),
    sqlite3.OperationalError("no such table: connection_log"),
    Exception("column connection_lost does not exist"),
], ids=lambda e: f"{type(e).__name__}:{str(e)[:24]}")
def test_faults_a_retry_cannot_cure_are_not(orig):
    assert not is_transient(_wrapped(orig))


def test_an_invalidated_connection_is_transient_and_other_errors_are_not():
    dropped = _wrapped(Exception("any text"))
    dropped.connection_invalidated = True
    assert is_transient(dropped)
    assert not is_transient(ValueError("database is locked"))  # not a database error at all


def test_a_constraint_violation_is_not_retried(postgres_url, engine_for):
    engine = engine_for(postgres_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE probe (id integer PRIMARY KEY)"))
        conn.execute(text("INSERT INTO probe VALUES (1)"))
    attempts = []

    def work(conn):
        attempts.append(1)
        conn.execute(text("INSERT INTO probe VALUES (1)"))

    with pytest.raises(IntegrityError):
        in_transaction(engine, work, first_wait=0.01)
    assert len(attempts) == 1


def test_a_postgres_deadlock_victim_is_rolled_back_and_run_again(postgres_url, engine_for):
    engine = engine_for(postgres_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE probe (id integer PRIMARY KEY, v integer NOT NULL)"))
        conn.execute(text("INSERT INTO probe VALUES (1, 0), (2, 0)"))
    holds_two, done = threading.Event(), threading.Event()
    other_pid: list[int] = []

    def other() -> None:
        # Locks row 2, then waits for row 1: the batch below, wanting row 2, closes the cycle.
        with engine.begin() as conn:
            conn.execute(text("SET LOCAL deadlock_timeout = '60s'"))  # the batch is the victim
            other_pid.append(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
            conn.execute(text("UPDATE probe SET v = v + 10 WHERE id = 2"))
            holds_two.set()
            conn.execute(text("UPDATE probe SET v = v + 10 WHERE id = 1"))
        done.set()

    attempts = []

    def batch(conn):
        attempts.append(len(attempts) + 1)
        conn.execute(text("SET LOCAL deadlock_timeout = '10ms'"))
        conn.execute(text("UPDATE probe SET v = v + 1 WHERE id = 1"))
        if len(attempts) == 1:
            thread.start()
            assert holds_two.wait(30)
            _wait_for_lock_wait(engine, other_pid[0])
        conn.execute(text("UPDATE probe SET v = v + 1 WHERE id = 2"))

    thread = threading.Thread(target=other)
    in_transaction(engine, batch, first_wait=0.01)
    thread.join(30)

    assert attempts == [1, 2] and done.is_set()
    with engine.connect() as conn:
        assert dict(conn.execute(text("SELECT id, v FROM probe")).all()) == {1: 11, 2: 11}


def _call(uuid: str, status: str) -> CallRow:
    row = parse_call({"call_uuid": uuid, "status": status, "start_time": "2026-05-01T10:00:00Z"},
                     "MA1")
    assert isinstance(row, CallRow)
    return row


def test_a_pipelined_upsert_that_loses_a_deadlock_is_rolled_back_and_run_again(postgres_url,
                                                                                 engine_for):
    # The PostgreSQL upsert sends its statements pipelined, through psycopg itself: a deadlock
    # met there must still reach the retry policy as SQLAlchemy's error, and the batch run again.
    engine = engine_for(postgres_url)
    upgrade(engine)
    with engine.begin() as conn:
        upsert_calls(conn, [_call("A", "ringing"), _call("B", "ringing")], utcnow())
    holds_b = threading.Event()
    other_pid: list[int] = []

    def other() -> None:
        # Locks call B, then waits for call A, which the batch below holds: the batch, wanting
        # B for its upsert, closes the cycle.
        with engine.begin() as conn:
            conn.execute(text("SET LOCAL deadlock_timeout = '60s'"))  # the batch is the victim
            other_pid.append(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
            conn.execute(text("UPDATE calls SET end_reason = 'other' WHERE call_uuid = 'B'"))
            holds_b.set()
            conn.execute(text("UPDATE calls SET end_reason = 'other' WHERE call_uuid = 'A'"))

    attempts = []
    errors: list[BaseException] = []

    def batch(conn):
        attempts.append(len(attempts) + 1)
        conn.execute(text("SET LOCAL deadlock_timeout = '10ms'"))
        conn.execute(text("UPDATE calls SET duration = 1 WHERE call_uuid = 'A'"))
        if len(attempts) == 1:
            thread.start()
            assert holds_b.wait(30)
            _wait_for_lock_wait(engine, other_pid[0])
        try:
            return upsert_calls(conn, [_call("A", "completed"), _call("B", "completed")],
                                utcnow())
        except BaseException as exc:
            errors.append(exc)
            raise

    thread = threading.Thread(target=other)
    counts = in_transaction(engine, batch, first_wait=0.01)
    thread.join(30)

    assert attempts == [1, 2]
    assert isinstance(errors[0], OperationalError) and is_transient(errors[0])
    assert "deadlock" in str(errors[0])
    assert (counts.new, counts.updated) == (0, 2)
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT call_uuid, status, end_reason FROM calls "
                                   "ORDER BY call_uuid")).all()
    assert [tuple(r) for r in stored] == [("A", "completed", None), ("B", "completed", None)]


def _wait_for_lock_wait(engine, pid: int) -> None:
    """Until backend `pid` is waiting for a row lock."""
    with engine.connect() as conn:
        for _ in range(3000):
            kind = conn.execute(text("SELECT wait_event_type FROM pg_stat_activity WHERE pid = :p"),
                                {"p": pid}).scalar_one_or_none()
            if kind == "Lock":
                return
            conn.rollback()
            time.sleep(0.01)
    raise AssertionError(f"backend {pid} never waited for the lock")


def test_a_mysql_lock_wait_timeout_is_rolled_back_and_run_again(mysql_url, engine_for):
    engine = engine_for(mysql_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE probe (id integer PRIMARY KEY, v integer NOT NULL) "
                          "ENGINE=InnoDB"))
        conn.execute(text("INSERT INTO probe VALUES (1, 0)"))
    holder = engine.connect()
    holder.execute(text("UPDATE probe SET v = v + 10 WHERE id = 1"))  # holds the row's lock
    attempts = []

    def batch(conn):
        attempts.append(len(attempts) + 1)
        if len(attempts) == 2:
            holder.commit()  # the other transaction finishes between the attempts
        conn.execute(text("SET SESSION innodb_lock_wait_timeout = 1"))
        conn.execute(text("UPDATE probe SET v = v + 1 WHERE id = 1"))

    try:
        in_transaction(engine, batch, first_wait=0.01)
    finally:
        holder.close()

    assert attempts == [1, 2]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT v FROM probe WHERE id = 1")).scalar_one() == 11


def test_retries_are_bounded(sqlite_url):
    engine = create_engine(sqlite_url, connect_args={"timeout": 0})  # locked means fail at once
    holder = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
    holder.execute("CREATE TABLE probe (id integer)")
    holder.execute("BEGIN EXCLUSIVE")
    attempts = []

    def batch(conn):
        attempts.append(1)
        conn.execute(text("INSERT INTO probe VALUES (1)"))

    try:
        with pytest.raises(OperationalError, match="database is locked"):
            in_transaction(engine, batch, attempts=3, first_wait=0.01)
    finally:
        holder.close()
        engine.dispose()
    assert len(attempts) == 3

"""Database engines: URL conveniences and the per-dialect connection settings."""

from __future__ import annotations

import contextlib
import importlib.util
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool, StaticPool

from .errors import ConfigError

# The plain dialect name picks a driver that is not a dependency; pick the one that is.
_DRIVERS = {
    "postgresql": ("psycopg", "psycopg", "pip install 'vox-etl[postgres]'"),
    "postgres": ("psycopg", "psycopg", "pip install 'vox-etl[postgres]'"),
    "mysql": ("pymysql", "pymysql", "pip install 'vox-etl[mysql]'"),
    "mariadb": ("pymysql", "pymysql", "pip install 'vox-etl[mysql]'"),
}


def normalize_url(url: str) -> URL:
    """Parse a database URL, choosing the installed driver for `postgresql://` and `mysql://`."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if parsed.drivername in _DRIVERS:
        driver, module, hint = _DRIVERS[parsed.drivername]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"database URL {parsed.drivername}:// needs the {module} driver ({hint})")
        parsed = parsed.set(drivername=f"{'postgresql' if backend == 'postgres' else backend}+{driver}")
    return parsed


def sqlite_path(url: URL) -> Path | None:
    """The file behind a SQLite URL, or None for an in-memory database or another dialect."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database)


def make_engine(url: str) -> Engine:
    """An engine with safe, fast settings for its dialect."""
    parsed = normalize_url(url)
    backend = parsed.get_backend_name()
    try:
        if backend == "sqlite":
            path = sqlite_path(parsed)
            if path is None:
                engine = create_engine(parsed, poolclass=StaticPool,
                                       connect_args={"check_same_thread": False})
            else:
                if not path.parent.exists():
                    raise ConfigError(f"database directory {path.parent} does not exist")
                engine = create_engine(parsed, connect_args={"timeout": 30})
            _tune_sqlite(engine)
            return engine
        if backend == "duckdb":
            # DuckDB lets one process at a time open a file: hold it only while working, and
            # wait for another process's turn rather than fail.
            engine = create_engine(parsed, poolclass=NullPool)
            event.listen(engine, "do_connect", _wait_for_file_lock)
            return engine
        if backend == "mysql":
            return create_engine(parsed, pool_pre_ping=True, pool_recycle=3600,
                                 connect_args={"charset": "utf8mb4"})
        if backend == "postgresql" and parsed.get_driver_name() == "psycopg":
            # psycopg 3 prepares a statement after five runs, and PostgreSQL then keeps a plan
            # chosen while `calls` was nearly empty (a full scan for the key lookups).
            return create_engine(parsed, pool_pre_ping=True,
                                 connect_args={"prepare_threshold": None})
        return create_engine(parsed, pool_pre_ping=True)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"database URL {parsed.drivername}:// needs the {exc.name} module") from None


def is_psycopg(conn: Connection) -> bool:
    """Whether the connection is PostgreSQL through psycopg 3 (its fast paths and pipelines)."""
    return conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg"


@contextlib.contextmanager
def pipelined(conn: Connection, what: str) -> Iterator[Any]:
    """psycopg 3's own connection in pipeline mode, inside the caller's transaction: every
    statement executed in the block goes out without waiting for the answer to the one
    before, and the block ends once all are answered (read each cursor after it). The server
    works through one statement while the next is built and sent, and N statements cost one
    round trip instead of N. A driver error comes out as SQLAlchemy's own (`what` names the
    work in it), so callers and `loader.is_transient` treat it like any other; a lost
    connection is invalidated, as SQLAlchemy does for the statements it runs."""
    driver: Any = conn.connection.driver_connection
    dbapi = conn.dialect.loaded_dbapi
    try:
        with driver.pipeline():
            yield driver
    except dbapi.Error as exc:
        lost = conn.dialect.is_disconnect(exc, conn.connection.dbapi_connection, None)
        if lost:
            conn.invalidate(exc)
        raise DBAPIError.instance(f"-- {what} (pipelined)", None, exc, dbapi.Error,
                                  connection_invalidated=lost, dialect=conn.dialect) from exc


def _wait_for_file_lock(dialect, _record, cargs, cparams):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 60
    delay = 0.02
    while True:
        try:
            return dialect.connect(*cargs, **cparams)
        except Exception as exc:
            if "Could not set lock" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(0.5, delay * 1.5)


def _tune_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):  # type: ignore[no-untyped-def]
        # Let SQLAlchemy issue BEGIN itself so a batch is one transaction, and keep WAL:
        # readers never block the writer, and synchronous=NORMAL is durable in WAL mode.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout = 30000")
        if engine.url.database not in (None, "", ":memory:"):
            cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection):  # type: ignore[no-untyped-def]
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def describe_url(url: str) -> str:
    """The URL with any password hidden, for messages."""
    try:
        return normalize_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<database URL>"

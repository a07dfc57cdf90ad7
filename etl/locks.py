"""Per-account locks that die with their process, so a killed run never blocks the next one.

SQLite (and other file databases): `flock` on a file beside the database. PostgreSQL: a
session advisory lock. MariaDB/MySQL: `GET_LOCK`. Each is held by an open file or
connection, which the operating system or the server releases when the process dies.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Protocol

from sqlalchemy import Engine, text

from .errors import LockBusy

_POLL_SECONDS = 0.25
_local_locks: dict[str, threading.Lock] = {}
_local_guard = threading.Lock()


class AccountLock:
    """Held while an account is synced; `release()` (or leaving the `with`) frees it."""

    def __init__(self, name: str, release: Callable[[], None]) -> None:
        self.name = name
        self._release: Callable[[], None] | None = release

    def release(self) -> None:
        if self._release is not None:
            release, self._release = self._release, None
            release()

    def __enter__(self) -> AccountLock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def lock_key(name: str) -> str:
    return f"vox-etl:{name}"


class _Stop(Protocol):
    def sleep(self, seconds: float) -> None: ...


def acquire(engine: Engine, name: str, *, wait: bool = False, stop: _Stop | None = None
            ) -> AccountLock:
    """Take the lock called `name` on this database, or raise LockBusy (unless `wait`).

    With `wait` and a `stop` token, ask again every quarter second, sleeping through
    `stop.sleep`, so a stop request (SIGTERM) ends the wait instead of waiting it out."""
    if wait and stop is not None:
        while True:
            try:
                return acquire(engine, name)
            except LockBusy:
                stop.sleep(_POLL_SECONDS)
    backend = engine.url.get_backend_name()
    if backend == "postgresql":
        return _advisory(engine, name, wait)
    if backend in ("mysql", "mariadb"):
        return _get_lock(engine, name, wait)
    database = engine.url.database
    if database and database != ":memory:":
        return _file_lock(Path(database), name, wait)
    return _thread_lock(f"{engine.url}:{name}", name, wait)


def is_held(engine: Engine, name: str) -> bool:
    """Whether some live process holds the lock called `name`, without taking it (so a look
    from `etl status` never makes a starting run skip its account)."""
    backend = engine.url.get_backend_name()
    if backend == "postgresql":
        key = _advisory_key(name)
        # A bigint advisory lock shows in pg_locks as its high and low 32 bits.
        query = text(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND objsubid = 1 AND classid::bigint = :hi AND objid::bigint = :lo "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )
        with engine.connect() as conn:
            return bool(conn.execute(query, {"hi": (key >> 32) & 0xFFFFFFFF,
                                             "lo": key & 0xFFFFFFFF}).scalar())
    if backend in ("mysql", "mariadb"):
        with engine.connect() as conn:
            return conn.execute(text("SELECT IS_USED_LOCK(:k)"), {"k": _get_lock_key(name)}
                                ).scalar() is not None
    database = engine.url.database
    if database and database != ":memory:":
        path = _lock_path(Path(database), name)
        if not path.exists():
            return False
        fd = os.open(path, os.O_RDONLY)
        try:
            # A shared lock is granted unless someone holds the exclusive one; it is dropped
            # at once, so it can only delay (never block) a run starting in that instant.
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False
    with _local_guard:
        lock = _local_locks.get(f"{engine.url}:{name}")
    return lock is not None and lock.locked()


def _busy(name: str) -> LockBusy:
    return LockBusy(f"{name}: another run holds its lock; skipped (use --wait to wait for it)")


def _lock_path(database: Path, name: str) -> Path:
    folder = database.parent / f"{database.name}.locks"
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:80]
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return folder / f"{safe}-{digest}.lock"


def _file_lock(database: Path, name: str, wait: bool) -> AccountLock:
    path = _lock_path(database, name)
    path.parent.mkdir(exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        raise _busy(name) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())

    def release() -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    return AccountLock(name, release)


def _advisory_key(name: str) -> int:
    digest = hashlib.blake2b(lock_key(name).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _advisory(engine: Engine, name: str, wait: bool) -> AccountLock:
    params = {"k": _advisory_key(name)}
    acquire = ("SELECT true FROM (SELECT pg_advisory_lock(:k)) AS waited" if wait
               else "SELECT pg_try_advisory_lock(:k)")
    return _server_lock(engine, name, acquire, "SELECT pg_advisory_unlock(:k)", params)


def _get_lock_key(name: str) -> str:
    key = lock_key(name)
    if len(key) > 64:  # MySQL's limit on lock names
        key = "vox-etl:" + hashlib.sha1(name.encode()).hexdigest()
    return key


def _get_lock(engine: Engine, name: str, wait: bool) -> AccountLock:
    # MariaDB answers NULL at once to a negative ("forever") timeout: wait in slices instead.
    params = {"k": _get_lock_key(name), "t": 10 if wait else 0}
    return _server_lock(engine, name, "SELECT GET_LOCK(:k, :t)", "SELECT RELEASE_LOCK(:k)", params,
                        again=wait)


def _server_lock(engine: Engine, name: str, acquire: str, release: str,
                 params: Mapping[str, object], *, again: bool = False) -> AccountLock:
    """A lock held by a dedicated connection: the server frees it if the process dies.
    `again`: a 0 answer means the wait timed out; ask again until the lock is granted."""
    conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    try:
        granted = conn.execute(text(acquire), params).scalar()
        while again and granted == 0:
            granted = conn.execute(text(acquire), params).scalar()
        if not granted:
            raise _busy(name)
    except BaseException:
        conn.close()
        raise

    def unlock() -> None:
        try:
            conn.execute(text(release), params)
        except Exception:  # the connection is gone, and the lock with it
            conn.invalidate()
        finally:
            conn.close()

    return AccountLock(name, unlock)


def _thread_lock(key: str, name: str, wait: bool) -> AccountLock:
    with _local_guard:
        lock = _local_locks.setdefault(key, threading.Lock())
    if not lock.acquire(blocking=wait):
        raise _busy(name)
    return AccountLock(name, lock.release)

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

from sqlalchemy import Engine, text

from .errors import LockBusy

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


def acquire(engine: Engine, name: str, *, wait: bool = False) -> AccountLock:
    """Take the lock called `name` on this database, or raise LockBusy (unless `wait`)."""
    backend = engine.url.get_backend_name()
    if backend == "postgresql":
        return _advisory(engine, name, wait)
    if backend in ("mysql", "mariadb"):
        return _get_lock(engine, name, wait)
    database = engine.url.database
    if database and database != ":memory:":
        return _file_lock(Path(database), name, wait)
    return _thread_lock(f"{engine.url}:{name}", name, wait)


def _busy(name: str) -> LockBusy:
    return LockBusy(f"{name}: another run holds its lock; skipped (use --wait to wait for it)")


def _file_lock(database: Path, name: str, wait: bool) -> AccountLock:
    folder = database.parent / f"{database.name}.locks"
    folder.mkdir(exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:80]
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    path = folder / f"{safe}-{digest}.lock"
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


def _advisory(engine: Engine, name: str, wait: bool) -> AccountLock:
    digest = hashlib.blake2b(lock_key(name).encode(), digest_size=8).digest()
    params = {"k": int.from_bytes(digest, "big", signed=True)}
    acquire = ("SELECT true FROM (SELECT pg_advisory_lock(:k)) AS waited" if wait
               else "SELECT pg_try_advisory_lock(:k)")
    return _server_lock(engine, name, acquire, "SELECT pg_advisory_unlock(:k)", params)


def _get_lock(engine: Engine, name: str, wait: bool) -> AccountLock:
    key = lock_key(name)
    if len(key) > 64:  # MySQL's limit on lock names
        key = "vox-etl:" + hashlib.sha1(name.encode()).hexdigest()
    params = {"k": key, "t": -1 if wait else 0}
    return _server_lock(engine, name, "SELECT GET_LOCK(:k, :t)", "SELECT RELEASE_LOCK(:k)", params)


def _server_lock(engine: Engine, name: str, acquire: str, release: str,
                 params: Mapping[str, object]) -> AccountLock:
    """A lock held by a dedicated connection: the server frees it if the process dies."""
    conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    try:
        if not conn.execute(text(acquire), params).scalar():
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

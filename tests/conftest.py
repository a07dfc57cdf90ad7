"""Shared fixtures: the simulator over real sockets, real databases, and a way to run `etl`.

PostgreSQL and MariaDB tests use the servers at 127.0.0.1 (see the README). Where a server is
not running they skip, with the reason; under CI (CI=true) a missing server fails the run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, inspect, text

from etl.config import render_config
from etl.db import make_engine
from etl.simulator import Simulator
from etl.tokens import token_variable

PG_URL = os.environ.get("ETL_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
MYSQL_URL = os.environ.get("ETL_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PROJECT = Path(__file__).resolve().parent.parent


def _server_or_skip(url: str, name: str) -> Engine:
    engine = create_engine(url, pool_pre_ping=True)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        engine.dispose()
        reason = f"{name} is not reachable at {url.split('@')[-1]} ({type(exc).__name__})"
        if IN_CI:
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)
    return engine


def _drop_everything(engine: Engine) -> None:
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
            return
        names = inspect(conn).get_table_names()
        views = inspect(conn).get_view_names()
        if engine.dialect.name == "mysql":
            conn.execute(text("SET FOREIGN_KEY_CHECKS = 0"))
        for view in views:
            conn.execute(text(f"DROP VIEW IF EXISTS {view}"))
        for name in names:
            conn.execute(text(f"DROP TABLE IF EXISTS {name}"))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'calls.db'}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    engine = _server_or_skip(PG_URL, "PostgreSQL")
    _drop_everything(engine)
    engine.dispose()
    yield PG_URL


@pytest.fixture
def mysql_url() -> Iterator[str]:
    engine = _server_or_skip(MYSQL_URL, "MariaDB/MySQL")
    _drop_everything(engine)
    engine.dispose()
    yield MYSQL_URL


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test using this runs once on SQLite and once on the real PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'calls.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture(params=["sqlite", "postgres", "mysql", "duckdb"])
def any_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test using this runs on every supported warehouse, on real servers where they are."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'calls.db'}"
    if request.param == "duckdb":
        pytest.importorskip("duckdb_engine", reason="the duckdb extra is not installed")
        return f"duckdb:///{tmp_path / 'calls.duckdb'}"
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture
def engine_for() -> Iterator[Callable[[str], Engine]]:
    engines: list[Engine] = []

    def make(url: str) -> Engine:
        engine = make_engine(url)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.dispose()


@pytest.fixture
def simulator() -> Iterator[Callable[..., Simulator]]:
    """Start simulators with the given SimulatorConfig fields; all are stopped afterwards."""
    started: list[Simulator] = []

    def start(**fields: Any) -> Simulator:
        sim = Simulator(**fields).start()
        started.append(sim)
        return sim

    yield start
    for sim in started:
        sim.stop()


@dataclass
class Project:
    """A working directory with a config.toml pointing at a simulator, and the tokens' env."""

    path: Path
    config: Path
    env: dict[str, str]
    database_url: str

    def run(self, *args: str, timeout: float = 240, check: bool = False,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run `etl --config ... ARGS` in a subprocess, as a user would."""
        full_env = {**os.environ, **self.env, **(env or {})}
        full_env.pop("ETL_DATABASE_URL", None)
        result = subprocess.run(
            [sys.executable, "-m", "etl", "--config", str(self.config), *args],
            cwd=self.path, env=full_env, capture_output=True, text=True, timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"etl {' '.join(args)} exited {result.returncode}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        return result


def write_config(path: Path, sim: Simulator, database_url: str, *, accounts: list[Any] | None = None,
                 api: dict[str, Any] | None = None, sync: dict[str, Any] | None = None) -> dict[str, str]:
    """Write a config.toml for `sim`'s accounts; returns the environment holding their tokens."""
    accounts = accounts if accounts is not None else sim.accounts
    api = {"backoff_initial": 0.01, "backoff_max": 0.2, "retry_after_max": 2, **(api or {})}
    base_url = api.pop("base_url", sim.base_url)
    path.write_text(render_config(base_url, accounts, database_url, api=api, sync=sync))
    return {token_variable(account.name): account.token for account in accounts}


@pytest.fixture
def project(tmp_path: Path) -> Callable[..., Project]:
    def make(sim: Simulator, database_url: str | None = None, **sections: Any) -> Project:
        url = database_url or f"sqlite:///{tmp_path / 'calls.db'}"
        config = tmp_path / "config.toml"
        env = write_config(config, sim, url, **sections)
        return Project(tmp_path, config, env, url)

    return make

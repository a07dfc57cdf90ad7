"""Alembic migrations, run from code against the engine the command already has.

Several processes may start on one warehouse at once (an orchestrator's first run, three
cron jobs): the first to find the schema behind takes the migration lock and upgrades; the
others wait for that lock, find the schema current and go on.
"""

from __future__ import annotations

import functools
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from . import locks

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

# The lock that serialises migrations; account locks are named by auth_id, never like this.
MIGRATION_LOCK = "schema migration"

# The newest revision under migrations/versions, the schema this code reads and writes. A
# command that finds the database there goes on without importing Alembic at all (about a
# tenth of a second of every sync's start-up); tests/test_migrations.py keeps it equal to
# the scripts' head.
SCHEMA_REVISION = "0003"


@functools.cache
def _register_duckdb() -> None:
    """Teach Alembic DuckDB's dialect name (it speaks PostgreSQL's DDL closely enough); done
    on first use, so that a command with nothing to migrate never imports Alembic."""
    from alembic.ddl.postgresql import PostgresqlImpl

    class DuckDBImpl(PostgresqlImpl):
        __dialect__ = "duckdb"
        transactional_ddl = True


def alembic_config() -> AlembicConfig:
    """An Alembic config whose scripts are the packaged `etl.migrations` (works from a wheel)."""
    from alembic.config import Config as AlembicConfig

    _register_duckdb()
    location = Path(str(files("etl.migrations")))
    config = AlembicConfig()
    config.set_main_option("script_location", str(location))
    config.set_main_option("path_separator", "os")
    return config


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    _register_duckdb()
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def _is_current(engine: Engine) -> bool:
    """True when the database's one Alembic revision is `SCHEMA_REVISION`, read with a plain
    query; False when it is anything else or there is no version table yet."""
    try:
        with engine.connect() as connection:
            found = connection.execute(text("SELECT version_num FROM alembic_version")).all()
    except DBAPIError:
        return False
    return [tuple(row) for row in found] == [(SCHEMA_REVISION,)]


def upgrade(engine: Engine, revision: str = "head") -> tuple[str | None, str | None]:
    """Bring the database to `revision`; returns (before, after). A no-op when up to date."""
    if revision == "head" and _is_current(engine):
        return SCHEMA_REVISION, SCHEMA_REVISION
    from alembic import command

    with locks.acquire(engine, MIGRATION_LOCK, wait=True):
        # Another process may have migrated while this one waited for the lock.
        before = current_revision(engine)
        if before == head_revision() and revision == "head":
            return before, before
        config = alembic_config()
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
        return before, current_revision(engine)

"""Alembic migrations, run from code against the engine the command already has.

Several processes may start on one warehouse at once (an orchestrator's first run, three
cron jobs): the first to find the schema behind takes the migration lock and upgrades; the
others wait for that lock, find the schema current and go on.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.ddl.postgresql import PostgresqlImpl
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from . import locks

# The lock that serialises migrations; account locks are named by auth_id, never like this.
MIGRATION_LOCK = "schema migration"


class DuckDBImpl(PostgresqlImpl):
    """DuckDB speaks PostgreSQL's DDL closely enough; Alembic only needs to be told."""

    __dialect__ = "duckdb"
    transactional_ddl = True


def alembic_config() -> AlembicConfig:
    """An Alembic config whose scripts are the packaged `etl.migrations` (works from a wheel)."""
    location = Path(str(files("etl.migrations")))
    config = AlembicConfig()
    config.set_main_option("script_location", str(location))
    config.set_main_option("path_separator", "os")
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> tuple[str | None, str | None]:
    """Bring the database to `revision`; returns (before, after). A no-op when up to date."""
    before = current_revision(engine)
    if before == head_revision() and revision == "head":
        return before, before
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

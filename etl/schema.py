"""The warehouse tables, as SQLAlchemy metadata. Only Alembic migrations create or change them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Dialect,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps in UTC: timezone-aware in Python, `timestamptz` where the database has one,
    naive UTC where it has not (SQLite, MySQL)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name == "mysql":
            from sqlalchemy.dialects.mysql import DATETIME

            return dialect.type_descriptor(DATETIME(fsp=6))
        if dialect.name in ("sqlite",):
            return dialect.type_descriptor(DateTime(timezone=False))
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        if dialect.name in ("sqlite", "mysql"):
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class JSONDocument(TypeDecorator[Any]):
    """A JSON document: `jsonb` on PostgreSQL, the dialect's JSON elsewhere. (A type variant
    would import the PostgreSQL dialect into every process, SQLite's too.)"""

    impl = JSON
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import JSONB

            return dialect.type_descriptor(JSONB())
        return self.impl_instance

calls = Table(
    "calls",
    metadata,
    Column("call_uuid", String(255), primary_key=True, comment="the call's unique id"),
    Column("account_id", String(64), nullable=False, comment="the Vox account's auth_id"),
    Column("from_number", String(255), comment="caller number as received"),
    Column("to_number", String(255), comment="destination number as received"),
    Column("direction", String(255), comment="inbound or outbound, as received"),
    Column("status", String(255), comment="current call status, as received"),
    Column("end_reason", String(255), comment="why the call ended, as received"),
    Column("duration", Integer, comment="seconds from answer to end"),
    Column("start_time", UTCDateTime, nullable=False, comment="when the call started (UTC)"),
    Column("answer_time", UTCDateTime, comment="when the call was answered (UTC)"),
    Column("end_time", UTCDateTime, comment="when the call ended (UTC)"),
    Column("raw", JSONDocument, nullable=False, comment="the record exactly as received"),
    Column("first_seen_at", UTCDateTime, nullable=False, comment="when the row was first written"),
    Column("updated_at", UTCDateTime, nullable=False, comment="when any value last changed"),
    Column("deleted_at", UTCDateTime,
           comment="when a sync found the call gone from inside the provider's window"),
    Index(None, "account_id", "start_time"),
    Index(None, "account_id", "status"),
    Index(None, "updated_at"),
)

sync_state = Table(
    "sync_state",
    metadata,
    Column("account_id", String(64), primary_key=True),
    Column("account_name", String(255), nullable=False),
    Column("watermark", UTCDateTime, comment="start_time of the newest call the last sync read"),
    Column("window_start", UTCDateTime,
           comment="start_time of the oldest call the provider listed at the last sync"),
    Column("last_total_count", BigInteger, comment="the API's total_count when last synced"),
    Column("last_success_at", UTCDateTime, comment="when a sync of this account last finished"),
    Column("updated_at", UTCDateTime, nullable=False),
)

sync_coverage = Table(
    "sync_coverage",
    metadata,
    Column("account_id", String(64), primary_key=True),
    Column("upper_time", UTCDateTime, primary_key=True,
           comment="every listed call that started before this ..."),
    Column("lower_time", UTCDateTime, nullable=False,
           comment="... and after this was stored when the stretch was read"),
)

sync_runs = Table(
    "sync_runs",
    metadata,
    Column("run_id", String(36), primary_key=True, comment="one id per etl invocation"),
    Column("account_id", String(64), primary_key=True),
    Column("command", String(32), nullable=False),
    Column("account_name", String(255), nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime),
    Column("outcome", String(16), nullable=False, comment="running, ok, failed or skipped"),
    Column("pages", Integer, nullable=False, default=0),
    Column("requests", Integer, nullable=False, default=0),
    Column("new", Integer, nullable=False, default=0),
    Column("updated", Integer, nullable=False, default=0),
    Column("unchanged", Integer, nullable=False, default=0),
    Column("rejected", Integer, nullable=False, default=0),
    Column("error", Text),
    Index(None, "account_id", "started_at"),
)

rejects = Table(
    "rejects",
    metadata,
    Column("account_id", String(64), primary_key=True),
    Column("record_sha256", String(64), primary_key=True, comment="SHA-256 of record"),
    Column("run_id", String(36), nullable=False, comment="the run that first met the record"),
    Column("call_uuid", String(255), comment="the record's call_uuid, when it has one"),
    Column("start_time", UTCDateTime, comment="the record's start_time, when it has a usable one"),
    Column("reason", Text, nullable=False),
    Column("record", Text, nullable=False, comment="the record verbatim, as JSON"),
    Column("first_seen_at", UTCDateTime, nullable=False),
)

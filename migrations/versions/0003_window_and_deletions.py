"""Sync state that survives a moving window: coverage by start_time instead of positions;
deleted_at on calls; the window's start; start_time on rejects.

Positions counted from the oldest call (call_positions, sync_state.synced_seq/base_seq) stop
being true once the provider's window drops old calls, so they go. What the old state knew is
kept as a coverage interval: every call that started before the old watermark was stored.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from etl.schema import UTCDateTime

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_DAY = {
    "sqlite": "date(start_time)",
    "mysql": "DATE(start_time)",
    "postgresql": "CAST((start_time AT TIME ZONE 'UTC') AS DATE)",
    "duckdb": "CAST((start_time AT TIME ZONE 'UTC') AS DATE)",
}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _create_views(live: str) -> None:
    day = _DAY.get(op.get_bind().dialect.name, "CAST(start_time AS DATE)")
    answered = "CASE WHEN answer_time IS NOT NULL THEN 1 ELSE 0 END"
    op.execute(
        f"""
        CREATE VIEW calls_daily AS
        SELECT account_id,
               {day} AS day,
               direction,
               status,
               COUNT(*) AS calls,
               SUM({answered}) AS answered,
               SUM(duration) AS total_duration,
               AVG(CASE WHEN answer_time IS NOT NULL THEN duration END) AS mean_duration,
               1.0 * SUM({answered}) / COUNT(*) AS answer_rate
        FROM calls
        {live}
        GROUP BY account_id, {day}, direction, status
        """
    )
    where = f"{live} AND" if live else "WHERE"
    # etl.records.OPEN_STATUSES, quoted: a revision must not change once shipped, so it does
    # not import a list that may grow (tests/test_migrations.py holds the two together).
    op.execute(
        f"""
        CREATE VIEW open_calls AS
        SELECT call_uuid, account_id, from_number, to_number, direction, status,
               start_time, answer_time, first_seen_at, updated_at
        FROM calls
        {where} status IN ('ringing', 'in-progress')
        """
    )


def _drop_views() -> None:
    op.execute("DROP VIEW open_calls")
    op.execute("DROP VIEW calls_daily")


def upgrade() -> None:
    _drop_views()
    with op.batch_alter_table("calls") as batch:
        batch.add_column(sa.Column(
            "deleted_at", UTCDateTime,
            comment="when a sync found the call gone from inside the provider's window"))
    with op.batch_alter_table("rejects") as batch:
        batch.add_column(sa.Column(
            "start_time", UTCDateTime, comment="the record's start_time, when it has a usable one"))

    coverage = op.create_table(
        "sync_coverage",
        sa.Column("account_id", sa.String(64), nullable=False),
        sa.Column("upper_time", UTCDateTime, nullable=False,
                  comment="every listed call that started before this ..."),
        sa.Column("lower_time", UTCDateTime, nullable=False,
                  comment="... and after this was stored when the stretch was read"),
        sa.PrimaryKeyConstraint("account_id", "upper_time", name=op.f("pk_sync_coverage")),
    )
    state = sa.table("sync_state", sa.column("account_id", sa.String),
                     sa.column("watermark", UTCDateTime))
    rows = [
        {"account_id": account_id, "upper_time": watermark, "lower_time": _EPOCH}
        for account_id, watermark in op.get_bind().execute(
            sa.select(state.c.account_id, state.c.watermark).where(state.c.watermark.is_not(None)))
    ]
    if rows:
        op.bulk_insert(coverage, rows)

    with op.batch_alter_table("sync_state") as batch:
        batch.add_column(sa.Column(
            "window_start", UTCDateTime,
            comment="start_time of the oldest call the provider listed at the last sync"))
        batch.drop_column("synced_seq")
        batch.drop_column("base_seq")
        if op.get_bind().dialect.name != "duckdb":  # Alembic cannot alter comments there
            batch.alter_column("watermark", existing_type=UTCDateTime,
                               comment="start_time of the newest call the last sync read",
                               existing_comment="start_time of the newest call below synced_seq")
    op.drop_table("call_positions")
    _create_views("WHERE deleted_at IS NULL")


def downgrade() -> None:
    _drop_views()
    op.create_table(
        "call_positions",
        sa.Column("account_id", sa.String(64), nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False,
                  comment="position counted from the account's oldest call (0)"),
        sa.Column("call_uuid", sa.String(255), nullable=False),
        sa.Column("start_time", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("account_id", "seq", name=op.f("pk_call_positions")),
    )
    # Positions cannot be rebuilt from coverage: the old state starts over (a full re-read).
    op.execute("DELETE FROM sync_state")
    with op.batch_alter_table("sync_state") as batch:
        batch.drop_column("window_start")
        batch.add_column(sa.Column("synced_seq", sa.BigInteger, nullable=False, server_default="0",
                                   comment="every call at a position below this is stored"))
        batch.add_column(sa.Column("base_seq", sa.BigInteger, nullable=False, server_default="0",
                                   comment="the position the first sync started from (start_date)"))
    op.drop_table("sync_coverage")
    with op.batch_alter_table("rejects") as batch:
        batch.drop_column("start_time")
    with op.batch_alter_table("calls") as batch:
        batch.drop_column("deleted_at")
    _create_views("")

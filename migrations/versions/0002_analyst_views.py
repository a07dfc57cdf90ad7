"""Views for analysts: calls_daily and open_calls.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The UTC calendar day of start_time, per dialect (SQLite and MySQL store naive UTC).
_DAY = {
    "sqlite": "date(start_time)",
    "mysql": "DATE(start_time)",
    "postgresql": "CAST((start_time AT TIME ZONE 'UTC') AS DATE)",
    "duckdb": "CAST((start_time AT TIME ZONE 'UTC') AS DATE)",
}


def upgrade() -> None:
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
        GROUP BY account_id, {day}, direction, status
        """
    )
    op.execute(
        """
        CREATE VIEW open_calls AS
        SELECT call_uuid, account_id, from_number, to_number, direction, status,
               start_time, answer_time, first_seen_at, updated_at
        FROM calls
        WHERE status IN ('ringing', 'in-progress')
        """
    )


def downgrade() -> None:
    op.execute("DROP VIEW open_calls")
    op.execute("DROP VIEW calls_daily")

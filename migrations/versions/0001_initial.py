"""The calls table, sync state, call positions, run log and rejects.

Revision ID: 0001
Revises:
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from etl.schema import JSONDocument, UTCDateTime

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "calls",
        sa.Column("call_uuid", sa.String(255), nullable=False, comment="the call's unique id"),
        sa.Column("account_id", sa.String(64), nullable=False, comment="the Vox account's auth_id"),
        sa.Column("from_number", sa.String(255), comment="caller number as received"),
        sa.Column("to_number", sa.String(255), comment="destination number as received"),
        sa.Column("direction", sa.String(255), comment="inbound or outbound, as received"),
        sa.Column("status", sa.String(255), comment="current call status, as received"),
        sa.Column("end_reason", sa.String(255), comment="why the call ended, as received"),
        sa.Column("duration", sa.Integer, comment="seconds from answer to end"),
        sa.Column("start_time", UTCDateTime, nullable=False, comment="when the call started (UTC)"),
        sa.Column("answer_time", UTCDateTime, comment="when the call was answered (UTC)"),
        sa.Column("end_time", UTCDateTime, comment="when the call ended (UTC)"),
        sa.Column("raw", JSONDocument, nullable=False, comment="the record exactly as received"),
        sa.Column("first_seen_at", UTCDateTime, nullable=False, comment="when the row was first written"),
        sa.Column("updated_at", UTCDateTime, nullable=False, comment="when any value last changed"),
        sa.PrimaryKeyConstraint("call_uuid", name=op.f("pk_calls")),
    )
    op.create_index(op.f("ix_calls_account_id_start_time"), "calls", ["account_id", "start_time"])
    op.create_index(op.f("ix_calls_account_id_status"), "calls", ["account_id", "status"])
    op.create_index(op.f("ix_calls_updated_at"), "calls", ["updated_at"])

    op.create_table(
        "sync_state",
        sa.Column("account_id", sa.String(64), nullable=False),
        sa.Column("account_name", sa.String(255), nullable=False),
        sa.Column("synced_seq", sa.BigInteger, nullable=False,
                  comment="every call at a position below this is stored"),
        sa.Column("base_seq", sa.BigInteger, nullable=False,
                  comment="the position the first sync started from (start_date)"),
        sa.Column("watermark", UTCDateTime, comment="start_time of the newest call below synced_seq"),
        sa.Column("last_total_count", sa.BigInteger, comment="the API's total_count when last synced"),
        sa.Column("last_success_at", UTCDateTime, comment="when a sync of this account last finished"),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("account_id", name=op.f("pk_sync_state")),
    )
    op.create_table(
        "call_positions",
        sa.Column("account_id", sa.String(64), nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False,
                  comment="position counted from the account's oldest call (0)"),
        sa.Column("call_uuid", sa.String(255), nullable=False),
        sa.Column("start_time", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("account_id", "seq", name=op.f("pk_call_positions")),
    )
    op.create_table(
        "sync_runs",
        sa.Column("run_id", sa.String(36), nullable=False, comment="one id per etl invocation"),
        sa.Column("account_id", sa.String(64), nullable=False),
        sa.Column("command", sa.String(32), nullable=False),
        sa.Column("account_name", sa.String(255), nullable=False),
        sa.Column("started_at", UTCDateTime, nullable=False),
        sa.Column("finished_at", UTCDateTime),
        sa.Column("outcome", sa.String(16), nullable=False, comment="running, ok, failed or skipped"),
        sa.Column("pages", sa.Integer, nullable=False),
        sa.Column("requests", sa.Integer, nullable=False),
        sa.Column("new", sa.Integer, nullable=False),
        sa.Column("updated", sa.Integer, nullable=False),
        sa.Column("unchanged", sa.Integer, nullable=False),
        sa.Column("rejected", sa.Integer, nullable=False),
        sa.Column("error", sa.Text),
        sa.PrimaryKeyConstraint("run_id", "account_id", name=op.f("pk_sync_runs")),
    )
    op.create_index(op.f("ix_sync_runs_account_id_started_at"), "sync_runs", ["account_id", "started_at"])
    op.create_table(
        "rejects",
        sa.Column("account_id", sa.String(64), nullable=False),
        sa.Column("record_sha256", sa.String(64), nullable=False, comment="SHA-256 of record"),
        sa.Column("run_id", sa.String(36), nullable=False, comment="the run that first met the record"),
        sa.Column("call_uuid", sa.String(255), comment="the record's call_uuid, when it has one"),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("record", sa.Text, nullable=False, comment="the record verbatim, as JSON"),
        sa.Column("first_seen_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("account_id", "record_sha256", name=op.f("pk_rejects")),
    )


def downgrade() -> None:
    op.drop_table("rejects")
    op.drop_index(op.f("ix_sync_runs_account_id_started_at"), table_name="sync_runs")
    op.drop_table("sync_runs")
    op.drop_table("call_positions")
    op.drop_table("sync_state")
    op.drop_index(op.f("ix_calls_updated_at"), table_name="calls")
    op.drop_index(op.f("ix_calls_account_id_status"), table_name="calls")
    op.drop_index(op.f("ix_calls_account_id_start_time"), table_name="calls")
    op.drop_table("calls")

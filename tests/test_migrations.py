"""Alembic migrations: from an empty database on each server, and from an installed wheel."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from etl.migrate import SCHEMA_REVISION, current_revision, head_revision, upgrade
from etl.schema import metadata
from tests.conftest import PROJECT


def test_migrations_create_every_table_from_empty(any_database_url, engine_for):
    engine = engine_for(any_database_url)

    before, after = upgrade(engine)

    assert before is None and after == head_revision()
    tables = set(inspect(engine).get_table_names())
    assert set(metadata.tables) <= tables
    assert _columns(engine, "calls") == {c.name for c in metadata.tables["calls"].columns}
    assert upgrade(engine) == (after, after)  # a second run is a no-op


def test_migrations_match_the_models(any_database_url, engine_for):
    """Autogenerate finds nothing to do: the revisions and etl.schema describe the same tables."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    engine = engine_for(any_database_url)
    if engine.dialect.name == "duckdb":
        pytest.skip("duckdb-engine cannot reflect columns under SQLAlchemy 2.1 (pg_collation)")
    upgrade(engine)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert [d for d in diff if d[0] != "remove_table"] == []


def test_upgrading_a_populated_0002_database_keeps_every_row_and_what_the_sync_knew(
        any_database_url, engine_for):
    """0003 replaces positions by coverage: the calls, rejects and run log stay as they were,
    deleted_at starts empty, and what the old state covered becomes one interval."""
    engine = engine_for(any_database_url)
    upgrade(engine, "0002")
    with engine.begin() as conn:
        for i in range(3):
            conn.execute(text(
                "INSERT INTO calls (call_uuid, account_id, status, direction, start_time, raw, "
                "first_seen_at, updated_at) VALUES (:u, 'MA1', :s, 'inbound', :t, :raw, :t, :t)"),
                {"u": f"c{i}", "s": "completed" if i else "ringing",
                 "t": f"2026-01-0{i + 1} 10:00:00", "raw": f'{{"call_uuid": "c{i}"}}'})
        conn.execute(text(
            "INSERT INTO sync_state (account_id, account_name, synced_seq, base_seq, watermark, "
            "last_total_count, last_success_at, updated_at) VALUES ('MA1', 'one', 3, 0, "
            "'2026-01-03 10:00:00', 3, '2026-01-04 00:00:00', '2026-01-04 00:00:00')"))
        conn.execute(text(
            "INSERT INTO call_positions (account_id, seq, call_uuid, start_time) "
            "VALUES ('MA1', 0, 'c0', '2026-01-01 10:00:00')"))
        conn.execute(text(
            "INSERT INTO rejects (account_id, record_sha256, run_id, call_uuid, reason, record, "
            "first_seen_at) VALUES ('MA1', 'abc', 'r1', NULL, 'no call_uuid', '{}', "
            "'2026-01-04 00:00:00')"))

    before, after = upgrade(engine)

    assert (before, after) == ("0002", head_revision())
    from etl.state import account_status, read_state
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT call_uuid, deleted_at FROM calls ORDER BY call_uuid")).all()
        assert [(u, d) for u, d in rows] == [("c0", None), ("c1", None), ("c2", None)]
        state = read_state(conn, "MA1")
        assert state is not None and len(state.coverage) == 1
        assert state.coverage[0].upper == state.watermark
        assert state.watermark.isoformat().startswith("2026-01-03T10:00:00")
        assert conn.execute(text("SELECT COUNT(*) FROM rejects")).scalar_one() == 1
        assert conn.execute(text("SELECT COUNT(*) FROM open_calls")).scalar_one() == 1
        conn.execute(text("UPDATE calls SET deleted_at = updated_at WHERE call_uuid = 'c0'"))
        assert conn.execute(text("SELECT COUNT(*) FROM open_calls")).scalar_one() == 0
        assert conn.execute(text("SELECT SUM(calls) FROM calls_daily")).scalar_one() == 2
        status = account_status(conn, [("MA1", "one")])[0]
        assert status.deleted_calls == 1 and status.calls == 3
    assert "call_positions" not in set(inspect(engine).get_table_names()) \
        or engine.dialect.name == "duckdb"


def _columns(engine, table: str) -> set[str]:
    if engine.dialect.name == "duckdb":  # its pg_catalog emulation is too thin for inspect()
        with engine.connect() as conn:
            return set(conn.execute(text(
                "SELECT column_name FROM information_schema.columns WHERE table_name = :t"
            ), {"t": table}).scalars())
    return {c["name"] for c in inspect(engine).get_columns(table)}


def test_migrate_command_creates_a_new_sqlite_file(tmp_path):
    db = tmp_path / "new.db"
    result = subprocess.run(
        [sys.executable, "-m", "etl", "--database-url", f"sqlite:///{db}", "migrate"],
        capture_output=True, text=True, cwd=tmp_path, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "migrated from empty" in result.stdout
    assert db.exists()


@pytest.mark.slow
def test_etl_migrate_works_from_an_installed_wheel(tmp_path, engine_for):
    """Build the wheel, install it (without the checkout) into a fresh venv, run `etl migrate`."""
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheels), str(PROJECT)],
        capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, build.stderr
    wheel = next(wheels.glob("vox_etl-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    # The fresh venv gets its dependencies from this one; the wheel is its only copy of `etl`.
    site = Path(subprocess.check_output(
        [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        text=True).strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-deps",
         "-q", str(wheel)],
        capture_output=True, text=True, timeout=300,
    )
    if install.returncode != 0:  # older pip without --python
        install = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
            capture_output=True, text=True, timeout=300,
        )
        (venv / "bin" / "etl").write_text(
            f"#!{venv / 'bin' / 'python'}\nfrom etl.cli import main\nmain()\n")
        (venv / "bin" / "etl").chmod(0o755)
    assert install.returncode == 0, install.stderr
    db = tmp_path / "from-wheel.db"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ETL_DATABASE_URL")}
    result = subprocess.run(
        [str(venv / "bin" / "etl"), "--database-url", f"sqlite:///{db}", "migrate"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    where = subprocess.check_output(
        [str(venv / "bin" / "python"), "-c", "import etl.migrations, os; print(etl.migrations.__file__)"],
        text=True, cwd=tmp_path, env=env).strip()
    assert where.startswith(str(site)), where
    engine = engine_for(f"sqlite:///{db}")
    assert current_revision(engine) == head_revision()


def test_the_open_calls_view_lists_exactly_the_open_statuses(any_database_url, engine_for):
    """The view's SQL quotes the statuses (a revision may not import a list that can change
    after it shipped); this holds it to etl.records.OPEN_STATUSES."""
    from etl.records import KNOWN_STATUSES, OPEN_STATUSES

    engine = engine_for(any_database_url)
    upgrade(engine)
    with engine.begin() as conn:
        for i, status in enumerate(KNOWN_STATUSES):
            conn.execute(text(
                "INSERT INTO calls (call_uuid, account_id, status, direction, start_time, raw, "
                "first_seen_at, updated_at) VALUES (:u, 'MA1', :s, 'inbound', :t, '{}', :t, :t)"),
                {"u": f"c{i}", "s": status, "t": "2026-01-01 10:00:00"})
    with engine.connect() as conn:
        listed = set(conn.execute(text("SELECT status FROM open_calls")).scalars())
    assert listed == OPEN_STATUSES


def test_the_schema_revision_the_code_expects_is_the_scripts_head(sqlite_url, engine_for):
    # A sync skips Alembic when the database is at SCHEMA_REVISION: a new migration script
    # must move it, or current databases would never be upgraded.
    assert head_revision() == SCHEMA_REVISION
    engine = engine_for(sqlite_url)
    assert upgrade(engine, "0002") == (None, "0002")
    assert upgrade(engine) == ("0002", SCHEMA_REVISION)  # behind: Alembic upgrades it
    assert upgrade(engine) == (SCHEMA_REVISION, SCHEMA_REVISION)

"""Many workers, one warehouse: three `etl sync --jobs 4` processes started together against
50 accounts — on a new warehouse (migrations race) and an already migrated one — on
PostgreSQL, MariaDB and a shared SQLite file. Real processes, the simulator over sockets."""

from __future__ import annotations

import itertools
import json

import pytest
from sqlalchemy import create_engine, make_url, select, text

from etl.migrate import head_revision
from etl.schema import sync_runs
from tests.helpers import assert_matches_simulator
from tests.test_reliability import _popen


@pytest.fixture(params=["postgres", "mysql", "sqlite"])
def shared_url(request, tmp_path):
    """A new, empty warehouse; on the servers a database of this test's own, so that other
    tests writing the same simulated accounts into `test` meanwhile cannot disturb it."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'calls.db'}"
        return
    server = make_url(request.getfixturevalue(f"{request.param}_url"))
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    name = "vox_scale_test"
    drop = f"DROP DATABASE IF EXISTS {name}" + (" WITH (FORCE)" if request.param == "postgres" else "")
    with admin.connect() as conn:
        conn.execute(text(drop))
        conn.execute(text(f"CREATE DATABASE {name}"))
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(drop))
        admin.dispose()


def _together(proj, *args, n=3):
    processes = [_popen(proj, "--log-format", "json", *args) for _ in range(n)]
    return [(p, *p.communicate(timeout=280)) for p in processes]


def test_three_workers_on_one_warehouse_migrate_once_never_overlap_and_converge(
        simulator, project, shared_url, engine_for):
    sim = simulator(accounts=50, calls=150, seed=81)
    proj = project(sim, shared_url, api={"concurrency": 2})
    engine = engine_for(shared_url)

    for round_ in ("new warehouse", "migrated warehouse"):
        if round_ == "migrated warehouse":
            sim.add_calls(sim.accounts[7].auth_id, 20)
        finished = _together(proj, "sync", "--jobs", "4", "--wait")
        for process, out, err in finished:
            assert process.returncode == 0, f"{round_}: {err[-2000:]}"
            assert "Traceback" not in err and "database error" not in err
            summaries = [json.loads(line) for line in out.splitlines()]
            assert len(summaries) == 50 and {s["outcome"] for s in summaries} == {"ok"}

    assert_matches_simulator(engine, sim)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [
            head_revision()]
        runs = conn.execute(select(sync_runs)).all()
    assert len(runs) == 50 * 3 * 2 and {r.outcome for r in runs} == {"ok"}
    _assert_never_twice_at_once(runs, sim)


def _assert_never_twice_at_once(runs, sim):
    by_account = {}
    for run in runs:
        by_account.setdefault(run.account_id, []).append(run)
    for account_id, account_runs in by_account.items():
        # Every call was new exactly once, whichever worker got there first.
        assert sum(r.new for r in account_runs) == len(sim.calls(account_id))
        # No two runs of one account overlapped in time.
        spans = sorted((r.started_at, r.finished_at) for r in account_runs)
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert end <= start, f"{account_id}: two runs overlapped"


@pytest.mark.parametrize("shared_url", ["postgres"], indirect=True)
def test_without_wait_the_workers_share_out_the_accounts_and_skip_the_locked(
        simulator, project, shared_url, engine_for):
    sim = simulator(accounts=50, calls=150, seed=82)
    proj = project(sim, shared_url, api={"concurrency": 2})
    engine = engine_for(shared_url)

    finished = _together(proj, "sync", "--jobs", "4")

    for process, _out, err in finished:
        assert process.returncode in (0, 75), err[-2000:]
        assert "Traceback" not in err and "error:" not in err
    assert_matches_simulator(engine, sim)
    with engine.connect() as conn:
        runs = conn.execute(select(sync_runs)).all()
    assert {r.outcome for r in runs} <= {"ok", "skipped"}
    ok = [r for r in runs if r.outcome == "ok"]
    assert {r.account_id for r in ok} == {a.auth_id for a in sim.accounts}  # each by someone
    _assert_never_twice_at_once(ok, sim)

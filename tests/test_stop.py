"""A clean stop: real SIGTERM / SIGINT to a running `etl sync`, and runs that died (kill -9)
shown and closed as such — on SQLite and PostgreSQL (and MariaDB for the lock probe)."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess

import pytest
from sqlalchemy import func, select

from etl import locks
from etl.schema import calls, sync_runs
from tests.helpers import assert_matches_simulator
from tests.test_reliability import _assert_frontier_is_committed, _count, _popen, _wait_until


def _runs(engine):
    with engine.connect() as conn:
        return conn.execute(select(sync_runs).order_by(sync_runs.c.started_at)).all()


@pytest.mark.parametrize(("signum", "code", "jobs"), [(signal.SIGTERM, 143, 2),
                                                      (signal.SIGINT, 130, 1)])
def test_a_signal_finishes_the_batch_records_interrupted_releases_locks_and_exits(
        simulator, project, database_url, engine_for, signum, code, jobs):
    sim = simulator(accounts=2, calls=20_000, latency_ms=25, seed=71)  # syncs of a few seconds
    ids = [a.auth_id for a in sim.accounts]
    proj = project(sim, database_url, api={"concurrency": 2})
    engine = engine_for(database_url)
    proj.run("migrate", check=True)
    listed = {auth_id: set(sim.listed_uuids(auth_id)) for auth_id in ids}
    process = _popen(proj, "--log-format", "json", "sync", "--jobs", str(jobs))
    _wait_until(lambda: _count(engine, ids[0]) > 0, process=process)

    process.send_signal(signum)
    out, err = process.communicate(timeout=60)

    assert process.returncode == code, err
    assert "Traceback" not in err
    summaries = {s["account"]: s for s in map(json.loads, out.splitlines())}
    assert {s["outcome"] for s in summaries.values()} == {"interrupted"}
    name = signal.Signals(signum).name
    runs = _runs(engine)
    started = [r for r in runs if r.account_id in ids]
    assert started and all(r.outcome == "interrupted" for r in started)
    assert all(r.error == f"stopped by {name}" and r.finished_at is not None for r in started)
    for run in started:
        # Whole batches only: the rows stored are exactly the ones the run counted.
        assert _count(engine, run.account_id) == run.new == summaries[run.account_name]["new"]
        _assert_frontier_is_committed(engine, sim, run.account_id, listed[run.account_id])
        assert not locks.is_held(engine, run.account_id)
    assert _count(engine, ids[0]) < 20_000  # it did stop early

    proj.run("sync", check=True)  # no lock left behind; the next run converges
    assert_matches_simulator(engine, sim)


@pytest.fixture(params=["sqlite", "postgres", "mysql"])
def warehouse_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'calls.db'}"
    return request.getfixturevalue(f"{request.param}_url")


def test_a_dead_run_shows_as_died_and_the_next_run_closes_it(simulator, project, warehouse_url,
                                                             engine_for):
    sim = simulator(accounts=1, calls=15_000, latency_ms=30, seed=72)  # a sync of a few seconds
    auth_id = sim.accounts[0].auth_id
    proj = project(sim, warehouse_url, api={"concurrency": 1})
    engine = engine_for(warehouse_url)
    proj.run("migrate", check=True)
    process = _popen(proj, "sync")
    _wait_until(lambda: _count(engine, auth_id) > 0, process=process)

    alive = json.loads(proj.run("status", "--json", check=True).stdout)["accounts"][0]
    process.kill()
    process.wait(timeout=30)
    dead = json.loads(proj.run("status", "--json", check=True).stdout)["accounts"][0]
    table = proj.run("status", check=True).stdout

    assert alive["last_outcome"] == "running"  # its lock is held: it is alive
    assert dead["last_outcome"] == "died" and "stopped without recording" in dead["last_error"]
    assert "died" in table
    assert [r.outcome for r in _runs(engine)] == ["running"]  # status only looks

    proj.run("sync", check=True)

    assert [r.outcome for r in _runs(engine)] == ["died", "ok"]
    assert json.loads(proj.run("status", "--json", check=True).stdout)["accounts"][0][
        "last_outcome"] == "ok"
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(calls)).scalar_one() == 15_000


def test_a_signal_ends_a_wait_for_another_runs_lock(simulator, project, database_url, engine_for):
    sim = simulator(accounts=1, calls=100, seed=73)
    auth_id = sim.accounts[0].auth_id
    proj = project(sim, database_url)
    engine = engine_for(database_url)
    proj.run("migrate", check=True)
    with locks.acquire(engine, auth_id):  # another run holds the account
        process = _popen(proj, "sync", "--wait")
        with contextlib.suppress(subprocess.TimeoutExpired):  # still waiting, as it should
            process.communicate(timeout=1.5)
        assert process.poll() is None
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 143, err
    assert "acct1: interrupted" in out and "while waiting for the lock" in err
    assert "Traceback" not in err
    assert _runs(engine) == [] and sim.stats()["requests"] == 0


def test_the_lock_probe_sees_held_locks_without_taking_them(warehouse_url, engine_for):
    holder, prober = engine_for(warehouse_url), engine_for(warehouse_url)
    names = [f"probe-{i}" for i in range(16)]  # PostgreSQL keys of both signs among them
    for name in names:
        assert not locks.is_held(prober, name)
        with locks.acquire(holder, name):
            assert locks.is_held(prober, name)
            with pytest.raises(locks.LockBusy):
                locks.acquire(prober, name)  # still held: probing took nothing
        assert not locks.is_held(prober, name)

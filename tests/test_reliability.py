"""Reliability: kill -9, overlapping runs, broken records, failing accounts, database faults,
and secrets — each with real processes, the simulator over real sockets and real databases."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
from sqlalchemy import func, select, text

from etl.coverage import Interval
from etl.loader import in_transaction, upsert_calls, utcnow
from etl.migrate import upgrade
from etl.records import parse_call, parse_timestamp
from etl.schema import calls, rejects, sync_runs
from etl.state import read_state, save_state
from tests.helpers import assert_matches_simulator, assert_window_matches, stored_rows


def _popen(proj, *args):
    env = {**os.environ, **proj.env}
    env.pop("ETL_DATABASE_URL", None)
    return subprocess.Popen(
        [sys.executable, "-m", "etl", "--config", str(proj.config), *args],
        cwd=proj.path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _count(engine, auth_id):
    with engine.connect() as conn:
        return conn.execute(
            select(func.count()).select_from(calls).where(calls.c.account_id == auth_id)
        ).scalar_one()


def _wait_until(predicate, timeout=60.0, process=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if process is not None and process.poll() is not None:
            return False
        time.sleep(0.005)
    raise AssertionError("timed out")


def _assert_frontier_is_committed(engine, sim, auth_id, listed_before):
    """Every call listed before the run and still listed, inside the stored coverage, is in the
    table: coverage never ran ahead of committed rows."""
    with engine.connect() as conn:
        state = read_state(conn, auth_id)
    if state is None:
        return
    stored = set(stored_rows(engine, auth_id))
    for interval in state.coverage:
        inside = {c["call_uuid"] for c in sim.calls(auth_id)
                  if interval.lower < parse_timestamp(c["start_time"]) < interval.upper
                  and c["call_uuid"] in listed_before}
        missing = inside - stored
        assert not missing, f"{len(missing)} calls inside {interval} are not stored"
    if state.watermark is not None:
        assert state.watermark <= max(r["start_time"] for r in stored_rows(engine, auth_id).values())


@pytest.mark.parametrize("ageing", [0, 20], ids=["arrivals", "moving-window"])
def test_kill_9_at_any_point_loses_nothing_and_the_next_run_converges(
        simulator, project, database_url, engine_for, ageing):
    sim = simulator(accounts=1, calls=20_000, latency_ms=15, seed=21)
    auth_id = sim.accounts[0].auth_id
    proj = project(sim, database_url, api={"concurrency": 2})
    engine = engine_for(database_url)
    proj.run("migrate", check=True)
    sim.set_faults(drift_rate=30, expire_rate=ageing)
    kills = 0
    for step in (1, 3_000, 4_000, 3_000):
        threshold = _count(engine, auth_id) + step
        listed_before = set(sim.listed_uuids(auth_id))
        process = _popen(proj, "sync")
        reached = _wait_until(lambda t=threshold: _count(engine, auth_id) >= t, process=process)
        if reached:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait(timeout=60)
        _assert_frontier_is_committed(engine, sim, auth_id, listed_before)
    assert kills >= 3
    assert proj.run("sync").returncode == 0  # no stale lock blocks it
    sim.set_faults(drift_rate=0, expire_rate=0)
    sim.finish_open_calls()

    proj.run("sync", check=True)

    assert_window_matches(engine, sim, auth_id)
    if not ageing:
        assert_matches_simulator(engine, sim)
    with engine.connect() as conn:
        outcomes = conn.execute(select(sync_runs.c.outcome).order_by(sync_runs.c.started_at)).scalars().all()
    # A killed run's row is closed as `died` by the next run of the account.
    assert outcomes.count("died") == kills and "running" not in outcomes
    assert outcomes[-2:] == ["ok", "ok"]


def test_an_overlapping_run_skips_the_locked_account_and_exits_75(simulator, project, database_url,
                                                                   engine_for):
    sim = simulator(accounts=1, calls=20_000, latency_ms=20, seed=22)  # a sync of a few seconds
    auth_id = sim.accounts[0].auth_id
    proj = project(sim, database_url, api={"concurrency": 1})
    engine = engine_for(database_url)
    proj.run("migrate", check=True)
    first = _popen(proj, "sync")
    try:
        _wait_until(lambda: _count(engine, auth_id) > 0, process=first)

        second = proj.run("sync")

        assert second.returncode == 75, second.stderr
        assert "acct1" in second.stderr and "lock" in second.stderr
        waiting = _popen(proj, "sync", "--wait")
        time.sleep(0.3)
        assert waiting.poll() is None, "--wait should wait for the lock"
    finally:
        first.wait(timeout=120)
    assert first.returncode == 0, first.stderr
    assert waiting.wait(timeout=120) == 0
    assert_matches_simulator(engine, sim)


def test_a_broken_record_is_kept_verbatim_and_the_rest_of_its_page_loads(simulator, project,
                                                                          engine_for):
    sim = simulator(accounts=1, calls=500, seed=23)
    auth_id = sim.accounts[0].auth_id
    broken = {"from": "+14155550000", "to": "+14155550001", "status": "completed",
              "start_time": "2026-01-01T00:00:00Z"}
    bad_time = {"call_uuid": "bad-time-1", "start_time": "yesterday", "status": "completed"}
    sim.add_record(auth_id, broken)
    sim.add_calls(auth_id, 5)
    sim.add_record(auth_id, bad_time)
    proj = project(sim)

    result = proj.run("--log-format", "json", "sync", check=True)

    summary = json.loads(result.stdout.splitlines()[-1])
    assert summary["rejected"] == 2 and summary["new"] == 505
    engine = engine_for(proj.database_url)
    with engine.connect() as conn:
        kept = conn.execute(select(rejects)).all()
    assert {r.reason for r in kept} == {"no call_uuid", "start_time 'yesterday' is not an ISO-8601 timestamp"}
    assert {json.dumps(json.loads(r.record), sort_keys=True) for r in kept} == {
        json.dumps(broken, sort_keys=True), json.dumps(bad_time, sort_keys=True)}
    assert all(r.account_id == auth_id and r.run_id for r in kept)
    assert _count(engine, auth_id) == 505
    status = json.loads(proj.run("status", "--json", check=True).stdout)["accounts"][0]
    assert status["rejects"] == 2
    # A second run meets them again but keeps each once.
    proj.run("sync", check=True)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(rejects)).scalar_one() == 2


@pytest.mark.parametrize("fault", ["403", "404", "exhausted"])
def test_one_failing_account_does_not_stop_the_others(simulator, project, engine_for, fault):
    sim = simulator(accounts=2, calls=300, seed=24)
    good, bad = sim.accounts[1], sim.accounts[0]
    proj = project(sim, api={"max_attempts": 3})
    if fault == "403":
        proj.env["VOX_TOKEN_ACCT1"] = good.token  # a valid token, for another account
    elif fault == "404":
        proj.config.write_text(proj.config.read_text().replace(bad.auth_id, "MA999999"))
    else:
        sim.inject(bad.auth_id, 503, 503, 503)

    result = proj.run("sync")

    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("etl: error: acct1: "), result.stderr
    expected = {"403": "HTTP 403", "404": "HTTP 404", "exhausted": "HTTP 503"}[fault]
    assert expected in errors[0]
    assert "Traceback" not in result.stderr
    assert "acct2: ok new=300" in result.stdout
    engine = engine_for(proj.database_url)
    assert _count(engine, good.auth_id) == 300


def test_a_traceback_appears_only_with_verbose(simulator, project):
    sim = simulator(accounts=1, calls=10)
    proj = project(sim)
    proj.config.write_text(proj.config.read_text().replace("[api]", "[api]\ntimeout = 'soon'"))

    quiet = proj.run("sync")

    assert quiet.returncode == 2
    assert quiet.stderr.strip() == "etl: error: [api].timeout: expected a number, got 'soon'"


def test_base_url_must_be_https_unless_loopback(simulator, project):
    sim = simulator(accounts=1, calls=10)
    proj = project(sim)
    proj.config.write_text(proj.config.read_text().replace(sim.base_url, "http://api.example.com/v1"))

    result = proj.run("sync")

    assert result.returncode == 2
    assert "must use https" in result.stderr and result.stderr.count("\n") == 1
    assert sim.stats()["requests"] == 0


def test_a_dropped_database_connection_mid_sync_is_retried(simulator, project, postgres_url,
                                                            engine_for):
    sim = simulator(accounts=1, calls=15_000, latency_ms=2, seed=25)
    auth_id = sim.accounts[0].auth_id
    proj = project(sim, postgres_url, api={"concurrency": 2})
    engine = engine_for(postgres_url)
    proj.run("migrate", check=True)
    process = _popen(proj, "-v", "sync")
    killed = 0
    try:
        for threshold in (1_000, 5_000, 9_000):
            if not _wait_until(lambda t=threshold: _count(engine, auth_id) >= t, process=process):
                break
            with engine.connect() as conn:
                killed += conn.execute(text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                    "AND backend_type = 'client backend' AND query NOT LIKE '%advisory%'"
                )).scalar_one()
    finally:
        _out, err = process.communicate(timeout=120)
    assert killed >= 1
    assert process.returncode == 0, err
    assert_matches_simulator(engine, sim)


def test_a_batch_cut_off_by_a_dropped_connection_is_rolled_back_and_retried(postgres_url,
                                                                              engine_for):
    engine = engine_for(postgres_url)
    upgrade(engine)
    killer = engine_for(postgres_url)
    rows = [parse_call({"call_uuid": f"c{i}", "start_time": f"2026-01-01T00:{i // 60:02d}:{i % 60:02d}Z",
                        "status": "completed"}, "MA1") for i in range(100)]
    attempts = []

    def batch(conn):
        attempts.append(len(attempts) + 1)
        counts = upsert_calls(conn, rows[:50], utcnow())
        if len(attempts) == 1:  # the server drops this very connection mid-batch
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
            with killer.connect() as other:
                other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        counts += upsert_calls(conn, rows[50:], utcnow())
        save_state(conn, "MA1", "one", coverage=[Interval(rows[0].start_time, rows[-1].start_time)],
                   watermark=rows[-1].start_time)
        return counts

    counts = in_transaction(engine, batch, first_wait=0.01)

    assert attempts == [1, 2]
    assert counts.new == 100  # the first attempt left nothing behind
    assert len(stored_rows(engine)) == 100
    with engine.connect() as conn:
        assert read_state(conn, "MA1").coverage == (Interval(rows[0].start_time, rows[-1].start_time),)


def test_a_locked_sqlite_database_is_waited_for(simulator, project, engine_for):
    sim = simulator(accounts=1, calls=2_000, seed=26)
    proj = project(sim)
    proj.run("migrate", check=True)
    engine = engine_for(proj.database_url)
    holder = sqlite3.connect(proj.path / "calls.db", isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the database for a while
    threading.Timer(1.5, holder.rollback).start()
    try:
        result = proj.run("sync")
    finally:
        holder.close()
    assert result.returncode == 0, result.stderr
    assert_matches_simulator(engine, sim)


def test_no_token_reaches_output_logs_rows_or_cassettes(simulator, project, engine_for, tmp_path):
    secret = "tvx_sk_live_SECRET_7f3a9c"
    sim = simulator(accounts=2, calls=300, error_rate=0.1, seed=27)
    proj = project(sim)
    # acct1 presents a secret the API refuses; acct2 a valid one (also scanned for)
    proj.env["VOX_TOKEN_ACCT1"] = secret
    tokens = [secret, sim.accounts[1].token]
    sim.add_record(sim.accounts[1].auth_id, {"call_uuid": None, "note": "broken"})
    outputs = []
    for args in (("sync",), ("-vv", "sync"), ("--log-format", "json", "-vv", "sync"),
                 ("status",), ("status", "--json"), ("-vv", "verify")):
        result = proj.run(*args)
        outputs += [result.stdout, result.stderr]
    engine = engine_for(proj.database_url)
    with engine.connect() as conn:
        for table in ("calls", "rejects", "sync_runs", "sync_state", "sync_coverage"):
            outputs += [repr(row) for row in conn.execute(text(f"SELECT * FROM {table}"))]
    from tests.conftest import PROJECT
    for path in (PROJECT / "tests" / "cassettes").glob("*"):
        outputs.append(path.read_text())
    haystack = "\n".join(outputs)
    assert "acct1" in haystack and "401" in haystack  # the failure was reported ...
    for token in tokens:
        assert token not in haystack  # ... without the token

"""Exactness: no call missed, none stale, at a cost proportional to what changed.

Every test runs the simulator over real sockets and counts the requests it answered.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import delete

from etl.config import load_config
from etl.db import make_engine
from etl.migrate import upgrade
from etl.outcomes import Command, Outcome
from etl.records import parse_timestamp
from etl.runner import Job, run_accounts
from etl.schema import calls
from tests.helpers import assert_matches_simulator, stored_rows


@pytest.fixture
def etl(project, monkeypatch):
    """In-process runs of a command against a simulator; returns the accounts' results."""

    class Runner:
        def __init__(self, sim, database_url=None, **sections):
            self.sim = sim
            self.project = project(sim, database_url, **sections)
            for key, value in self.project.env.items():
                monkeypatch.setenv(key, value)
            self.config = load_config(self.project.config, environ={})
            self.engine = make_engine(self.config.database_url)
            upgrade(self.engine)

        def __call__(self, command=Command.SYNC, **job):
            results = run_accounts(self.engine, self.config, self.config.accounts,
                                   Job(Command(command), **job))
            for result in results:
                assert result.outcome is Outcome.OK, result.error
            return results

        def requests_for(self, command=Command.SYNC, **job):
            self.sim.reset_stats()
            results = self(command, **job)
            assert sum(r.requests for r in results) == self.sim.stats()["requests"]
            return self.sim.stats()["requests"], results

    runners = []

    def make(sim, database_url=None, **sections):
        runner = Runner(sim, database_url, **sections)
        runners.append(runner)
        return runner

    yield make
    for runner in runners:
        runner.engine.dispose()


def test_incremental_sync_after_250_new_calls_costs_at_most_8_requests(simulator, etl):
    sim = simulator(accounts=1, calls=30_000, seed=11)
    run = etl(sim)
    run()
    auth_id = sim.accounts[0].auth_id
    sim.add_calls(auth_id, 250)

    requests, results = run.requests_for()

    assert requests <= 8
    assert results[0].counts.new == 250
    assert_matches_simulator(run.engine, sim)


def test_calls_open_for_days_are_updated_once_they_finish(simulator, etl):
    sim = simulator(accounts=1, calls=20_000, days=30, seed=12)  # 200 pages
    auth_id = sim.accounts[0].auth_id
    history = sim.calls(auth_id)
    newest = parse_timestamp(history[0]["start_time"])
    # Twelve calls spread over the last three days stay in progress.
    spread = [c for c in history if newest - parse_timestamp(c["start_time"]) < timedelta(days=3)]
    stuck = spread[:: max(1, len(spread) // 12)][:12]
    for call in stuck:
        sim.set_call(auth_id, call["call_uuid"], status="in-progress", end_time=None,
                     duration=None, end_reason=None)
    run = etl(sim)
    run()
    sim.add_calls(auth_id, 40, open_fraction=0.0)
    for call in stuck:
        sim.set_call(auth_id, call["call_uuid"], status="completed", end_time=call["end_time"] or
                     call["start_time"], duration=call["duration"] or 0,
                     end_reason=call["end_reason"] or "caller-hangup")
    sim.finish_open_calls(auth_id)

    requests, results = run.requests_for()

    rows = stored_rows(run.engine, auth_id)
    assert all(rows[c["call_uuid"]]["status"] == "completed" for c in stuck)
    assert results[0].counts.updated >= len(stuck)
    assert requests <= 40
    assert_matches_simulator(run.engine, sim)


def test_sync_keeps_every_call_that_existed_when_it_began_while_new_calls_arrive(simulator, etl):
    sim = simulator(accounts=1, calls=20_000, latency_ms=15, seed=13)
    auth_id = sim.accounts[0].auth_id
    run = etl(sim, api={"concurrency": 4})
    existing = {c["call_uuid"] for c in sim.calls(auth_id)}
    sim.set_faults(drift_rate=60)

    run()

    sim.set_faults(drift_rate=0)
    stored = set(stored_rows(run.engine, auth_id))
    assert len(sim.calls(auth_id)) > len(existing), "calls should have arrived during the sync"
    missing = existing - stored
    assert not missing, f"{len(missing)} calls that existed at the start were not stored"


def test_drift_during_sequential_paging_misses_nothing(simulator, etl):
    sim = simulator(accounts=1, calls=5_000, drift_per_request=37, seed=14)
    auth_id = sim.accounts[0].auth_id
    existing = {c["call_uuid"] for c in sim.calls(auth_id)}
    run = etl(sim, api={"concurrency": 1})

    run()

    assert existing <= set(stored_rows(run.engine, auth_id))


def test_one_more_sync_after_drift_stops_leaves_calls_equal_to_the_api(simulator, etl, database_url):
    sim = simulator(accounts=2, calls=4_000, latency_ms=2, seed=15)
    run = etl(sim, database_url, api={"concurrency": 4})
    sim.set_faults(drift_rate=80, finish_after_s=0.5)
    run()
    run()
    sim.set_faults(drift_rate=0, finish_after_s=None)
    sim.finish_open_calls()

    run()

    assert assert_matches_simulator(run.engine, sim) > 8_000


def test_backfill_of_three_days_costs_bisection_plus_the_windows_pages(simulator, etl):
    sim = simulator(accounts=1, calls=30_000, days=90, seed=16)  # 300 pages
    auth_id = sim.accounts[0].auth_id
    history = sim.calls(auth_id)
    newest = parse_timestamp(history[0]["start_time"])
    since = (newest - timedelta(days=40)).replace(hour=0, minute=0, second=0, microsecond=0)
    until = since + timedelta(days=3)
    window = {c["call_uuid"] for c in history if since <= parse_timestamp(c["start_time"]) < until}
    run = etl(sim)

    requests, _ = run.requests_for("backfill", since=since, until=until)

    assert set(stored_rows(run.engine, auth_id)) == window
    pages = math.ceil(len(window) / 100)
    assert requests <= math.log2(300) + pages + 4, (requests, pages)
    # Run twice: nothing changes, and the incremental state was never touched.
    before = stored_rows(run.engine, auth_id)
    run("backfill", since=since, until=until)
    assert stored_rows(run.engine, auth_id) == before
    from etl.state import read_state
    with run.engine.connect() as conn:
        assert read_state(conn, auth_id) is None


def test_first_sync_reaches_back_only_to_start_date(simulator, etl):
    sim = simulator(accounts=1, calls=20_000, days=60, seed=17)
    auth_id = sim.accounts[0].auth_id
    history = sim.calls(auth_id)
    start = (parse_timestamp(history[0]["start_time"]) - timedelta(days=10)).replace(microsecond=0)
    wanted = {c["call_uuid"] for c in history if parse_timestamp(c["start_time"]) >= start}
    run = etl(sim, sync={"start_date": start.strftime("%Y-%m-%dT%H:%M:%S")})

    requests, _ = run.requests_for()

    assert set(stored_rows(run.engine, auth_id)) == wanted
    assert requests <= math.log2(200) + math.ceil(len(wanted) / 100) + 4


def test_full_sync_re_reads_the_whole_history(simulator, etl):
    sim = simulator(accounts=1, calls=3_000, seed=18)
    run = etl(sim)
    run()
    sim.reset_stats()

    requests, results = run.requests_for(full=True)

    assert requests >= 30
    assert results[0].counts.unchanged == 3_000
    assert_matches_simulator(run.engine, sim)


def test_rows_lost_from_the_warehouse_are_found_again_by_the_count_check(simulator, etl):
    sim = simulator(accounts=1, calls=3_000, seed=18)  # 30 pages
    auth_id = sim.accounts[0].auth_id
    run = etl(sim)
    run()
    with run.engine.begin() as conn:
        conn.execute(delete(calls).where(calls.c.call_uuid.in_(
            [c["call_uuid"] for c in sim.calls(auth_id)[1000:1010]])))

    requests, results = run.requests_for()

    assert results[0].counts.new == 10
    assert requests <= math.log2(30) + 8
    assert_matches_simulator(run.engine, sim)


def test_watermark_never_runs_ahead_of_committed_rows(simulator, etl):
    sim = simulator(accounts=1, calls=2_000, seed=19)
    auth_id = sim.accounts[0].auth_id
    run = etl(sim)
    run()
    from etl.state import read_state
    with run.engine.connect() as conn:
        state = read_state(conn, auth_id)
    rows = stored_rows(run.engine, auth_id)
    oldest = min(r["start_time"] for r in rows.values())
    newest = max(r["start_time"] for r in rows.values())
    assert len(state.coverage) == 1
    assert state.coverage[0].lower < oldest and state.coverage[0].upper > newest
    assert state.watermark == newest <= datetime.now(UTC)
    assert state.window_start == oldest


def test_calls_removed_from_the_api_are_flagged_deleted_not_dropped(simulator, etl):
    sim = simulator(accounts=1, calls=1_000, seed=20)
    auth_id = sim.accounts[0].auth_id
    run = etl(sim)
    run()
    gone = [c["call_uuid"] for c in sim.calls(auth_id)[200:205]]
    other = simulator(accounts=1, calls=1_000, seed=20)  # the same account ...
    for uuid in gone:  # ... less five calls from inside the window
        other.delete_call(auth_id, uuid)
    run.config = load_config_for(run, other)

    run()

    rows = stored_rows(run.engine, auth_id)
    assert set(expected_uuids(other, auth_id)) <= set(rows)
    assert {u for u, r in rows.items() if r["deleted_at"] is not None} == set(gone)


def load_config_for(run, sim):
    from dataclasses import replace
    return replace(run.config, api=replace(run.config.api, base_url=sim.base_url))


def expected_uuids(sim, auth_id):
    return [c["call_uuid"] for c in sim.calls(auth_id)]

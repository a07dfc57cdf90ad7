"""Warehouses: overlapping runs on every database, DuckDB's one-process-at-a-time files."""

from __future__ import annotations

import time

from tests.helpers import assert_matches_simulator
from tests.test_reliability import _count, _popen, _wait_until


def test_overlapping_runs_never_sync_the_same_account_on_any_database(simulator, project,
                                                                     any_database_url, engine_for):
    sim = simulator(accounts=1, calls=5_000, latency_ms=15, seed=41)
    auth_id = sim.accounts[0].auth_id
    proj = project(sim, any_database_url, api={"concurrency": 1})
    proj.run("migrate", check=True)
    engine = engine_for(any_database_url)
    first = _popen(proj, "sync")
    try:
        _wait_until(lambda: _count(engine, auth_id) > 0, process=first)
        started = time.monotonic()
        second = proj.run("sync")
        assert second.returncode == 75, second.stdout + second.stderr
        assert "lock" in second.stderr
        assert time.monotonic() - started < 30
    finally:
        first.wait(timeout=180)
    assert first.returncode == 0, first.stderr
    assert_matches_simulator(engine, sim)

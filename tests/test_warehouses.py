"""Warehouses: overlapping runs on every database, DuckDB's one-process-at-a-time files."""

from __future__ import annotations

import time

from tests.helpers import assert_matches_simulator
from tests.test_reliability import _count, _popen, _wait_until


def test_overlapping_runs_never_sync_the_same_account_on_any_database(simulator, project,
                                                                     any_database_url, engine_for):
    sim = simulator(accounts=1, calls=20_000, latency_ms=35, seed=41)  # a sync of a few seconds
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


def test_the_loader_round_trips_awkward_values_on_every_database(any_database_url, engine_for):
    from etl.loader import in_transaction, upsert_calls, utcnow
    from etl.migrate import upgrade
    from etl.records import parse_call
    from tests.helpers import stored_rows

    engine = engine_for(any_database_url)
    upgrade(engine)
    records = [
        {"call_uuid": "q-1", "from": '+1 "quoted" \\back\\slash', "to": "ümlaut 📞 {a,b}",
         "direction": "inbound", "status": "voicemail", "duration": None,
         "start_time": "2026-03-01T10:00:00.123456+02:00", "answer_time": None,
         "end_time": None, "end_reason": "NULL", "nested": {"list": [1, None, "x"], "e": ""}},
        {"call_uuid": "q-2", "from": None, "to": "", "direction": None, "status": "completed",
         "duration": 0, "start_time": "2026-03-01T08:00:00Z", "answer_time": "2026-03-01T08:00:01Z",
         "end_time": "2026-03-01T08:00:01Z", "end_reason": "it's done; \"ok\""},
    ]
    rows = [parse_call(r, "MA1") for r in records]

    counts = in_transaction(engine, lambda conn: upsert_calls(conn, rows, utcnow()))
    again = in_transaction(engine, lambda conn: upsert_calls(conn, rows, utcnow()))

    assert (counts.new, again.unchanged, again.updated) == (2, 2, 0)
    stored = stored_rows(engine)
    for row in rows:
        for column, value in row.values().items():
            assert stored[row.call_uuid][column] == value, (column, stored[row.call_uuid][column])
    changed = parse_call({**records[0], "status": "completed"}, "MA1")
    third = in_transaction(engine, lambda conn: upsert_calls(conn, [changed], utcnow()))
    assert third.updated == 1 and stored_rows(engine)["q-1"]["status"] == "completed"

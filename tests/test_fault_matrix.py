"""The fault matrix: everything the API is known to do wrong, at once, on SQLite and PostgreSQL.
The sync must end with the table equal to the API's data."""

from __future__ import annotations

import json

from sqlalchemy import func, select

from etl.schema import calls, rejects
from tests.helpers import assert_matches_simulator, assert_window_matches


def test_sync_through_every_fault_ends_equal_to_the_api(simulator, project, database_url, engine_for):
    sim = simulator(accounts=2, calls=4_000, error_rate=0.05, reset_rate=0.03, truncate_rate=0.03,
                    rate_limit=150, retry_after_format="both", per_page_cap=50, seed=31)
    first, second = (a.auth_id for a in sim.accounts)
    # records the reference does not describe
    sim.add_record(first, {"from": "+14155550100", "to": "+14155550101", "status": "completed",
                           "start_time": "2026-01-01T00:00:00Z"})            # no call_uuid
    new_field = sim.add_calls(first, 3)[0]["call_uuid"]
    sim.set_call(first, new_field, recording_url="https://example.invalid/r.mp3", tags=["vip"])
    unknown = sim.add_calls(second, 3)[1]["call_uuid"]
    sim.set_call(second, unknown, status="voicemail")
    # a storm of 429s in both Retry-After forms, and HTML error pages
    sim.inject(first, 429, "429-date", 429, "html502", "html503", 500)
    sim.inject(second, "429-date", 429, "reset", "truncate", "html502")
    proj = project(sim, database_url, api={"concurrency": 4, "max_attempts": 12},
                   sync={"lookback": "1m"})

    result = proj.run("--log-format", "json", "sync", "--jobs", "2", check=True)

    summaries = {s["account"]: s for s in map(json.loads, result.stdout.splitlines())}
    assert summaries["acct1"]["rejected"] == 1 and summaries["acct1"]["new"] == 4_003
    assert summaries["acct2"]["new"] == 4_003
    assert sum(s["retries"] for s in summaries.values()) >= 11
    engine = engine_for(database_url)
    assert assert_matches_simulator(engine, sim) == 8_006
    with engine.connect() as conn:
        raw = conn.execute(select(calls.c.raw).where(calls.c.call_uuid == new_field)).scalar_one()
        status = conn.execute(select(calls.c.status).where(calls.c.call_uuid == unknown)).scalar_one()
        kept = conn.execute(select(func.count()).select_from(rejects)).scalar_one()
    assert raw["recording_url"] == "https://example.invalid/r.mp3" and raw["tags"] == ["vip"]
    assert status == "voicemail"
    assert kept == 1
    by_status = sim.stats()["by_status"]
    assert by_status.get(429, 0) >= 4 and by_status.get(502, 0) >= 2


def test_an_empty_account_costs_one_request_and_stores_nothing(simulator, project, database_url,
                                                                 engine_for):
    sim = simulator(accounts=1, calls=0)

    result = project(sim, database_url).run("sync", check=True)

    assert "acct1: ok new=0 updated=0 unchanged=0 rejected=0 requests=1 " in result.stdout
    assert sim.stats()["requests"] == 1
    with engine_for(database_url).connect() as conn:
        assert conn.execute(select(func.count()).select_from(calls)).scalar_one() == 0


def test_every_fault_under_a_moving_window_keeps_every_call_present_throughout(
        simulator, project, database_url, engine_for):
    sim = simulator(accounts=2, calls=4_000, latency_ms=5, error_rate=0.05, reset_rate=0.03,
                    truncate_rate=0.03, rate_limit=150, per_page_cap=50, seed=32)
    sim.add_record(sim.accounts[0].auth_id, {"from": "+14155550100", "status": "completed",
                                             "start_time": "2026-01-01T00:00:00Z"})
    proj = project(sim, database_url, api={"concurrency": 4, "max_attempts": 12},
                   sync={"lookback": "1m"})
    before = {a.auth_id: set(sim.listed_uuids(a.auth_id)) for a in sim.accounts}
    sim.set_faults(drift_rate=20, expire_rate=20)

    result = proj.run("--log-format", "json", "sync", "--jobs", "2", check=True)

    sim.set_faults(drift_rate=0, expire_rate=0)
    engine = engine_for(database_url)
    with engine.connect() as conn:
        stored = set(conn.execute(select(calls.c.call_uuid)).scalars())
    for account in sim.accounts:
        throughout = before[account.auth_id] & set(sim.listed_uuids(account.auth_id))
        throughout.discard(None)
        assert throughout <= stored, f"{len(throughout - stored)} calls present throughout missing"
    summaries = [json.loads(line) for line in result.stdout.splitlines()]
    assert all(s["outcome"] == "ok" for s in summaries)
    proj.run("sync", check=True)  # quiet now: one more run leaves the window equal to the list
    for account in sim.accounts:
        assert_window_matches(engine, sim, account.auth_id)

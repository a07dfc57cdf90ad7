"""A list that changes at both ends: a moving retention window, deletions, late listings and
bursts — the request budgets of the paging founded on call identity, and the archive.

Every test runs the simulator over real sockets and counts the requests it answered.
"""

from __future__ import annotations

import math
from datetime import timedelta

import pytest

from etl.records import parse_timestamp
from etl.state import read_state
from tests.helpers import assert_matches_simulator, assert_window_matches, stored_rows
from tests.test_exactness import etl  # noqa: F401  (the in-process runner fixture)


def _present(sim, auth_id) -> set[str]:
    return {u for u in sim.listed_uuids(auth_id) if u is not None}


@pytest.mark.parametrize("ageing", [20, 0], ids=["moving-window", "arrivals-only"])
def test_first_sync_under_drift_stores_every_call_present_throughout_in_few_requests(
        simulator, etl, ageing):  # noqa: F811
    sim = simulator(accounts=1, calls=20_000, latency_ms=15, seed=31)
    auth_id = sim.accounts[0].auth_id
    run = etl(sim, api={"concurrency": 4})
    before = _present(sim, auth_id)
    sim.set_faults(drift_rate=20, expire_rate=ageing)

    requests, _results = run.requests_for()

    sim.set_faults(drift_rate=0, expire_rate=0)
    throughout = before & _present(sim, auth_id)
    assert len(throughout) < len(before) or not ageing, "calls should have aged out meanwhile"
    missing = throughout - set(stored_rows(run.engine, auth_id))
    assert not missing, f"{len(missing)} calls present from start to end were not stored"
    assert requests <= 1.10 * math.ceil(20_000 / 100), requests


def test_incremental_syncs_after_the_window_moved_cost_only_the_new_calls(simulator, etl):  # noqa: F811
    sim = simulator(accounts=1, calls=20_000, seed=32)  # 200 pages
    auth_id = sim.accounts[0].auth_id
    run = etl(sim)
    run()
    costs = []
    for _day in range(5):
        sim.advance_clock(86400)
        aged = sim.expire_oldest(auth_id, 300)
        sim.add_calls(auth_id, 150, open_fraction=0.0)  # open calls cost a page each: not here
        requests, results = run.requests_for()
        costs.append(requests)
        assert results[0].counts.new == 150
        assert results[0].deleted == 0
        rows = stored_rows(run.engine, auth_id)
        assert all(rows[u]["deleted_at"] is None for u in aged if u), "aged-out calls are archived"

    assert all(cost <= math.ceil(150 / 100) + 3 for cost in costs), costs
    assert_window_matches(run.engine, sim, auth_id)
    assert len(stored_rows(run.engine, auth_id)) == 20_000 + 5 * 150  # the archive keeps them all


def test_one_deletion_inside_the_window_is_flagged_without_re_reading_the_history(
        simulator, etl):  # noqa: F811
    sim = simulator(accounts=1, calls=20_000, seed=33)
    auth_id = sim.accounts[0].auth_id
    run = etl(sim)
    run()
    victim = sim.calls(auth_id)[12_345]["call_uuid"]
    sim.delete_call(auth_id, victim)
    sim.add_calls(auth_id, 50)

    requests, results = run.requests_for()

    assert requests <= math.log2(200) + math.ceil(50 / 100) + 4, requests
    rows = stored_rows(run.engine, auth_id)
    assert rows[victim]["deleted_at"] is not None
    assert results[0].deleted == 1 and results[0].counts.new == 50
    assert_window_matches(run.engine, sim, auth_id)
    # It comes back: the flag is cleared, and nothing else changes.
    sim.restore_call(auth_id, victim)
    run()
    assert stored_rows(run.engine, auth_id)[victim]["deleted_at"] is None


def test_a_call_listed_two_days_late_is_stored_by_the_next_sync(simulator, etl):  # noqa: F811
    sim = simulator(accounts=1, calls=20_000, seed=34)
    auth_id = sim.accounts[0].auth_id
    run = etl(sim)
    run()
    late = sim.add_late_call(auth_id, age_seconds=2 * 86400)
    sim.add_calls(auth_id, 50)

    requests, results = run.requests_for()

    assert late["call_uuid"] in stored_rows(run.engine, auth_id)
    assert results[0].counts.new == 51
    assert requests <= math.log2(200) + math.ceil(50 / 100) + 4, requests
    assert_window_matches(run.engine, sim, auth_id)


def test_a_call_listed_late_inside_the_lookback_costs_nothing_beyond_the_lookback(
        simulator, etl):  # noqa: F811
    sim = simulator(accounts=1, calls=20_000, seed=35)
    auth_id = sim.accounts[0].auth_id
    run = etl(sim, sync={"lookback": "1h"})
    run()
    sim.advance_clock(2 * 3600)
    sim.add_calls(auth_id, 50)
    run()
    watermark = parse_timestamp(sim.calls(auth_id)[0]["start_time"])
    sim.advance_clock(2 * 3600)
    sim.add_calls(auth_id, 120)
    late = sim.add_late_call(auth_id, age_seconds=5 * 60)

    requests, results = run.requests_for()

    assert late["call_uuid"] in stored_rows(run.engine, auth_id)
    assert results[0].counts.new == 121
    # What the lookback re-reads anyway: the new calls and the hour behind the watermark.
    reread = sum(1 for c in sim.calls(auth_id)
                 if parse_timestamp(c["start_time"]) >= watermark - timedelta(hours=1))
    assert requests <= math.ceil(reread / 100) + 2, (requests, reread)


def test_bursts_sharing_one_second_are_stored_whole(simulator, etl):  # noqa: F811
    sim = simulator(accounts=1, calls=6_000, burst_every=500, burst_calls=250, seed=36)
    auth_id = sim.accounts[0].auth_id
    run = etl(sim, api={"concurrency": 4})
    run()
    sim.add_calls(auth_id, 180, same_second=True)

    run()

    assert_matches_simulator(run.engine, sim)


@pytest.mark.parametrize("dynamics", ["deletions", "late-listings"])
def test_a_moving_window_with_deletions_or_late_listings_converges(simulator, etl, database_url,  # noqa: F811
                                                                   dynamics):
    sim = simulator(accounts=2, calls=5_000, latency_ms=2, seed=37)
    run = etl(sim, database_url, api={"concurrency": 4})
    # Calls arrive, age out and finish while the syncs read; late listings arrive meanwhile
    # too, deletions between the syncs (one while a walk reads the pages right around it can
    # hide behind a neighbour it pushed out of reach: see the README, "What it cannot see").
    late = {"late_rate": 3, "late_max_age_s": 86400} if dynamics == "late-listings" else {}
    sim.set_faults(drift_rate=40, expire_rate=30, finish_after_s=0.5, **late)
    for _ in range(2):
        if dynamics == "deletions":
            for account in sim.accounts:
                listed = sim.calls(account.auth_id)
                for index in range(300, len(listed) - 300, 397):
                    sim.delete_call(account.auth_id, listed[index]["call_uuid"])
        run()
    sim.set_faults(drift_rate=0, expire_rate=0, delete_rate=0, late_rate=0, finish_after_s=None)
    sim.finish_open_calls()

    run()

    for account in sim.accounts:
        assert_window_matches(run.engine, sim, account.auth_id)
        rows = stored_rows(run.engine, account.auth_id)
        oldest = parse_timestamp(sim.calls(account.auth_id)[-1]["start_time"])
        # Deleted from inside the window (a call deleted that has aged out since cannot be
        # told from one that aged out, and is kept as it was) ...
        inside = [u for u in sim.deleted(account.auth_id) if u in rows
                  and rows[u]["start_time"] > oldest]
        assert all(rows[u]["deleted_at"] is not None for u in inside)
        # ... while ageing out flags nothing.
        assert all(rows[u]["deleted_at"] is None for u in sim.expired(account.auth_id) if u in rows)


def test_backfill_of_a_range_the_provider_no_longer_lists_changes_nothing(simulator, project):
    sim = simulator(accounts=1, calls=3_000, days=30, retention_days=10, seed=38)
    proj = project(sim)
    proj.run("sync", check=True)
    newest = parse_timestamp(sim.calls(sim.accounts[0].auth_id)[0]["start_time"])
    old = (newest - timedelta(days=20)).strftime("%Y-%m-%d")
    older = (newest - timedelta(days=25)).strftime("%Y-%m-%d")

    gone = proj.run("backfill", "--since", older, "--until", old)
    straddle = proj.run("backfill", "--since", older,
                        "--until", (newest - timedelta(days=5)).strftime("%Y-%m-%d"))

    assert gone.returncode == 0, gone.stderr
    assert "the provider lists calls from" in gone.stderr and "nothing changed" in gone.stderr
    assert "new=0 updated=0 unchanged=0" in gone.stdout
    assert straddle.returncode == 0, straddle.stderr
    assert "backfilled the part of the range still listed" in straddle.stderr


def test_status_shows_the_window_and_deleted_calls(simulator, project):
    sim = simulator(accounts=1, calls=2_000, seed=39)
    auth_id = sim.accounts[0].auth_id
    proj = project(sim)
    proj.run("sync", check=True)
    sim.expire_oldest(auth_id, 100)
    sim.delete_call(auth_id, sim.calls(auth_id)[700]["call_uuid"])
    proj.run("sync", check=True)

    import json
    report = json.loads(proj.run("status", "--json", check=True).stdout)["accounts"][0]
    oldest = sim.calls(auth_id)[-1]["start_time"]
    assert report["window_start"] == oldest
    assert report["deleted_calls"] == 1
    assert report["calls"] == 2_000
    text = proj.run("status", check=True).stdout
    assert "window from" in text and "deleted" in text


def test_verify_raises_no_alarm_over_calls_that_aged_out(simulator, project, engine_for):
    sim = simulator(accounts=1, calls=3_000, seed=40)
    auth_id = sim.accounts[0].auth_id
    proj = project(sim)
    proj.run("sync", check=True)
    sim.expire_oldest(auth_id, 200)

    clean = proj.run("verify")

    assert clean.returncode == 0, clean.stdout + clean.stderr
    from sqlalchemy import delete

    from etl.schema import calls
    with engine_for(proj.database_url).begin() as conn:
        conn.execute(delete(calls).where(calls.c.call_uuid == sim.calls(auth_id)[1500]["call_uuid"]))
    missing = proj.run("verify")
    assert missing.returncode == 1
    assert "total" in missing.stdout and "-1" in missing.stdout


def test_sync_state_holds_no_positions(simulator, etl):  # noqa: F811
    sim = simulator(accounts=1, calls=1_000, seed=41)
    auth_id = sim.accounts[0].auth_id
    run = etl(sim)
    run()
    with run.engine.connect() as conn:
        state = read_state(conn, auth_id)
    assert not hasattr(state, "synced_seq")
    assert len(state.coverage) == 1

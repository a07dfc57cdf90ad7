"""`etl sync` end to end: the simulator over real sockets, `etl` in a subprocess, real databases."""

from __future__ import annotations

import json

from sqlalchemy import select

from etl.schema import calls
from tests.helpers import assert_matches_simulator, stored_rows


def test_sync_through_faults_stores_exactly_the_simulators_calls(simulator, project, any_database_url,
                                                                   engine_for):
    database_url = any_database_url
    sim = simulator(accounts=2, calls=3000, error_rate=0.05, reset_rate=0.02, truncate_rate=0.02,
                    rate_limit=200, seed=7)
    proj = project(sim, database_url)

    result = proj.run("sync", check=True)

    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert [line.split(":")[0] for line in lines] == ["acct1", "acct2"]
    assert all(": ok new=3000 " in line for line in lines), result.stdout
    assert sum(sim.stats(a.auth_id)["by_status"].get(200, 0) for a in sim.accounts) >= 60
    assert assert_matches_simulator(engine_for(database_url), sim) == 6000


def test_second_sync_with_nothing_new_changes_no_row(simulator, project, any_database_url, engine_for):
    database_url = any_database_url
    sim = simulator(accounts=1, calls=2000, seed=3)
    proj = project(sim, database_url)
    proj.run("sync", check=True)
    engine = engine_for(database_url)
    before = stored_rows(engine)
    sim.reset_stats()

    result = proj.run("--log-format", "json", "sync", check=True)

    summary = json.loads(result.stdout.splitlines()[-1])
    assert summary["new"] == summary["updated"] == 0
    assert summary["requests"] <= 3
    assert sim.stats()["requests"] == summary["requests"]
    assert stored_rows(engine) == before  # updated_at and first_seen_at included


def test_sync_updates_calls_that_finished_since_the_last_sync(simulator, project, any_database_url,
                                                              engine_for):
    database_url = any_database_url
    sim = simulator(accounts=1, calls=1500, seed=5)
    proj = project(sim, database_url)
    auth_id = sim.accounts[0].auth_id
    proj.run("sync", check=True)
    engine = engine_for(database_url)
    was_open = {c["call_uuid"] for c in sim.open_calls(auth_id)}
    assert was_open, "the simulator should start with open calls"
    before = stored_rows(engine)

    assert sim.finish_open_calls(auth_id) == len(was_open)
    proj.run("sync", check=True)

    after = stored_rows(engine)
    assert_matches_simulator(engine, sim)
    for uuid, row in after.items():
        if uuid in was_open:
            assert row["updated_at"] > before[uuid]["updated_at"]
            assert row["first_seen_at"] == before[uuid]["first_seen_at"]
        else:
            assert row["updated_at"] == before[uuid]["updated_at"]


def test_sync_exits_2_with_one_line_on_a_missing_token(simulator, project):
    sim = simulator(accounts=1, calls=10)
    proj = project(sim)
    proj.env.clear()

    result = proj.run("sync")

    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "VOX_TOKEN_ACCT1" in result.stderr
    assert "Traceback" not in result.stderr
    assert sim.stats()["requests"] == 0


def test_a_refused_token_fails_that_account_alone(simulator, project, engine_for):
    sim = simulator(accounts=2, calls=300)
    proj = project(sim)
    proj.env["VOX_TOKEN_ACCT1"] = "tvx_wrong_token_123"

    result = proj.run("sync")

    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "acct1" in errors[0] and "401" in errors[0], result.stderr
    assert "VOX_TOKEN_ACCT1" in errors[0]
    assert "tvx_wrong_token_123" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    engine = engine_for(proj.database_url)
    with engine.connect() as conn:
        stored = {r[0] for r in conn.execute(select(calls.c.account_id).distinct())}
    assert stored == {sim.accounts[1].auth_id}
    assert sim.stats(sim.accounts[0].auth_id)["requests"] == 1


def test_status_reports_each_account(simulator, project):
    sim = simulator(accounts=2, calls=500)
    proj = project(sim)
    proj.run("sync", check=True)

    result = proj.run("status", "--json", check=True)

    accounts = {a["account_name"]: a for a in json.loads(result.stdout)["accounts"]}
    assert set(accounts) == {"acct1", "acct2"}
    for account in accounts.values():
        assert account["calls"] == 500
        assert account["last_outcome"] == "ok"
        assert account["last_success_at"] and account["watermark"]
        assert account["open_calls"] == len(sim.open_calls(account["account_id"]))

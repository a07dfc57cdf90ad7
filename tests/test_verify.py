"""`etl verify`: clean after a sync, loud when a row goes missing, silent about open calls
that finished and calls that arrived since."""

from __future__ import annotations

import json

from sqlalchemy import delete, update

from etl.schema import calls


def test_verify_is_clean_after_a_sync(simulator, project, database_url):
    sim = simulator(accounts=2, calls=2_000, seed=71)
    proj = project(sim, database_url)
    proj.run("sync", check=True)
    sim.reset_stats()

    result = proj.run("verify")

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("calls match the API") == 2
    assert sim.stats()["requests"] <= 2 * 16


def test_verify_reports_the_account_and_counts_when_a_row_is_deleted(simulator, project, database_url,
                                                                     engine_for):
    sim = simulator(accounts=2, calls=1_500, seed=72)
    proj = project(sim, database_url)
    proj.run("sync", check=True)
    victim = next(c for c in sim.calls(sim.accounts[1].auth_id) if c["status"] == "completed")
    with engine_for(database_url).begin() as conn:
        conn.execute(delete(calls).where(calls.c.call_uuid == victim["call_uuid"]))

    result = proj.run("verify")

    assert result.returncode == 1
    rows = [line.split() for line in result.stdout.splitlines() if "mismatch" in line]
    assert ["acct2", "total", "1500", "1499", "-1", "mismatch"] in rows
    assert rows[1][:2] == ["acct2", "status=completed"] and rows[1][4] == "-1"
    direction = f"direction={victim['direction']}"
    assert any(r[:2] == ["acct2", direction] for r in rows)
    assert not any(r[0] == "acct1" for r in rows)
    assert "acct1: ok" in result.stdout


def test_open_calls_that_finished_and_calls_that_arrived_raise_no_false_alarm(simulator, project,
                                                                             database_url):
    sim = simulator(accounts=1, calls=1_000, seed=73)
    auth_id = sim.accounts[0].auth_id
    proj = project(sim, database_url)
    proj.run("sync", check=True)
    finished = sim.finish_open_calls(auth_id)
    sim.add_calls(auth_id, 150)
    assert finished > 0

    result = proj.run("--log-format", "json", "verify")

    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] and report["changed_since_sync"] == finished
    assert report["arrived_since_sync"] == 150


def test_a_changed_status_is_a_mismatch(simulator, project, engine_for):
    sim = simulator(accounts=1, calls=800, seed=74)
    proj = project(sim)
    proj.run("sync", check=True)
    victim = next(c for c in sim.calls(sim.accounts[0].auth_id) if c["status"] == "busy")
    with engine_for(proj.database_url).begin() as conn:
        conn.execute(update(calls).where(calls.c.call_uuid == victim["call_uuid"]).values(status="completed"))

    result = proj.run("verify")

    assert result.returncode == 1
    assert "status=busy" in result.stdout and "status=completed" in result.stdout


def test_verify_accounts_goes_on_past_an_account_the_api_refuses(simulator, project, engine_for,
                                                                 monkeypatch):
    from etl.config import load_config
    from etl.verify import verify_accounts

    sim = simulator(accounts=2, calls=800, seed=74)
    proj = project(sim)
    proj.run("sync", check=True)
    config = load_config(proj.config, environ={})
    for key, value in proj.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv(config.accounts[0].token_env, "tvx_wrong_token")
    seen = []

    results = verify_accounts(engine_for(proj.database_url), config, config.accounts,
                              on_result=seen.append)

    assert seen == results and [r.account for r in results] == ["acct1", "acct2"]
    refused, checked = results
    assert not refused.ok and "401" in refused.error and not refused.compared
    assert checked.ok and checked.error is None
    assert checked.compared["total"] == (800, 800)

"""What operators see: JSON logs, the progress display, --version, --help, exit codes."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys

from etl import __version__


def test_json_logs_parse_line_by_line_with_account_event_and_counts(simulator, project):
    sim = simulator(accounts=2, calls=600, seed=61)
    sim.inject(sim.accounts[0].auth_id, 503, "html502")
    proj = project(sim)

    result = proj.run("--log-format", "json", "-vv", "sync", check=True)

    out = [json.loads(line) for line in result.stdout.splitlines()]
    err = [json.loads(line) for line in result.stderr.splitlines()]
    assert {o["account"] for o in out} == {"acct1", "acct2"}
    assert all(o["event"] == "summary" and o["new"] == 600 for o in out)
    assert err, "-vv logs retries and plans"
    assert all({"ts", "level", "event", "message"} <= set(e) for e in err)
    retries = [e for e in err if e["event"] == "retry"]
    assert [e["account"] for e in retries] == ["acct1", "acct1"]
    assert [e["error"] for e in retries] == ["HTTP 503 Service Unavailable", "HTTP 502 Bad Gateway"]


def test_no_progress_display_when_output_is_not_a_terminal(simulator, project):
    sim = simulator(accounts=1, calls=3000, latency_ms=2)
    result = project(sim).run("sync", check=True)
    assert "\r" not in result.stderr and "\x1b[" not in result.stderr
    assert result.stderr == ""


def test_json_progress_events_for_dashboards(simulator, project):
    sim = simulator(accounts=2, calls=3000, seed=62)
    proj = project(sim)

    result = proj.run("--log-format", "json", "sync", check=True, env={"ETL_PROGRESS_INTERVAL": "0"})

    events = [json.loads(line) for line in result.stderr.splitlines()]
    for account in ("acct1", "acct2"):
        mine = [e for e in events if e["event"] == "progress" and e["account"] == account]
        done = [e["calls_done"] for e in mine]
        assert len(mine) >= 3 and done == sorted(done) and done[0] == 0 and done[-1] == 3000
        # the first sync knows its size once page 1 is read
        assert {e["calls_expected"] for e in mine[1:]} == {3000}
        assert mine[-1]["percent"] == 100.0 and mine[-1]["eta_seconds"] == 0
        assert all({"ts", "level", "message", "calls_per_second"} <= set(e) for e in mine)
    assert all(json.loads(line)["event"] == "summary" for line in result.stdout.splitlines())


def test_progress_display_on_a_terminal(simulator, project):
    sim = simulator(accounts=2, calls=5000, latency_ms=5)
    proj = project(sim)
    primary, secondary = pty.openpty()
    env = {**os.environ, **proj.env}
    env.pop("ETL_DATABASE_URL", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "etl", "--config", str(proj.config), "sync"],
        cwd=proj.path, env=env, stdout=subprocess.PIPE, stderr=secondary, text=True)
    os.close(secondary)
    shown = b""
    while True:
        try:
            chunk = os.read(primary, 4096)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    process.wait(timeout=120)
    os.close(primary)
    assert process.returncode == 0
    # One bar per account, with percent, calls/s and time remaining.
    assert b"acct1" in shown and b"acct2" in shown
    assert re.search(rb"\d+%", shown) and b"calls/s" in shown and b"/5,000 calls" in shown
    assert re.search(rb"\d:\d\d:\d\d", shown)
    out = process.stdout.read()
    assert "acct1: ok new=5000" in out and "acct2: ok new=5000" in out


def test_version_and_help():
    version = subprocess.run([sys.executable, "-m", "etl", "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and __version__ in version.stdout
    for command in ("sync", "backfill", "status", "verify", "migrate", "simulate"):
        helped = subprocess.run([sys.executable, "-m", "etl", command, "--help"],
                                capture_output=True, text=True)
        assert helped.returncode == 0
        assert "Example" in helped.stdout, command


def test_usage_errors_exit_2(simulator, project):
    sim = simulator(accounts=1, calls=10)
    proj = project(sim)
    cases = [
        ("sync", "--account", "nobody"),
        ("backfill", "--since", "2026-02-01", "--until", "2026-01-01"),
        ("backfill", "--since", "last week", "--until", "2026-01-01"),
        ("sync", "--bogus"),
    ]
    for args in cases:
        result = proj.run(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr
    assert sim.stats()["requests"] == 0


def _imported(stderr: str) -> set[str]:
    """The modules a `python -X importtime` run imported, from its report on stderr."""
    return {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines()
            if line.startswith("import time:") and "|" in line}


def test_a_sync_with_nothing_to_migrate_imports_only_what_it_uses(simulator, project):
    # A scheduled sync pays its start-up every run: Alembic loads only when a migration is due,
    # rich only for a terminal, the PostgreSQL and MySQL dialects only for those databases.
    sim = simulator(accounts=1, calls=300)
    proj = project(sim)
    argv = [sys.executable, "-X", "importtime", "-m", "etl", "--config", str(proj.config), "sync"]
    env = {**os.environ, **proj.env}
    env.pop("ETL_DATABASE_URL", None)
    first, again = (subprocess.run(argv, cwd=proj.path, env=env, capture_output=True, text=True,
                                   timeout=120) for _ in range(2))
    assert first.returncode == 0 and again.returncode == 0, again.stderr[-2000:]
    assert "acct1: ok new=300" in first.stdout and "acct1: ok new=0" in again.stdout
    assert "alembic" in _imported(first.stderr)  # the first run created the tables
    loaded = _imported(again.stderr)
    assert {"sqlalchemy", "requests", "etl.runner"} <= loaded
    unused = {"alembic", "rich", "sqlalchemy.dialects.postgresql", "sqlalchemy.dialects.mysql"}
    assert not loaded & unused

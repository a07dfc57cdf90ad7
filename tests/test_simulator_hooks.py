"""The simulator's test hooks over HTTP (/_sim/...), which drive a simulator in another process
the way tests drive one in-process, and `etl simulate`'s flags for the new behaviour."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from etl.simulator import Simulator
from etl.simulator.hooks import HOOKS

ROOT = Path(__file__).resolve().parents[1]


class Hooks:
    def __init__(self, sim: Simulator) -> None:
        self.root = sim.base_url.removesuffix("/v1")
        self.session = requests.Session()

    def post(self, name: str, **body: Any) -> Any:
        r = self.session.post(f"{self.root}/_sim/{name}", json=body, timeout=10)
        assert r.status_code == 200, r.text
        return r.json()

    def get(self, name: str, **params: Any) -> Any:
        r = self.session.get(f"{self.root}/_sim/{name}", params=params, timeout=10)
        assert r.status_code == 200, r.text
        return r.json()

    def status(self, method: str, name: str, **body: Any) -> int:
        return self.session.request(method, f"{self.root}/_sim/{name}", json=body or None,
                                    timeout=10).status_code


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(accounts=2, calls=200, seed=31, open_fraction=0.0) as s:
        yield s


def api(sim: Simulator, **params: Any) -> dict[str, Any]:
    account = sim.accounts[0]
    r = requests.get(f"{sim.base_url}/voice/accounts/{account.auth_id}/calls", params=params,
                     headers={"Authorization": f"Bearer {account.token}"}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def test_hooks_change_the_list_as_the_in_process_methods_do(sim: Simulator) -> None:
    h, a = Hooks(sim), sim.accounts[0].auth_id
    head = sim.calls(a)[0]
    added = h.post("add-calls", auth_id=a, n=3, same_second=True)["calls"]
    assert {c["start_time"] for c in added} == {head["start_time"]}
    assert api(sim, per_page=4)["calls"] == [*reversed(added), head]

    h.post("clock", seconds=3600)
    spread = h.post("add-calls", auth_id=a, n=50, spread_s=3600)["calls"]
    assert len({c["start_time"] for c in spread}) > 10
    assert api(sim, per_page=50)["calls"] == list(reversed(spread))

    late = h.post("late-call", auth_id=a, age_seconds=7200, fields={"status": "busy"})["call"]
    assert late["status"] == "busy" and late in sim.calls(a)

    victim = sim.calls(a)[50]["call_uuid"]
    assert h.post("delete", auth_id=a, call_uuid=victim)["call"]["call_uuid"] == victim
    assert victim not in sim.listed_uuids(a)
    truth = h.get("truth", auth_id=a)
    assert truth["deleted"] == [victim] and truth["listed"] == sim.listed_uuids(a)
    h.post("restore", auth_id=a, call_uuid=victim)
    assert sim.listed_uuids(a)[50] == victim

    oldest = sim.listed_uuids(a)[-2:]
    assert h.post("expire", auth_id=a, n=2)["expired"] == list(reversed(oldest))
    truth = h.get("truth", auth_id=a)
    assert truth["expired"] == list(reversed(oldest))
    assert truth["oldest_start_time"] == sim.calls(a)[-1]["start_time"]

    n_open = len(sim.open_calls(a))
    assert n_open and h.post("finish-open-calls", auth_id=a) == {"finished": n_open}
    h.post("set-call", auth_id=a, call_uuid=victim, fields={"status": "ringing", "end_time": None})
    assert [c["call_uuid"] for c in h.get("open-calls", auth_id=a)["calls"]] == [victim]
    expected = 1 + len(sim.open_calls("MA100002"))
    assert h.post("finish-open-calls") == {"finished": expected}  # every account
    h.post("add-record", auth_id=a, record={"call_uuid": None, "note": "broken"})
    assert api(sim, per_page=1)["calls"] == [{"call_uuid": None, "note": "broken"}]
    assert h.get("calls", auth_id=a)["calls"] == sim.calls(a)


def test_hooks_set_faults_inject_and_count(sim: Simulator) -> None:
    h, a = Hooks(sim), sim.accounts[0].auth_id
    config = h.post("faults", per_page_cap=7, rate_headers="ietf", window_limit=1000,
                    window_seconds=1_000_000)["config"]
    assert config["per_page_cap"] == 7 and sim.config.rate_headers == "ietf"
    body = api(sim, per_page=50)
    assert len(body["calls"]) == 7
    h.post("inject", auth_id=a, responses=[503, "ok"])
    account = sim.accounts[0]
    url = f"{sim.base_url}/voice/accounts/{a}/calls"
    auth = {"Authorization": f"Bearer {account.token}"}
    assert requests.get(url, headers=auth, timeout=10).status_code == 503
    ok = requests.get(url, headers=auth, timeout=10)
    assert ok.status_code == 200 and ok.headers["RateLimit-Limit"] == "1000"
    stats = h.get("stats", auth_id=a)
    assert stats["requests"] == 3 and stats["by_status"] == {"200": 2, "503": 1}
    assert stats["limits"] == {"throttled": 0, "foreign_requests": 0, "foreign_refused": 0}
    assert h.get("stats")["requests"] == 3  # the hooks themselves are not counted
    h.post("reset-stats")
    assert sim.stats()["requests"] == 0
    assert [x["auth_id"] for x in h.get("accounts")["accounts"]] == ["MA100001", "MA100002"]
    assert h.get("config")["config"]["per_page_cap"] == 7


def test_hooks_move_the_clock_and_the_window_with_it() -> None:
    with Simulator(accounts=1, calls=500, days=2, retention_days=1, seed=32) as sim:
        h, a = Hooks(sim), sim.accounts[0].auth_id
        before = sim.count(a)
        assert h.post("clock", seconds=12 * 3600)["offset_s"] == 12 * 3600
        after = api(sim, per_page=1)["pagination"]["total_count"]
        assert after < before
        assert len(sim.expired(a)) == before - after


def test_hook_errors_are_json_and_precise(sim: Simulator) -> None:
    h, a = Hooks(sim), sim.accounts[0].auth_id
    assert h.status("POST", "add-calls", n=1) == 400  # no auth_id
    assert h.status("POST", "add-calls", auth_id="MA999999", n=1) == 404
    assert h.status("POST", "delete", auth_id=a, call_uuid="nope") == 404
    assert h.status("POST", "restore", auth_id=a, call_uuid="nope") == 404
    h.post("expire", auth_id=a, n=1)  # the window now has a start; nothing is listed before it
    assert h.status("POST", "late-call", auth_id=a, age_seconds=10 * 86400 * 365) == 400
    assert h.status("POST", "faults", calls=5) == 400
    assert h.status("POST", "faults", error_rate=3) == 400
    assert h.status("POST", "inject", auth_id=a, responses=["explode"]) == 400
    assert h.status("GET", "add-calls") == 405
    assert h.status("POST", "no-such-hook") == 404
    r = requests.post(f"{h.root}/_sim/add-calls", data=b"{not json", timeout=10)
    assert r.status_code == 400 and r.json()["error"] == "bad_request"
    assert set(h.get("help")["hooks"]) == {f"/_sim/{name}" for name in HOOKS}


def test_hooks_are_not_reachable_through_the_api_routes(sim: Simulator) -> None:
    account = sim.accounts[0]
    auth = {"Authorization": f"Bearer {account.token}"}
    for path in ("/_sim/stats", "/voice/accounts/MA100001/_sim/stats", "/voice/_sim/add-calls"):
        r = requests.get(f"{sim.base_url}{path}", headers=auth, timeout=10)
        assert r.status_code == 404
    r = requests.post(f"{sim.base_url}/voice/accounts/{account.auth_id}/calls", headers=auth,
                      json={"n": 5}, timeout=10)
    assert r.status_code == 405
    assert sim.count(account.auth_id) == 200


def test_hooks_answer_loopback_peers_only() -> None:
    from etl.simulator.server import _is_loopback

    assert _is_loopback("127.0.0.1") and _is_loopback("::1") and _is_loopback("::ffff:127.0.0.1")
    assert not _is_loopback("10.0.0.5") and not _is_loopback("192.168.1.2")
    assert not _is_loopback("::ffff:10.0.0.5") and not _is_loopback("not an address")


def test_etl_simulate_accepts_the_new_flags_and_serves_hooks(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "etl", "simulate", "--port", "0", "--accounts", "1",
         "--calls", "400", "--days", "3", "--retention-days", "2", "--burst-every", "100",
         "--burst-calls", "30", "--burst-size", "5", "--late-max-age", "2h",
         "--rate-window", "300/5", "--rate-headers", "both", "--retry-after-format", "none",
         "--rate-burst", "5", "--foreign-rate", "1", "--expire-rate", "0",
         "--delete-rate", "0", "--late-rate", "0"],
        stdout=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        m = re.fullmatch(r"Vox API simulator listening on (http://127\.0\.0\.1:\d+)/v1\n", first)
        assert m, first
        root = m.group(1)
        config = requests.get(f"{root}/_sim/config", timeout=10).json()["config"]
        assert (config["window_limit"], config["window_seconds"]) == (300, 5.0)
        assert config["late_max_age_s"] == 7200 and config["retention_days"] == 2
        assert config["retry_after_format"] == "none" and config["rate_burst"] == 5
        added = requests.post(f"{root}/_sim/add-calls", json={"auth_id": "MA100001", "n": 2},
                              timeout=10).json()["calls"]
        r = requests.get(f"{root}/v1/voice/accounts/MA100001/calls",
                         headers={"Authorization": "Bearer tvx_sim_MA100001"}, timeout=10)
        assert [c["call_uuid"] for c in r.json()["calls"][:2]] == [
            c["call_uuid"] for c in reversed(added)
        ]
        assert r.headers["RateLimit-Limit"] == "300" and "X-RateLimit-Reset" in r.headers
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rate-window", "300"], "--rate-window"),
        (["--rate-window", "0/5"], "--rate-window"),
        (["--rate-headers", "all"], "--rate-headers"),
        (["--late-max-age", "soon"], "--late-max-age"),
        (["--burst-every", "10", "--burst-calls", "20"], "--burst-calls"),
        (["--retention-days", "-1"], "--retention-days"),
    ],
)
def test_etl_simulate_rejects_bad_flags_in_one_line(args: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "etl", "simulate", *args],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("etl: error: simulate: ")
    assert message in lines[0]
    assert result.stdout == ""


def test_etl_simulate_help_names_every_setting() -> None:
    from click.testing import CliRunner

    from etl.cli import cli
    from etl.simulator import SimulatorConfig

    text = CliRunner().invoke(cli, ["simulate", "--help"]).output
    flags = {"finish_after_s": "--finish-after", "late_max_age_s": "--late-max-age",
             "window_limit": "--rate-window", "window_seconds": "--rate-window"}
    for name in SimulatorConfig.__dataclass_fields__:
        assert flags.get(name, "--" + name.replace("_", "-")) in text, name

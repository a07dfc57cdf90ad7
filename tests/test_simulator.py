"""The Vox API simulator, exercised over real sockets with requests."""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from etl.simulator import SimAccount, Simulator, SimulatorConfig, serve

STATUSES = {"ringing", "in-progress", "completed", "failed", "busy", "no-answer", "canceled"}
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
E164 = re.compile(r"^\+1\d{10}$")
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


class Client:
    """A thin requests.Session bound to one simulated account."""

    def __init__(self, sim: Simulator, account: SimAccount, token: str | None = None) -> None:
        self.sim = sim
        self.auth_id = account.auth_id
        self.url = f"{sim.base_url}/voice/accounts/{account.auth_id}/calls"
        self.session = requests.Session()
        if token is None:
            token = account.token
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def get(self, **params: Any) -> requests.Response:
        return self.session.get(self.url, params=params, timeout=5)

    def page(self, **params: Any) -> dict[str, Any]:
        r = self.get(**params)
        assert r.status_code == 200, r.text
        return r.json()

    def all_pages(self, per_page: int = 100, **params: Any) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        page = 1
        while True:
            body = self.page(page=page, per_page=per_page, **params)
            if not body["calls"]:
                return out
            out.extend(body["calls"])
            page += 1


@pytest.fixture(scope="module")
def shared() -> Iterator[Simulator]:
    """A read-only simulator shared by the tests that do not change data or faults."""
    with Simulator(accounts=3, calls=250, seed=7) as sim:
        yield sim


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(accounts=2, calls=120, seed=3) as s:
        yield s


def client(sim: Simulator, i: int = 0) -> Client:
    return Client(sim, sim.accounts[i])


# --- the data --------------------------------------------------------------------------------


def test_accounts_are_deterministic(shared: Simulator) -> None:
    assert [(a.name, a.auth_id, a.token) for a in shared.accounts] == [
        ("acct1", "MA100001", "tvx_sim_MA100001"),
        ("acct2", "MA100002", "tvx_sim_MA100002"),
        ("acct3", "MA100003", "tvx_sim_MA100003"),
    ]
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v1", shared.base_url)


def test_same_seed_same_calls() -> None:
    a = Simulator(accounts=1, calls=300, seed=11).calls("MA100001")
    b = Simulator(accounts=1, calls=300, seed=11).calls("MA100001")
    c = Simulator(accounts=1, calls=300, seed=12).calls("MA100001")

    def key(calls: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        # Timestamps hang off the wall clock; everything else must repeat exactly.
        return [(x["call_uuid"], x["from"], x["status"], x["duration"]) for x in calls]

    assert key(a) == key(b)
    assert key(a) != key(c)


def test_records_are_realistic(shared: Simulator) -> None:
    calls = shared.calls("MA100001")
    assert len(calls) == 250
    assert len({c["call_uuid"] for c in calls}) == 250
    newest = dt.datetime.fromisoformat(calls[0]["start_time"])
    assert abs((dt.datetime.now(dt.UTC) - newest).total_seconds()) < 60
    n_open = 0
    for c in calls:
        assert list(c) == [
            "call_uuid", "from", "to", "direction", "status", "duration",
            "start_time", "answer_time", "end_time", "end_reason",
        ]  # fmt: skip
        assert UUID4.match(c["call_uuid"])
        assert E164.match(c["from"]) and E164.match(c["to"])
        assert c["direction"] in ("inbound", "outbound")
        assert c["status"] in STATUSES
        assert TS.match(c["start_time"])
        start = dt.datetime.fromisoformat(c["start_time"])
        if c["status"] in ("ringing", "in-progress"):
            n_open += 1
            assert c["end_time"] is None and c["duration"] is None and c["end_reason"] is None
            assert (c["answer_time"] is None) == (c["status"] == "ringing")
            assert (newest - start).total_seconds() <= 600
            continue
        end = dt.datetime.fromisoformat(c["end_time"])
        assert start <= end <= newest + dt.timedelta(seconds=10)
        assert c["end_reason"]
        if c["status"] == "completed":
            answer = dt.datetime.fromisoformat(c["answer_time"])
            assert start <= answer <= end
            assert c["duration"] == (end - answer).total_seconds()
        else:
            assert c["answer_time"] is None and c["duration"] == 0
    assert 1 <= n_open <= 8
    statuses = Counter(c["status"] for c in calls)
    assert statuses["completed"] > 0.5 * len(calls)


def test_served_bytes_match_compact_json(shared: Simulator) -> None:
    # Generated calls use a hand-written formatter; it must equal what json would write.
    r = client(shared).get(per_page=100)
    assert r.content == json.dumps(r.json(), separators=(",", ":")).encode()


def test_calls_returns_a_copy(shared: Simulator) -> None:
    calls = shared.calls("MA100002")
    calls[0]["status"] = "mangled"
    calls.pop()
    assert shared.calls("MA100002")[0]["status"] != "mangled"
    assert len(shared.calls("MA100002")) == 250


# --- pagination ------------------------------------------------------------------------------


def test_pagination_fields_and_newest_first(shared: Simulator) -> None:
    c = client(shared)
    body = c.page()
    assert body["pagination"] == {"page": 1, "per_page": 20, "total_pages": 13, "total_count": 250}
    assert len(body["calls"]) == 20
    last = c.page(page=3, per_page=100)
    assert last["pagination"] == {"page": 3, "per_page": 100, "total_pages": 3, "total_count": 250}
    assert len(last["calls"]) == 50
    served = c.all_pages(per_page=100)
    assert served == shared.calls("MA100001")
    starts = [x["start_time"] for x in served]
    assert starts == sorted(starts, reverse=True)
    assert c.get(per_page=100).headers["Content-Type"] == "application/json"


def test_ties_are_broken_by_insertion(sim: Simulator) -> None:
    auth_id = sim.accounts[0].auth_id
    added = sim.add_calls(auth_id, 6, open_fraction=0.0)
    assert len({a["start_time"] for a in added}) == 1  # same second: a tie
    head = client(sim).page(per_page=6)["calls"]
    assert [x["call_uuid"] for x in head] == [a["call_uuid"] for a in reversed(added)]
    starts = [x["start_time"] for x in sim.calls(auth_id)]
    assert starts == sorted(starts, reverse=True)


def test_per_page_is_capped(shared: Simulator) -> None:
    body = client(shared).page(per_page=1000)
    assert body["pagination"]["per_page"] == 100
    assert body["pagination"]["total_pages"] == 3
    assert len(body["calls"]) == 100


def test_lower_per_page_cap() -> None:
    with Simulator(accounts=1, calls=30, per_page_cap=7) as sim:
        c = client(sim)
        body = c.page(per_page=50)
        assert body["pagination"] == {"page": 1, "per_page": 7, "total_pages": 5, "total_count": 30}
        assert len(body["calls"]) == 7
        assert c.page(per_page=5)["pagination"]["per_page"] == 5
        assert c.all_pages(per_page=50) == sim.calls(sim.accounts[0].auth_id)
        sim.set_faults(per_page_cap=4)
        assert len(c.page(per_page=50)["calls"]) == 4


def test_page_past_the_end_is_empty(shared: Simulator) -> None:
    body = client(shared).page(page=99, per_page=100)
    assert body == {
        "calls": [],
        "pagination": {"page": 99, "per_page": 100, "total_pages": 3, "total_count": 250},
    }


def test_empty_account() -> None:
    with Simulator(accounts=1, calls=0) as sim:
        body = client(sim).page()
        assert body == {
            "calls": [],
            "pagination": {"page": 1, "per_page": 20, "total_pages": 0, "total_count": 0},
        }
        assert sim.open_calls("MA100001") == []


@pytest.mark.parametrize(
    "params",
    [
        {"page": "0"},
        {"page": "-1"},
        {"page": "abc"},
        {"page": "1.5"},
        {"per_page": "0"},
        {"per_page": "ten"},
        {"status": "answered"},
        {"status": "COMPLETED"},
        {"direction": "sideways"},
    ],
)
def test_bad_parameters_are_400(shared: Simulator, params: dict[str, str]) -> None:
    r = client(shared).get(**params)
    assert r.status_code == 400
    assert r.headers["Content-Type"] == "application/json"
    assert r.json()["error"] == "bad_request"
    assert r.json()["message"]


def test_unknown_parameters_are_ignored(shared: Simulator) -> None:
    c = client(shared)
    assert c.page(since="2026-01-01", foo="bar") == c.page()


# --- auth ------------------------------------------------------------------------------------


def test_auth_errors(shared: Simulator) -> None:
    a1, a2 = shared.accounts[:2]
    no_token = Client(shared, a1, token="")
    r = no_token.get()
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    assert Client(shared, a1, token="tvx_sim_nope").get().status_code == 401
    r = Client(shared, a1, token=a2.token).get()
    assert r.status_code == 403 and r.json()["error"] == "forbidden"
    ghost = SimAccount("ghost", "MA999999", "x")
    r = Client(shared, ghost, token=a1.token).get()
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    r = requests.get(f"{shared.base_url}/voice/nothing", timeout=5)
    assert r.status_code == 404 and r.headers["Content-Type"] == "application/json"


# --- filters ---------------------------------------------------------------------------------


def test_filters_and_counts(shared: Simulator) -> None:
    c = client(shared, 2)
    calls = shared.calls("MA100003")
    by_status = Counter(x["status"] for x in calls)
    for status in STATUSES:
        body = c.page(status=status, per_page=1)
        assert body["pagination"]["total_count"] == by_status[status]
    outbound = c.all_pages(direction="outbound")
    assert outbound == [x for x in calls if x["direction"] == "outbound"]
    number = calls[5]["from"]
    assert c.all_pages(**{"from": number}) == [x for x in calls if x["from"] == number]
    number = calls[7]["to"]
    assert c.all_pages(to=number) == [x for x in calls if x["to"] == number]
    both = c.all_pages(per_page=7, status="completed", direction="inbound")
    expected = [x for x in calls if x["status"] == "completed" and x["direction"] == "inbound"]
    assert both == expected and both
    body = c.page(status="completed", direction="inbound", per_page=7)
    assert body["pagination"]["total_count"] == len(expected)
    assert c.page(**{"from": "+10000000000"})["pagination"]["total_count"] == 0


def test_combined_filter_follows_new_calls(sim: Simulator) -> None:
    c = client(sim)
    auth_id = sim.accounts[0].auth_id
    params = {"status": "completed", "direction": "outbound", "per_page": 1}
    before = c.page(**params)["pagination"]["total_count"]
    added = sim.add_calls(auth_id, 40, open_fraction=0.0)
    extra = sum(1 for x in added if x["status"] == "completed" and x["direction"] == "outbound")
    assert c.page(**params)["pagination"]["total_count"] == before + extra
    victim = next(
        x for x in sim.calls(auth_id) if x["status"] == "completed" and x["direction"] == "outbound"
    )
    sim.set_call(auth_id, victim["call_uuid"], status="failed")
    assert c.page(**params)["pagination"]["total_count"] == before + extra - 1


# --- drift and changes -----------------------------------------------------------------------


def test_drift_per_request_shifts_later_pages() -> None:
    with Simulator(accounts=1, calls=95, drift_per_request=3) as sim:
        auth_id = sim.accounts[0].auth_id
        snapshot = sim.calls(auth_id)
        c = client(sim)
        seen: list[str] = []
        page = 1
        while True:
            body = c.page(page=page, per_page=10)
            if page == 1:
                assert body["calls"] == snapshot[:10]
                assert body["pagination"]["total_count"] == 95
            if not body["calls"]:
                break
            seen.extend(x["call_uuid"] for x in body["calls"])
            page += 1
        assert {x["call_uuid"] for x in snapshot} <= set(seen)  # nothing missed
        assert len(seen) > len(set(seen))  # but duplicates across pages
        assert len(sim.calls(auth_id)) == 95 + 3 * page


def test_add_record_is_served_verbatim(sim: Simulator) -> None:
    auth_id = sim.accounts[0].auth_id
    broken = {
        "from": "+14155550000",
        "status": "teleported",
        "duration": "twelve",
        "start_time": "not a time",
        "end_time": None,
        "surprise": {"nested": [1, 2.5, None]},
    }
    sim.add_record(auth_id, broken)
    c = client(sim)
    body = c.page(per_page=2)
    assert body["calls"][0] == broken
    assert body["pagination"]["total_count"] == 121
    assert c.page(**{"from": "+14155550000"})["calls"] == [broken]
    assert c.get(status="teleported").status_code == 400
    # A later call still goes in front of it.
    new = sim.add_calls(auth_id, 1)[0]
    assert [x.get("call_uuid") for x in c.page(per_page=2)["calls"]] == [new["call_uuid"], None]


def test_set_call_is_a_late_change(sim: Simulator) -> None:
    auth_id = sim.accounts[1].auth_id
    c = client(sim, 1)
    before = sim.calls(auth_id)
    target = next(x for x in before[30:] if x["status"] == "completed")
    n_completed = c.page(status="completed", per_page=1)["pagination"]["total_count"]
    n_live = c.page(status="in-progress", per_page=1)["pagination"]["total_count"]
    sim.set_call(auth_id, target["call_uuid"], status="in-progress", end_time=None, duration=None)
    after = c.all_pages()
    assert [x["call_uuid"] for x in after] == [x["call_uuid"] for x in before]
    changed = next(x for x in after if x["call_uuid"] == target["call_uuid"])
    assert changed == {**target, "status": "in-progress", "end_time": None, "duration": None}
    assert c.page(status="completed", per_page=1)["pagination"]["total_count"] == n_completed - 1
    assert c.page(status="in-progress", per_page=1)["pagination"]["total_count"] == n_live + 1
    assert target["call_uuid"] in {x["call_uuid"] for x in sim.open_calls(auth_id)}
    with pytest.raises(KeyError):
        sim.set_call(auth_id, "no-such-call", status="busy")


def test_finish_open_calls(sim: Simulator) -> None:
    auth_id = sim.accounts[0].auth_id
    opened = sim.open_calls(auth_id)
    assert opened
    assert all(x["status"] in ("ringing", "in-progress") for x in opened)
    assert sim.finish_open_calls(auth_id) == len(opened)
    assert sim.open_calls(auth_id) == []
    c = client(sim)
    assert c.page(status="ringing")["pagination"]["total_count"] == 0
    assert c.page(status="in-progress")["pagination"]["total_count"] == 0
    final = {x["call_uuid"]: x for x in sim.calls(auth_id)}
    for x in opened:
        done = final[x["call_uuid"]]
        assert done["status"] in STATUSES - {"ringing", "in-progress"}
        assert done["end_time"] and done["end_reason"] and isinstance(done["duration"], int)
        assert done["start_time"] == x["start_time"]
    assert sim.open_calls(sim.accounts[1].auth_id)
    assert sim.finish_open_calls() > 0
    assert sim.open_calls(sim.accounts[1].auth_id) == []


def test_add_calls_keep_the_order() -> None:
    with Simulator(accounts=1, calls=50) as sim:
        auth_id = sim.accounts[0].auth_id
        newest = sim.calls(auth_id)[0]["start_time"]
        added = sim.add_calls(auth_id, 30, open_fraction=1.0)
        assert all(a["start_time"] >= newest for a in added)
        assert all(a["status"] in ("ringing", "in-progress") for a in added)
        assert len(sim.open_calls(auth_id)) >= 30
        served = client(sim).all_pages()
        assert served[:30] == list(reversed(added))


def test_drift_rate_and_finish_after() -> None:
    with Simulator(accounts=1, calls=10, drift_rate=200, finish_after_s=0.3) as sim:
        auth_id = sim.accounts[0].auth_id
        time.sleep(0.25)
        grown = client(sim).page()["pagination"]["total_count"]
        assert grown > 20
        sim.set_faults(drift_rate=0)
        time.sleep(0.5)
        assert sim.open_calls(auth_id) == []
        assert len(sim.calls(auth_id)) < grown + 20


# --- faults ----------------------------------------------------------------------------------


def test_injected_sequence(sim: Simulator) -> None:
    c = client(sim)
    sim.reset_stats()
    sim.inject(c.auth_id, 429, "429-date", 503, "html502", "reset", "truncate", 404)
    r = c.get()
    assert r.status_code == 429 and r.headers["Retry-After"] == "1"
    assert r.json()["error"] == "rate_limited"
    r = c.get()
    assert r.status_code == 429
    when = email.utils.parsedate_to_datetime(r.headers["Retry-After"])
    ahead = (when - dt.datetime.now(dt.UTC)).total_seconds()
    assert -0.1 < ahead <= 2.1
    r = c.get()
    assert r.status_code == 503 and r.json()["error"]
    r = c.get()
    assert r.status_code == 502
    assert r.headers["Content-Type"] == "text/html"
    assert r.text == "<html><body><h1>502 Bad Gateway</h1></body></html>"
    with pytest.raises(requests.ConnectionError):
        c.get()
    with pytest.raises((requests.RequestException, ValueError)):
        c.get().json()
    assert c.get().status_code == 404
    assert c.get().status_code == 200
    stats = sim.stats(c.auth_id)
    assert stats == {
        "requests": 8,
        "by_status": {429: 2, 503: 1, 502: 1, 200: 2, 404: 1},
        "resets": 1,
        "truncated": 1,
    }
    with pytest.raises(ValueError):
        sim.inject(c.auth_id, "explode")


def test_reset_is_abortive(sim: Simulator) -> None:
    c = client(sim)
    sim.inject(c.auth_id, "reset", "reset")
    for _ in range(2):
        with pytest.raises(requests.ConnectionError) as info:
            c.get()
        assert "reset" in str(info.value).lower() or "aborted" in str(info.value).lower()
    assert c.get().status_code == 200


def test_rate_limit_gives_429_with_both_retry_after_forms() -> None:
    with Simulator(accounts=1, calls=5, rate_limit=5) as sim:
        c = client(sim)
        codes, afters = [], []
        for _ in range(20):
            r = c.get()
            codes.append(r.status_code)
            if r.status_code == 429:
                afters.append(r.headers["Retry-After"])
        assert codes[0] == 200
        assert codes.count(429) >= 10
        assert any(a.isdigit() and int(a) >= 1 for a in afters)
        dates = [a for a in afters if not a.isdigit()]
        assert dates and email.utils.parsedate_to_datetime(dates[0]).tzinfo is not None
        time.sleep(0.25)  # a token comes back after 1/rate seconds
        assert c.get().status_code == 200
        sim.set_faults(rate_limit=0)
        assert all(c.get().status_code == 200 for _ in range(10))


def test_random_faults_follow_the_rates() -> None:
    with Simulator(accounts=1, calls=20, error_rate=0.3, reset_rate=0.1, truncate_rate=0.1) as sim:
        c = client(sim)
        outcomes: Counter[str] = Counter()
        for _ in range(150):
            try:
                r = c.get()
                if r.status_code == 200:
                    r.json()
                outcomes[str(r.status_code)] += 1
                if r.status_code >= 500 and r.headers["Content-Type"] == "text/html":
                    outcomes["html"] += 1
            except requests.ConnectionError:
                outcomes["reset"] += 1
            except (requests.RequestException, ValueError):
                outcomes["truncated"] += 1
        stats = sim.stats()
        assert stats["requests"] == 150
        assert outcomes["reset"] == stats["resets"] > 0
        assert outcomes["truncated"] == stats["truncated"] > 0
        assert outcomes["html"] > 0
        errors = sum(outcomes[k] for k in ("500", "502", "503"))
        assert 20 < errors < 75
        sim.set_faults(error_rate=0, reset_rate=0, truncate_rate=0)
        assert all(c.get().status_code == 200 for _ in range(10))


def test_set_faults_rejects_static_and_bad_settings(sim: Simulator) -> None:
    with pytest.raises(TypeError):
        sim.set_faults(calls=5)
    with pytest.raises(ValueError):
        sim.set_faults(error_rate=2.0)
    with pytest.raises(TypeError):
        Simulator(SimulatorConfig(calls=1), no_such_field=1)


def test_serve_stops_on_event(capsys: pytest.CaptureFixture[str]) -> None:
    stop = threading.Event()
    t = threading.Thread(target=serve, args=(SimulatorConfig(accounts=1, calls=3), stop))
    t.start()
    deadline = time.monotonic() + 5
    while "export VOX_TOKEN_ACCT1" not in capsys.readouterr().out and time.monotonic() < deadline:
        time.sleep(0.02)
    stop.set()
    t.join(timeout=5)
    assert not t.is_alive()


def test_latency(sim: Simulator) -> None:
    c = client(sim)
    sim.set_faults(latency_ms=80)
    t = time.perf_counter()
    c.get()
    assert time.perf_counter() - t >= 0.08


# --- stats, concurrency, lifecycle -----------------------------------------------------------


def test_stats_count_every_request(sim: Simulator) -> None:
    a1, a2 = sim.accounts
    sim.reset_stats()
    c1, c2 = client(sim, 0), client(sim, 1)
    for _ in range(3):
        c1.get()
    c2.get()
    Client(sim, a1, token="bad").get()
    Client(sim, a1, token=a2.token).get()
    c1.get(page="x")
    assert sim.stats(a1.auth_id) == {
        "requests": 6,
        "by_status": {200: 3, 401: 1, 403: 1, 400: 1},
        "resets": 0,
        "truncated": 0,
    }
    assert sim.stats()["requests"] == 7
    assert sim.stats()["by_status"][200] == 4
    sim.reset_stats()
    assert sim.stats() == {"requests": 0, "by_status": {}, "resets": 0, "truncated": 0}


def test_concurrent_clients_get_consistent_pages() -> None:
    with Simulator(accounts=1, calls=2000, drift_rate=300) as sim:
        problems: list[str] = []

        def worker() -> None:
            c = client(sim)
            for page in range(1, 40):
                body = c.page(page=page, per_page=50)
                total = body["pagination"]["total_count"]
                if len(body["calls"]) != max(0, min(50, total - (page - 1) * 50)):
                    problems.append(f"page {page}: {len(body['calls'])} calls of {total}")

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert problems == []
        assert sim.stats()["by_status"] == {200: 4 * 39}


def test_stop_closes_keep_alive_connections() -> None:
    sim = Simulator(accounts=1, calls=5).start()
    c = client(sim)
    assert c.get().status_code == 200
    t = time.perf_counter()
    sim.stop()
    assert time.perf_counter() - t < 2
    with pytest.raises(requests.ConnectionError):
        c.get()
    sim.stop()  # idempotent


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_etl_simulate_prints_banner_writes_config_and_exits_cleanly(
    sig: signal.Signals, tmp_path: Path
) -> None:
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    written = tmp_path / "sim.toml"
    proc = subprocess.Popen(
        [sys.executable, "-m", "etl", "--database-url", "sqlite:///x.db", "simulate",
         "--port", "0", "--accounts", "2", "--calls", "15", "--write-config", str(written)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline().rstrip("\n") for _ in range(5)]
        m = re.fullmatch(r"Vox API simulator listening on (http://127\.0\.0\.1:\d+/v1)", lines[0])
        assert m, lines
        assert lines[1] == "  acct1: auth_id=MA100001 token=tvx_sim_MA100001 calls=15"
        assert lines[4] == "  export VOX_TOKEN_ACCT2=tvx_sim_MA100002"
        r = requests.get(
            f"{m.group(1)}/voice/accounts/MA100002/calls",
            headers={"Authorization": "Bearer tvx_sim_MA100002"},
            timeout=5,
        )
        assert r.json()["pagination"]["total_count"] == 15
        from etl.config import load_config

        config = load_config(written, environ={})
        assert config.api.base_url == m.group(1)
        assert config.database_url == "sqlite:///x.db"
        assert [a.auth_id for a in config.accounts] == ["MA100001", "MA100002"]
        assert config.accounts[1].token({"VOX_TOKEN_ACCT2": "t"}) == "t"
        proc.send_signal(sig)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

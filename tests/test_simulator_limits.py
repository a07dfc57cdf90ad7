"""The simulator's rate limits, as real providers apply them: a token bucket with a set burst, a
fixed window, the customer's own traffic on the same budget, and the headers that announce it."""

from __future__ import annotations

import email.utils
import math
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from etl.simulator import Simulator

# Windows are aligned to the epoch; one this long never rolls over during a test.
LONG = 1_000_000.0


def session(sim: Simulator, i: int = 0) -> tuple[requests.Session, str]:
    account = sim.accounts[i]
    s = requests.Session()
    s.headers["Authorization"] = f"Bearer {account.token}"
    return s, f"{sim.base_url}/voice/accounts/{account.auth_id}/calls"


@pytest.fixture
def started() -> Iterator[list[Simulator]]:
    sims: list[Simulator] = []
    yield sims
    for sim in sims:
        sim.stop()


def run(started: list[Simulator], **fields: Any) -> Simulator:
    sim = Simulator(accounts=1, calls=30, seed=21, **fields).start()
    started.append(sim)
    return sim


def test_rate_burst_sets_the_bucket_size(started: list[Simulator]) -> None:
    # One token a second: only the burst passes at once.
    sim = run(started, rate_limit=1, rate_burst=4)
    s, url = session(sim)
    codes = [s.get(url, timeout=5).status_code for _ in range(7)]
    assert codes == [200] * 4 + [429] * 3
    assert sim.limit_stats(sim.accounts[0].auth_id)["throttled"] == 3
    assert sim.stats()["by_status"] == {200: 4, 429: 3}


def test_default_burst_is_a_fifth_of_the_rate_between_1_and_10(started: list[Simulator]) -> None:
    sim = run(started, rate_limit=1)
    s, url = session(sim)
    assert [s.get(url, timeout=5).status_code for _ in range(3)] == [200, 429, 429]
    sim.set_faults(rate_limit=0.5, rate_burst=None)
    assert sim.config.bucket_size == 1.0
    sim.set_faults(rate_limit=1000)
    assert sim.config.bucket_size == 10.0


def test_window_limit_counts_every_request_in_the_window(started: list[Simulator]) -> None:
    sim = run(started, window_limit=5, window_seconds=LONG, rate_headers="both",
              retry_after_format="seconds")
    s, url = session(sim)
    answers = [s.get(url, timeout=5) for _ in range(8)]
    assert [r.status_code for r in answers] == [200] * 5 + [429] * 3
    assert [r.headers["RateLimit-Remaining"] for r in answers] == ["4", "3", "2", "1", "0", "0",
                                                                    "0", "0"]
    window_end = math.ceil(time.time() / LONG) * LONG
    for r in answers:
        assert r.headers["RateLimit-Limit"] == r.headers["X-RateLimit-Limit"] == "5"
        assert r.headers["RateLimit-Policy"] == f"5;w={int(LONG)}"
        assert int(r.headers["X-RateLimit-Reset"]) == int(window_end)
        assert abs(int(r.headers["RateLimit-Reset"]) - (window_end - time.time())) <= 2
    refused = answers[-1]
    assert int(refused.headers["Retry-After"]) == int(refused.headers["RateLimit-Reset"])
    assert refused.json()["error"] == "rate_limited"


def test_bucket_headers_present_a_one_second_quota(started: list[Simulator]) -> None:
    sim = run(started, rate_limit=2, rate_burst=4, rate_headers="ietf")
    s, url = session(sim)
    first = s.get(url, timeout=5)
    assert first.headers["RateLimit-Limit"] == "2"
    assert first.headers["RateLimit-Remaining"] == "3"
    assert first.headers["RateLimit-Policy"] == "2;w=1"
    assert first.headers["RateLimit-Reset"] == "1"  # one token short of full at 2/s
    assert "X-RateLimit-Limit" not in first.headers
    for _ in range(3):
        s.get(url, timeout=5)
    refused = s.get(url, timeout=5)
    assert refused.status_code == 429
    assert refused.headers["RateLimit-Remaining"] == "0"
    assert int(refused.headers["RateLimit-Reset"]) >= 1


def test_the_tighter_limit_is_announced_and_both_are_enforced(started: list[Simulator]) -> None:
    # 3 per window of LONG seconds is far below 5/s: the window is announced.
    sim = run(started, rate_limit=5, rate_burst=10, window_limit=3, window_seconds=LONG,
              rate_headers="x")
    s, url = session(sim)
    answers = [s.get(url, timeout=5) for _ in range(5)]
    assert [r.status_code for r in answers] == [200, 200, 200, 429, 429]
    assert answers[0].headers["X-RateLimit-Limit"] == "3"
    assert "RateLimit-Limit" not in answers[0].headers
    # With the window lifted, the bucket still holds: its burst of 10 was drawn on 3 times.
    sim.set_faults(window_limit=0)
    codes = [s.get(url, timeout=5).status_code for _ in range(12)]
    assert 7 <= codes.count(200) <= 9 and 429 in codes


def test_no_headers_unless_asked_and_none_without_a_limit(started: list[Simulator]) -> None:
    sim = run(started, window_limit=100, window_seconds=LONG)
    s, url = session(sim)
    r = s.get(url, timeout=5)
    assert not [h for h in r.headers if "ratelimit" in h.lower()]
    sim.set_faults(window_limit=0, rate_headers="both")
    r = s.get(url, timeout=5)
    assert not [h for h in r.headers if "ratelimit" in h.lower()]


@pytest.mark.parametrize("fmt", ["seconds", "http-date", "none"])
def test_retry_after_formats(started: list[Simulator], fmt: str) -> None:
    sim = run(started, rate_limit=1, rate_burst=1, retry_after_format=fmt)
    s, url = session(sim)
    s.get(url, timeout=5)
    refused = [s.get(url, timeout=5) for _ in range(2)]
    assert all(r.status_code == 429 for r in refused)
    values = [r.headers.get("Retry-After") for r in refused]
    if fmt == "none":
        assert values == [None, None]
    elif fmt == "seconds":
        assert all(v is not None and v.isdigit() and int(v) >= 1 for v in values)
    else:
        assert all(v is not None and email.utils.parsedate_to_datetime(v).tzinfo for v in values)


def test_foreign_traffic_draws_on_the_same_window(started: list[Simulator]) -> None:
    sim = run(started, window_limit=200, window_seconds=LONG, foreign_rate=400)
    auth_id = sim.accounts[0].auth_id
    time.sleep(0.2)  # let the customer's own traffic run for a while
    s, url = session(sim)
    codes: Counter[int] = Counter()
    while codes[429] < 3:
        codes[s.get(url, timeout=5).status_code] += 1
    limits = sim.limit_stats(auth_id)
    admitted = limits["foreign_requests"] - limits["foreign_refused"]
    assert admitted > 0 and codes[200] < 200
    # Every request of the window is accounted for: the client's and the customer's.
    assert codes[200] + admitted == 200
    assert limits["throttled"] == codes[429]


def test_a_customer_using_the_whole_bucket_leaves_the_client_nothing(
    started: list[Simulator],
) -> None:
    sim = run(started, rate_limit=5, rate_burst=5, foreign_rate=1000)
    auth_id = sim.accounts[0].auth_id
    time.sleep(0.1)
    s, url = session(sim)
    codes = [s.get(url, timeout=5).status_code for _ in range(10)]
    assert codes.count(429) >= 8
    limits = sim.limit_stats(auth_id)
    assert limits["foreign_refused"] > 0 and limits["throttled"] == codes.count(429)
    sim.reset_stats()
    assert sim.limit_stats(auth_id) == {"throttled": 0, "foreign_requests": 0,
                                        "foreign_refused": 0}


def test_rate_limit_settings_are_checked(started: list[Simulator]) -> None:
    sim = run(started)
    for bad in ({"rate_burst": 0.5}, {"window_seconds": 0}, {"rate_headers": "all"},
                {"retry_after_format": "never"}, {"window_limit": -1}, {"foreign_rate": -1}):
        with pytest.raises(ValueError):
            sim.set_faults(**bad)

"""VoxClient against recorded HTTP: pages, server caps, retries, fatal errors, and no leaked token.

The cassettes in tests/cassettes/ were recorded from the local simulator. Normally (and in CI)
nothing is started: the client talks to a port nobody listens on and vcrpy replays. To re-record
every cassette of this module from a fresh simulator:

    VCR_RECORD=1 .venv/bin/pytest tests/test_client_cassettes.py

Connection resets and truncated bodies cannot be recorded by vcrpy (it stores whole responses,
not broken sockets); the socket-level tests against the live simulator cover those.
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import vcr
import yaml
from vcr.cassette import Cassette

from etl.client import Page, RetryPolicy, VoxClient
from etl.config import Account, ApiSettings
from etl.errors import FatalAPIError, RetriableAPIError
from etl.sheets import Sheet
from etl.simulator import Simulator
from etl.throttle import Throttle

RECORDING = os.environ.get("VCR_RECORD", "").strip().lower() not in ("", "0", "false", "no")
CASSETTES = Path(__file__).resolve().parent / "cassettes"
# On replay nothing may be reached: port 9 (discard) is closed, and vcrpy never connects anyway.
REPLAY_BASE_URL = "http://127.0.0.1:9/v1"
# The simulator's first account (its auth_id and token are derived from its index).
AUTH_ID = "MA100001"
TOKEN_PREFIX = "tvx_sim_"
REPLAY_TOKEN = f"{TOKEN_PREFIX}{AUTH_ID}"
REFUSED_TOKEN = f"{TOKEN_PREFIX}revoked"
TOKEN_ENV = "VOX_TOKEN_ACME"
CALLS = 250


def _without_auth_challenge(response: dict[str, Any]) -> dict[str, Any]:
    """Drop the 401's `WWW-Authenticate: Bearer` challenge: the client ignores it, and keeping
    it out lets the leak test forbid the word "Bearer" anywhere in a cassette."""
    headers = response["headers"]
    for name in [n for n in headers if n.lower() == "www-authenticate"]:
        del headers[name]
    return response


vox_vcr = vcr.VCR(
    cassette_library_dir=str(CASSETTES),
    record_mode="all" if RECORDING else "none",
    # Not host or port: the simulator binds a random port when recording.
    match_on=["method", "path", "query"],
    filter_headers=["authorization"],
    before_record_response=_without_auth_challenge,
)


@dataclass
class VoxAPI:
    """Where a test's client points: a live simulator while recording, a dead port on replay."""

    base_url: str
    auth_id: str
    token: str
    cassette: Cassette
    simulator: Simulator | None = None

    def script(self, *responses: str | int) -> None:
        """Queue the simulator's next responses (see `Simulator.inject`); on replay the
        cassette already holds them."""
        if self.simulator is not None:
            self.simulator.inject(self.auth_id, *responses)

    def body(self, index: int) -> Any:
        """The parsed JSON body of the index-th response, as the server sent it."""
        return json.loads(self.cassette.responses[index]["body"]["string"])


class VirtualClock:
    """Time that passes only when the client sleeps: every wait is recorded, none is real.

    It serves both the retry policy's `sleep` and the client's throttle (clock and sleep), so
    a pause after a 429 shows up here too instead of blocking the test.
    """

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture
def vox_api(request: pytest.FixtureRequest) -> Iterator[Callable[..., VoxAPI]]:
    """Open this test's cassette; calling the result with SimulatorConfig fields gives the API.

    When recording, the cassette is rewritten from scratch against a fresh simulator.
    """
    path = CASSETTES / f"{request.node.name}.yaml"
    if RECORDING:
        path.unlink(missing_ok=True)
    elif not path.exists():
        pytest.fail(f"no cassette {path.name}; record it with VCR_RECORD=1 (module docstring)")
    started: list[Simulator] = []
    with vox_vcr.use_cassette(str(path)) as cassette:

        def open_api(**simulator_fields: Any) -> VoxAPI:
            if not RECORDING:
                return VoxAPI(REPLAY_BASE_URL, AUTH_ID, REPLAY_TOKEN, cassette)
            sim = Simulator(accounts=1, calls=CALLS, **simulator_fields).start()
            started.append(sim)
            account = sim.accounts[0]
            assert (account.auth_id, account.token) == (AUTH_ID, REPLAY_TOKEN)
            return VoxAPI(sim.base_url, account.auth_id, account.token, cassette, sim)

        try:
            yield open_api
        finally:
            for sim in started:
                sim.stop()
    if not RECORDING:
        assert cassette.all_played, "the client made fewer requests than the cassette holds"


@pytest.fixture
def client_for(clock: VirtualClock) -> Iterator[Callable[..., VoxClient]]:
    """Build a VoxClient for a VoxAPI, its waits on the virtual clock; closed afterwards."""
    clients: list[VoxClient] = []

    def make(
        api: VoxAPI, *, auth_id: str | None = None, token: str | None = None, **policy: Any
    ) -> VoxClient:
        account = Account(name="acme", auth_id=auth_id or api.auth_id, token_env=TOKEN_ENV)
        settings = ApiSettings(base_url=api.base_url, timeout=5)
        retry = RetryPolicy(
            **{"max_attempts": 5, "backoff_initial": 0.1, "backoff_max": 2.0, **policy},
            sleep=clock.sleep,
            rng=random.Random(7),
        )
        client = VoxClient(account, settings, token or api.token, policy=retry)
        client.throttle = Throttle(settings.requests_per_second, clock=clock.monotonic, sleep=clock.sleep)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def test_fetch_page_returns_each_page_as_sent_with_the_positions_it_covers(
    vox_api: Callable[..., VoxAPI], client_for: Callable[..., VoxClient], clock: VirtualClock
) -> None:
    api = vox_api()
    client = client_for(api)

    first = client.fetch_page(1, per_page=100)
    second = client.fetch_page(2, per_page=100)

    # (number, per_page, total_count)
    assert _numbers(first) == (1, 100, CALLS)
    assert _numbers(second) == (2, 100, CALLS)
    # Head ranks count from the newest call (0): page 1 holds 0..99, page 2 holds 100..199.
    assert _ranks(first) == (0, 100) and _ranks(second) == (100, 200)
    assert first.records == api.body(0)["calls"]
    assert second.records == api.body(1)["calls"]
    assert len(first.records) == len(second.records) == 100
    assert first.records[-1]["start_time"] >= second.records[0]["start_time"]
    assert not {r["call_uuid"] for r in first.records} & {r["call_uuid"] for r in second.records}
    assert (client.requests, client.retries, clock.sleeps) == (2, 0, [])


def test_page_takes_its_per_page_from_the_server_when_the_server_caps_it(
    vox_api: Callable[..., VoxAPI], client_for: Callable[..., VoxClient]
) -> None:
    api = vox_api(per_page_cap=50)
    client = client_for(api)

    page = client.fetch_page(1, per_page=100)

    assert dict(api.cassette.requests[0].query)["per_page"] == "100"
    assert (page.per_page, page.total_count) == (50, CALLS)
    assert len(page.records) == 50
    assert _ranks(page) == (0, 50)


def test_retry_after_seconds_wins_over_backoff_then_a_503_backs_off_and_the_page_arrives(
    vox_api: Callable[..., VoxAPI], client_for: Callable[..., VoxClient], clock: VirtualClock
) -> None:
    api = vox_api()
    api.script(429, 503)  # then the page itself
    client = client_for(api, backoff_initial=0.1)

    page = client.fetch_page(1, per_page=10)

    assert [r.status["code"] for r in _responses(api)] == [429, 503, 200]
    assert _responses(api)[0].headers["Retry-After"] == "1"
    assert page.records == api.body(2)["calls"]
    assert clock.sleeps[0] == 1.0  # Retry-After, not the 0.05-0.1 s first backoff
    # The 429 used no attempt: the 503 is the first error, so its backoff has ceiling 0.1.
    assert 0.05 <= clock.sleeps[1] <= 0.1
    # Nothing was accepted before the 429, so the account resumes at the 1 req/s start pace:
    # the page's slot comes one second after the 503's.
    assert sum(clock.sleeps[1:]) == pytest.approx(1.0)
    assert (client.requests, client.retries, client.throttled) == (3, 2, 1)


def test_retry_after_http_date_is_honoured_within_retry_after_max(
    vox_api: Callable[..., VoxAPI], client_for: Callable[..., VoxClient], clock: VirtualClock
) -> None:
    api = vox_api()
    api.script("429-date")
    # A backoff would wait 30-60 s, so any wait within the cap came from Retry-After.
    client = client_for(api, backoff_initial=60.0, backoff_max=60.0, retry_after_max=0.5)

    page = client.fetch_page(1, per_page=10)

    retry_after = _responses(api)[0].headers["Retry-After"]
    assert email.utils.parsedate_to_datetime(retry_after) is not None, retry_after
    assert page.records == api.body(1)["calls"]
    # On replay the recorded date lies in the past, so the wait may be 0; recorded, it is capped.
    assert sum(clock.sleeps) <= 0.5, clock.sleeps
    assert (client.requests, client.retries, client.throttled) == (2, 1, 1)


def test_html_502_page_is_retried_and_then_the_page_arrives(
    vox_api: Callable[..., VoxAPI],
    client_for: Callable[..., VoxClient],
    clock: VirtualClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    api = vox_api()
    api.script("html502")
    client = client_for(api)
    caplog.set_level(logging.INFO, logger="etl.client")

    page = client.fetch_page(1, per_page=10)

    bad_gateway = _responses(api)[0]
    assert bad_gateway.status["code"] == 502
    assert bad_gateway.headers["Content-Type"] == "text/html"
    assert page.records == api.body(1)["calls"]
    assert (client.requests, client.retries, len(clock.sleeps)) == (2, 1, 1)
    assert [getattr(r, "error", None) for r in caplog.records] == ["HTTP 502 Bad Gateway"]


def test_refused_token_fails_after_one_request_naming_the_variable_not_the_token(
    vox_api: Callable[..., VoxAPI], client_for: Callable[..., VoxClient], clock: VirtualClock
) -> None:
    api = vox_api()
    client = client_for(api, token=REFUSED_TOKEN)

    with pytest.raises(FatalAPIError) as failure:
        client.fetch_page(1, per_page=10)

    message = str(failure.value)
    assert "HTTP 401" in message
    assert TOKEN_ENV in message
    assert REFUSED_TOKEN not in message
    assert TOKEN_PREFIX not in message
    assert (client.requests, client.retries, clock.sleeps) == (1, 0, [])


def test_unknown_auth_id_fails_after_one_request_with_404(
    vox_api: Callable[..., VoxAPI], client_for: Callable[..., VoxClient], clock: VirtualClock
) -> None:
    api = vox_api()
    client = client_for(api, auth_id="MA999999")

    with pytest.raises(FatalAPIError) as failure:
        client.fetch_page(1, per_page=10)

    message = str(failure.value)
    assert "HTTP 404" in message
    assert "MA999999" in message
    assert (client.requests, client.retries, clock.sleeps) == (1, 0, [])


def test_retries_stop_at_max_attempts_and_the_last_retriable_error_is_raised(
    vox_api: Callable[..., VoxAPI], client_for: Callable[..., VoxClient], clock: VirtualClock
) -> None:
    api = vox_api()
    api.script(503, 503, 503)
    client = client_for(api, max_attempts=3, backoff_initial=0.1)

    with pytest.raises(RetriableAPIError, match="HTTP 503"):
        client.fetch_page(1, per_page=10)

    assert (client.requests, client.retries) == (3, 2)
    assert len(clock.sleeps) == 2
    assert 0.05 <= clock.sleeps[0] <= 0.1  # backoff ceiling doubles: 0.1, then 0.2
    assert 0.1 <= clock.sleeps[1] <= 0.2


def test_retry_after_max_bounds_the_whole_wait_after_a_429(
    vox_api: Callable[..., VoxAPI], client_for: Callable[..., VoxClient], clock: VirtualClock
) -> None:
    api = vox_api()
    api.script(429)  # Retry-After: 1, then the page itself
    client = client_for(api, retry_after_max=0.25)

    client.fetch_page(1, per_page=10)

    assert clock.sleeps[0] == 0.25
    assert sum(clock.sleeps) <= 0.25, clock.sleeps


def test_cassettes_hold_no_token_and_no_authorization_header() -> None:
    files = sorted(p for p in CASSETTES.rglob("*") if p.is_file())
    recorded_tests = {name for name in globals() if name.startswith("test_") and name != _THIS_TEST}
    missing = recorded_tests - {p.stem for p in files}
    assert not missing, f"cassettes not committed: {sorted(missing)}"
    for path in files:
        text = path.read_text(encoding="utf-8")
        assert TOKEN_PREFIX not in text, f"{path.name} holds a simulator token"
        assert "Bearer" not in text, f"{path.name} holds a bearer credential or challenge"
        cassette = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else None
        for interaction in cassette.get("interactions", []) if isinstance(cassette, dict) else []:
            headers = {name.lower() for name in interaction["request"].get("headers", {})}
            assert "authorization" not in headers, f"{path.name} records an Authorization header"


_THIS_TEST = test_cassettes_hold_no_token_and_no_authorization_header.__name__


def _numbers(page: Page) -> tuple[int, int, int]:
    return page.number, page.per_page, page.total_count


def _ranks(page: Page) -> tuple[int, int]:
    """The head ranks a page holds when answered: (first, just past the last)."""
    sheet = Sheet.read(page, "MA1", 1)
    return sheet.first_rank, sheet.end_rank


@dataclass(frozen=True)
class _Response:
    status: dict[str, Any]
    headers: dict[str, str]


def _responses(api: VoxAPI) -> list[_Response]:
    """The cassette's responses in order, with single-valued headers for easy reading."""
    out = []
    for response in api.cassette.responses:
        headers = {k: v[0] if isinstance(v, list) else v for k, v in response["headers"].items()}
        out.append(_Response(response["status"], headers))
    return out

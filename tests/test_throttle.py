"""Flow control for 429s: the Throttle on fake time, the client on it, and `etl sync` over sockets.

The unit tests drive the controller with a fake clock whose `sleep` only advances it, so every
wait is recorded exactly and none is real. The end-to-end tests run `etl sync` as a subprocess
against the simulator's limits and check behaviour and request counts, never seconds.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
import threading
import time
from collections.abc import Callable

import pytest

from etl.client import RetryPolicy, VoxClient
from etl.config import Account, ApiSettings, load_config
from etl.errors import ConfigError
from etl.simulator import Simulator, SimulatorConfig
from etl.throttle import (
    ANNOUNCED_MARGIN,
    BETA,
    CATCH_UP,
    CEILING_MARGIN,
    JITTER,
    MIN_CEILING_MARGIN,
    Announced,
    Throttle,
    ThrottleExhausted,
    _widened,
    parse_rate_headers,
)
from tests.helpers import assert_matches_simulator

SIM_FIELDS = {f.name for f in dataclasses.fields(SimulatorConfig)}


class FakeTime:
    """A clock that moves only when slept on; records every sleep."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def advance(self, seconds: float) -> None:
        self.now += seconds


def throttle(fake: FakeTime, ceiling: float = 0.0, **kw) -> Throttle:
    return Throttle(ceiling, clock=fake.clock, sleep=fake.sleep, wall=lambda: 1e9 + fake.now,
                    **kw)


def accept(t: Throttle, fake: FakeTime, count: int, spacing: float = 0.0,
           headers: dict[str, str] | None = None) -> None:
    """`count` requests, each answered `spacing` seconds after it was sent."""
    for _ in range(count):
        ticket = t.acquire()
        fake.advance(spacing)
        t.answered(ticket, headers)


# -- pacing and the gate ------------------------------------------------------------------------


def test_without_a_limit_nothing_waits():
    fake = FakeTime()
    t = throttle(fake)
    accept(t, fake, 100)
    assert fake.sleeps == []
    assert t.pace is None


def test_a_ceiling_spaces_slots_across_requests():
    fake = FakeTime()
    t = throttle(fake, 4)
    tickets = [t.acquire() for _ in range(5)]
    slot = 0.25 / CEILING_MARGIN  # a little under the ceiling: arrivals jitter
    assert [k.sent_at - 1000.0 for k in tickets] == pytest.approx([i * slot for i in range(5)])
    assert 0.25 < slot < 0.26


def test_idle_time_is_not_banked():
    fake = FakeTime()
    t = throttle(fake, 10)
    accept(t, fake, 1)
    fake.advance(60)
    first, second = t.acquire(), t.acquire()
    assert second.sent_at - first.sent_at == pytest.approx(0.1 / CEILING_MARGIN)


def test_a_slot_keeps_its_distance_from_a_send_that_went_late():
    fake = FakeTime()
    late = [0.0]

    def sleep(seconds: float) -> None:  # the woken thread gets the processor late
        fake.sleep(seconds + late[0])
        late[0] = 0.0

    t = Throttle(20, clock=fake.clock, sleep=sleep)
    slot = 1 / (20 * CEILING_MARGIN)
    a = t.acquire()
    late[0] = 0.2 * slot
    b = t.acquire()  # sleeps to its slot and wakes a fifth of a slot late
    assert b.sent_at - a.sent_at == pytest.approx(1.2 * slot)
    fake.now = a.sent_at + 2 * slot  # the next slot on the plan: due now
    c = t.acquire()
    # Not on the plan (a + 2 slots), which would bring it closer to b than a bucket of one
    # allows, but a slot (less the catch-up) after b.
    assert c.sent_at - b.sent_at == pytest.approx((1 - CATCH_UP) * slot)


def test_unpaced_sends_spread_over_the_quickest_answer_not_in_pairs():
    fake = FakeTime()
    t = throttle(fake)
    accept(t, fake, 70, 0.3)  # one at a time, 300 ms each: past the cold-start window
    assert t.pace is None  # no limit met: unpaced
    a, b, c = t.acquire(), t.acquire(), t.acquire()
    # Three workers free at once go one more than were ever in flight apart over the
    # quickest answer's time, not in the same millisecond (a bucket of one refuses that).
    assert b.sent_at - a.sent_at == pytest.approx(0.3 / 2)
    assert c.sent_at - b.sent_at == pytest.approx(0.3 / 3)


def test_a_429_closes_the_gate_for_every_request_until_retry_after():
    fake = FakeTime()
    t = throttle(fake, 10)
    early = t.acquire()
    late = t.acquire()  # sent before the 429 came back: the same wave
    closed_at = fake.now
    assert t.throttled_for(early, 5.0) == pytest.approx(5.0)
    assert t.throttled_for(late, 1.0) == pytest.approx(5.0)  # a shorter one does not cut it
    fake.advance(2.0)
    probe = t.acquire()
    assert probe.probe
    assert probe.sent_at == pytest.approx(closed_at + 5.0)
    assert (t.throttled, t.events) == (2, 1)


def test_after_the_gate_one_probe_goes_alone_and_the_rest_wait_for_its_answer():
    t = Throttle(0)
    first = t.acquire()
    t.throttled_for(first, 0.0)
    probe = t.acquire()
    assert probe.probe
    order: list[str] = []
    started = threading.Event()

    def other() -> None:
        started.set()
        ticket = t.acquire()
        order.append("other sent")
        t.answered(ticket)

    worker = threading.Thread(target=other)
    worker.start()
    started.wait()
    time.sleep(0.2)  # let it reach the gate; it must still be waiting
    order.append("probe answered")
    t.answered(probe)
    worker.join(timeout=5)
    assert order == ["probe answered", "other sent"]


def refused_at_the_ceiling(t: Throttle, fake: FakeTime) -> None:
    """429 events at the configured ceiling until its margin is spent and the pace is learned."""
    while t._at_ceiling:
        accept(t, fake, 20, 0.0)
        t.throttled_for(t.acquire(), 0.5)


def test_a_429_at_the_ceiling_first_keeps_a_little_more_distance_from_it():
    fake = FakeTime()
    t = throttle(fake, 20)
    accept(t, fake, 200, 0.0)  # ten seconds at the ceiling, all accepted
    t.throttled_for(t.acquire(), 1.0)
    assert t.hi is None  # nothing learned: the ceiling's margin widened
    t.answered(t.acquire())  # the probe
    a, b = t.acquire(), t.acquire()
    assert 1 / (b.sent_at - a.sent_at) == pytest.approx(20 * _widened(CEILING_MARGIN, 20, 1))
    t.answered(a)
    t.answered(b)
    refused_at_the_ceiling(t, fake)  # refused again and again: the limit is lower
    margins = [CEILING_MARGIN]
    while _widened(margins[-1], 20, len(margins)) >= MIN_CEILING_MARGIN:
        margins.append(_widened(margins[-1], 20, len(margins)))
    assert t.events == len(margins)  # each margin refused once, then the pace is learned
    # The limit is below what was sent when refused: the ceiling at its last margin.
    assert t.hi == pytest.approx(20 * margins[-1], rel=0.02)
    assert t.pace < 20 * MIN_CEILING_MARGIN


def test_at_a_fast_ceiling_a_429_keeps_twice_the_jitter_between_slots():
    fake = FakeTime()
    t = throttle(fake, 50)
    accept(t, fake, 100, 0.0)
    t.throttled_for(t.acquire(), 1.0)
    t.answered(t.acquire())  # the probe
    a, b = t.acquire(), t.acquire()
    # A bucket of one at 50 req/s: 2 ms more than a slot at the limit, not 2 % less pace.
    assert b.sent_at - a.sent_at == pytest.approx(1 / 50 + JITTER)


def test_429s_of_one_wave_lower_the_pace_once():
    fake = FakeTime()
    t = throttle(fake, 20)
    refused_at_the_ceiling(t, fake)
    accept(t, fake, 2000, 0.0)  # minutes at the pace, all accepted: back to the ceiling
    assert t.pace == pytest.approx(20)
    events = t.events
    wave = [t.acquire() for _ in range(4)]
    for ticket in wave:
        t.throttled_for(ticket, 1.0)
    assert t.events == events + 1
    assert t.pace == pytest.approx(BETA * 20)
    assert t.hi == pytest.approx(20)


def test_a_failed_probe_does_not_lower_the_pace_again():
    fake = FakeTime()
    t = throttle(fake, 20)
    accept(t, fake, 10, 0.01)
    t.throttled_for(t.acquire(), 1.0)
    pace = t.pace
    probe = t.acquire()
    assert probe.probe
    t.throttled_for(probe, 1.0)
    assert t.pace == pace
    assert t.events == 2


def test_without_retry_after_the_pause_is_one_second_doubling_while_nothing_is_accepted():
    fake = FakeTime()
    t = throttle(fake)
    accept(t, fake, 1)
    waits = []
    for _ in range(4):
        waits.append(t.throttled_for(t.acquire(), None))
    assert waits == pytest.approx([1.0, 2.0, 4.0, 8.0])
    accept(t, fake, 1)
    assert t.throttled_for(t.acquire(), None) == pytest.approx(1.0)


def test_the_time_spent_throttled_is_bounded_with_an_error_naming_the_key():
    fake = FakeTime()
    t = throttle(fake, max_throttle_seconds=10)
    with pytest.raises(ThrottleExhausted) as info:
        for _ in range(100):
            t.throttled_for(t.acquire(), 3.0)
    assert "[api].max_throttle_seconds = 10" in str(info.value)
    assert "\n" not in str(info.value)
    assert t.throttled == 4  # 3 + 3 + 3 + 3 s > 10 s


# -- learning an unannounced limit --------------------------------------------------------------


def test_a_first_429_after_nothing_was_accepted_starts_slowly_and_doubles():
    fake = FakeTime()
    t = throttle(fake)
    t.throttled_for(t.acquire(), 0.0)
    assert t.pace == 1.0 and t.hi is None
    accept(t, fake, 6, 0.5)
    assert t.pace >= 4.0 and t.hi is None  # doubled at least twice


def test_a_first_429_from_unpaced_paces_at_what_the_server_accepted():
    fake = FakeTime()
    t = throttle(fake)
    accept(t, fake, 40, 0.05)  # 20 answers per second for two seconds
    t.throttled_for(t.acquire(), 1.0)
    assert t.hi == pytest.approx(20.0, rel=0.05)
    assert t.pace == pytest.approx(BETA * t.hi)


def test_a_cold_start_429_is_bounded_by_the_gap_before_the_refused_request():
    fake = FakeTime()
    t = throttle(fake)
    accept(t, fake, 3, 0.1)  # one request per 100 ms: ten accepted per second of open gate
    fake.advance(0.4)
    ticket = t.acquire()  # half a second after the last one, refused
    t.throttled_for(ticket, 1.0)
    # Whatever the bucket's size, it was empty half a second after the request before: the
    # limit is under 2 per second, though 6 per second were accepted until then.
    assert t.hi == pytest.approx(2.0)
    assert t.pace == pytest.approx(BETA * 2.0)


def test_a_pace_raised_and_refused_falls_back_to_the_one_kept_before():
    fake = FakeTime()
    t = throttle(fake)
    accept(t, fake, 20, 0.05)
    t.throttled_for(t.acquire(), 1.0)  # the cold start's guess: the pace then grows
    first = t.pace
    paces = [first]
    while len(paces) < 3:
        accept(t, fake, 1, 0.01)
        if t.pace != paces[-1]:
            paces.append(t.pace)
    assert paces[1] > paces[0] and paces[2] > paces[1]
    t.throttled_for(t.acquire(), 1.0)  # the last step was refused...
    assert t.hi == pytest.approx(paces[2], rel=0.02)
    assert t.pace == pytest.approx(paces[1])  # ...the one before it held for a whole second


def test_a_closed_gate_does_not_confirm_a_pace():
    fake = FakeTime()
    t = throttle(fake)
    accept(t, fake, 20, 0.05)
    t.throttled_for(t.acquire(), 1.0)
    first = t.pace
    t.throttled_for(t.acquire(), 5.0)  # the probe refused: nothing learned, a long pause
    t.answered(t.acquire())  # the next probe, answered
    assert t.pace == first  # five seconds shut are not five seconds of answers
    accept(t, fake, 30, 0.05)
    assert t.pace > first


def test_a_kept_pace_that_is_refused_is_the_new_upper_bound():
    fake = FakeTime()
    t = throttle(fake, 10)
    refused_at_the_ceiling(t, fake)
    accept(t, fake, 2000, 0.0)
    t.throttled_for(t.acquire(), 0.5)
    assert t.hi == pytest.approx(10.0)
    assert t.pace == pytest.approx(BETA * 10.0)


def test_a_learned_pace_never_exceeds_the_configured_ceiling():
    fake = FakeTime()
    t = throttle(fake, 10)
    accept(t, fake, 30, 0.0)
    t.throttled_for(t.acquire(), 0.5)
    tickets = []
    for _ in range(2000):  # minutes of answers: the probing would grow the pace without a cap
        ticket = t.acquire()
        tickets.append(ticket.sent_at)
        t.answered(ticket)
    assert t.pace <= 10.0
    gaps = [b - a for a, b in itertools.pairwise(tickets)]
    assert min(gaps) >= 0.1 * (1 - CATCH_UP) - 1e-9  # a late slot may catch up a little
    assert (len(tickets) - 1) / (tickets[-1] - tickets[0]) <= 10.0 + 1e-9


def test_after_a_429_the_pace_comes_back_and_then_probes_above_the_old_estimate():
    fake = FakeTime()
    t = throttle(fake, 0)
    accept(t, fake, 40, 0.05)  # 20 answers per second
    t.throttled_for(t.acquire(), 0.0)
    low = t.pace
    assert low < 20.0
    accept(t, fake, 2000, 0.0)  # well over a minute at the pace, no 429
    assert t.pace > 20.0 > low


def test_rate_share_keeps_the_pace_to_its_share_of_the_learned_limit():
    fake = FakeTime()
    t = throttle(fake, 0, share=0.5)
    accept(t, fake, 40, 0.05)  # 20 answers per second
    t.throttled_for(t.acquire(), 0.0)
    limit = t.hi
    accept(t, fake, 2000, 0.0)
    assert t.hi == pytest.approx(limit)
    assert t.pace <= 0.5 * limit + 1e-9


def test_many_threads_each_sleep_to_a_slot_of_their_own():
    """Eight workers on the real clock: every slot reserved once, none closer than the pace
    allows (a worker waking late never lets the next one in early)."""
    t = Throttle(200.0)
    sent: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(10):
            ticket = t.acquire()
            with lock:
                sent.append(ticket.sent_at)
            time.sleep(0.01)
            t.answered(ticket)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=30)
    sent.sort()
    assert len(sent) == 80
    assert t._reserved == 0 and t._inflight == 0
    slot = 1 / (200.0 * CEILING_MARGIN)
    assert min(b - a for a, b in itertools.pairwise(sent)) >= slot * (1 - CATCH_UP) - 1e-4


def test_a_429_voids_the_slots_reserved_before_it():
    fake = FakeTime()
    t = throttle(fake, 10)
    first = t.acquire()
    reserved = []

    def sleeper(seconds: float) -> None:  # while asleep on its reserved slot, a 429 comes
        if not reserved:
            reserved.append(seconds)
            t.throttled_for(first, 5.0)
        fake.sleep(seconds)

    t._sleep = sleeper
    second = t.acquire()
    assert second.probe  # it went after the gate, as the probe, not at its old slot
    assert second.sent_at == pytest.approx(first.sent_at + 5.0)


# -- announced limits ---------------------------------------------------------------------------


def test_ietf_headers_with_a_policy_window_are_read():
    ann = parse_rate_headers({"RateLimit-Limit": "300", "RateLimit-Remaining": "120",
                              "RateLimit-Reset": "3", "RateLimit-Policy": "300;w=5"})
    assert ann == Announced(300, 120, 3.0, 5.0, whole_seconds=True)


def test_x_ratelimit_reset_as_an_epoch_timestamp_is_seconds_from_now():
    ann = parse_rate_headers({"X-RateLimit-Limit": "60", "X-RateLimit-Remaining": "0",
                              "X-RateLimit-Reset": "1700000042"}, wall_now=1700000000.0)
    assert ann == Announced(60, 0, 42.0, None, whole_seconds=True)


@pytest.mark.parametrize("headers", [{}, {"RateLimit-Limit": "lots"}, {"X-RateLimit-Limit": "0"}])
def test_absent_or_garbled_limits_are_none(headers):
    assert parse_rate_headers(headers) is None


def test_an_announced_limit_paces_at_its_share_from_the_first_answer():
    fake = FakeTime()
    t = throttle(fake, share=0.5)
    headers = {"RateLimit-Limit": "300", "RateLimit-Remaining": "299", "RateLimit-Reset": "5",
               "RateLimit-Policy": "300;w=5"}
    accept(t, fake, 1, 0.01, headers)
    a, b = t.acquire(), t.acquire()
    assert 1 / (b.sent_at - a.sent_at) == pytest.approx(ANNOUNCED_MARGIN * 0.5 * 60)


def test_an_exhausted_quota_holds_requests_until_the_reset():
    fake = FakeTime()
    t = throttle(fake)
    headers = {"X-RateLimit-Limit": "10", "X-RateLimit-Remaining": "0",
               "X-RateLimit-Reset": str(1e9 + fake.now + 4)}
    accept(t, fake, 1, 0.0, headers)
    ticket = t.acquire()
    assert ticket.sent_at == pytest.approx(1004.0)


def test_a_late_slot_catches_up_in_full_while_the_server_counts_tokens_left():
    fake = FakeTime()
    t = throttle(fake)
    headers = {"RateLimit-Limit": "50", "RateLimit-Remaining": "15", "RateLimit-Reset": "1",
               "RateLimit-Policy": "50;w=1"}
    accept(t, fake, 1, 0.01, headers)
    a = t.acquire()
    fake.advance(0.5 / (ANNOUNCED_MARGIN * 50))  # the next worker wakes half a slot late
    b, c = t.acquire(), t.acquire()
    slot = 1 / (ANNOUNCED_MARGIN * 50)
    # b went late; c keeps the schedule (a + 2 slots), not b's lateness.
    assert c.sent_at - a.sent_at == pytest.approx(2 * slot)
    for ticket in (a, b, c):
        t.answered(ticket)


def test_without_tokens_left_a_late_slot_does_not_catch_up():
    fake = FakeTime()
    t = throttle(fake)
    headers = {"RateLimit-Limit": "50", "RateLimit-Remaining": "0", "RateLimit-Reset": "1",
               "RateLimit-Policy": "50;w=1"}
    accept(t, fake, 1, 0.01, headers)
    t.acquire()
    slot = 1 / (ANNOUNCED_MARGIN * 50)
    fake.advance(1.5 * slot)
    b, c = t.acquire(), t.acquire()
    assert c.sent_at - b.sent_at == pytest.approx(slot)  # a bucket of one: keep the distance


def test_a_reset_in_whole_seconds_reads_a_one_second_quota_as_one_second():
    fake = FakeTime()
    t = throttle(fake)
    # X-RateLimit-Reset as an epoch second, rounded up: 1.6 s away although the bucket is full
    # again in 0.6 s.
    headers = {"X-RateLimit-Limit": "50", "X-RateLimit-Remaining": "0",
               "X-RateLimit-Reset": str(int(1e9 + fake.now) + 2)}
    fake.now = int(fake.now) + 0.4
    accept(t, fake, 1, 0.0, headers)
    a, b = t.acquire(), t.acquire()
    assert 1 / (b.sent_at - a.sent_at) == pytest.approx(ANNOUNCED_MARGIN * 50)


def test_a_partial_first_window_is_spread_over_the_time_it_has_left():
    fake = FakeTime()
    t = throttle(fake)
    headers = {"RateLimit-Limit": "300", "RateLimit-Remaining": "299", "RateLimit-Reset": "2",
               "RateLimit-Policy": "300;w=5"}
    accept(t, fake, 1, 0.0, headers)
    a, b = t.acquire(), t.acquire()
    assert 1 / (b.sent_at - a.sent_at) == pytest.approx(299 / 2, rel=0.02)  # not 60/s


# -- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "message"), [
    ("rate_share = 0", "[api].rate_share: must be more than 0 and at most 1, got 0"),
    ("rate_share = 1.5", "[api].rate_share: must be more than 0 and at most 1, got 1.5"),
    ('rate_share = "half"', "[api].rate_share: expected a number, got 'half'"),
    ("max_throttle_seconds = 0", "[api].max_throttle_seconds: must be between 1 and 86400"),
])
def test_bad_rate_keys_are_one_line_naming_the_key(tmp_path, text, message):
    path = tmp_path / "config.toml"
    path.write_text(f"[api]\n{text}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(message)


def test_rate_keys_have_defaults_and_are_read(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("[api]\nrate_share = 0.5\nmax_throttle_seconds = 90\n")
    api = load_config(path).api
    assert (api.rate_share, api.max_throttle_seconds) == (0.5, 90.0)
    assert (ApiSettings().rate_share, ApiSettings().max_throttle_seconds) == (1.0, 600.0)


# -- the client: a 429 uses no attempt ----------------------------------------------------------


@pytest.fixture
def sim_client(simulator) -> Callable[..., tuple[Simulator, VoxClient, FakeTime]]:
    clients: list[VoxClient] = []

    def make(max_attempts: int = 2, **api_fields) -> tuple[Simulator, VoxClient, FakeTime]:
        sim = simulator(accounts=1, calls=300)
        acct = sim.accounts[0]
        fake = FakeTime()
        api = ApiSettings(base_url=sim.base_url, timeout=5, max_attempts=max_attempts,
                          **api_fields)
        policy = RetryPolicy(max_attempts, 0.01, 0.02, sleep=fake.sleep, rng=random.Random(1))
        client = VoxClient(Account("acme", acct.auth_id, "VOX_TOKEN_ACME"), api, acct.token,
                           policy=policy)
        client.throttle = Throttle(api.requests_per_second, api.rate_share,
                                   max_throttle_seconds=api.max_throttle_seconds,
                                   clock=fake.clock, sleep=fake.sleep)
        clients.append(client)
        return sim, client, fake

    yield make
    for client in clients:
        client.close()


def test_twenty_429s_then_the_page_with_two_attempts_allowed(sim_client):
    sim, client, _ = sim_client(max_attempts=2)
    sim.inject(sim.accounts[0].auth_id, *([429] * 20))
    page = client.fetch_page(1, per_page=100)
    assert len(page.records) == 100
    assert (client.requests, client.throttled) == (21, 20)
    assert sim.stats()["by_status"] == {429: 20, 200: 1}


def test_each_request_is_prepared_before_its_slot_is_taken(sim_client):
    # Between the slot and the wire only the send itself runs: a request that goes late lets
    # the next one arrive early, and a bucket of one refuses it.
    sim, client, _ = sim_client()
    sim.inject(sim.accounts[0].auth_id, 429)
    order: list[str] = []
    prepare, acquire, send = (client.session.prepare_request, client.throttle.acquire,
                              client.session.send)

    def spy(name: str, call: Callable) -> Callable:
        def wrapped(*args, **kwargs):
            order.append(name)
            return call(*args, **kwargs)
        return wrapped

    client.session.prepare_request = spy("prepare", prepare)
    client.throttle.acquire = spy("slot", acquire)
    client.session.send = spy("send", send)
    client.fetch_page(1, per_page=10)
    assert order == ["prepare", "slot", "send"] * 2  # the 429, then the page


def test_errors_still_use_attempts_between_429s(sim_client):
    sim, client, _ = sim_client(max_attempts=2)
    sim.inject(sim.accounts[0].auth_id, 429, 503, 429, 503, 429)
    with pytest.raises(Exception, match="HTTP 503"):
        client.fetch_page(1, per_page=100)
    assert client.requests == 4  # 429, 503 (attempt 1), 429, 503 (attempt 2): out of attempts


def test_an_endless_throttle_fails_once_max_throttle_seconds_is_spent(sim_client):
    sim, client, fake = sim_client(max_attempts=8, max_throttle_seconds=5)
    sim.inject(sim.accounts[0].auth_id, *([429] * 50))
    with pytest.raises(ThrottleExhausted, match=r"max_throttle_seconds = 5"):
        client.fetch_page(1, per_page=100)
    assert client.throttled == 6  # Retry-After: 1 each; the sixth second is over the bound
    assert sum(fake.sleeps) == pytest.approx(5.0)


# -- end to end: `etl sync` against the simulator's limits --------------------------------------


@pytest.mark.parametrize("concurrency", [1, 4, 16])
def test_a_tight_unannounced_limit_never_fails_the_account(simulator, project, engine_for,
                                                           concurrency):
    sim = simulator(accounts=1, calls=1500, rate_limit=5, latency_ms=20, seed=4)  # burst 1
    proj = project(sim, api={"concurrency": concurrency, "max_attempts": 2})

    result = proj.run("--log-format", "json", "sync")

    assert result.returncode == 0, result.stderr
    stats = sim.stats(sim.accounts[0].auth_id)
    assert stats["by_status"].get(429, 0) > 0, "the limit should have been hit"
    assert assert_matches_simulator(engine_for(proj.database_url), sim) == 1500
    # Every request was answered; each 429 was sent again, none used up an attempt.
    assert stats["requests"] == sum(stats["by_status"].values())


def test_a_configured_limit_meets_no_429(simulator, project, engine_for):
    sim = simulator(accounts=1, calls=3000, rate_limit=20, latency_ms=20, seed=5)  # burst 4
    proj = project(sim, api={"concurrency": 8, "requests_per_second": 20})

    proj.run("sync", check=True)

    stats = sim.stats(sim.accounts[0].auth_id)
    assert stats["by_status"] == {200: stats["requests"]}
    assert assert_matches_simulator(engine_for(proj.database_url), sim) == 3000


def test_an_endless_throttle_is_one_line_naming_the_account(simulator, project):
    sim = simulator(accounts=1, calls=300)
    sim.inject(sim.accounts[0].auth_id, *([429] * 100))
    proj = project(sim, api={"max_throttle_seconds": 1})

    result = proj.run("sync")

    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert errors == [f"etl: error: {sim.accounts[0].name}: rate limited (HTTP 429) for 2 s in "
                      "total, more than [api].max_throttle_seconds = 1"], result.stderr
    assert sim.stats()["requests"] == 2


@pytest.mark.skipif("rate_headers" not in SIM_FIELDS, reason="the simulator has no rate_headers")
@pytest.mark.parametrize("headers", ["ietf", "x"])
def test_an_announced_limit_meets_no_429_after_the_first_second(simulator, project, headers):
    # A burst of 5 absorbs the arrival jitter of a loaded machine; bench_ratelimit.py has burst 1.
    sim = simulator(accounts=1, calls=4000, rate_limit=20, rate_burst=5, latency_ms=20,
                    rate_headers=headers, seed=6)
    proj = project(sim, api={"concurrency": 8})
    auth_id = sim.accounts[0].auth_id
    at_one_second: list[int] = []
    threading.Timer(1.0, lambda: at_one_second.append(
        sim.stats(auth_id)["by_status"].get(429, 0))).start()

    proj.run("sync", check=True)

    stats = sim.stats(auth_id)
    assert at_one_second, "the sync should take longer than a second"
    assert stats["by_status"].get(429, 0) == at_one_second[0]
    assert stats["by_status"].get(200, 0) >= 40

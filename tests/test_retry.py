"""The pure parts of the retry machinery: Retry-After, the wait policy, tenacity wiring.

The flow control for 429s (etl.throttle) has its own tests in test_throttle.py."""

from __future__ import annotations

import email.utils
import random
from datetime import UTC, datetime, timedelta

import pytest
import requests
from tenacity import RetryCallState, Retrying

from etl.client import RetryPolicy, parse_retry_after
from etl.config import ApiSettings
from etl.errors import FatalAPIError, RetriableAPIError

NOW = datetime(2026, 4, 9, 10, 30, 0, tzinfo=UTC)


def http_date(moment: datetime) -> str:
    return email.utils.format_datetime(moment, usegmt=True)


# -- parse_retry_after --------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "seconds"), [("120", 120.0), ("0", 0.0), (" 7 ", 7.0),
                                                 ("1.5", 1.5)])
def test_retry_after_in_delta_seconds(value, seconds):
    assert parse_retry_after(value) == seconds


def test_retry_after_as_a_future_http_date_is_the_seconds_until_then():
    value = http_date(NOW + timedelta(seconds=45))
    assert value.endswith("GMT")
    assert parse_retry_after(value, now=NOW.timestamp()) == pytest.approx(45.0)


def test_retry_after_as_an_http_date_in_another_zone_is_read_correctly():
    value = "Thu, 09 Apr 2026 12:31:00 +0200"  # 10:31 UTC
    assert parse_retry_after(value, now=NOW.timestamp()) == pytest.approx(60.0)


def test_retry_after_as_a_past_http_date_is_zero():
    value = http_date(NOW - timedelta(minutes=5))
    assert parse_retry_after(value, now=NOW.timestamp()) == 0.0


def test_retry_after_negative_seconds_is_zero():
    assert parse_retry_after("-5") == 0.0


@pytest.mark.parametrize("value", [None, "", "soon", "nan", "Thursday at noon", "12 parsecs"])
def test_retry_after_garbage_is_none(value):
    assert parse_retry_after(value, now=NOW.timestamp()) is None


# -- RetryPolicy.wait ---------------------------------------------------------------------------


class ExtremeRandom(random.Random):
    """uniform() always returns one end of the range."""

    def __init__(self, end: str) -> None:
        super().__init__(0)
        self.end = end

    def uniform(self, a: float, b: float) -> float:
        return b if self.end == "high" else a


def state_after(exc: BaseException, attempt: int) -> RetryCallState:
    state = RetryCallState(retry_object=Retrying(), fn=None, args=(), kwargs={})
    state.attempt_number = attempt
    state.set_exception((type(exc), exc, None))
    return state


def test_retry_after_wins_over_backoff():
    policy = RetryPolicy(backoff_initial=0.5, backoff_max=30, retry_after_max=120)
    for attempt in (1, 5, 10):
        assert policy.wait(state_after(RetriableAPIError("429", retry_after=7), attempt)) == 7.0


def test_retry_after_of_zero_is_honoured():
    policy = RetryPolicy(backoff_initial=5, backoff_max=30)
    assert policy.wait(state_after(RetriableAPIError("429", retry_after=0), 3)) == 0.0


def test_retry_after_is_capped_at_retry_after_max():
    policy = RetryPolicy(retry_after_max=120)
    assert policy.wait(state_after(RetriableAPIError("429", retry_after=3600), 1)) == 120.0
    assert policy.wait(state_after(RetriableAPIError("429", retry_after=float("inf")), 1)) == 120.0


def test_backoff_grows_exponentially_up_to_backoff_max():
    policy = RetryPolicy(backoff_initial=0.5, backoff_max=10, rng=ExtremeRandom("high"))
    waits = [policy.wait(state_after(RetriableAPIError("503"), n)) for n in range(1, 9)]
    assert waits == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]


def test_backoff_jitter_never_goes_below_half_the_ceiling():
    policy = RetryPolicy(backoff_initial=0.5, backoff_max=10, rng=ExtremeRandom("low"))
    waits = [policy.wait(state_after(RetriableAPIError("503"), n)) for n in range(1, 9)]
    assert waits == [0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


def test_backoff_jitter_stays_inside_half_ceiling_to_ceiling():
    policy = RetryPolicy(backoff_initial=0.5, backoff_max=30, rng=random.Random(1234))
    for attempt in range(1, 15):
        ceiling = min(30.0, 0.5 * 2 ** (attempt - 1))
        waits = {policy.wait(state_after(requests.ConnectionError("reset"), attempt))
                 for _ in range(50)}
        assert all(ceiling / 2 <= w <= ceiling for w in waits), (attempt, sorted(waits))
        assert len(waits) > 1, "the wait is jittered"


def test_policy_from_settings_copies_the_api_settings():
    api = ApiSettings(max_attempts=3, backoff_initial=0.1, backoff_max=2.0, retry_after_max=9.0)
    policy = RetryPolicy.from_settings(api)
    assert (policy.max_attempts, policy.backoff_initial) == (3, 0.1)
    assert (policy.backoff_max, policy.retry_after_max) == (2.0, 9.0)


# -- tenacity wiring ----------------------------------------------------------------------------


class Flaky:
    """Raises the given errors in turn, then returns "ok"."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def recording_policy(**kw) -> tuple[RetryPolicy, list[float]]:
    slept: list[float] = []
    policy = RetryPolicy(backoff_initial=0.5, backoff_max=4, sleep=slept.append,
                         rng=random.Random(7), **kw)
    return policy, slept


@pytest.mark.parametrize(
    "make_error",
    [lambda i: RetriableAPIError(f"HTTP 503 #{i}"), lambda i: requests.ConnectionError(f"reset #{i}"),
     lambda i: requests.Timeout(f"timeout #{i}"),
     lambda i: requests.exceptions.ChunkedEncodingError(f"truncated #{i}")],
)
def test_retriable_errors_are_retried_up_to_max_attempts_then_the_last_is_raised(make_error):
    policy, slept = recording_policy(max_attempts=4)
    errors = [make_error(i) for i in range(10)]
    call = Flaky(*errors)
    with pytest.raises(type(errors[0])) as info:
        policy.retrying()(call)
    assert call.calls == 4
    assert info.value is errors[3]
    assert len(slept) == 3
    assert all(0 < s <= 4 for s in slept)


def test_success_after_retries_returns_the_value():
    policy, slept = recording_policy(max_attempts=5)
    call = Flaky(RetriableAPIError("502"), requests.ConnectionError("reset"))
    assert policy.retrying()(call) == "ok"
    assert call.calls == 3
    assert len(slept) == 2


def test_fatal_errors_are_not_retried():
    policy, slept = recording_policy(max_attempts=8)
    call = Flaky(FatalAPIError("HTTP 401 Unauthorized"))
    with pytest.raises(FatalAPIError, match="401"):
        policy.retrying()(call)
    assert call.calls == 1
    assert slept == []


def test_unexpected_errors_are_not_retried():
    policy, slept = recording_policy(max_attempts=8)
    call = Flaky(KeyError("bug"))
    with pytest.raises(KeyError):
        policy.retrying()(call)
    assert call.calls == 1
    assert slept == []


def test_retry_after_from_the_error_is_what_the_retrying_sleeps():
    policy, slept = recording_policy(max_attempts=3, retry_after_max=60)
    call = Flaky(RetriableAPIError("429", retry_after=12), RetriableAPIError("429", retry_after=600))
    assert policy.retrying()(call) == "ok"
    assert slept == [12.0, 60.0]


def test_max_attempts_of_one_means_no_retry():
    policy, slept = recording_policy(max_attempts=1)
    call = Flaky(RetriableAPIError("503"))
    with pytest.raises(RetriableAPIError):
        policy.retrying()(call)
    assert call.calls == 1
    assert slept == []


def test_on_retry_is_told_about_each_retry():
    policy, _ = recording_policy(max_attempts=4)
    seen: list[tuple[int, str]] = []
    on_retry = lambda state: seen.append(  # noqa: E731
        (state.attempt_number, str(state.outcome.exception())))
    call = Flaky(RetriableAPIError("a"), RetriableAPIError("b"))
    assert policy.retrying(on_retry=on_retry)(call) == "ok"
    assert seen == [(1, "a"), (2, "b")]

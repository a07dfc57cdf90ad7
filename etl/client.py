"""The API client: HTTP, bearer auth, the one retry policy, and one page fetch as a unit of work."""

from __future__ import annotations

import email.utils
import logging
import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
)

from . import __version__
from .config import Account, ApiSettings
from .errors import FatalAPIError, RetriableAPIError
from .records import loads_page

log = logging.getLogger("etl.client")

RETRIABLE = (
    RetriableAPIError,
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)


@dataclass(frozen=True)
class Page:
    """One page of the list as the API answered it, with the positions it covers.

    A call's position (`seq`) counts from the account's oldest call, which is 0. New calls
    only ever arrive at the head, so a call keeps its position while the list drifts, and
    every page says exactly which positions it holds through its own `total_count`.
    """

    number: int
    per_page: int
    total_count: int
    total_pages: int
    records: list[Any]

    @property
    def top_seq(self) -> int:
        """Position of the page's first (newest) record."""
        return self.total_count - 1 - (self.number - 1) * self.per_page

    @property
    def low_seq(self) -> int:
        """Position of the page's last (oldest) record."""
        return self.top_seq - len(self.records) + 1

    def seq_of(self, index: int) -> int:
        return self.top_seq - index


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


@dataclass
class RetryPolicy:
    """When and how long to retry: exponential backoff with equal jitter (a wait between half
    the ceiling and the ceiling), except that a capped `Retry-After` wins."""

    max_attempts: int = 8
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    retry_after_max: float = 120.0
    sleep: Callable[[float], None] = time.sleep
    rng: random.Random = field(default_factory=random.Random)

    @classmethod
    def from_settings(cls, api: ApiSettings) -> RetryPolicy:
        return cls(api.max_attempts, api.backoff_initial, api.backoff_max, api.retry_after_max)

    def wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            return self.cap(retry_after)
        ceiling = min(self.backoff_max, self.backoff_initial * 2 ** (state.attempt_number - 1))
        return ceiling / 2 + self.rng.uniform(0, ceiling / 2)

    def cap(self, retry_after: float) -> float:
        return min(float(retry_after), self.retry_after_max)

    def retrying(self, on_retry: Callable[[RetryCallState], None] | None = None) -> Retrying:
        return Retrying(
            retry=retry_if_exception_type(RETRIABLE),
            stop=stop_after_attempt(self.max_attempts),
            wait=self.wait,
            sleep=self.sleep,
            reraise=True,
            before_sleep=on_retry,
        )


class RateBudget:
    """A client-side request budget per account that backs off on 429 and recovers.

    `rate` is the configured ceiling in requests per second (0 = none). After a 429 every
    request waits until `Retry-After` has passed and the pace halves, then grows back step by
    step. Without a configured ceiling, a 429 after at least ten answers in the last second
    teaches one: 90% of the pace the server accepted, nudged up by 1% every 100 answers so it
    keeps probing, and down by 5% whenever it is hit at full pace.
    """

    def __init__(self, rate: float = 0.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.ceiling = rate
        self.rate = rate
        self.learned = False
        self._clock = clock
        self._lock = threading.Lock()
        self._next = 0.0
        self._paused_until = 0.0
        self._recent: deque[float] = deque()
        self._since_nudge = 0
        self.throttled = 0

    def acquire(self) -> float:
        """Reserve the next slot; returns the seconds the caller must sleep first."""
        with self._lock:
            now = self._clock()
            start = max(now, self._next, self._paused_until)
            if self.rate > 0:
                self._next = start + 1.0 / self.rate
            return start - now

    def on_success(self) -> None:
        with self._lock:
            now = self._clock()
            self._recent.append(now)
            while self._recent and self._recent[0] < now - 1.0:
                self._recent.popleft()
            if self.learned:
                self._since_nudge += 1
                if self._since_nudge >= 100:
                    self._since_nudge = 0
                    self.ceiling *= 1.01
            if self.ceiling > 0 and self.rate < self.ceiling:
                self.rate = min(self.ceiling, self.rate + self.ceiling / 50)

    def on_throttle(self, retry_after: float | None) -> None:
        with self._lock:
            self.throttled += 1
            now = self._clock()
            pause = retry_after if retry_after is not None else 1.0
            self._paused_until = max(self._paused_until, now + pause)
            if self.ceiling <= 0:
                accepted = sum(1 for t in self._recent if t >= now - 1.0)
                if accepted < 10:
                    return  # too little traffic to learn a pace from; the pause is enough
                self.ceiling = 0.9 * accepted
                self.learned = True
            elif self.learned and self.rate >= self.ceiling * 0.99:
                self.ceiling = max(1.0, self.ceiling * 0.95)
            self.rate = max(self.ceiling / 8, (self.rate or self.ceiling) / 2)


class VoxClient:
    """Fetches pages of one account's calls; thread-safe, one `requests.Session` per account."""

    def __init__(
        self,
        account: Account,
        api: ApiSettings,
        token: str,
        *,
        policy: RetryPolicy | None = None,
        session: requests.Session | None = None,
    ) -> None:
        self.account = account
        self.api = api
        self.url = f"{api.base_url}/voice/accounts/{account.auth_id}/calls"
        self.policy = policy or RetryPolicy.from_settings(api)
        self.budget = RateBudget(api.requests_per_second)
        self.session = session or requests.Session()
        pool = max(4, api.concurrency)
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers.update(
            {
                "Authorization": f"Bearer {token}",
                "Accept": "application/json",
                "User-Agent": f"vox-etl/{__version__}",
            }
        )
        self.session.trust_env = False
        self._count_lock = threading.Lock()
        self.requests = 0
        self.retries = 0

    def close(self) -> None:
        self.session.close()

    def fetch_page(self, number: int, per_page: int = 100, **filters: str) -> Page:
        """One page, retried under the policy; raises FatalAPIError or the last retriable error."""
        params = {"page": str(number), "per_page": str(per_page), **filters}
        retrying = self.policy.retrying(on_retry=self._log_retry)
        return retrying(self._get_once, params)

    def _log_retry(self, state: RetryCallState) -> None:
        with self._count_lock:
            self.retries += 1
        exc = state.outcome.exception() if state.outcome else None
        log.info(
            "retrying",
            extra={
                "account": self.account.name,
                "event": "retry",
                "attempt": state.attempt_number,
                "error": describe(exc),
                "wait": round(state.upcoming_sleep, 2),
            },
        )

    def _get_once(self, params: dict[str, str]) -> Page:
        delay = self.budget.acquire()
        if delay > 0:
            self.policy.sleep(delay)
        with self._count_lock:
            self.requests += 1
        timeout = (min(self.api.timeout, 10.0), self.api.timeout)
        response = self.session.get(self.url, params=params, timeout=timeout)
        try:
            status = response.status_code
            if status == 429:
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                if retry_after is not None:
                    retry_after = self.policy.cap(retry_after)
                self.budget.on_throttle(retry_after)
                raise RetriableAPIError("HTTP 429 Too Many Requests", retry_after=retry_after)
            if status >= 500:
                raise RetriableAPIError(f"HTTP {status} {response.reason or ''}".strip())
            if status >= 400:
                raise FatalAPIError(self._fatal_message(response))
            if status != 200:
                raise RetriableAPIError(f"unexpected HTTP {status}")
            page = _page_from(response, params)
        finally:
            response.close()
        self.budget.on_success()
        return page

    def _fatal_message(self, response: requests.Response) -> str:
        hint = {
            401: "the token was refused; check the environment variable "
            f"{self.account.token_env}",
            403: "the token is not allowed to read this account",
            404: f"no account {self.account.auth_id!r} at {self.api.base_url}",
        }.get(response.status_code)
        detail = _server_message(response)
        parts = [f"HTTP {response.status_code} {response.reason or ''}".strip()]
        if detail:
            parts.append(detail)
        if hint:
            parts.append(hint)
        return ": ".join(parts[:1]) + (" (" + "; ".join(parts[1:]) + ")" if parts[1:] else "")


def _server_message(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    if isinstance(body, dict):
        for key in ("message", "error", "detail"):
            if isinstance(body.get(key), str):
                return body[key][:200]
    return ""


def _page_from(response: requests.Response, params: dict[str, str]) -> Page:
    # Decode the UTF-8 text ourselves (what JSON must be) so that each record keeps its own
    # text as received (`loads_page`); anything else goes to requests' own decoding.
    encoding = (response.encoding or "utf-8").lower().replace("-", "").replace("_", "")
    text: str | None = None
    if encoding == "utf8":
        try:
            text = response.content.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if text is not None and text.startswith("\ufeff"):
            text = None  # a byte-order mark: requests' decoding knows what to do with it
    try:
        body = loads_page(text) if text is not None else response.json()
    except ValueError:
        kind = response.headers.get("Content-Type", "unknown content type")
        raise RetriableAPIError(f"response body is not JSON ({kind}, truncated?)") from None
    if not isinstance(body, dict):
        raise RetriableAPIError("response body is not a JSON object")
    records = body.get("calls")
    pagination = body.get("pagination")
    if not isinstance(records, list) or not isinstance(pagination, dict):
        raise RetriableAPIError("response lacks 'calls' or 'pagination'")
    try:
        numbers = {k: _count(pagination[k]) for k in ("page", "per_page", "total_pages", "total_count")}
    except (KeyError, ValueError) as exc:
        raise RetriableAPIError(f"pagination is malformed: {exc}") from None
    asked = int(params["page"])
    if numbers["page"] != asked:
        raise RetriableAPIError(f"asked for page {asked}, got page {numbers['page']}")
    if numbers["per_page"] < 1 or len(records) > numbers["per_page"]:
        raise RetriableAPIError("pagination.per_page disagrees with the page's length")
    return Page(
        number=asked,
        per_page=numbers["per_page"],
        total_count=numbers["total_count"],
        total_pages=numbers["total_pages"],
        records=records,
    )


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{value!r} is not a count")
    return value


def describe(exc: BaseException | None) -> str:
    """A one-line, token-free description of a request failure."""
    if exc is None:
        return "unknown error"
    if isinstance(exc, requests.Timeout):
        return "timed out"
    if isinstance(exc, requests.ConnectionError):
        return "connection failed (reset or refused)"
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return "connection broke mid-body"
    if isinstance(exc, requests.RequestException):
        return type(exc).__name__
    return str(exc) or type(exc).__name__


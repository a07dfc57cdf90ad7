"""The API client: HTTP, bearer auth, the one retry policy, and one page fetch as a unit of work.

A 429 is flow control, not an error: it goes to the account's `Throttle` (etl/throttle.py),
which pauses every worker together and paces them afterwards, and the request is sent again
without using an attempt. The retry policy (`max_attempts`) counts errors only: 5xx, resets,
timeouts, broken bodies.
"""

from __future__ import annotations

import email.utils
import logging
import math
import random
import threading
import time
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
from .throttle import Throttle

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
    """One page of the list as the API answered it: its number and size, the list's size at
    that moment, and its records (what that proves is etl.sheets' business)."""

    number: int
    per_page: int
    total_count: int
    records: list[Any]


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

    # The defaults are the configuration's: one place says what they are.
    max_attempts: int = ApiSettings.max_attempts
    backoff_initial: float = ApiSettings.backoff_initial
    backoff_max: float = ApiSettings.backoff_max
    retry_after_max: float = ApiSettings.retry_after_max
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
        self.throttle = Throttle(
            api.requests_per_second, api.rate_share, max_throttle_seconds=api.max_throttle_seconds
        )
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

    @property
    def throttled(self) -> int:
        """429 answers so far (each re-sent without using an attempt)."""
        return self.throttle.throttled

    def _get_once(self, params: dict[str, str]) -> Page:
        """One attempt: sent again after every 429 until the server answers something else."""
        timeout = (min(self.api.timeout, 10.0), self.api.timeout)
        session = self.session
        # What `Session.get` does, split so that little runs between the slot and the wire: the
        # time spent there varies with the other threads' work, and a request sent late lets
        # the next one arrive early, which a small bucket refuses. Each attempt is prepared
        # afresh (cookies); the transport settings are the same for all of them.
        settings = session.merge_environment_settings(self.url, {}, None, None, None)
        while True:
            request = session.prepare_request(requests.Request("GET", self.url, params=params))
            ticket = self.throttle.acquire()
            with self._count_lock:
                self.requests += 1
            try:
                response = session.send(request, timeout=timeout, allow_redirects=True, **settings)
            except BaseException:
                self.throttle.failed(ticket)
                raise
            try:
                status = response.status_code
                if status == 429:
                    retry_after = parse_retry_after(response.headers.get("Retry-After"))
                    if retry_after is not None:
                        retry_after = self.policy.cap(retry_after)
                    wait = self.throttle.throttled_for(ticket, retry_after, response.headers)
                    self._log_throttled(wait)
                    continue
                self.throttle.answered(ticket, response.headers)
                if status >= 500:
                    raise RetriableAPIError(f"HTTP {status} {response.reason or ''}".strip())
                if status >= 400:
                    raise FatalAPIError(self._fatal_message(response))
                if status != 200:
                    raise RetriableAPIError(f"unexpected HTTP {status}")
                return _page_from(response, params)
            finally:
                response.close()

    def _log_throttled(self, wait: float) -> None:
        with self._count_lock:
            self.retries += 1
        throttle = self.throttle
        log.info(
            "throttled",
            extra={
                "account": self.account.name,
                "event": "retry",
                "error": "HTTP 429 Too Many Requests",
                "wait": round(wait, 2),
                "pace": round(throttle.pace, 2) if throttle.pace else None,
            },
        )

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


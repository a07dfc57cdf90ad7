"""Faults and rate limits of one account: what the next request meets before it is served.

`FaultSource` decides a request's scripted or random fault. `RateLimiter` holds an account's
limits as real providers apply them: a token bucket (`rate_limit` per second, `rate_burst`
tokens), a fixed window (`window_limit` per `window_seconds`, windows aligned to the epoch), and
the customer's own traffic (`foreign_rate`) drawing on both. It answers whether a request may
pass, how long to wait when not, and the RateLimit-* / X-RateLimit-* headers describing it.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import email.utils
import math
import random
import re
import time

from .config import SimulatorConfig

INJECT_RE = re.compile(r"^(?:(\d{3})|429-date|html(\d{3})|reset|truncate|ok)$")


class FaultSource:
    """Scripted responses first (one per request), then random faults at the configured rates.

    An item is "reset", "truncate", "429-date", "htmlNNN", "NNN", or "ok"/"200" (serve).
    """

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.injected: collections.deque[str] = collections.deque()

    @staticmethod
    def check(items: list[str]) -> None:
        for item in items:
            if not INJECT_RE.match(item):
                raise ValueError(f"unknown injected response {item!r}")

    def next(self, cfg: SimulatorConfig) -> str | None:
        """The fault for the next request, None to serve it normally."""
        if self.injected:
            item = self.injected.popleft()
            return None if item in ("ok", "200") else item
        rng = self.rng
        r = rng.random()
        if r < cfg.reset_rate:
            return "reset"
        if r < cfg.reset_rate + cfg.error_rate:
            code = rng.choice((500, 502, 503))
            return f"html{code}" if rng.random() < 1 / 3 else str(code)
        if rng.random() < cfg.truncate_rate:
            return "truncate"
        return None


@dataclasses.dataclass
class Verdict:
    """A rate-limit decision: allowed or not, the wait before a retry, and headers to send."""

    allowed: bool
    wait: float = 0.0
    headers: list[tuple[str, str]] = dataclasses.field(default_factory=list)


class RateLimiter:
    """One account's token bucket, fixed window and foreign traffic, and their counters."""

    def __init__(self) -> None:
        self.tokens = 0.0
        self.last = 0.0
        self.shape: tuple[float, float] = (0.0, 0.0)  # (rate, size) the bucket was filled for
        self.window = -1  # index of the current window
        self.used = 0
        self.foreign_carry = 0.0
        self.foreign_last: float | None = None
        self.n429 = 0  # refusals, for alternating Retry-After forms
        self.throttled = 0
        self.foreign_requests = 0
        self.foreign_refused = 0

    @staticmethod
    def active(cfg: SimulatorConfig) -> bool:
        return cfg.rate_limit > 0 or cfg.window_limit > 0

    def _refill(self, cfg: SimulatorConfig, mono: float) -> None:
        rate, size = cfg.rate_limit, cfg.bucket_size
        if self.shape != (rate, size):
            self.shape, self.tokens, self.last = (rate, size), size, mono
        self.tokens = min(size, self.tokens + (mono - self.last) * rate)
        self.last = mono

    def _roll(self, cfg: SimulatorConfig, wall: float) -> None:
        index = math.floor(wall / cfg.window_seconds)
        if index != self.window:
            self.window, self.used = index, 0

    def _admit(self, cfg: SimulatorConfig) -> bool:
        """Take one request from every limit, or none when any is exhausted."""
        if cfg.rate_limit > 0 and self.tokens < 1.0:
            return False
        if cfg.window_limit > 0 and self.used >= cfg.window_limit:
            return False
        if cfg.rate_limit > 0:
            self.tokens -= 1.0
        if cfg.window_limit > 0:
            self.used += 1
        return True

    def foreign(self, cfg: SimulatorConfig, mono: float, wall: float) -> None:
        """Let the customer's own requests since the last look draw on the limits."""
        last, self.foreign_last = self.foreign_last, mono
        if last is None or cfg.foreign_rate <= 0:
            self.foreign_carry = 0.0
            return
        self.foreign_carry += cfg.foreign_rate * max(0.0, mono - last)
        n = int(self.foreign_carry)
        if not n:
            return
        self.foreign_carry -= n
        if cfg.rate_limit > 0:
            self._refill(cfg, mono)
        if cfg.window_limit > 0:
            self._roll(cfg, wall)
        for _ in range(n):
            self.foreign_requests += 1
            if not self._admit(cfg):
                self.foreign_refused += 1

    def check(self, cfg: SimulatorConfig, mono: float, wall: float) -> Verdict:
        """Admit one request of the client or refuse it (counted), with the headers to send."""
        if not self.active(cfg):
            return Verdict(True)
        self.foreign(cfg, mono, wall)
        if cfg.rate_limit > 0:
            self._refill(cfg, mono)
        if cfg.window_limit > 0:
            self._roll(cfg, wall)
        allowed = self._admit(cfg)
        wait = 0.0
        if not allowed:
            self.throttled += 1
            self.n429 += 1
            if cfg.rate_limit > 0 and self.tokens < 1.0:
                wait = (1.0 - self.tokens) / cfg.rate_limit
            if cfg.window_limit > 0 and self.used >= cfg.window_limit:
                wait = max(wait, (self.window + 1) * cfg.window_seconds - wall)
        return Verdict(allowed, wait, self.headers(cfg, wall, allowed, wait))

    def headers(
        self, cfg: SimulatorConfig, wall: float, allowed: bool, wait: float
    ) -> list[tuple[str, str]]:
        """RateLimit-* and/or X-RateLimit-* describing the tighter limit (by sustained rate).

        Window: Limit = window_limit, Remaining = what is left of this window, Reset = until it
        ends. Bucket: presented as a one-second quota, Limit = rate_limit (whole, at least 1),
        Remaining = whole tokens left, Reset = until the bucket is full again. On a 429 the
        Reset is never earlier than the wait. RateLimit-Reset is delta seconds (IETF draft);
        X-RateLimit-Reset is the epoch second of the reset. RateLimit-Policy lists every limit
        as "quota;w=seconds".
        """
        mode = cfg.rate_headers
        if mode == "none":
            return []
        use_window = cfg.window_limit > 0 and (
            cfg.rate_limit <= 0 or cfg.window_limit / cfg.window_seconds <= cfg.rate_limit
        )
        if use_window:
            limit = cfg.window_limit
            remaining = max(0, cfg.window_limit - self.used)
            reset = (self.window + 1) * cfg.window_seconds - wall
        else:
            limit = max(1, int(cfg.rate_limit))
            remaining = max(0, int(self.tokens))
            reset = (cfg.bucket_size - self.tokens) / cfg.rate_limit
        if not allowed:
            reset = max(reset, wait)
        delta = max(0, math.ceil(reset - 1e-9))
        if not allowed:
            delta = max(1, delta)
        policy = []
        if cfg.window_limit > 0:
            policy.append(f"{cfg.window_limit};w={_number(cfg.window_seconds)}")
        if cfg.rate_limit > 0:
            policy.append(f"{max(1, int(cfg.rate_limit))};w=1")
        out: list[tuple[str, str]] = []
        if mode in ("ietf", "both"):
            out += [
                ("RateLimit-Limit", str(limit)),
                ("RateLimit-Remaining", str(remaining)),
                ("RateLimit-Reset", str(delta)),
                ("RateLimit-Policy", ", ".join(policy)),
            ]
        if mode in ("x", "both"):
            out += [
                ("X-RateLimit-Limit", str(limit)),
                ("X-RateLimit-Remaining", str(remaining)),
                ("X-RateLimit-Reset", str(math.ceil(wall + reset))),
            ]
        return out

    def retry_after(self, cfg: SimulatorConfig, wait: float) -> list[tuple[str, str]]:
        """The Retry-After header for a refusal, in the configured form."""
        fmt = cfg.retry_after_format
        if fmt == "none":
            return []
        use_date = fmt == "http-date" or (fmt == "both" and self.n429 % 2 == 0)
        value = retry_date(wait) if use_date else str(max(1, math.ceil(wait)))
        return [("Retry-After", value)]

    def stats(self) -> dict[str, int]:
        return {
            "throttled": self.throttled,
            "foreign_requests": self.foreign_requests,
            "foreign_refused": self.foreign_refused,
        }

    def reset_stats(self) -> None:
        self.throttled = self.foreign_requests = self.foreign_refused = 0


def retry_date(wait: float) -> str:
    """An HTTP-date at least one whole second after now, so a client never reads it as past."""
    when = math.ceil(time.time() + max(1.0, wait))
    return email.utils.format_datetime(dt.datetime.fromtimestamp(when, dt.UTC), usegmt=True)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"

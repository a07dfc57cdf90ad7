"""What the simulator does: its settings, with their meaning and their checks, and an account."""

from __future__ import annotations

import dataclasses
import math

MAX_PER_PAGE = 100
DEFAULT_PER_PAGE = 20

RETRY_AFTER_FORMATS = ("seconds", "http-date", "both", "none")
RATE_HEADERS = ("none", "ietf", "x", "both")

# Fields that may be changed while serving (set_faults); the others shape the generated history.
RUNTIME_FIELDS = frozenset(
    {
        "error_rate",
        "reset_rate",
        "truncate_rate",
        "rate_limit",
        "rate_burst",
        "window_limit",
        "window_seconds",
        "rate_headers",
        "foreign_rate",
        "retry_after_format",
        "latency_ms",
        "per_page_cap",
        "drift_rate",
        "drift_per_request",
        "burst_size",
        "finish_after_s",
        "open_fraction",
        "retention_days",
        "expire_rate",
        "delete_rate",
        "late_rate",
        "late_max_age_s",
    }
)


@dataclasses.dataclass
class SimulatorConfig:
    """Everything the simulator does; all fields have defaults (a static, well-behaved API).

    History: `accounts` accounts of `calls` calls each over the last `days` days, drawn from
    `seed`; with `burst_every` > 0, every `burst_every`-th call opens a burst of `burst_calls`
    calls sharing one start second (make `burst_calls` > the page size to test ties across a
    page boundary).

    Faults: `latency_ms` before every answer; `error_rate` of requests answered 500/502/503
    (a third as HTML); `reset_rate` of connections reset; `truncate_rate` of 200s cut mid-body;
    `per_page_cap` below 100.

    Rate limits, per account (a request must pass every limit that is on; a refused request
    consumes nothing): a token bucket of `rate_limit` requests/s holding `rate_burst` tokens
    (None: max(1, min(10, rate_limit / 5))); a fixed window of `window_limit` requests per
    `window_seconds` (windows aligned to the epoch). A refusal is a 429 with `Retry-After` as
    `retry_after_format` says ("both" alternates seconds and an HTTP date; "none" sends none).
    `rate_headers` adds RateLimit-* (IETF draft, Reset in seconds) and/or X-RateLimit-* (Reset
    as epoch seconds) to 200s and 429s. `foreign_rate` requests/s of the customer's own traffic
    draw on the same limits, unseen by the client.

    Dynamics: `drift_rate` new calls/s arrive at the head (in bursts of `burst_size` calls
    sharing one second); `drift_per_request` calls arrive after each answered page;
    `open_fraction` of new calls arrive ringing or in progress and finish `finish_after_s`
    seconds later (None: only when told). The list keeps `retention_days` of history (None:
    all): older calls leave it continuously. `expire_rate` more of the oldest calls leave per
    second regardless of the clock; `delete_rate` random listed calls vanish per second;
    `late_rate` calls per second are listed late, up to `late_max_age_s` older than now.
    """

    host: str = "127.0.0.1"
    port: int = 0
    accounts: int = 3
    calls: int = 5000
    days: float = 30
    seed: int = 1
    latency_ms: float = 0
    error_rate: float = 0.0
    reset_rate: float = 0.0
    truncate_rate: float = 0.0
    rate_limit: float = 0.0
    rate_burst: float | None = None
    window_limit: int = 0
    window_seconds: float = 5.0
    rate_headers: str = "none"
    foreign_rate: float = 0.0
    retry_after_format: str = "both"
    per_page_cap: int = MAX_PER_PAGE
    drift_rate: float = 0.0
    drift_per_request: int = 0
    burst_size: int = 1
    finish_after_s: float | None = None
    open_fraction: float = 0.3
    retention_days: float | None = None
    expire_rate: float = 0.0
    delete_rate: float = 0.0
    late_rate: float = 0.0
    late_max_age_s: float = 3600.0
    burst_every: int = 0
    burst_calls: int = 0

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        for name in ("error_rate", "reset_rate", "truncate_rate", "open_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        if self.error_rate + self.reset_rate > 1.0:
            raise ValueError("error_rate + reset_rate must not exceed 1")
        for name in ("accounts", "calls", "drift_per_request", "port", "days", "latency_ms",
                     "rate_limit", "drift_rate", "window_limit", "foreign_rate", "expire_rate",
                     "delete_rate", "late_rate", "burst_every", "burst_calls"):  # fmt: skip
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value)) or value < 0:
                raise ValueError(f"{name} must be a number >= 0")
        if self.per_page_cap < 1:
            raise ValueError("per_page_cap must be >= 1")
        if self.burst_size < 1:
            raise ValueError("burst_size must be >= 1")
        if self.finish_after_s is not None and not self.finish_after_s >= 0:
            raise ValueError("finish_after_s must be >= 0 or None")
        if self.retention_days is not None and not 0 <= self.retention_days < 1e6:
            raise ValueError("retention_days must be a number of days >= 0, or None")
        if self.rate_burst is not None and not 1 <= self.rate_burst < math.inf:
            raise ValueError("rate_burst must be a number >= 1, or None")
        if not 0 < self.window_seconds < math.inf:
            raise ValueError("window_seconds must be a number > 0")
        if not 1 <= self.late_max_age_s < 1e6 * 86400:
            raise ValueError("late_max_age_s must be at least 1 second")
        if self.retry_after_format not in RETRY_AFTER_FORMATS:
            raise ValueError(f"retry_after_format must be one of {', '.join(RETRY_AFTER_FORMATS)}")
        if self.rate_headers not in RATE_HEADERS:
            raise ValueError(f"rate_headers must be one of {', '.join(RATE_HEADERS)}")
        if self.burst_every and not 2 <= self.burst_calls <= self.burst_every:
            raise ValueError(
                "burst_calls must be between 2 and burst_every when burst_every is set"
            )

    @property
    def bucket_size(self) -> float:
        """The token bucket's capacity: rate_burst, or the default derived from rate_limit."""
        if self.rate_burst is not None:
            return float(self.rate_burst)
        return max(1.0, min(10.0, self.rate_limit / 5))


def parse_rate_window(text: str) -> tuple[int, float]:
    """ "300/5" or "300/5s" -> (300, 5.0): a fixed window of 300 requests per 5 seconds."""
    limit, slash, seconds = str(text).strip().partition("/")
    try:
        if not slash:
            raise ValueError
        n, window = int(limit), float(seconds.strip().removesuffix("s"))
    except ValueError:
        raise ValueError(f"expected N/SECONDS such as 300/5, got {text!r}") from None
    if n < 1 or not (math.isfinite(window) and window > 0):
        raise ValueError(f"expected N >= 1 and SECONDS > 0, got {text!r}")
    return n, window


@dataclasses.dataclass(frozen=True)
class SimAccount:
    """One simulated account: a label, its auth_id and its bearer token."""

    name: str
    auth_id: str
    token: str

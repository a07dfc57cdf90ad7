"""Flow control for one account: a pacer shared by all its workers, for which a 429 is a signal.

Why: providers limit each account (Plivo: 300 requests per 5 s, the customer's own traffic
included), rarely say so, and answer 429 beyond it. Retrying each 429 on its own, as an error,
makes every worker sleep the same `Retry-After` and wake together (a thundering herd), uses up
attempts meant for errors, and never learns the pace. So the client asks this controller for a
slot before every request and reports the answer; 429s never reach the retry policy.

How it works
------------
*Slots.* `acquire()` hands out send times spaced `1 / pace` apart, across all threads (pace =
None: no spacing, only `[api].concurrency` bounds the flow). Each thread reserves its slot and
sleeps until it, so no two wake for the same slot; a 429 voids every reservation made before
it. Unused time is not banked, and a thread that wakes late never lets the next one in closer
than `(1 - CATCH_UP)` of a slot (a bucket of one refuses a request that arrives early), unless
the server's own count (Remaining, a window's quota) says more than one request could go now.

*Gate.* A 429 closes the gate for every thread until its `Retry-After` (seconds or HTTP date,
capped by `[api].retry_after_max`; without one: 1 s, doubling while nothing is accepted, up to
30 s). When the gate reopens, one *probe* goes alone; the paced flow resumes, one slot at a
time, only once the probe is answered. 429s for requests sent before the gate closed belong to
the same event: they may extend the gate, but lower the pace only once.

*The pace*, from the most trusted source to the least:

1. `[api].requests_per_second` (the *ceiling*) is never exceeded: it is paced at
   `CEILING_MARGIN` of it (arrivals jitter by a millisecond or so). A 429 at the ceiling first
   widens that margin (`_widened`: by `MARGIN_STEP`, or to keep `JITTER` between two slots
   when that is more), down to `MIN_CEILING_MARGIN`; refused beyond that, the
   account's real limit is lower (its own traffic) and the pace is learned as in 3.
2. *Announced* limits: `RateLimit-Limit/Remaining/Reset` (IETF draft; `RateLimit-Policy` or a
   `;w=` parameter gives the window) or `X-RateLimit-Limit/Remaining/Reset` (Reset as delta
   seconds or as an epoch timestamp). The pace is `rate_share * limit / window` (the window is
   learned as the longest Reset seen when not announced). For windows of 2 s or more the pace
   is the remaining quota spread evenly until the reset (with `rate_share < 1`, or after a
   429 despite the headers, never more than the pace above), and when our
   estimate of the remaining quota (the last announced Remaining less what we sent since)
   reaches zero, the gate stays shut until the reset, so a known limit is never overrun. (A
   1-second quota is a token bucket in whole seconds: its Reset says when it is full again.)
3. *Learned* limits (nothing announced): AIMD with a memory and a CUBIC-style probe.
   - Cold start: unpaced, but at most 1 request in flight, one more per answer (it doubles
     every round trip, as TCP's slow start), until the first 429 or 64 in flight; so the
     first wave of 429s is small. Sends are spread over the quickest answer time (window
     requests per round trip, evenly; past the window, one more than were ever in flight at
     once), so the first 429 comes near the rate refused, not from two requests sent in the
     same millisecond.
   - On a 429 event (multiplicative decrease), `hi` (the limit estimate) becomes the pace the
     server refused: the pace kept, or, from the cold start, the answers accepted per second
     of open gate, but never more than one request per the time between the refused request
     and the one sent before it (whatever its size, the bucket was empty after that long).
     From the cold start the pace is `BETA * hi`. After a kept pace it drops to at most
     `BETA * hi`, and as far as what the server let through (`lower`: per wall second over
     the last `window` seconds; per second beyond the burst that a pause refills, the burst
     being what the cold start got before its first 429; or the pace the last growth step
     started from, which the server took for a whole confirm period), but no further than
     `KEPT_BETA * hi`. With nothing accepted at all, the pace starts at 1 req/s and doubles
     every second.
   - Without a 429, every `CONFIRM` second of open gate (a closed gate confirms nothing):
     while `hi` is only the cold start's guess, the pace grows by `UNSURE_GROWTH`; otherwise
     it holds where the decrease left it for `HOLD` s (doubling with every event, at most
     `MAX_HOLD`), then probes above along a cubic, +1% after `PROBE_AFTER` s, +8% after
     twice that: a limit just above costs a rare 429, one far above is found within seconds.
   - `rate_share < 1` caps the pace at `rate_share * hi` and stops probing beyond it, leaving
     the rest of the account's budget to the customer's own traffic.
   The `window` (10 s) is long enough to cover window-style limits such as 300 per 5 s.

*Bound.* The closed-gate time caused by 429s is summed per account; beyond
`max_throttle_seconds` the next 429 raises `ThrottleExhausted` (one line, names the key), so an
endless throttle fails the account instead of hanging the run.

Thread-safe; `clock`, `sleep` and `wall` are injectable so tests run on fake time.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .errors import APIError

# Multiplicative decrease after a 429 event, as a share of the pace the server refused (at
# most; see _decrease).
BETA = 0.9
# The deepest decrease after a kept pace is refused, when little came through beyond the burst.
KEPT_BETA = 0.7
# The pace after a 429 when nothing was ever accepted, doubled every confirm period until the
# next 429 (slow start).
START_PACE = 1.0
# The cubic probe above the hold level: +STEP_NEAR of it PROBE_AFTER seconds into the probe.
STEP_NEAR = 0.01
PROBE_AFTER = 3.0
# Growth per confirm period while the only estimate is a cold start's guess.
UNSURE_GROWTH = 1.25
# Seconds held under a refused pace before probing above it: doubles with every 429 event.
HOLD = 3.0
MAX_HOLD = 30.0
# Announced limits are used up to this share (clock skew, requests crossing a window edge).
ANNOUNCED_MARGIN = 0.98
# A configured ceiling is paced at this share of it: a server whose bucket holds one request
# refuses one that arrives a millisecond early, and arrivals jitter by about that much.
CEILING_MARGIN = 0.985
# 429s at the ceiling lower that share by MARGIN_STEP each, down to this; below it the pace is
# learned (the account's own traffic leaves less than the ceiling).
MIN_CEILING_MARGIN = 0.85
# Each 429 despite an announced limit lowers that share by MARGIN_STEP, down to MIN_MARGIN;
# or, when more, by what keeps JITTER seconds (doubled with each such 429) between two slots at
# the limit: a millisecond of arrival jitter is 5 % of a slot at 50 req/s, 0.5 % at 5 req/s.
JITTER = 0.002
MARGIN_STEP = 0.02
MIN_MARGIN = 0.85
# Announced windows at least this long (seconds) also bound the remaining quota until the reset.
QUOTA_WINDOW = 2.0
# The slowest pace ever set, in requests per second.
FLOOR = 0.2
# How late a slot may be taken and still count from its planned time, in slots (small: a
# server with a burst of one refuses a request that comes early by more than the margin). When
# the server's own count says more than one request could go now, a late slot catches up in
# full (CATCH_UP_AHEAD).
CATCH_UP = 0.02
CATCH_UP_AHEAD = 1.0
# The shortest span a pace is measured over, in seconds.
MIN_SPAN = 1.0
# Seconds without a 429 before the pace grows a step.
CONFIRM = 1.0
# The cold-start window stops at this many requests in flight.
MAX_WINDOW = 64
# Pause after a 429 without Retry-After: first, and the most it doubles to.
DEFAULT_PAUSE = 1.0
MAX_DEFAULT_PAUSE = 30.0


def _widened(margin: float, rate: float, refusals: int) -> float:
    """The share of a stated limit to pace at after `refusals` 429s at it."""
    jitter = JITTER * 2 ** (refusals - 1)
    return min(margin - MARGIN_STEP, 1 / (1 + jitter * rate))


class ThrottleExhausted(APIError):
    """The server kept answering 429 for longer than `[api].max_throttle_seconds` in total."""


@dataclass(frozen=True)
class Announced:
    """A rate limit as the server stated it in one response's headers."""

    limit: int
    remaining: int | None
    reset: float | None  # seconds from the response until the quota resets
    window: float | None  # the quota's window in seconds, when the server names it
    whole_seconds: bool = False  # Reset came in whole seconds (delta or epoch), rounded up


_INT = re.compile(r"^\s*(\d+)")
_WINDOW = re.compile(r";\s*w\s*=\s*(\d+(?:\.\d+)?)")
_EPOCH_THRESHOLD = 1_000_000_000  # a Reset above this is a Unix timestamp, not a delta


def _first_int(value: str | None) -> int | None:
    if value is None:
        return None
    match = _INT.match(value)
    return int(match.group(1)) if match else None


def parse_rate_headers(headers: Mapping[str, str], wall_now: float | None = None) -> Announced | None:
    """The limit announced by `RateLimit-*` (preferred) or `X-RateLimit-*` headers, if any.

    `headers` must look names up case-insensitively (requests' headers do). Reset is read as
    delta seconds, or as a Unix timestamp when it is that large (GitHub-style X-RateLimit-Reset).
    """
    for prefix in ("RateLimit-", "X-RateLimit-"):
        limit = _first_int(headers.get(prefix + "Limit"))
        if limit is None or limit <= 0:
            continue
        remaining = _first_int(headers.get(prefix + "Remaining"))
        reset: float | None = None
        raw_reset = headers.get(prefix + "Reset")
        whole = raw_reset is not None and raw_reset.strip().isdigit()
        if raw_reset is not None:
            try:
                value = float(raw_reset.strip())
            except ValueError:
                value = math.nan
            if math.isfinite(value) and value >= 0:
                if value > _EPOCH_THRESHOLD:
                    value -= time.time() if wall_now is None else wall_now
                reset = max(0.0, value)
        return Announced(limit, remaining, reset, _policy_window(headers, prefix, limit), whole)
    return None


def _policy_window(headers: Mapping[str, str], prefix: str, limit: int) -> float | None:
    """The window of the announced limit, from `RateLimit-Policy: 300;w=5, 20;w=1` (the entry
    whose quota is the Limit, else the tightest) or a `;w=` on the Limit header itself."""
    entries: list[tuple[int, float]] = []
    for source in (headers.get("RateLimit-Policy"), headers.get(prefix + "Limit")):
        for part in (source or "").split(","):
            quota, match = _first_int(part), _WINDOW.search(part)
            if quota and match and float(match.group(1)) > 0:
                entries.append((quota, float(match.group(1))))
    if not entries:
        return None
    same = [w for q, w in entries if q == limit]
    if same:
        return same[0]
    return min(entries, key=lambda e: e[0] / e[1])[1]


@dataclass
class Ticket:
    """One request's slot: when it was sent and whether it probes a reopened gate."""

    sent_at: float
    seq: int
    probe: bool = False
    done: bool = False
    gap: float = math.inf  # seconds since the request sent before it


class Throttle:
    """The account's shared pacer and gate (see the module docstring)."""

    def __init__(
        self,
        ceiling: float = 0.0,
        share: float = 1.0,
        *,
        max_throttle_seconds: float = 600.0,
        window: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if not 0 < share <= 1:
            raise ValueError("share must be in (0, 1]")
        self.ceiling = float(ceiling)  # 0 = none
        self.share = float(share)
        self.max_throttle_seconds = float(max_throttle_seconds)
        self.window = float(window)
        self._clock, self._sleep, self._wall = clock, sleep, wall
        self._cond = threading.Condition(threading.Lock())

        # Learned state.
        self.pace: float | None = self.ceiling or None  # requests/s; None = unpaced
        self.hi: float | None = None  # the learned limit estimate
        self._changed_at = 0.0
        # Announced state.
        self.announced: Announced | None = None
        self._margin = ANNOUNCED_MARGIN
        self._ceiling_margin = CEILING_MARGIN
        self._margin_refusals = 0  # 429s at a stated limit (announced or the ceiling)
        self._at_ceiling = bool(self.ceiling)  # the pace is the ceiling's, not a learned one
        self._remaining: int | None = None  # the last announced Remaining...
        self._remaining_seq = 0  # ...and the sequence number of the request it answered
        self._announced_window: float | None = None
        self._windowed = False  # Remaining counts a window's quota, reset at `_quota_reset_at`
        self._quota_reset_at = 0.0
        # Slots and gate.
        self._next = 0.0
        self._gate = 0.0
        self._epoch = 0  # counts 429s: a slot reserved before one is void
        self._reserved = 0  # threads holding a reserved slot, asleep until it
        self._event_at = -math.inf  # when the current 429 event closed the gate
        self._probe_wanted = False
        self._probe: Ticket | None = None
        self._pause_streak = 0  # 429 events in a row with nothing accepted between them
        self._since_open = 0  # answers accepted since the gate last reopened
        # Requests in flight, and how many may be before the first 429 (None: no bound): it
        # starts at one and grows by one per answer, so a cold start's first wave of 429s is
        # small, and stops mattering after a few round trips.
        self._inflight = 0
        self._rtt: float | None = None  # the quickest answer so far, in seconds
        self._peak = 0  # the most requests ever in flight at once
        self._last_sent = 0.0
        self._window: int | None = None if self.ceiling else 1
        self._held_pace: float | None = None  # the pace a probe above the estimate started at
        self._good: float | None = None  # the pace before the last growth step, kept CONFIRM s
        self._opened_at = 0.0  # when the gate last reopened (or the first request)
        self._burst: int | None = None  # answers accepted before the first 429
        self._hi_firm = False  # whether `hi` is a pace that was kept and refused
        self._seq = 0
        # History: accepted answers (times), closed-gate intervals, for the accepted pace.
        self._accepted: deque[float] = deque()
        self._gates: deque[tuple[float, float]] = deque()
        self._first_sent: float | None = None
        # Counters, for logs and tests.
        self.throttled = 0  # 429 answers
        self.events = 0  # 429 events (waves)
        self.throttled_seconds = 0.0

    # -- the pace -----------------------------------------------------------------------------

    def _cap(self) -> float | None:
        """The pace slots are spaced at now: the smallest of every bound that applies."""
        ceiling = self.ceiling * self._ceiling_margin
        bounds = [b for b in (ceiling or None, self.pace) if b]
        if self.hi is not None and self.share < 1:
            bounds.append(self.share * self.hi)
        announced = self._announced_pace(self._clock())
        if announced is not None:
            bounds.append(announced)
        return max(FLOOR, min(bounds)) if bounds else None

    def _announced_pace(self, now: float) -> float | None:
        ann = self.announced
        if ann is None:
            return None
        window = self._stated_window()
        pace = None
        if window:
            pace = self._margin * self.share * ann.limit / window
        if self._quota_open(now):
            left = self._quota_reset_at - now
            if left > 0.05:
                spread = max(self._left(), 0) / left
                if self.share >= 1 and self._margin >= ANNOUNCED_MARGIN:
                    # The whole quota is ours and the server's count has held so far: what is
                    # left of this window, spread over the time until it resets, is the pace
                    # (a partial first window allows more than limit / window).
                    pace = spread
                else:
                    pace = spread if pace is None else min(pace, max(spread, FLOOR))
        return pace

    def _stated_window(self) -> float | None:
        """The announced quota's window in seconds: named by the server, else learned."""
        if self.announced is None:
            return None
        return self.announced.window or self._announced_window

    def _left(self) -> int:
        """Requests the server's last count says could go at once: its Remaining less what
        was sent after the request it answered (0 when unknown)."""
        if self._remaining is None:
            return 0
        return self._remaining - (self._seq - self._remaining_seq)

    def _quota_open(self, now: float) -> bool:
        """Whether Remaining counts a window's quota whose reset is still ahead."""
        return self._windowed and now < self._quota_reset_at

    def _quota_spent(self, now: float) -> bool:
        return self._quota_open(now) and self._left() <= 0

    # -- slots --------------------------------------------------------------------------------

    def acquire(self) -> Ticket:
        """Wait for this thread's slot and return its ticket; every ticket must be settled with
        `answered`, `throttled` or `failed`.

        A thread reserves its slot, then sleeps until it: each waits for its own time instead
        of every waiting thread waking for the next slot. A 429 in between voids the
        reservation (the gate closed, the pace may have dropped) and the thread starts over."""
        with self._cond:
            reserved: tuple[float, int] | None = None  # (slot, the epoch it was given in)
            try:
                while True:
                    now = self._clock()
                    if reserved is not None:
                        slot, epoch = reserved
                        if epoch != self._epoch:
                            reserved = None
                            self._reserved -= 1
                            continue
                        # A thread before it may have woken late: never closer than the
                        # pace allows (a bucket of one refuses a request that comes early).
                        slot = max(slot, self._earliest())
                        if slot > now:
                            self._sleep_unlocked(slot - now)
                            continue
                        reserved = None
                        self._reserved -= 1
                        return self._take(now)
                    if self._must_wait_for_an_answer():
                        self._cond.wait(timeout=0.05)
                        continue
                    start = max(now, self._gate)
                    if self._quota_spent(now):
                        start = max(start, self._quota_reset_at)
                    if start > now:
                        self._sleep_unlocked(start - now)
                        continue
                    slot = self._reserve(now)
                    if slot <= now:
                        return self._take(now)
                    reserved = (slot, self._epoch)
                    self._reserved += 1
            except BaseException:
                if reserved is not None:
                    self._reserved -= 1
                raise

    def _must_wait_for_an_answer(self) -> bool:
        """A probe is out (or reserved) after the gate reopened, or the cold-start window is
        full."""
        if self._probe is not None or (self._probe_wanted and self._reserved):
            return True
        return self._window is not None and self._inflight + self._reserved >= self._window

    def _sleep_unlocked(self, seconds: float) -> None:
        self._cond.release()
        try:
            self._sleep(seconds)
        finally:
            self._cond.acquire()

    def _earliest(self) -> float:
        """The soonest the next request may go: the last send plus the least gap."""
        return self._last_sent + self._min_gap()

    def _min_gap(self) -> float:
        """The least time between two sends: a slot less what a late slot may catch up; while
        unpaced, the quickest answer's time spread over one more request than were ever in
        flight at once (and no more than the cold-start window): sends spread evenly at the
        rate the workers could keep, which the window or the concurrency bounds anyway, instead
        of two going together whenever two answers come back together (a bucket of one refuses
        the second, and would read as a limit far below the real one)."""
        if self._seq == 0 or self._left() > 1 or self._event_at >= self._last_sent:
            return 0.0  # nothing sent yet, tokens left, or a 429 since: the gate spaces it
        cap = self._cap()
        if cap:
            return (1 - CATCH_UP) / cap
        if self._rtt is None:
            return 0.0
        spread = self._peak + 1
        if self._window is not None:
            spread = min(spread, self._window)
        return self._rtt / spread

    def _reserve(self, now: float) -> float:
        """The next slot's time (now or later), advancing the schedule past it."""
        cap = self._cap()
        if not cap:
            self._next = now
            return max(now, self._earliest())
        # Count from the slot's planned time, so a late wake-up does not slow the pace; idle
        # time is not banked beyond CATCH_UP of a slot (in full when the server says more
        # than one request could go now).
        interval = 1.0 / cap
        planned = max(self._next, self._gate)
        catch_up = CATCH_UP_AHEAD if self._left() > 1 else CATCH_UP
        base = planned if planned >= now - catch_up * interval else now
        self._next = base + interval
        # A thread before this one may have taken its slot late: this one keeps its distance
        # from that send, not from the plan (the schedule itself stays on the plan).
        return max(base, self._earliest())

    def _take(self, now: float) -> Ticket:
        gap = now - self._last_sent if self._seq else math.inf
        self._seq += 1
        self._inflight += 1
        self._peak = max(self._peak, self._inflight)
        self._last_sent = now
        ticket = Ticket(now, self._seq, gap=gap)
        if self._first_sent is None:
            self._first_sent = self._opened_at = now
        if self._probe_wanted:
            self._probe_wanted = False
            self._opened_at = now
            self._since_open = 0
            ticket.probe = True
            self._probe = ticket
        return ticket

    def _settle(self, ticket: Ticket) -> None:
        ticket.done = True
        self._inflight -= 1
        if self._probe is ticket:
            self._probe = None
        self._cond.notify_all()

    def failed(self, ticket: Ticket) -> None:
        """The request got no answer (reset, timeout, broken body): the retry policy's business."""
        with self._cond:
            if ticket.done:
                return
            if ticket.probe:
                self._probe_wanted = True  # the next request probes instead
            self._settle(ticket)

    def answered(self, ticket: Ticket, headers: Mapping[str, str] | None = None) -> None:
        """The server answered something other than 429 (it counted against the limit)."""
        with self._cond:
            if ticket.done:
                return
            now = self._clock()
            self._settle(ticket)
            rtt = now - ticket.sent_at
            self._rtt = rtt if self._rtt is None else min(self._rtt, rtt)
            self._pause_streak = 0
            self._since_open += 1
            if self._window is not None:
                self._window += 1  # doubles every round trip, as TCP's slow start does
                if self._window >= MAX_WINDOW:
                    self._window = None
            self._accepted.append(now)
            self._trim(now)
            if headers is not None:
                self._read_headers(ticket, headers, now)
            self._grow(now)

    def throttled_for(
        self, ticket: Ticket, retry_after: float | None, headers: Mapping[str, str] | None = None
    ) -> float:
        """The server answered 429: close the gate; returns how long it stays closed from now.

        Raises ThrottleExhausted once the closed-gate time exceeds `max_throttle_seconds`."""
        with self._cond:
            now = self._clock()
            self._settle(ticket)
            self.throttled += 1
            self._epoch += 1
            if headers is not None:
                self._read_headers(ticket, headers, now)
            same_event = ticket.sent_at <= self._event_at
            self._window = None  # from the first 429 on, the pace bounds the flow
            if not same_event:
                self.events += 1
                self._event_at = now
                if not ticket.probe:
                    self._decrease(now, ticket)
            if retry_after is None:
                if not same_event:
                    self._pause_streak += 1
                pause = min(MAX_DEFAULT_PAUSE, DEFAULT_PAUSE * 2 ** max(0, self._pause_streak - 1))
            else:
                pause = retry_after
            if self._quota_spent(now):
                pause = max(pause, self._quota_reset_at - now)
            until = now + pause
            if until > self._gate:
                self.throttled_seconds += until - max(self._gate, now)
                self._gates.append((max(self._gate, now), until))
                self._gate = until
            self._next = max(self._next, self._gate)
            self._probe_wanted = True
            if self.throttled_seconds > self.max_throttle_seconds:
                raise ThrottleExhausted(
                    f"rate limited (HTTP 429) for {self.throttled_seconds:.0f} s in total, more "
                    f"than [api].max_throttle_seconds = {self.max_throttle_seconds:g}"
                )
            return self._gate - now

    # -- learning -----------------------------------------------------------------------------

    def _trim(self, now: float) -> None:
        horizon = now - self.window
        while self._accepted and self._accepted[0] < horizon:
            self._accepted.popleft()
        while self._gates and self._gates[0][1] < horizon:
            self._gates.popleft()

    def _active(self, since: float, now: float) -> float:
        """Seconds in [since, now] the gate was open."""
        closed = sum(max(0.0, min(end, now) - max(start, since)) for start, end in self._gates)
        return max(0.0, now - since - closed)

    def accepted_pace(self, now: float | None = None) -> tuple[float, float] | None:
        """(accepted answers per open-gate second, the open-gate seconds measured) over the
        window, or None before anything was sent."""
        now = self._clock() if now is None else now
        if self._first_sent is None:
            return None
        since = max(self._first_sent, now - self.window)
        active = self._active(since, now)
        count = sum(1 for t in self._accepted if t >= since)
        return (count / active if active > 0 else math.inf), active

    def wall_pace(self, now: float) -> float | None:
        """Accepted answers per second of wall time (closed-gate time included) over the
        window, or None before anything was sent: in a throttled steady state, the limit."""
        if self._first_sent is None:
            return None
        since = max(self._first_sent, now - self.window)
        count = sum(1 for t in self._accepted if t >= since)
        return count / max(now - since, MIN_SPAN)

    def _decrease(self, now: float, ticket: Ticket) -> None:
        window = self._stated_window()
        if self.announced is not None and window:
            # The server states its limit, yet refused: arrivals bunch up more than the margin
            # allows (a burst of one). Keep more distance each time.
            self._margin_refusals += 1
            rate = self.share * self.announced.limit / window
            self._margin = max(MIN_MARGIN, _widened(self._margin, rate, self._margin_refusals))
            return
        if self._at_ceiling:
            self._margin_refusals += 1
            margin = _widened(self._ceiling_margin, self.ceiling, self._margin_refusals)
            if margin >= MIN_CEILING_MARGIN - 1e-9:
                # Refused at the configured ceiling: most likely arrivals bunched a little (a
                # bucket of one); keep more distance from it.
                self._ceiling_margin = margin
                return
            # Refused again and again: the limit is lower (the account's own traffic takes
            # its share); learn it, the ceiling back at its first margin above it.
            self._at_ceiling = False
            self._ceiling_margin = CEILING_MARGIN
        self._trim(now)
        active = max(now - self._opened_at, 1e-3)
        accepted = self._since_open
        refused = self.pace if self.pace is not None else accepted / active
        burst = self._burst
        if burst is None:
            self._burst = accepted  # the first run holds the whole burst (and a little more)
            # Whatever the bucket's size, it was empty when this request came, this long
            # after the one before it: the limit is below one request per that gap. That and
            # the accepted rate are two readings of it; the pace starts just under the lesser.
            if ticket.gap > 0:
                refused = min(refused, 1.0 / ticket.gap)
            deepest, lower = BETA, 0.0
        else:
            # After a pause the bucket refills; what came through beyond that is the rate.
            corrected = (accepted - burst) / active if active >= 0.5 else 0.0
            lower = max(self.wall_pace(now) or 0.0, corrected)
            if self._good is not None:
                # The pace was raised from one the server took for a whole confirm period:
                # the limit is at least about that (a bucket that large would have drained).
                lower = max(lower, self._good)
            deepest = KEPT_BETA
        self._good = None
        self._changed_at = now
        self._held_pace = None
        if refused <= 0 or not math.isfinite(refused):
            self.hi = None  # nothing learned: start slowly and double (slow start)
            self.pace = START_PACE
            return
        if self.ceiling:
            refused = min(refused, self.ceiling)
        # The pace refused is a firm upper bound only when it was a pace we kept.
        self._hi_firm = self.pace is not None
        self.hi = refused if self.hi is None else min(self.hi, refused)
        # The limit lies between what came through (beyond the burst) and the pace refused.
        pace = min(BETA * refused, max(lower, deepest * refused))
        self.pace = max(FLOOR, pace)  # held there, then probed above

    def _grow(self, now: float) -> None:
        if self.pace is None or self.announced is not None:
            return
        if now - max(self._changed_at, self._opened_at) < CONFIRM:
            return  # a pace is confirmed by answers, not by a closed gate
        self._changed_at = now
        if self.hi is None:
            pace = 2 * self.pace  # slow start: no limit known yet
        elif not self._hi_firm:
            # Only a cold start's guess so far (its pace was the ramp's, not the server's
            # limit): grow geometrically until a pace we keep is refused.
            pace = self.pace * UNSURE_GROWTH
            if self.share >= 1:
                self.hi = max(self.hi, pace)
        else:
            # At the estimate: hold, then probe above it along a cubic (CUBIC's convex phase):
            # +1% PROBE_AFTER s into the probe, +8% at twice that, so a limit just above costs
            # a rare 429 while a limit far above is found within seconds.
            held = now - self._event_at - min(MAX_HOLD, HOLD * 2 ** (self.events - 1))
            if held <= 0:
                return
            if self._held_pace is None:
                self._held_pace = self.pace
            pace = max(self.pace, self._held_pace * (1 + STEP_NEAR * (held / PROBE_AFTER) ** 3))
            if self.share >= 1:
                self.hi = max(self.hi, pace)
        if self.hi is not None and self.share < 1:
            pace = min(pace, self.share * self.hi)
        if self.ceiling:
            pace = min(pace, self.ceiling)
        if pace > self.pace:
            self._good = self.pace
        self.pace = pace

    def _read_headers(self, ticket: Ticket, headers: Mapping[str, str], now: float) -> None:
        ann = parse_rate_headers(headers, self._wall())
        if ann is None:
            return
        first = self.announced is None
        self.announced = ann
        if ann.remaining is not None and ticket.seq >= self._remaining_seq:
            self._remaining, self._remaining_seq = ann.remaining, ticket.seq
        if ann.reset is not None and ann.window is None:
            # A Reset in whole seconds is rounded up: the quota resets up to a second sooner
            # than it says, so the window is at least Reset - 1 (taking Reset itself would
            # read a one-second quota as up to two seconds, and pace at half its rate).
            longest = self._announced_window or 0.0
            least = ann.reset - 1.0 if ann.whole_seconds else ann.reset
            self._announced_window = max(longest, least, 1.0)
        if first:
            # The pace bounds the flow from now on, not the cold-start window; and the next
            # slot keeps that pace from the last request sent before the limit was known.
            self._window = None
            cap = self._cap()
            if cap:
                self._next = max(self._next, self._last_sent + 1.0 / cap)
        if (self._stated_window() or 0.0) < QUOTA_WINDOW:
            # A one-second quota is a token bucket described in whole seconds (Reset is when
            # it is full again): the pace alone is the right reading.
            self._windowed = False
            return
        if ann.remaining is not None and ann.reset is not None and ticket.seq == self._remaining_seq:
            # The newest count (requests sent after this one are not in it yet).
            self._windowed = True
            # Reset comes in whole seconds, rounded up: within one window the earliest
            # reading is the closest to the truth.
            reset_at = now + ann.reset
            same_window = abs(reset_at - self._quota_reset_at) < 1.0
            self._quota_reset_at = min(reset_at, self._quota_reset_at) if same_window else reset_at

"""Realistic call records: the seeded history, calls that arrive later, and how open calls end.

Everything draws from a `random.Random` handed in, so one seed gives the same calls every time.
A call is a `Call`; `Call.to_json` writes the exact bytes the server sends (compact JSON, the
reference's field order) without building a dict, which keeps generating 200,000 calls fast.
"""

from __future__ import annotations

import bisect
import datetime as dt
import json
import random
from typing import Any, NamedTuple

_AREA_CODES = (
    "212", "213", "305", "312", "404", "415", "503", "512", "617", "646",
    "702", "713", "718", "206", "303", "602", "614", "720", "857", "919",
)  # fmt: skip
_ENCODER = json.JSONEncoder(separators=(",", ":"))
_minute_cache: dict[int, str] = {}
_SECONDS = [f"{i:02d}Z" for i in range(60)]
_LINE = (
    '{"call_uuid":"%s","from":"%s","to":"%s","direction":"%s","status":"%s","duration":%s,'
    '"start_time":"%s","answer_time":%s,"end_time":%s,"end_reason":%s}'
)


def ts(epoch: int) -> str:
    """Format epoch seconds as 2026-04-09T10:30:00Z."""
    minute, sec = divmod(epoch, 60)
    prefix = _minute_cache.get(minute)
    if prefix is None:
        if len(_minute_cache) > 1_000_000:
            _minute_cache.clear()
        prefix = dt.datetime.fromtimestamp(minute * 60, dt.UTC).strftime("%Y-%m-%dT%H:%M:")
        _minute_cache[minute] = prefix
    return prefix + _SECONDS[sec]


def parse_ts(value: Any) -> int | None:
    """Epoch seconds of a timestamp string, or None when it is not one."""
    if not isinstance(value, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return int(parsed.timestamp())


def encode(value: Any) -> bytes:
    """Compact JSON bytes, as the server sends them."""
    return _ENCODER.encode(value).encode()


def uuid4(rng: random.Random) -> str:
    """A version-4 UUID string drawn from rng (os.urandom would be slow and not reproducible)."""
    n = rng.getrandbits(128)
    n = (n & ~(0xF000 << 64)) | (0x4000 << 64)
    n = (n & ~(0xC000 << 48)) | (0x8000 << 48)
    h = f"{n:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def phone(rng: random.Random) -> str:
    """A US number in E.164 form."""
    return f"+1{rng.choice(_AREA_CODES)}{rng.randint(200, 999)}{rng.randint(0, 9999):04d}"


class Call(NamedTuple):
    """One generated call; times are epoch seconds, None where the call has not got there.

    A named tuple: generation builds hundreds of thousands of them.
    """

    call_uuid: str
    frm: str
    to: str
    direction: str
    status: str
    duration: int | None
    start: int
    answer: int | None
    end: int | None
    reason: str | None

    def to_json(self) -> bytes:
        """The same bytes as encode(self.to_dict()) (the values are plain ASCII)."""
        uuid, frm, to, direction, status, duration, start, answer, end, reason = self
        return (
            _LINE
            % (
                uuid,
                frm,
                to,
                direction,
                status,
                "null" if duration is None else duration,
                ts(start),
                "null" if answer is None else f'"{ts(answer)}"',
                "null" if end is None else f'"{ts(end)}"',
                "null" if reason is None else f'"{reason}"',
            )
        ).encode()

    def to_dict(self) -> dict[str, Any]:
        """The record as the API serves it."""
        return {
            "call_uuid": self.call_uuid,
            "from": self.frm,
            "to": self.to,
            "direction": self.direction,
            "status": self.status,
            "duration": self.duration,
            "start_time": ts(self.start),
            "answer_time": None if self.answer is None else ts(self.answer),
            "end_time": None if self.end is None else ts(self.end),
            "end_reason": self.reason,
        }


def _talk_seconds(rng: random.Random) -> int:
    # Log-normal: median ~100 s, a long tail, capped at 3 h.
    return max(1, min(10800, int(rng.lognormvariate(4.6, 1.0))))


def _outcome(rng: random.Random, start: int) -> tuple[str, int | None, int, int, str]:
    """Draw a final outcome for a call started at start: status, answer, end, duration, reason."""
    # rng.random() arithmetic instead of randint(): generation makes millions of draws.
    rnd = rng.random
    r = rnd()
    if r < 0.70:
        answer = start + 1 + int(rnd() * 20)
        duration = _talk_seconds(rng)
        reason = "caller-hangup" if rnd() < 0.55 else "callee-hangup"
        return "completed", answer, answer + duration, duration, reason
    if r < 0.82:
        return "no-answer", None, start + 25 + int(rnd() * 36), 0, "timeout"
    if r < 0.89:
        return "busy", None, start + 1 + int(rnd() * 6), 0, "busy"
    if r < 0.95:
        return "canceled", None, start + 2 + int(rnd() * 24), 0, "canceled"
    return "failed", None, start + int(rnd() * 5), 0, "error"


class Numbers:
    """An account's own numbers and the peers it talks to."""

    def __init__(self, rng: random.Random, n_calls: int) -> None:
        self.own = [phone(rng) for _ in range(rng.randint(2, 6))]
        self.peers = [phone(rng) for _ in range(min(5000, max(20, n_calls // 10)))]

    def pick(self, rng: random.Random) -> tuple[str, str, str]:
        """direction, from, to: 55% outbound from one of our numbers."""
        rnd = rng.random
        own, peers = self.own, self.peers
        if rnd() < 0.55:
            return "outbound", own[int(rnd() * len(own))], peers[int(rnd() * len(peers))]
        return "inbound", peers[int(rnd() * len(peers))], own[int(rnd() * len(own))]


def finished_call(rng: random.Random, numbers: Numbers, start: int, now: int) -> Call:
    """A call that began at start and has ended by now (long calls are cut at now)."""
    uuid = uuid4(rng)
    direction, frm, to = numbers.pick(rng)
    status, answer, end, duration, reason = _outcome(rng, start)
    if end > now:
        # Nothing may end in the future.
        if answer is not None and answer < now:
            end, duration = now, now - answer
        else:
            status, answer, end, reason, duration = "canceled", None, max(now, start), "canceled", 0
    return Call(uuid, frm, to, direction, status, duration, start, answer, end, reason)


def open_call(rng: random.Random, numbers: Numbers, start: int, now: int) -> Call:
    """A call still ringing (recent starts) or in progress."""
    uuid = uuid4(rng)
    direction, frm, to = numbers.pick(rng)
    if start >= now - 45:
        return Call(uuid, frm, to, direction, "ringing", None, start, None, None, None)
    answer = min(now, start + 1 + int(rng.random() * 20))
    return Call(uuid, frm, to, direction, "in-progress", None, start, answer, None, None)


def arriving_call(rng: random.Random, numbers: Numbers, start: int, open_fraction: float) -> Call:
    """A fresh call starting at start; open_fraction of them arrive ringing or in progress."""
    uuid = uuid4(rng)
    direction, frm, to = numbers.pick(rng)
    if rng.random() < open_fraction:
        if rng.random() < 0.6:
            return Call(uuid, frm, to, direction, "ringing", None, start, None, None, None)
        return Call(uuid, frm, to, direction, "in-progress", None, start, start, None, None)
    status, answer, end, duration, reason = _outcome(rng, start)
    return Call(uuid, frm, to, direction, status, duration, start, answer, end, reason)


def history_starts(
    rng: random.Random, n: int, days: float, t_end: int, burst_every: int = 0, burst_calls: int = 0
) -> tuple[list[int], set[int]]:
    """Sorted start seconds of n calls over days ending at t_end, and which indexes are open.

    The newest call starts at t_end; a handful of calls within the last ten minutes are open.
    With burst_every, every burst_every-th call opens a run of burst_calls calls sharing its
    start second (assigning a run the value of its first keeps the list sorted).
    """
    if n == 0:
        return [], set()
    span = max(1, int(days * 86400))
    rnd = rng.random
    starts = sorted(t_end - int(span * rnd()) for _ in range(n))
    starts[-1] = t_end
    if burst_every:
        for first in range(0, n - 1, burst_every):
            stop = min(first + burst_calls, n - 1)
            starts[first:stop] = [starts[first]] * (stop - first)
    n_open = min(n, rng.randint(3, 6))
    window = t_end - 600
    first_recent = bisect.bisect_left(starts, window)
    if n - first_recent < n_open:
        lo = max(window, starts[n - n_open - 1] if n > n_open else window)
        for i, s in enumerate(sorted(rng.randint(lo, t_end) for _ in range(n_open - 1))):
            starts[n - n_open + i] = s
        first_recent = n - n_open
    return starts, set(rng.sample(range(first_recent, n), n_open))


def finish_record(rng: random.Random, rec: dict[str, Any], now: int, answered: bool | None) -> None:
    """Give an open record a final status and end fields as of now, in place.

    A call in progress completes; a ringing one completes when answered (drawn 70/30 when
    answered is None), else ends unanswered.
    """
    start = parse_ts(rec.get("start_time"))
    start = now if start is None else start
    if answered is None:
        answered = rng.random() < 0.7
    if rec.get("status") == "in-progress" or answered:
        answer = parse_ts(rec.get("answer_time"))
        if answer is None:
            answer = min(start + rng.randint(1, 20), max(now, start))
        end = max(now, answer)
        reason = "caller-hangup" if rng.random() < 0.55 else "callee-hangup"
        rec.update(
            status="completed",
            answer_time=ts(answer),
            end_time=ts(end),
            duration=end - answer,
            end_reason=reason,
        )
        return
    r = rng.random()
    if r < 0.5:
        status, reason = "no-answer", "timeout"
    elif r < 0.8:
        status, reason = "canceled", "canceled"
    elif r < 0.95:
        status, reason = "busy", "busy"
    else:
        status, reason = "failed", "error"
    rec.update(
        status=status, answer_time=None, end_time=ts(max(now, start)), duration=0, end_reason=reason
    )


def answer_record(rec: dict[str, Any], now: int) -> None:
    """A ringing record is answered now, in place."""
    start = parse_ts(rec.get("start_time")) or now
    rec.update(status="in-progress", answer_time=ts(max(now, start)))

"""A local Vox "List Calls" API over real HTTP, for demos, tests and benchmarks.

Standard library only. Each account keeps its calls in insertion order as pre-serialized JSON
bytes plus small per-field indexes, so a page costs O(per_page) and a one-filter count is O(1).
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import dataclasses
import datetime as dt
import email.utils
import http
import json
import math
import random
import re
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote

__all__ = ["SimAccount", "Simulator", "SimulatorConfig", "serve"]

STATUSES = ("ringing", "in-progress", "completed", "failed", "busy", "no-answer", "canceled")
DIRECTIONS = ("inbound", "outbound")
OPEN_STATUSES = ("ringing", "in-progress")
MAX_PER_PAGE = 100
DEFAULT_PER_PAGE = 20
HTML_502 = b"<html><body><h1>502 Bad Gateway</h1></body></html>"

# Fields that may be changed while serving (set_faults).
RUNTIME_FIELDS = frozenset(
    {
        "error_rate",
        "reset_rate",
        "truncate_rate",
        "rate_limit",
        "retry_after_format",
        "latency_ms",
        "per_page_cap",
        "drift_rate",
        "drift_per_request",
        "finish_after_s",
        "open_fraction",
    }
)

# The indexed fields, in the order of the per-account column tuples.
_FIELDS = ("status", "direction", "from", "to")
_ST, _DIR = 0, 1

_ENCODER = json.JSONEncoder(separators=(",", ":"))
_AREA_CODES = (
    "212", "213", "305", "312", "404", "415", "503", "512", "617", "646",
    "702", "713", "718", "206", "303", "602", "614", "720", "857", "919",
)  # fmt: skip
_INJECT_RE = re.compile(r"^(?:(\d{3})|429-date|html(\d{3})|reset|truncate|ok)$")


@dataclasses.dataclass
class SimulatorConfig:
    """Everything the simulator does; all fields have defaults."""

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
    retry_after_format: str = "both"
    per_page_cap: int = MAX_PER_PAGE
    drift_rate: float = 0.0
    drift_per_request: int = 0
    finish_after_s: float | None = None
    open_fraction: float = 0.3

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        for name in ("error_rate", "reset_rate", "truncate_rate", "open_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        if self.error_rate + self.reset_rate > 1.0:
            raise ValueError("error_rate + reset_rate must not exceed 1")
        for name in ("accounts", "calls", "drift_per_request", "port", "days", "latency_ms",
                     "rate_limit", "drift_rate"):  # fmt: skip
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.per_page_cap < 1:
            raise ValueError("per_page_cap must be >= 1")
        if self.finish_after_s is not None and self.finish_after_s < 0:
            raise ValueError("finish_after_s must be >= 0 or None")
        if self.retry_after_format not in ("seconds", "http-date", "both"):
            raise ValueError("retry_after_format must be seconds, http-date or both")


@dataclasses.dataclass(frozen=True)
class SimAccount:
    """One simulated account: a label, its auth_id and its bearer token."""

    name: str
    auth_id: str
    token: str


# ---------------------------------------------------------------------------------------------
# Record generation


_minute_cache: dict[int, str] = {}
_SECONDS = [f"{i:02d}Z" for i in range(60)]


def _ts(epoch: int) -> str:
    """Format epoch seconds as 2026-04-09T10:30:00Z."""
    minute, sec = divmod(epoch, 60)
    prefix = _minute_cache.get(minute)
    if prefix is None:
        if len(_minute_cache) > 1_000_000:
            _minute_cache.clear()
        prefix = dt.datetime.fromtimestamp(minute * 60, dt.UTC).strftime("%Y-%m-%dT%H:%M:")
        _minute_cache[minute] = prefix
    return prefix + _SECONDS[sec]


def _parse_ts(value: Any) -> int | None:
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


def _uuid4(rng: random.Random) -> str:
    """A version-4 UUID string drawn from rng (os.urandom would be slow and not reproducible)."""
    n = rng.getrandbits(128)
    n = (n & ~(0xF000 << 64)) | (0x4000 << 64)
    n = (n & ~(0xC000 << 48)) | (0x8000 << 48)
    h = f"{n:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _phone(rng: random.Random) -> str:
    return f"+1{rng.choice(_AREA_CODES)}{rng.randint(200, 999)}{rng.randint(0, 9999):04d}"


def _talk_seconds(rng: random.Random) -> int:
    # Log-normal: median ~100 s, a long tail, capped at 3 h.
    return max(1, min(10800, int(rng.lognormvariate(4.6, 1.0))))


def _finished(rng: random.Random, start: int) -> tuple[str, int | None, int, int, str]:
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


_LINE = (
    '{"call_uuid":"%s","from":"%s","to":"%s","direction":"%s","status":"%s","duration":%s,'
    '"start_time":"%s","answer_time":%s,"end_time":%s,"end_reason":%s}'
)


def _line(
    uuid: str,
    frm: str,
    to: str,
    direction: str,
    status: str,
    duration: int | None,
    start: int,
    answer: int | None,
    end: int | None,
    reason: str | None,
) -> bytes:
    """The same bytes as _encode(_record(...)), without building a dict (plain ASCII values)."""
    return (
        _LINE
        % (
            uuid,
            frm,
            to,
            direction,
            status,
            "null" if duration is None else duration,
            _ts(start),
            "null" if answer is None else f'"{_ts(answer)}"',
            "null" if end is None else f'"{_ts(end)}"',
            "null" if reason is None else f'"{reason}"',
        )
    ).encode()


def _record(
    uuid: str,
    frm: str,
    to: str,
    direction: str,
    status: str,
    duration: int | None,
    start: int,
    answer: int | None,
    end: int | None,
    reason: str | None,
) -> dict[str, Any]:
    return {
        "call_uuid": uuid,
        "from": frm,
        "to": to,
        "direction": direction,
        "status": status,
        "duration": duration,
        "start_time": _ts(start),
        "answer_time": None if answer is None else _ts(answer),
        "end_time": None if end is None else _ts(end),
        "end_reason": reason,
    }


def _encode(value: Any) -> bytes:
    return _ENCODER.encode(value).encode()


# ---------------------------------------------------------------------------------------------
# Per-account state


class _Account:
    """Calls of one account in insertion order (oldest first) plus indexes; guard with lock."""

    def __init__(self, index: int, seed: int) -> None:
        auth_id = f"MA{100000 + index}"
        self.info = SimAccount(f"acct{index}", auth_id, f"tvx_sim_{auth_id}")
        self.lock = threading.Lock()
        self.rng = random.Random(f"vox-sim:{seed}:{auth_id}")
        self.fault_rng = random.Random(f"vox-sim-faults:{seed}:{auth_id}")
        self.blobs: list[bytes] = []
        # Columns parallel to blobs, and value -> ascending positions, for the filter fields.
        self.cols: tuple[list[Any], ...] = ([], [], [], [])
        self.idx: tuple[dict[str, list[int]], ...] = ({}, {}, {}, {})
        self.open_since: dict[int, float] = {}
        self.fate: dict[int, bool] = {}  # ringing call -> will it be answered
        self.newest = 0
        self.edits = 0  # bumped by replace(): cached filter results must then be rebuilt
        self.combo: dict[tuple[tuple[int, str], ...], tuple[int, int, list[int]]] = {}
        self.own = [_phone(self.rng) for _ in range(self.rng.randint(2, 6))]
        self.peers: list[str] = []
        self.injected: collections.deque[str] = collections.deque()
        self.bucket_tokens = 0.0
        self.bucket_last = 0.0
        self.bucket_rate = 0.0
        self.n429 = 0
        self.drift_carry = 0.0
        self.requests = 0
        self.by_status: collections.Counter[int] = collections.Counter()
        self.resets = 0
        self.truncated = 0

    # -- generation ---------------------------------------------------------------------------

    def generate(self, n: int, days: float, t_end: int) -> None:
        """Fill the history: n calls over days seconds ending at t_end, a handful still open."""
        rng = self.rng
        self.peers = [_phone(rng) for _ in range(min(5000, max(20, n // 10)))]
        if n == 0:
            self.newest = t_end
            return
        span = max(1, int(days * 86400))
        rnd = rng.random
        starts = sorted(t_end - int(span * rnd()) for _ in range(n))
        starts[-1] = t_end
        # A handful of open calls, all within the last ten minutes.
        n_open = min(n, rng.randint(3, 6))
        window = t_end - 600
        first_recent = bisect.bisect_left(starts, window)
        if n - first_recent < n_open:
            lo = max(window, starts[n - n_open - 1] if n > n_open else window)
            for i, s in enumerate(sorted(rng.randint(lo, t_end) for _ in range(n_open - 1))):
                starts[n - n_open + i] = s
            first_recent = n - n_open
        open_set = set(rng.sample(range(first_recent, n), n_open))

        own, peers = self.own, self.peers
        n_own, n_peers = len(own), len(peers)
        blobs = self.blobs
        st_col, dir_col, from_col, to_col = self.cols
        for i, start in enumerate(starts):
            uuid = _uuid4(rng)
            if rnd() < 0.55:
                direction = "outbound"
                frm, to = own[int(rnd() * n_own)], peers[int(rnd() * n_peers)]
            else:
                direction = "inbound"
                frm, to = peers[int(rnd() * n_peers)], own[int(rnd() * n_own)]
            if i in open_set:
                if start >= t_end - 45:
                    status, answer, end, duration, reason = "ringing", None, None, None, None
                else:
                    answer = min(t_end, start + 1 + int(rnd() * 20))
                    status, end, duration, reason = "in-progress", None, None, None
            else:
                status, answer, end, duration, reason = _finished(rng, start)
                if end > t_end:
                    # Nothing may end in the future; long recent calls are cut at "now".
                    if answer is not None and answer < t_end:
                        end, duration = t_end, t_end - answer
                    else:
                        status, answer, end, reason = "canceled", None, t_end, "canceled"
                        duration = 0
            blobs.append(
                _line(uuid, frm, to, direction, status, duration, start, answer, end, reason)
            )
            st_col.append(status)
            dir_col.append(direction)
            from_col.append(frm)
            to_col.append(to)
        for col, idx in zip(self.cols, self.idx, strict=True):
            for pos, value in enumerate(col):
                lst = idx.get(value)
                if lst is None:
                    idx[value] = [pos]
                else:
                    lst.append(pos)
        since = time.monotonic()
        for pos in open_set:
            self.open_since[pos] = since
        self.newest = t_end

    def new_record(self, start: int, open_fraction: float) -> dict[str, Any]:
        """A fresh call starting at start; open_fraction of them arrive ringing or in-progress."""
        rng = self.rng
        if rng.random() < 0.55:
            direction, frm, to = "outbound", rng.choice(self.own), rng.choice(self.peers)
        else:
            direction, frm, to = "inbound", rng.choice(self.peers), rng.choice(self.own)
        if rng.random() < open_fraction:
            if rng.random() < 0.6:
                status, answer = "ringing", None
            else:
                status, answer = "in-progress", start
            return _record(_uuid4(rng), frm, to, direction, status, None, start, answer, None, None)
        status, answer, end, duration, reason = _finished(rng, start)
        return _record(
            _uuid4(rng), frm, to, direction, status, duration, start, answer, end, reason
        )

    # -- mutation (lock held) -----------------------------------------------------------------

    def append(self, record: dict[str, Any]) -> None:
        pos = len(self.blobs)
        self.blobs.append(_encode(record))
        for col, idx, key in zip(self.cols, self.idx, _FIELDS, strict=True):
            value = record.get(key)
            col.append(value)
            if isinstance(value, str):
                idx.setdefault(value, []).append(pos)
        if record.get("status") in OPEN_STATUSES:
            self.open_since[pos] = time.monotonic()
        start = _parse_ts(record.get("start_time"))
        if start is not None and start > self.newest:
            self.newest = start

    def replace(self, pos: int, record: dict[str, Any]) -> None:
        """Swap the record at pos, keeping its place in the order and the indexes right."""
        self.blobs[pos] = _encode(record)
        self.edits += 1
        for col, idx, key in zip(self.cols, self.idx, _FIELDS, strict=True):
            old, new = col[pos], record.get(key)
            if old == new and type(old) is type(new):
                continue
            if isinstance(old, str):
                lst = idx[old]
                del lst[bisect.bisect_left(lst, pos)]
                if not lst:
                    del idx[old]
            if isinstance(new, str):
                bisect.insort(idx.setdefault(new, []), pos)
            col[pos] = new
        if record.get("status") in OPEN_STATUSES:
            self.open_since.setdefault(pos, time.monotonic())
        else:
            self.open_since.pop(pos, None)
            self.fate.pop(pos, None)

    def add(self, n: int, open_fraction: float) -> list[dict[str, Any]]:
        start = max(int(time.time()), self.newest)
        out = [self.new_record(start, open_fraction) for _ in range(n)]
        for rec in out:
            self.append(rec)
        return out

    def open_positions(self) -> list[int]:
        st = self.idx[_ST]
        return sorted(st.get("ringing", []) + st.get("in-progress", []))

    def finish(self, pos: int) -> None:
        """Give the open call at pos a final status and end fields, as of now."""
        rec = json.loads(self.blobs[pos])
        now = int(time.time())
        start = _parse_ts(rec.get("start_time"))
        start = now if start is None else start
        rng = self.rng
        if rec.get("status") == "in-progress" or self.fate.get(pos, rng.random() < 0.7):
            answer = _parse_ts(rec.get("answer_time"))
            if answer is None:
                answer = min(start + rng.randint(1, 20), max(now, start))
            end = max(now, answer)
            reason = "caller-hangup" if rng.random() < 0.55 else "callee-hangup"
            rec.update(
                status="completed",
                answer_time=_ts(answer),
                end_time=_ts(end),
                duration=end - answer,
                end_reason=reason,
            )
        else:
            r = rng.random()
            status, reason = (
                ("no-answer", "timeout")
                if r < 0.5
                else ("canceled", "canceled")
                if r < 0.8
                else ("busy", "busy")
                if r < 0.95
                else ("failed", "error")
            )
            rec.update(
                status=status,
                answer_time=None,
                end_time=_ts(max(now, start)),
                duration=0,
                end_reason=reason,
            )
        self.replace(pos, rec)

    def tick_open(self, finish_after_s: float, now: float) -> None:
        """Advance open calls by wall time: ringing ones are answered halfway, all end at the limit."""
        if not self.open_since:
            return
        for pos, since in list(self.open_since.items()):
            age = now - since
            if age >= finish_after_s:
                self.finish(pos)
            elif age >= finish_after_s / 2 and self.cols[_ST][pos] == "ringing":
                if pos not in self.fate:
                    self.fate[pos] = self.rng.random() < 0.7
                if self.fate[pos]:
                    rec = json.loads(self.blobs[pos])
                    start = _parse_ts(rec.get("start_time")) or int(time.time())
                    rec.update(status="in-progress", answer_time=_ts(max(int(time.time()), start)))
                    self.replace(pos, rec)
                    self.open_since[pos] = since

    def find(self, call_uuid: str) -> int:
        """Position of the newest call with that call_uuid (a scan; not on a hot path)."""
        needle = b'"call_uuid":' + _encode(call_uuid)
        blobs = self.blobs
        for pos in range(len(blobs) - 1, -1, -1):
            if needle in blobs[pos] and json.loads(blobs[pos]).get("call_uuid") == call_uuid:
                return pos
        raise KeyError(f"no call {call_uuid!r} in account {self.info.auth_id}")

    # -- reading (lock held) ------------------------------------------------------------------

    def page(self, filters: list[tuple[int, str]], page: int, per_page: int) -> bytes:
        """The response body for one page; O(per_page) unless several filters are combined."""
        blobs = self.blobs
        if not filters:
            total = len(blobs)
            hi = total - (page - 1) * per_page
            chunk = blobs[max(0, hi - per_page) : hi] if hi > 0 else []
        else:
            base = self.matching(filters)
            total = len(base)
            hi = total - (page - 1) * per_page
            chunk = [blobs[p] for p in base[max(0, hi - per_page) : hi]] if hi > 0 else []
        chunk.reverse()
        pages = -(-total // per_page)
        return b"".join(
            (
                b'{"calls":[',
                b",".join(chunk),
                b'],"pagination":{"page":%d,"per_page":%d,"total_pages":%d,"total_count":%d}}'
                % (page, per_page, pages, total),
            )
        )

    def matching(self, filters: list[tuple[int, str]]) -> list[int]:
        """Ascending positions matching every filter; combined filters are cached."""
        lists = [self.idx[f].get(v, []) for f, v in filters]
        if len(lists) == 1:
            return lists[0]
        key = tuple(filters)
        n = len(self.blobs)
        hit = self.combo.get(key)
        if hit is not None and hit[1] == self.edits:
            # Only appends happened since: check just the new positions.
            seen, _, found = hit
            if seen < n:
                checks = [(self.cols[f], v) for f, v in filters]
                found.extend(p for p in range(seen, n) if all(c[p] == v for c, v in checks))
        else:
            smallest = min(range(len(lists)), key=lambda i: len(lists[i]))
            found = lists[smallest]
            for i, (f, v) in enumerate(filters):
                if i != smallest and found:
                    col = self.cols[f]
                    found = [p for p in found if col[p] == v]
            if found is lists[smallest]:
                found = list(found)
            if len(self.combo) >= 32:
                del self.combo[next(iter(self.combo))]
        self.combo[key] = (n, self.edits, found)
        return found

    def served(self, positions: Iterable[int] | None = None) -> list[dict[str, Any]]:
        """Parsed records, newest first: all of them or those at positions."""
        blobs = self.blobs
        chosen = reversed(blobs) if positions is None else (blobs[p] for p in positions)
        return json.loads(b"[" + b",".join(chosen) + b"]")

    def stats(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "by_status": dict(self.by_status),
            "resets": self.resets,
            "truncated": self.truncated,
        }


# ---------------------------------------------------------------------------------------------
# HTTP


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Keep-alive threads may idle forever; stop() closes their sockets instead of joining them.
    block_on_close = False
    request_queue_size = 256
    allow_reuse_address = True
    sim: Simulator

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            return  # client went away; nothing to report
        super().handle_error(request, client_address)


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "VoxSimulator/1.0"
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.sim._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.sim._track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # per-request logging would dominate the cost of a request

    def do_GET(self) -> None:
        self.server.sim._handle(self)


_date_cache: tuple[int, str] = (0, "")


def _http_date() -> str:
    global _date_cache
    now = int(time.time())
    cached = _date_cache
    if cached[0] != now:
        cached = _date_cache = (now, email.utils.formatdate(now, usegmt=True))
    return cached[1]


def _error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": code, "message": message}).encode()


_ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    429: "rate_limited",
    500: "internal_error",
    502: "bad_gateway",
    503: "service_unavailable",
    504: "gateway_timeout",
}


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


class _Reply(Exception):
    """Raised inside request handling to answer with an error."""

    def __init__(self, status: int, message: str, headers: tuple[tuple[str, str], ...] = ()):
        super().__init__(message)
        self.status = status
        self.body = _error_body(_ERROR_CODES.get(status, "error"), message)
        self.ctype = "application/json"
        self.headers = headers


def _parse_int(name: str, raw: str | None, default: int) -> int:
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
        raise _Reply(400, f"{name} must be an integer >= 1, got {raw!r}")
    return int(raw)


# ---------------------------------------------------------------------------------------------
# The simulator


class Simulator:
    """The simulated API: generated accounts plus an HTTP server and an in-process control API."""

    def __init__(self, config: SimulatorConfig | None = None, **overrides: Any) -> None:
        cfg = dataclasses.replace(config or SimulatorConfig(), **overrides)
        cfg.validate()
        self.config = cfg
        self._accounts: list[_Account] = []
        # The newest generated call starts a few seconds before now.
        t_end = int(time.time()) - 3
        for i in range(1, cfg.accounts + 1):
            acct = _Account(i, cfg.seed)
            acct.generate(cfg.calls, cfg.days, t_end)
            self._accounts.append(acct)
        self._by_auth_id = {a.info.auth_id: a for a in self._accounts}
        self._by_token = {a.info.token: a for a in self._accounts}
        self.accounts: list[SimAccount] = [a.info for a in self._accounts]
        self._server: _Server | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        self._base_url: str | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> Simulator:
        """Bind and serve in daemon threads; returns self."""
        if self._server is not None:
            raise RuntimeError("simulator already started")
        cfg = self.config
        cls = _Server6 if ":" in cfg.host else _Server
        server = cls((cfg.host, cfg.port), _Handler)
        server.sim = self
        self._server = server
        port = server.server_address[1]
        host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
        self._base_url = f"http://{host}:{port}/v1"
        self._stop.clear()
        self._threads = [
            threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
            ),
            threading.Thread(target=self._drift_loop, daemon=True),
        ]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        """Stop serving and drop open keep-alive connections; safe to call twice."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stop.set()
        server.shutdown()
        server.server_close()
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for t in self._threads:
            t.join(timeout=5)
        self._threads = []

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """http://HOST:PORT/v1, once started."""
        if self._base_url is None:
            raise RuntimeError("simulator not started")
        return self._base_url

    @property
    def port(self) -> int:
        """The bound port, once started."""
        return int(self.base_url.rsplit(":", 1)[1].split("/", 1)[0])

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._conns_lock:
            if add:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)

    def _account(self, auth_id: str) -> _Account:
        try:
            return self._by_auth_id[auth_id]
        except KeyError:
            raise KeyError(f"unknown auth_id {auth_id!r}") from None

    # -- data control -------------------------------------------------------------------------

    def calls(self, auth_id: str) -> list[dict[str, Any]]:
        """The account's current list, newest first, parsed from the bytes the server sends."""
        acct = self._account(auth_id)
        with acct.lock:
            return acct.served()

    def add_calls(
        self, auth_id: str, n: int, *, open_fraction: float | None = None
    ) -> list[dict[str, Any]]:
        """Append n new calls starting now (drift) and return them, oldest first."""
        acct = self._account(auth_id)
        frac = self.config.open_fraction if open_fraction is None else open_fraction
        with acct.lock:
            return json.loads(json.dumps(acct.add(n, frac)))

    def add_record(self, auth_id: str, record: dict[str, Any]) -> None:
        """Append an arbitrary record verbatim at the head of the list."""
        acct = self._account(auth_id)
        with acct.lock:
            acct.append(record)

    def set_call(self, auth_id: str, call_uuid: str, **fields: Any) -> None:
        """Change fields of an existing call in place (a late status change); order unchanged."""
        acct = self._account(auth_id)
        with acct.lock:
            pos = acct.find(call_uuid)
            rec = json.loads(acct.blobs[pos])
            rec.update(fields)
            acct.replace(pos, rec)

    def finish_open_calls(self, auth_id: str | None = None) -> int:
        """Give every open call (of one account or all) a final status now; return how many."""
        accts = self._accounts if auth_id is None else [self._account(auth_id)]
        done = 0
        for acct in accts:
            with acct.lock:
                for pos in acct.open_positions():
                    acct.finish(pos)
                    done += 1
        return done

    def open_calls(self, auth_id: str) -> list[dict[str, Any]]:
        """The account's ringing and in-progress calls, newest first."""
        acct = self._account(auth_id)
        with acct.lock:
            return acct.served(reversed(acct.open_positions()))

    # -- fault control ------------------------------------------------------------------------

    def inject(self, auth_id: str, *responses: str | int) -> None:
        """Queue scripted responses (int status, "429-date", "htmlNNN", "reset", "truncate",
        "ok"/200 = serve normally) for the next requests to the account, one per request."""
        acct = self._account(auth_id)
        items = [str(r) for r in responses]
        for item in items:
            if not _INJECT_RE.match(item):
                raise ValueError(f"unknown injected response {item!r}")
        with acct.lock:
            acct.injected.extend(items)

    def set_faults(self, **fields: Any) -> None:
        """Change fault and drift settings while serving."""
        unknown = set(fields) - RUNTIME_FIELDS
        if unknown:
            raise TypeError(f"not a run-time setting: {', '.join(sorted(unknown))}")
        candidate = dataclasses.replace(self.config, **fields)
        candidate.validate()
        for name, value in fields.items():
            setattr(self.config, name, value)

    def stats(self, auth_id: str | None = None) -> dict[str, Any]:
        """Request counters of one account, or summed over all accounts."""
        if auth_id is not None:
            acct = self._account(auth_id)
            with acct.lock:
                return acct.stats()
        total: dict[str, Any] = {"requests": 0, "by_status": {}, "resets": 0, "truncated": 0}
        for acct in self._accounts:
            with acct.lock:
                one = acct.stats()
            for key in ("requests", "resets", "truncated"):
                total[key] += one[key]
            for code, n in one["by_status"].items():
                total["by_status"][code] = total["by_status"].get(code, 0) + n
        return total

    def reset_stats(self) -> None:
        """Zero every request counter."""
        for acct in self._accounts:
            with acct.lock:
                acct.requests = acct.resets = acct.truncated = 0
                acct.by_status.clear()

    # -- background drift ---------------------------------------------------------------------

    def _drift_loop(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(0.05):
            now = time.monotonic()
            elapsed, last = now - last, now
            cfg = self.config
            for acct in self._accounts:
                with acct.lock:
                    if cfg.drift_rate > 0:
                        acct.drift_carry += cfg.drift_rate * elapsed
                        n = int(acct.drift_carry)
                        if n:
                            acct.drift_carry -= n
                            acct.add(n, cfg.open_fraction)
                    if cfg.finish_after_s is not None:
                        acct.tick_open(cfg.finish_after_s, now)

    # -- request handling ---------------------------------------------------------------------

    def _handle(self, h: _Handler) -> None:
        path, _, query = h.path.partition("?")
        parts = path.split("/")
        if len(parts) != 6 or parts[:4] != ["", "v1", "voice", "accounts"] or parts[5] != "calls":
            self._send(h, None, 404, _error_body("not_found", f"no route for {path}"))
            return
        acct = self._by_auth_id.get(unquote(parts[4]))
        cfg = self.config
        if acct is not None:
            with acct.lock:
                acct.requests += 1
        if cfg.latency_ms > 0:
            time.sleep(cfg.latency_ms / 1000)
        truncate = False
        try:
            if acct is not None:
                fault = self._faults(h, acct)
                if fault is None:
                    return
                truncate = fault
            token = self._bearer(h.headers.get("Authorization"))
            owner = self._by_token.get(token) if token else None
            if owner is None:
                raise _Reply(
                    401, "missing or invalid bearer token", (("WWW-Authenticate", "Bearer"),)
                )
            if acct is None:
                raise _Reply(404, f"account {unquote(parts[4])} not found")
            if owner is not acct:
                raise _Reply(403, "token does not grant access to this account")
            self._rate_limit(acct)
            filters, page, per_page = self._params(query)
            per_page = min(per_page, MAX_PER_PAGE, cfg.per_page_cap)
            with acct.lock:
                if cfg.finish_after_s is not None:
                    acct.tick_open(cfg.finish_after_s, time.monotonic())
                body = acct.page(filters, page, per_page)
                # The appended calls are not on this page: the next page shifts deterministically.
                if cfg.drift_per_request and not truncate:
                    acct.add(cfg.drift_per_request, cfg.open_fraction)
        except _Reply as r:
            self._send(h, acct, r.status, r.body, r.ctype, r.headers, truncate)
            return
        self._send(h, acct, 200, body, truncate=truncate)

    @staticmethod
    def _bearer(header: str | None) -> str | None:
        if not header:
            return None
        scheme, _, token = header.strip().partition(" ")
        return token.strip() if scheme.lower() == "bearer" else None

    def _faults(self, h: _Handler, acct: _Account) -> bool | None:
        """Apply a scripted or random fault: raise a _Reply, return None after a reset, or
        return whether the response must be truncated."""
        cfg = self.config
        with acct.lock:
            item = acct.injected.popleft() if acct.injected else None
            if item is None:
                r = acct.fault_rng.random()
                if r < cfg.reset_rate:
                    item = "reset"
                elif r < cfg.reset_rate + cfg.error_rate:
                    code = acct.fault_rng.choice((500, 502, 503))
                    html = acct.fault_rng.random() < 1 / 3
                    item = f"html{code}" if html else str(code)
                elif acct.fault_rng.random() < cfg.truncate_rate:
                    item = "truncate"
        if item is None or item in ("ok", "200"):
            return False
        if item == "reset":
            self._reset(h, acct)
            return None
        if item == "truncate":
            return True
        if item == "429-date":
            raise _Reply(429, "rate limit exceeded", (("Retry-After", _retry_date(1.0)),))
        if item.startswith("html"):
            status = int(item[4:])
            reply = _Reply(status, "")
            reply.body = (
                HTML_502
                if status == 502
                else f"<html><body><h1>{status} {_reason(status)}</h1></body></html>".encode()
            )
            reply.ctype = "text/html"
            raise reply
        status = int(item)
        if status == 429:
            raise _Reply(429, "rate limit exceeded", (("Retry-After", "1"),))
        if status < 400:
            return False
        raise _Reply(status, f"injected {status}")

    def _rate_limit(self, acct: _Account) -> None:
        cfg = self.config
        rate = cfg.rate_limit
        if rate <= 0:
            return
        burst = max(1.0, min(10.0, rate / 5))
        now = time.monotonic()
        with acct.lock:
            if acct.bucket_rate != rate:
                acct.bucket_rate, acct.bucket_tokens, acct.bucket_last = rate, burst, now
            tokens = min(burst, acct.bucket_tokens + (now - acct.bucket_last) * rate)
            acct.bucket_last = now
            if tokens >= 1.0:
                acct.bucket_tokens = tokens - 1.0
                return
            acct.bucket_tokens = tokens
            wait = (1.0 - tokens) / rate
            fmt = cfg.retry_after_format
            use_date = fmt == "http-date" or (fmt == "both" and acct.n429 % 2 == 1)
            acct.n429 += 1
        value = _retry_date(wait) if use_date else str(max(1, math.ceil(wait)))
        raise _Reply(429, "rate limit exceeded", (("Retry-After", value),))

    @staticmethod
    def _params(query: str) -> tuple[list[tuple[int, str]], int, int]:
        # Blank values count as absent; a repeated parameter keeps its last value.
        q = dict(parse_qsl(query))
        filters: list[tuple[int, str]] = []
        status = q.get("status")
        if status is not None:
            if status not in STATUSES:
                raise _Reply(400, f"invalid status {status!r}; expected one of {STATUSES}")
            filters.append((_ST, status))
        direction = q.get("direction")
        if direction is not None:
            if direction not in DIRECTIONS:
                raise _Reply(400, f"invalid direction {direction!r}; expected one of {DIRECTIONS}")
            filters.append((_DIR, direction))
        for i, key in ((2, "from"), (3, "to")):
            number = q.get(key)
            if number is not None:
                # An unencoded "+" arrives as a space (form decoding); read it as the E.164 plus.
                if number.startswith(" "):
                    number = "+" + number[1:]
                filters.append((i, number))
        page = _parse_int("page", q.get("page"), 1)
        per_page = _parse_int("per_page", q.get("per_page"), DEFAULT_PER_PAGE)
        return filters, page, per_page

    def _reset(self, h: _Handler, acct: _Account) -> None:
        with acct.lock:
            acct.resets += 1
        conn = h.connection
        h.close_connection = True
        try:
            # Linger 0 turns close() into an RST, so the client sees a reset, not a clean EOF.
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            h.rfile.close()  # the reader holds a reference that would keep the socket open
            conn.close()
        except OSError:
            pass

    def _send(
        self,
        h: _Handler,
        acct: _Account | None,
        status: int,
        body: bytes,
        ctype: str = "application/json",
        headers: Iterable[tuple[str, str]] = (),
        truncate: bool = False,
    ) -> None:
        if status != 200:
            # An error response is never truncated: only a 200 with a short body is a "truncate".
            truncate = False
        if acct is not None:
            with acct.lock:
                acct.by_status[status] += 1
                if truncate:
                    acct.truncated += 1
        lines = [
            f"HTTP/1.1 {status} {_reason(status)}",
            f"Date: {_http_date()}",
            f"Content-Type: {ctype}",
            f"Content-Length: {len(body)}",
        ]
        lines.extend(f"{k}: {v}" for k, v in headers)
        if truncate or h.close_connection:
            h.close_connection = True
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if truncate:
            body = body[: max(1, len(body) // 2)] if len(body) > 1 else b""
        h.wfile.write(head + body)


def _retry_date(wait: float) -> str:
    """An HTTP-date at least one whole second after now, so a client never reads it as past."""
    when = math.ceil(time.time() + max(1.0, wait))
    return email.utils.format_datetime(dt.datetime.fromtimestamp(when, dt.UTC), usegmt=True)


# ---------------------------------------------------------------------------------------------
# Command line


def serve(
    config: SimulatorConfig,
    stop: threading.Event | None = None,
    on_ready: Callable[[Simulator], None] | None = None,
) -> None:
    """Print the address, accounts and tokens, then serve until SIGINT, SIGTERM or stop is set."""
    done = stop or threading.Event()
    previous: dict[signal.Signals, Any] = {}
    # Installed before generation, so an early Ctrl-C also ends cleanly instead of a traceback.
    with contextlib.suppress(ValueError):  # not the main thread: only `stop` can end us
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: done.set())
    try:
        sim = Simulator(config).start()
        try:
            lines = [f"Vox API simulator listening on {sim.base_url}"]
            for acct in sim._accounts:
                info = acct.info
                lines.append(
                    f"  {info.name}: auth_id={info.auth_id} token={info.token}"
                    f" calls={len(acct.blobs)}"
                )
            lines.extend(f"  export VOX_TOKEN_{a.name.upper()}={a.token}" for a in sim.accounts)
            if on_ready is not None:
                on_ready(sim)
            print("\n".join(lines), flush=True)
            while not done.wait(0.5):
                pass
        finally:
            sim.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

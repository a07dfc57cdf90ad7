"""The simulator over HTTP: the List Calls route under /v1, and the test hooks under /_sim.

`GET /v1/voice/accounts/{auth_id}/calls` answers as the API reference describes, after the
account's faults and rate limits. `/_sim/...` (loopback peers only, JSON in and out, never
counted, delayed or faulted) drives the simulator from another process; each hook calls the
`Simulator` method of the same meaning (see the package docstring for the list).
"""

from __future__ import annotations

import contextlib
import email.utils
import http
import ipaddress
import json
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote

from ..records import KNOWN_DIRECTIONS, KNOWN_STATUSES
from .account import Account
from .calllist import DIR, FROM, ST, TO, Filters
from .config import DEFAULT_PER_PAGE, MAX_PER_PAGE
from .hooks import HOOKS
from .limits import retry_date

if TYPE_CHECKING:
    from .service import Simulator

HTML_502 = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
_ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    429: "rate_limited",
    500: "internal_error",
    502: "bad_gateway",
    503: "service_unavailable",
    504: "gateway_timeout",
}


class Reply(Exception):
    """Raised inside request handling to answer with an error."""

    def __init__(self, status: int, message: str, headers: Iterable[tuple[str, str]] = ()):
        super().__init__(message)
        self.status = status
        self.body = error_body(_ERROR_CODES.get(status, "error"), message)
        self.ctype = "application/json"
        self.headers = list(headers)


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": code, "message": message}).encode()


def reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


_date_cache: tuple[int, str] = (0, "")


def http_date() -> str:
    global _date_cache
    now = int(time.time())
    cached = _date_cache
    if cached[0] != now:
        cached = _date_cache = (now, email.utils.formatdate(now, usegmt=True))
    return cached[1]


def _parse_int(name: str, raw: str | None, default: int) -> int:
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
        raise Reply(400, f"{name} must be an integer >= 1, got {raw!r}")
    return int(raw)


def _params(query: str) -> tuple[Filters, int, int]:
    # Blank values count as absent; a repeated parameter keeps its last value.
    q = dict(parse_qsl(query))
    filters: Filters = []
    status = q.get("status")
    if status is not None:
        if status not in KNOWN_STATUSES:
            raise Reply(400, f"invalid status {status!r}; expected one of {KNOWN_STATUSES}")
        filters.append((ST, status))
    direction = q.get("direction")
    if direction is not None:
        if direction not in KNOWN_DIRECTIONS:
            raise Reply(400, f"invalid direction {direction!r}; expected one of {KNOWN_DIRECTIONS}")
        filters.append((DIR, direction))
    for i, key in ((FROM, "from"), (TO, "to")):
        number = q.get(key)
        if number is not None:
            # An unencoded "+" arrives as a space (form decoding); read it as the E.164 plus.
            if number.startswith(" "):
                number = "+" + number[1:]
            filters.append((i, number))
    page = _parse_int("page", q.get("page"), 1)
    per_page = _parse_int("per_page", q.get("per_page"), DEFAULT_PER_PAGE)
    return filters, page, per_page


def _bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def _is_loopback(host: str) -> bool:
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(addr, "ipv4_mapped", None)
    return bool(addr.is_loopback or (mapped is not None and mapped.is_loopback))


class ApiServer(ThreadingHTTPServer):
    """Threaded HTTP/1.1 server bound to one Simulator."""

    daemon_threads = True
    # Keep-alive threads may idle forever; stop() closes their sockets instead of joining them.
    block_on_close = False
    request_queue_size = 256
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], sim: Simulator) -> None:
        self.sim = sim
        self.conns: set[socket.socket] = set()
        self.conns_lock = threading.Lock()
        super().__init__(address, Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            return  # client went away; nothing to report
        super().handle_error(request, client_address)

    def track(self, conn: socket.socket, add: bool) -> None:
        with self.conns_lock:
            if add:
                self.conns.add(conn)
            else:
                self.conns.discard(conn)

    def drop_connections(self) -> None:
        """Shut every open keep-alive connection down."""
        with self.conns_lock:
            conns = list(self.conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class ApiServer6(ApiServer):
    address_family = socket.AF_INET6


def make_server(host: str, port: int, sim: Simulator) -> ApiServer:
    cls = ApiServer6 if ":" in host else ApiServer
    return cls((host, port), sim)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "VoxSimulator/1.0"
    disable_nagle_algorithm = True
    server: ApiServer

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # per-request logging would dominate the cost of a request

    def do_GET(self) -> None:
        if self.path.startswith("/_sim/"):
            self._hook("GET")
        else:
            self._api()

    def do_POST(self) -> None:
        if self.path.startswith("/_sim/"):
            self._hook("POST")
        else:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            self.send_raw(None, 405, error_body("method_not_allowed", "the API is read-only"))

    # -- the API --------------------------------------------------------------------------------

    def _api(self) -> None:
        sim = self.server.sim
        path, _, query = self.path.partition("?")
        parts = path.split("/")
        if len(parts) != 6 or parts[:4] != ["", "v1", "voice", "accounts"] or parts[5] != "calls":
            self.send_raw(None, 404, error_body("not_found", f"no route for {path}"))
            return
        auth_id = unquote(parts[4])
        acct = sim.account_state(auth_id)
        cfg = sim.config
        if acct is not None:
            with acct.lock:
                acct.requests += 1
        if cfg.latency_ms > 0:
            time.sleep(cfg.latency_ms / 1000)
        truncate = False
        limit_headers: list[tuple[str, str]] = []
        try:
            if acct is not None:
                with acct.lock:
                    fault = acct.faults.next(cfg)
                if fault == "reset":
                    self._reset(acct)
                    return
                truncate = fault == "truncate"
                if fault is not None and not truncate:
                    _raise_fault(fault)
            owner = sim.account_by_token(_bearer(self.headers.get("Authorization")))
            if owner is None:
                raise Reply(
                    401, "missing or invalid bearer token", [("WWW-Authenticate", "Bearer")]
                )
            if acct is None:
                raise Reply(404, f"account {auth_id} not found")
            if owner is not acct:
                raise Reply(403, "token does not grant access to this account")
            with acct.lock:
                verdict = acct.limiter.check(cfg, time.monotonic(), time.time())
                if not verdict.allowed:
                    retry = acct.limiter.retry_after(cfg, verdict.wait)
            limit_headers = verdict.headers
            if not verdict.allowed:
                raise Reply(429, "rate limit exceeded", retry + limit_headers)
            filters, page, per_page = _params(query)
            per_page = min(per_page, MAX_PER_PAGE, cfg.per_page_cap)
            with acct.lock:
                calls = acct.list
                calls.advance(cfg, time.monotonic())
                body = calls.page(filters, page, per_page)
                # The appended calls are not on this page: the next page shifts deterministically.
                if cfg.drift_per_request and not truncate:
                    calls.arrive(cfg.drift_per_request, cfg.open_fraction)
        except Reply as r:
            self.send_raw(acct, r.status, r.body, r.ctype, r.headers, truncate)
            return
        self.send_raw(acct, 200, body, headers=limit_headers, truncate=truncate)

    def _reset(self, acct: Account) -> None:
        with acct.lock:
            acct.resets += 1
        conn = self.connection
        self.close_connection = True
        try:
            # Linger 0 turns close() into an RST, so the client sees a reset, not a clean EOF.
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.rfile.close()  # the reader holds a reference that would keep the socket open
            conn.close()
        except OSError:
            pass

    def send_raw(
        self,
        acct: Account | None,
        status: int,
        body: bytes,
        ctype: str = "application/json",
        headers: Iterable[tuple[str, str]] = (),
        truncate: bool = False,
    ) -> None:
        """Write one response; a truncated one is a 200 whose body stops halfway."""
        if status != 200:
            truncate = False
        if acct is not None:
            with acct.lock:
                acct.by_status[status] += 1
                if truncate:
                    acct.truncated += 1
        lines = [
            f"HTTP/1.1 {status} {reason(status)}",
            f"Date: {http_date()}",
            f"Content-Type: {ctype}",
            f"Content-Length: {len(body)}",
        ]
        lines.extend(f"{k}: {v}" for k, v in headers)
        if truncate or self.close_connection:
            self.close_connection = True
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if truncate:
            body = body[: max(1, len(body) // 2)] if len(body) > 1 else b""
        self.wfile.write(head + body)

    # -- the hooks ------------------------------------------------------------------------------

    def _hook(self, method: str) -> None:
        path, _, query = self.path.partition("?")
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not _is_loopback(self.client_address[0]):
            self.send_raw(None, 403, error_body("forbidden", "test hooks answer loopback only"))
            return
        name = path[len("/_sim/") :].strip("/")
        route = HOOKS.get(name)
        try:
            if route is None:
                raise Reply(404, f"no test hook {name!r}; see GET /_sim/help")
            want, func = route
            if method != want:
                raise Reply(405, f"/_sim/{name} takes {want}")
            args: dict[str, Any] = dict(parse_qsl(query))
            if raw:
                try:
                    body = json.loads(raw)
                except ValueError:
                    raise Reply(400, "the body is not JSON") from None
                if not isinstance(body, dict):
                    raise Reply(400, "the body must be a JSON object")
                args.update(body)
            try:
                result = func(self.server.sim, args)
            except KeyError as exc:
                raise Reply(404, str(exc.args[0] if exc.args else exc)) from None
            except (TypeError, ValueError) as exc:
                raise Reply(400, str(exc)) from None
        except Reply as r:
            self.send_raw(None, r.status, r.body)
            return
        self.send_raw(None, 200, json.dumps(result).encode())


def _raise_fault(item: str) -> None:
    if item == "429-date":
        raise Reply(429, "rate limit exceeded", [("Retry-After", retry_date(1.0))])
    if item.startswith("html"):
        status = int(item[4:])
        reply = Reply(status, "")
        reply.body = (
            HTML_502
            if status == 502
            else f"<html><body><h1>{status} {reason(status)}</h1></body></html>".encode()
        )
        reply.ctype = "text/html"
        raise reply
    status = int(item)
    if status == 429:
        raise Reply(429, "rate limit exceeded", [("Retry-After", "1")])
    if status >= 400:
        raise Reply(status, f"injected {status}")

"""The Simulator: generated accounts, the clock and background dynamics, the HTTP server's
lifecycle, and the in-process control API that tests drive (the /_sim hooks mirror it)."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from ..tokens import token_variable
from .account import Account
from .config import RUNTIME_FIELDS, SimAccount, SimulatorConfig
from .generate import ts
from .limits import FaultSource
from .server import ApiServer, make_server


class Simulator:
    """The simulated API: generated accounts plus an HTTP server and an in-process control API.

    Every method taking an auth_id raises KeyError for an unknown one. Calls are addressed by
    call_uuid; records come back as the API serves them (fresh dicts, safe to change).
    """

    def __init__(self, config: SimulatorConfig | None = None, **overrides: Any) -> None:
        cfg = dataclasses.replace(config or SimulatorConfig(), **overrides)
        cfg.validate()
        self.config = cfg
        self._offset = 0.0
        self._offset_lock = threading.Lock()
        # The newest generated call starts a few seconds before now.
        t_end = int(self.clock()) - 3
        self._accounts: list[Account] = []
        for i in range(1, cfg.accounts + 1):
            acct = Account(i, cfg, self.clock)
            acct.list.load_history(cfg, t_end)
            self._accounts.append(acct)
        self._by_auth_id = {a.info.auth_id: a for a in self._accounts}
        self._by_token = {a.info.token: a for a in self._accounts}
        self.accounts: list[SimAccount] = [a.info for a in self._accounts]
        self._server: ApiServer | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._base_url: str | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> Simulator:
        """Bind and serve in daemon threads; returns self."""
        if self._server is not None:
            raise RuntimeError("simulator already started")
        cfg = self.config
        server = make_server(cfg.host, cfg.port, self)
        self._server = server
        port = server.server_address[1]
        host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
        self._base_url = f"http://{host}:{port}/v1"
        self._stop.clear()
        now = time.monotonic()
        for acct in self._accounts:
            with acct.lock:
                acct.list.advance(cfg, now)  # the dynamics' clocks start now, not at generation
        self._threads = [
            threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
            ),
            threading.Thread(target=self._dynamics_loop, daemon=True),
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
        server.drop_connections()
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

    # -- the clock ------------------------------------------------------------------------------

    def clock(self) -> float:
        """The simulator's time in epoch seconds: the wall clock plus advance_clock()'s total.

        New calls start at it, the retention window is counted back from it, calls end at it.
        """
        return time.time() + self._offset

    def advance_clock(self, seconds: float) -> float:
        """Move the simulator's clock forward (a day between two syncs in an instant); the
        retention window moves with it at the next request or tick. Returns the total offset."""
        if not seconds >= 0:
            raise ValueError("seconds must be >= 0")
        with self._offset_lock:
            self._offset += seconds
            return self._offset

    # -- accessors for the server and scripts ---------------------------------------------------

    def account_state(self, auth_id: str) -> Account | None:
        """The internal state of one account (for the HTTP server), None when unknown."""
        return self._by_auth_id.get(auth_id)

    def account_by_token(self, token: str | None) -> Account | None:
        """The account a bearer token grants, None when it grants none."""
        return self._by_token.get(token) if token else None

    def _account(self, auth_id: str) -> Account:
        try:
            return self._by_auth_id[auth_id]
        except KeyError:
            raise KeyError(f"unknown auth_id {auth_id!r}") from None

    def _selected(self, auth_id: str | None) -> list[Account]:
        return list(self._accounts) if auth_id is None else [self._account(auth_id)]

    def config_dict(self) -> dict[str, Any]:
        """The current settings as plain JSON values."""
        return dataclasses.asdict(self.config)

    # -- reading the list and its truth ---------------------------------------------------------

    def calls(self, auth_id: str) -> list[dict[str, Any]]:
        """The account's current list, newest first, parsed from the bytes the server sends."""
        acct = self._account(auth_id)
        with acct.lock:
            return acct.list.listed_records()

    def count(self, auth_id: str) -> int:
        """How many calls the account lists now (the unfiltered total_count)."""
        acct = self._account(auth_id)
        with acct.lock:
            return len(acct.list)

    def open_calls(self, auth_id: str) -> list[dict[str, Any]]:
        """The account's ringing and in-progress calls, newest first."""
        acct = self._account(auth_id)
        with acct.lock:
            return acct.list.records(reversed(acct.list.open_keys()))

    def listed_uuids(self, auth_id: str) -> list[str | None]:
        """call_uuid of every listed call, newest first (None for a record without one)."""
        acct = self._account(auth_id)
        with acct.lock:
            return acct.list.listed_uuids()

    def deleted(self, auth_id: str) -> list[str]:
        """call_uuids deleted from inside the window and not restored, in deletion order."""
        acct = self._account(auth_id)
        with acct.lock:
            return list(acct.list.deleted)

    def expired(self, auth_id: str) -> list[str | None]:
        """call_uuids that aged out of the window (retention, expire_rate, expire_oldest),
        oldest first. History generated older than the window was never listed: not here."""
        acct = self._account(auth_id)
        with acct.lock:
            return list(acct.list.expired_log)

    def oldest_start_time(self, auth_id: str) -> str | None:
        """Where the window starts: the oldest listed call's sort second, None when empty."""
        acct = self._account(auth_id)
        with acct.lock:
            oldest = acct.list.oldest_start()
        return None if oldest is None else ts(oldest)

    # -- changing the list ----------------------------------------------------------------------

    def add_calls(
        self,
        auth_id: str,
        n: int,
        *,
        open_fraction: float | None = None,
        same_second: bool = False,
        spread_s: float = 0,
    ) -> list[dict[str, Any]]:
        """Append n new calls at the head and return them, oldest first.

        All n share one start second: now (several calls added at once are a burst), or with
        same_second the second of the newest call already listed, tying with it. With
        spread_s they start at random seconds over the last spread_s seconds instead (never
        before the newest listed call): a day of arrivals after advance_clock(86400).
        """
        if n < 0:
            raise ValueError("n must be >= 0")
        if not 0 <= spread_s < math.inf:
            raise ValueError("spread_s must be a number of seconds >= 0")
        acct = self._account(auth_id)
        frac = self.config.open_fraction if open_fraction is None else open_fraction
        if not 0 <= frac <= 1:
            raise ValueError("open_fraction must be between 0 and 1")
        with acct.lock:
            return [c.to_dict() for c in acct.list.arrive(n, frac, same_second, spread_s)]

    def add_record(self, auth_id: str, record: dict[str, Any]) -> None:
        """Append an arbitrary record verbatim at the head of the list.

        Whatever its start_time says (it may be broken), it sorts with the head's second.
        """
        if not isinstance(record, dict):
            raise TypeError("record must be a JSON object")
        acct = self._account(auth_id)
        with acct.lock:
            acct.list.append_record(record)

    def add_late_call(self, auth_id: str, age_seconds: float, **fields: Any) -> dict[str, Any]:
        """List a finished call that started age_seconds before now, in its sorted place behind
        the head (after the calls of that second already listed: a later listing sorts first
        among ties). fields override the generated ones, except start_time. ValueError when
        that is older than the window's start."""
        acct = self._account(auth_id)
        with acct.lock:
            return acct.list.insert_late(float(age_seconds), fields)

    def set_call(self, auth_id: str, call_uuid: str, **fields: Any) -> None:
        """Change fields of an existing call in place (a late status change); order unchanged."""
        acct = self._account(auth_id)
        with acct.lock:
            key = acct.list.find(call_uuid)
            record = acct.list.record(key)
            record.update(fields)
            acct.list.replace(key, record)

    def delete_call(self, auth_id: str, call_uuid: str) -> dict[str, Any]:
        """Remove a listed call from inside the window (a compliance deletion); returns it."""
        acct = self._account(auth_id)
        with acct.lock:
            return acct.list.delete(call_uuid)

    def restore_call(self, auth_id: str, call_uuid: str) -> dict[str, Any]:
        """Bring a deleted call back at its sorted place; ValueError if it aged out meanwhile."""
        acct = self._account(auth_id)
        with acct.lock:
            return acct.list.restore(call_uuid)

    def expire_oldest(self, auth_id: str, n: int) -> list[str | None]:
        """The n oldest listed calls age out now; returns their call_uuids, oldest first."""
        acct = self._account(auth_id)
        with acct.lock:
            return acct.list.expire_oldest(int(n))

    def finish_open_calls(self, auth_id: str | None = None) -> int:
        """Give every open call (of one account or all) a final status now; return how many."""
        done = 0
        for acct in self._selected(auth_id):
            with acct.lock:
                for key in acct.list.open_keys():
                    acct.list.finish(key)
                    done += 1
        return done

    # -- faults and limits ----------------------------------------------------------------------

    def inject(self, auth_id: str, *responses: str | int) -> None:
        """Queue scripted responses (int status, "429-date", "htmlNNN", "reset", "truncate",
        "ok"/200 = serve normally) for the next requests to the account, one per request."""
        acct = self._account(auth_id)
        items = [str(r) for r in responses]
        FaultSource.check(items)
        with acct.lock:
            acct.faults.injected.extend(items)

    def set_faults(self, **fields: Any) -> None:
        """Change fault, limit and dynamics settings while serving (RUNTIME_FIELDS)."""
        unknown = set(fields) - RUNTIME_FIELDS
        if unknown:
            raise TypeError(f"not a run-time setting: {', '.join(sorted(unknown))}")
        candidate = dataclasses.replace(self.config, **fields)
        candidate.validate()
        for name, value in fields.items():
            setattr(self.config, name, value)

    def stats(self, auth_id: str | None = None) -> dict[str, Any]:
        """Request counters of one account, or summed over all accounts: requests, by_status
        (status code -> answers; by_status[429] counts every 429), resets, truncated."""
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

    def limit_stats(self, auth_id: str | None = None) -> dict[str, int]:
        """Rate-limit counters of one account, or summed: throttled (the client's requests the
        limits refused), foreign_requests and foreign_refused (the simulated customer's)."""
        total = {"throttled": 0, "foreign_requests": 0, "foreign_refused": 0}
        for acct in self._selected(auth_id):
            with acct.lock:
                for key, value in acct.limiter.stats().items():
                    total[key] += value
        return total

    def reset_stats(self) -> None:
        """Zero every request and rate-limit counter."""
        for acct in self._accounts:
            with acct.lock:
                acct.reset_stats()

    # -- background dynamics --------------------------------------------------------------------

    def _dynamics_loop(self) -> None:
        while not self._stop.wait(0.05):
            cfg = self.config
            for acct in self._accounts:
                with acct.lock:
                    acct.list.advance(cfg, time.monotonic())
                    acct.limiter.foreign(cfg, time.monotonic(), time.time())


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
            for info in sim.accounts:
                lines.append(
                    f"  {info.name}: auth_id={info.auth_id} token={info.token}"
                    f" calls={sim.count(info.auth_id)}"
                )
            lines.extend(f"  export {token_variable(a.name)}={a.token}" for a in sim.accounts)
            lines.append(f"  test hooks: {sim.base_url.removesuffix('/v1')}/_sim/help")
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

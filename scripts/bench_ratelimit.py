"""Rate-limit benchmark: `etl sync` as a real CLI subprocess against the simulator's limits.

    .venv/bin/python scripts/bench_ratelimit.py                   # every group below
    .venv/bin/python scripts/bench_ratelimit.py --only unknown,window --seconds 20
    .venv/bin/python scripts/bench_ratelimit.py --quick           # a few cells of each group

Groups (one row per cell):

  unknown    the limit is not announced and not configured: limits 5, 20, 50 req/s x bursts 1, 5,
             20 x latencies 50, 150, 300 ms, concurrency 8. Target: >= 90% of the ceiling, < 3%
             of requests answered 429.
  window     300 requests per 5-second window (fixed, epoch-aligned), 100 ms, concurrency 8, not
             announced; then the same announced by headers.
  headers    the limit announced by RateLimit-* / X-RateLimit-* headers: >= 95% from the start,
             no 429 after the first second.
  configured [api].requests_per_second = the server's limit: >= 97%, no 429.
  share      [api].rate_share 0.5 against a limit shared with simulated customer traffic.
  never      5 req/s, burst 1, 50 ms, every concurrency 1..16: every run exits 0.

How it measures:
  - The simulator runs in this process (it has a core to itself while `etl` runs in its own
    process); its counters give the requests and the 429s the server sent.
  - `req/s` is the rate on the wire as the server saw it: 200 answers divided by the time from
    the account's first request to its last, found by polling the simulator's counters every
    10 ms. `wall s` is the whole command (start-up, migrations) for reference.
  - `ceiling` is the server's limit, or what concurrency / latency allows when that is lower
    (8 requests in flight at 300 ms cannot exceed 26.7 req/s whatever the limit).
  - Each cell has enough pages for `--seconds` (default 10) at its ceiling.
  - Cells whose simulator options are missing (the simulator before rate_burst, window limits
    and rate headers) are printed as skipped, with the reason.

Every figure printed comes from a run in this invocation.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from etl.simulator import Simulator, SimulatorConfig  # noqa: E402

PER_PAGE = 100
SIM_FIELDS = {f.name for f in dataclasses.fields(SimulatorConfig)}


@dataclass
class Cell:
    group: str
    label: str
    limit: float  # the server's sustained limit, req/s (window_limit / window_seconds for windows)
    burst: float | None
    latency_ms: float
    concurrency: int
    sim: dict[str, Any] = field(default_factory=dict)
    api: dict[str, Any] = field(default_factory=dict)
    targets: str = ""

    @property
    def ceiling(self) -> float:
        by_concurrency = self.concurrency / (self.latency_ms / 1000) if self.latency_ms else math.inf
        share = float(self.api.get("rate_share", 1.0))
        return min(self.limit * share, by_concurrency)


@dataclass
class Result:
    cell: Cell
    exit_code: int | None = None
    ok: int = 0
    n429: int = 0
    requests: int = 0
    span: float = 0.0
    wall: float = 0.0
    late_429: int = 0  # 429s after the first second of the account's requests
    skipped: str = ""
    error: str = ""

    @property
    def rate(self) -> float:
        return self.ok / self.span if self.span > 0 else 0.0


def sim_fields(cell: Cell, calls: int) -> dict[str, Any]:
    fields: dict[str, Any] = {"accounts": 1, "calls": calls, "latency_ms": cell.latency_ms,
                              "seed": 11, "open_fraction": 0.0, **cell.sim}
    if cell.burst is not None and "rate_limit" in fields and (
            "rate_burst" in SIM_FIELDS or cell.burst != default_burst(cell.limit)):
        fields["rate_burst"] = cell.burst
    return fields


def missing_fields(fields: dict[str, Any]) -> list[str]:
    return sorted(k for k in fields if k not in SIM_FIELDS)


class Watcher(threading.Thread):
    """Polls the simulator's counters: when requests start and stop, and when 429s come."""

    def __init__(self, sim: Simulator, auth_id: str) -> None:
        super().__init__(daemon=True)
        self.sim, self.auth_id = sim, auth_id
        self.first: float | None = None
        self.last: float | None = None
        self.requests = 0
        self.n429_at_1s: int | None = None
        self.stop = threading.Event()

    def _status(self, stats: dict[str, Any], code: int) -> int:
        by = stats["by_status"]
        return int(by.get(code, by.get(str(code), 0)))

    def run(self) -> None:
        while not self.stop.wait(0.01):
            stats = self.sim.stats(self.auth_id)
            now = time.monotonic()
            if stats["requests"] != self.requests:
                self.requests = stats["requests"]
                if self.first is None:
                    self.first = now
                self.last = now
            if self.first is not None and self.n429_at_1s is None and now - self.first >= 1.0:
                self.n429_at_1s = self._status(stats, 429)


def run_cell(cell: Cell, seconds: float, workdir: Path) -> Result:
    result = Result(cell)
    pages = max(2, math.ceil(cell.ceiling * seconds))
    calls = pages * PER_PAGE
    fields = sim_fields(cell, calls)
    missing = missing_fields(fields)
    if missing:
        result.skipped = f"simulator lacks {', '.join(missing)}"
        return result
    sim = Simulator(**fields).start()
    try:
        account = sim.accounts[0]
        db = workdir / f"{cell.group}-{abs(hash(cell.label))}.db"
        db.unlink(missing_ok=True)
        config = workdir / "config.toml"
        api = {"base_url": sim.base_url, "concurrency": cell.concurrency, "per_page": PER_PAGE,
               "backoff_initial": 0.05, "backoff_max": 2, **cell.api}
        lines = ["[database]", f'url = "sqlite:///{db}"', "", "[api]"]
        lines += [f"{k} = {json.dumps(v)}" for k, v in api.items()]
        lines += ["", "[[accounts]]", f'name = "{account.name}"',
                  f'auth_id = "{account.auth_id}"', 'token_env = "VOX_TOKEN_BENCH"']
        config.write_text("\n".join(lines) + "\n")
        env = {**os.environ, "VOX_TOKEN_BENCH": account.token}
        env.pop("ETL_DATABASE_URL", None)
        # Migrate first, so that the measured command's wall time is the sync's.
        subprocess.run([sys.executable, "-m", "etl", "--config", str(config), "migrate"],
                       env=env, capture_output=True, check=True, cwd=workdir)
        watcher = Watcher(sim, account.auth_id)
        watcher.start()
        started = time.monotonic()
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "etl", "--config", str(config), "--log-format", "json",
                 "sync"], env=env, capture_output=True, text=True, cwd=workdir,
                timeout=max(300, seconds * 20))
            result.exit_code = proc.returncode
            if proc.returncode != 0:
                result.error = (proc.stderr.strip().splitlines() or [""])[-1][:160]
        except subprocess.TimeoutExpired:
            result.error = "timed out"
        result.wall = time.monotonic() - started
        time.sleep(0.05)
        watcher.stop.set()
        watcher.join()
        stats = sim.stats(account.auth_id)
        result.requests = stats["requests"]
        result.ok = watcher._status(stats, 200)
        result.n429 = watcher._status(stats, 429)
        if watcher.first is not None and watcher.last is not None:
            result.span = watcher.last - watcher.first
        at_1s = watcher.n429_at_1s if watcher.n429_at_1s is not None else result.n429
        result.late_429 = result.n429 - at_1s
    finally:
        sim.stop()
    return result


def default_burst(limit: float) -> float:
    """The simulator's token bucket size when rate_burst is not set (or not supported)."""
    return max(1.0, min(10.0, limit / 5))


def cells(quick: bool) -> list[Cell]:
    out: list[Cell] = []
    seen: set[tuple[str, str]] = set()
    limits = (5, 20, 50)
    bursts = (1, 5, 20)
    latencies = (50, 300) if quick else (50, 150, 300)
    unknown_target = ">=90%, <3% 429"
    for limit in limits:
        for wanted in (bursts[:1] + bursts[2:] if quick else bursts):
            # A simulator without rate_burst has one burst per limit: run that once instead.
            burst = wanted if "rate_burst" in SIM_FIELDS else default_burst(limit)
            for latency in latencies:
                label = f"{limit}/s b{burst:g} {latency}ms"
                if ("unknown", label) in seen:
                    continue
                seen.add(("unknown", label))
                out.append(Cell("unknown", label, limit, burst, latency, 8, {"rate_limit": limit},
                                targets=unknown_target))
    out.append(Cell("window", "300 per 5 s, 100ms", 60, None, 100, 8,
                    {"window_limit": 300, "window_seconds": 5}, targets=unknown_target))
    out.append(Cell("window", "300 per 5 s, 100ms, headers ietf", 60, None, 100, 8,
                    {"window_limit": 300, "window_seconds": 5, "rate_headers": "ietf"},
                    targets=">=95%, no 429 after 1 s"))
    out.append(Cell("window", "300 per 5 s, 100ms, headers x", 60, None, 100, 8,
                    {"window_limit": 300, "window_seconds": 5, "rate_headers": "x"},
                    targets=">=95%, no 429 after 1 s"))
    for limit, burst, latency, headers in ((20, 5, 100, "ietf"), (50, 20, 50, "x"),
                                           (5, 1, 300, "both"), (50, 1, 150, "ietf"),
                                           (20, 20, 300, "x")):
        out.append(Cell("headers", f"{limit}/s b{burst} {latency}ms {headers}", limit, burst,
                        latency, 8, {"rate_limit": limit, "rate_headers": headers},
                        targets=">=95%, no 429 after 1 s"))
    for limit, burst, latency in ((20, 5, 100), (50, 10, 100), (5, 1, 50), (50, 1, 150),
                                  (20, 20, 300)):
        out.append(Cell("configured", f"{limit}/s b{burst} {latency}ms rps={limit}", limit, burst,
                        latency, 8, {"rate_limit": limit}, {"requests_per_second": limit},
                        targets=">=97%, no 429"))
    out.append(Cell("share", "60/s b10 100ms share 0.5, customer 20/s", 60, 10, 100, 8,
                    {"rate_limit": 60, "foreign_rate": 20}, {"rate_share": 0.5},
                    targets="<= 50% of the limit; learned: of what the customer leaves"))
    out.append(Cell("share", "300 per 5 s 100ms ietf, share 0.5, customer 20/s", 60, None, 100,
                    8, {"window_limit": 300, "window_seconds": 5, "foreign_rate": 20,
                        "rate_headers": "ietf"}, {"rate_share": 0.5},
                    targets="<= 50% of the announced limit"))
    for concurrency in ((1, 4, 8, 16) if quick else range(1, 17)):
        out.append(Cell("never", f"5/s b1 50ms c{concurrency}", 5, 1, 50, concurrency,
                        {"rate_limit": 5}, targets="exit 0"))
    return out


def row(r: Result) -> str:
    c = r.cell
    burst = "-" if c.burst is None else f"{c.burst:g}"
    if r.skipped:
        return (f"| {c.group} | {c.label} | {c.limit:g} | {burst} | {c.latency_ms:g} | "
                f"{c.concurrency} | - | - | - | - | - | - | skipped: {r.skipped} |")
    share = 100 * r.n429 / r.requests if r.requests else 0.0
    note = c.targets + (f"; error: {r.error}" if r.error else "")
    return (f"| {c.group} | {c.label} | {c.limit:g} | {burst} | {c.latency_ms:g} | "
            f"{c.concurrency} | {c.ceiling:.1f} | {r.rate:.1f} | {100 * r.rate / c.ceiling:.0f}% | "
            f"{share:.1f}% ({r.n429}/{r.requests}) | {r.late_429} | {r.exit_code} | "
            f"{r.wall:.1f} s; {note} |")


HEADER = ("| group | cell | limit req/s | burst | latency ms | concurrency | ceiling req/s | "
          "req/s | % of ceiling | % 429 | 429 after 1 s | exit | notes |\n"
          "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="", help="comma-separated groups (default: all)")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="pages for this many seconds at each cell's ceiling (default 10)")
    parser.add_argument("--quick", action="store_true", help="a few cells of each group")
    args = parser.parse_args()
    groups = {g for g in args.only.split(",") if g}
    chosen = [c for c in cells(args.quick) if not groups or c.group in groups]
    command = "python " + " ".join(shlex.quote(a) for a in [
        os.path.relpath(__file__, PROJECT), *sys.argv[1:]])
    print(f"command: {command}")
    print(f"{os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
          f"1-min load average {os.getloadavg()[0]:.2f} before the run")
    print()
    print(HEADER, flush=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-ratelimit-") as tmp:
        for cell in chosen:
            print(row(run_cell(cell, args.seconds, Path(tmp))), flush=True)
    print(f"\nthe whole run took {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

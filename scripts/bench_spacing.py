"""How evenly `etl sync` spaces its requests: the client's send times against the server's.

    .venv/bin/python scripts/bench_spacing.py                  # 50 req/s, 50 ms, concurrency 8
    .venv/bin/python scripts/bench_spacing.py --rate 20 --latency 150

A bucket that holds one request refuses one that arrives a little early, so what matters at a
configured or learned pace is the shortest gap between two arrivals, not the average. This runs
`etl sync` as a subprocess with `[api].requests_per_second = --rate` against the simulator (no
limit of its own, so nothing is refused and nothing pauses), and records three times for every
request, all on the machine's monotonic clock:

  slot    when the throttle handed the request its slot (etl.throttle.Throttle._take);
  wire    when its bytes went to the socket (http.client.HTTPConnection.send);
  server  when the simulator's rate limiter looked at it (after the simulated latency).

It prints, for each, the gaps between consecutive requests (min, 1st and 5th percentile,
median, 95th, max) against the planned slot, and the time from slot to wire. The client-side
times come from a small wrapper that patches those two functions in the `etl` process only.
Every figure printed comes from a run in this invocation.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from etl.config import render_config  # noqa: E402
from etl.simulator import Simulator, limits  # noqa: E402
from etl.throttle import CEILING_MARGIN  # noqa: E402
from etl.tokens import token_variable  # noqa: E402

# Runs in the `etl` process: records slot and wire times, then runs the CLI.
WRAPPER = """
import atexit, http.client, json, os, sys, time
import etl.throttle
slots, wires = [], []
take, send = etl.throttle.Throttle._take, http.client.HTTPConnection.send
def _take(self, now):
    slots.append(time.monotonic())
    return take(self, now)
def _send(self, data):
    wires.append(time.monotonic())
    return send(self, data)
etl.throttle.Throttle._take, http.client.HTTPConnection.send = _take, _send
def _dump():
    with open(os.environ["SPACING_OUT"], "w") as f:
        json.dump({"slot": slots, "wire": wires}, f)
atexit.register(_dump)
from etl.cli import main
sys.argv[0] = "etl"
main()
"""


def spread(values: list[float]) -> str:
    v = sorted(values)
    n = len(v)
    pick = {"min": v[0], "p1": v[n // 100], "p5": v[n // 20], "p50": v[n // 2],
            "p95": v[-1 - n // 20], "max": v[-1]}
    return "  ".join(f"{k} {x * 1000:6.2f}" for k, x in pick.items())


def gaps(times: list[float], skip: int) -> list[float]:
    return [b - a for a, b in zip(times[skip:], times[skip + 1:], strict=False)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=50.0, help="requests_per_second (50)")
    parser.add_argument("--latency", type=float, default=50.0, help="simulated ms (50)")
    parser.add_argument("--concurrency", type=int, default=8, help="[api].concurrency (8)")
    parser.add_argument("--seconds", type=float, default=8.0, help="pages for this long (8)")
    args = parser.parse_args()

    checks: list[float] = []
    check = limits.RateLimiter.check

    def recording(self, cfg, mono, wall):  # type: ignore[no-untyped-def]
        checks.append(mono)
        return check(self, cfg, mono, wall)

    limits.RateLimiter.check = recording  # type: ignore[method-assign]
    pages = int(args.rate * args.seconds)
    # A limit far above the pace: every request is looked at, none refused.
    sim = Simulator(accounts=1, calls=pages * 100, latency_ms=args.latency, seed=11,
                    open_fraction=0.0, rate_limit=100_000, rate_burst=100_000).start()
    try:
        account = sim.accounts[0]
        with tempfile.TemporaryDirectory(prefix="bench-spacing-") as tmp:
            work = Path(tmp)
            config = work / "config.toml"
            config.write_text(render_config(
                sim.base_url, [account], f"sqlite:///{work / 'etl.db'}",
                api={"concurrency": args.concurrency, "per_page": 100,
                     "requests_per_second": args.rate}), encoding="utf-8")
            env = {**os.environ, token_variable(account.name): account.token,
                   "SPACING_OUT": str(work / "times.json"), "PYTHONPATH": str(PROJECT)}
            env.pop("ETL_DATABASE_URL", None)
            subprocess.run([sys.executable, "-m", "etl", "--config", str(config), "migrate"],
                           env=env, capture_output=True, check=True)
            proc = subprocess.run([sys.executable, "-c", WRAPPER, "--config", str(config),
                                   "sync"], env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stderr, file=sys.stderr)
                return proc.returncode
            times = json.loads((work / "times.json").read_text())
    finally:
        sim.stop()

    command = "python " + " ".join(shlex.quote(a) for a in [
        os.path.relpath(__file__, PROJECT), *sys.argv[1:]])
    slot = 1 / (args.rate * CEILING_MARGIN)
    print(f"command: {command}")
    print(f"{os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"{len(checks)} requests at a configured {args.rate:g} req/s, paced at "
          f"{CEILING_MARGIN:g} of it: planned slot {slot * 1000:.2f} ms; "
          f"{args.latency:g} ms latency, concurrency {args.concurrency}")
    print("gaps between consecutive requests, ms (the first five skipped: the cold start):")
    skip = 5
    for name, series in (("slot", times["slot"]), ("wire", times["wire"]), ("server", checks)):
        print(f"  {name:<7}{spread(gaps(series, skip))}")
    if len(times["slot"]) == len(times["wire"]):
        delays = [w - s for s, w in zip(times["slot"], times["wire"], strict=True)]
        print(f"slot to wire, ms:\n         {spread(delays)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

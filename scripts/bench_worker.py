"""How many accounts one worker keeps at the API's ceiling: CPU cost of a sync, per core.

Starts the simulator as its own process (its CPU is not counted), runs `etl sync` as a child
process over N accounts, and reads the child's CPU time (user + system) from the kernel. A
worker's throughput per core is calls (and requests) per CPU-second; divided by what one
account needs at the provider's ceiling, it is the number of accounts one core keeps busy.

    .venv/bin/python scripts/bench_worker.py                      # defaults below
    .venv/bin/python scripts/bench_worker.py --accounts 4 --calls 50000 --ceiling 60

`--ceiling` is the provider's limit in requests per second per account (Plivo-like APIs: 300
requests per 5 s = 60); at 100 calls a page that is 100 x ceiling calls/s per account.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=4)
    parser.add_argument("--calls", type=int, default=25_000, help="calls per account")
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--ceiling", type=float, default=60.0,
                        help="the API's requests/s per account")
    parser.add_argument("--database-url", default=None, help="default: a fresh SQLite file")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "bench.toml"
        url = args.database_url or f"sqlite:///{Path(tmp) / 'bench.db'}"
        sim = subprocess.Popen(
            [sys.executable, "-m", "etl", "--database-url", url, "simulate", "--port", "0",
             "--accounts", str(args.accounts), "--calls", str(args.calls),
             "--write-config", str(config)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        env = dict(os.environ, ETL_API_CONCURRENCY=str(args.concurrency))
        try:
            assert sim.stdout is not None
            tokens = 0
            for line in sim.stdout:  # the simulator prints `export VOX_TOKEN_...=...` lines
                if line.strip().startswith("export "):
                    name, _, value = line.strip()[len("export "):].partition("=")
                    env[name] = value
                    tokens += 1
                if tokens == args.accounts:
                    break
            while not config.exists():
                time.sleep(0.05)
            rows = []
            for label, extra in (("first sync (full history)", []), ("re-read (--full)", ["--full"])):
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                started = time.perf_counter()
                done = subprocess.run(
                    [sys.executable, "-m", "etl", "--config", str(config), "--log-format", "json",
                     "sync", "--jobs", str(args.jobs), *extra],
                    env=env, capture_output=True, text=True, check=True)
                wall = time.perf_counter() - started
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
                requests = sum(int(line.split('"requests": ')[1].split(",")[0])
                               for line in done.stdout.splitlines() if '"requests": ' in line)
                calls = args.accounts * args.calls
                rows.append((label, calls, requests, wall, cpu))
        finally:
            sim.terminate()
            sim.wait(timeout=30)

    per_account = 100 * args.ceiling
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"{os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; database {url.split(':')[0]}; "
          f"{args.accounts} accounts x {args.calls:,} calls, --jobs {args.jobs}, "
          f"concurrency {args.concurrency}\n")
    print("| run | calls | requests | wall s | CPU s | calls/s per core | requests/s per core "
          f"| accounts per core at {args.ceiling:g} req/s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for label, calls, requests, wall, cpu in rows:
        print(f"| {label} | {calls:,} | {requests:,} | {wall:.2f} | {cpu:.2f} | {calls / cpu:,.0f} "
              f"| {requests / cpu:,.0f} | {calls / cpu / per_account:.1f} |")


if __name__ == "__main__":
    main()

"""Throughput benchmarks for vox-etl: prints one markdown table, also written to
bench-results/latest.md.

    .venv/bin/python scripts/bench.py            # the full run (a few minutes on 2 cores)
    .venv/bin/python scripts/bench.py --quick    # every size divided by 10
    .venv/bin/python scripts/bench.py --only a,c --no-dlt

Scenarios (sizes from the flags below or their BENCH_* environment variables):

  a. full sync of 2 accounts x 50,000 calls, no latency, `etl sync --jobs 2` with
     [api].concurrency 4, into a fresh SQLite file and into PostgreSQL; the same job done by
     dlt's rest_api source (scripts/bench_dlt.py); and a plain sequential requests.Session
     fetch of the same pages with no database (the ceiling of one client connection).
  b. 100 ms latency: with a server limit of 20 requests/s (1 account x 20,000 calls, etl at
     requests_per_second 20 and concurrency 8: the ceiling is 2,000 calls/s), and without a
     limit (etl concurrency 8 against the sequential fetch).
  c. incremental sync: 500 new calls on top of 100,000 (the full sync before it has its own row).
  d. a one-day backfill out of 90 days of calls, into a fresh database.
  e. peak memory of a full sync of 200,000 calls into SQLite.

How it measures:
  - The simulator runs as its own process (`etl simulate`), so the client measured does not
    share a GIL with the server. Only (c) and (d) run it inside this process, because they need
    its control API (adding calls; knowing which positions a day spans); this process only
    waits while `etl` runs, so the server still has a core to itself.
  - Every client (`etl`, dlt, the sequential fetch) is a child process. `seconds` is the wall
    time of the whole command: interpreter start-up, imports and migrations included.
  - Peak RSS is the child's own maximum resident set size, from GNU time (`/usr/bin/time -f
    %M`, which forks the command from its own small process), or, where that is missing, the
    last VmHWM read from /proc/PID/status while it runs. Not os.wait4()/RUSAGE_CHILDREN: a
    child's ru_maxrss starts at the RSS of the process it was forked from.
  - CPU s is the client's own CPU time (user + system, GNU time %U + %S); server CPU s is what
    the simulator and, for PostgreSQL rows, the PostgreSQL server (its postmaster's process
    tree, read from /proc) spent meanwhile: the other side of the same work, on the same cores.
    Scenario a's etl rows then say what all of that CPU would allow if it were spread
    perfectly over every core of the machine: the most any client doing this work at this CPU
    cost could reach here.
  - 429s: the simulator's counters live in its own process, so they are counted on the client
    side: `etl -v --log-format json` logs every retry as a `retry` event whose `error` names
    the HTTP status, and the 429 ones are counted (a 429 on the very last attempt would fail the
    account instead, which the row would show). dlt's and the sequential fetch's requests and
    429s are counted by their own transport.
  - requests come from etl's JSON summary lines (`requests`: every HTTP attempt).

Every number printed comes from a run in this invocation; nothing is extrapolated.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import shlex
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmarks import backfill, full_sync, incremental, latency, memory
from benchmarks.kit import (
    DEFAULT_PG_URL,
    PROJECT,
    SIZES,
    TIME_BIN,
    Bench,
    BenchError,
    Row,
    dlt_version,
    markdown_table,
    pg_check,
    progress,
    sequential_fetch,
)

SCENARIOS = {"a": full_sync.run, "b": latency.run, "c": incremental.run, "d": backfill.run,
             "e": memory.run}


def command_line() -> str:
    """The command as it was typed, with the BENCH_* variables that changed the sizes."""
    exe = sys.executable
    with contextlib.suppress(ValueError):
        exe = os.path.relpath(exe) if not os.path.relpath(exe).startswith("..") else exe
    script = sys.argv[0]
    env = [f"{k}={shlex.quote(v)}" for k, v in sorted(os.environ.items())
           if k.startswith("BENCH_") and k != "BENCH_TOKEN"]
    return " ".join([*env, shlex.join([exe, script, *sys.argv[1:]])])


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="vox-etl throughput benchmarks: one markdown table "
                    "(also written to bench-results/latest.md).")
    parser.add_argument("--quick", action="store_true", help="Every size divided by 10.")
    parser.add_argument("--only", default="a,b,c,d,e", metavar="LIST",
                        help="Scenarios to run, e.g. a,c (default: all).")
    parser.add_argument("--no-dlt", action="store_true", help="Skip the dlt rows.")
    parser.add_argument("--dlt-reload-timeout", type=float, default=300.0, metavar="SECONDS",
                        help="Stop dlt's re-load of the same calls after this long (it merges "
                        "slowly into SQLite); its row then says so.")
    parser.add_argument("--pg-url", default=os.environ.get("BENCH_PG_URL", DEFAULT_PG_URL),
                        help="PostgreSQL for scenario a (created if missing); its public schema is "
                             f"dropped! [env BENCH_PG_URL; default {DEFAULT_PG_URL}]")
    parser.add_argument("--out", default=str(PROJECT / "bench-results" / "latest.md"),
                        help="Where the table is written too.")
    for name, (variable, default) in SIZES.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int,
                            default=int(os.environ.get(variable, default)), metavar="N",
                            help=f"[env {variable}; default {default:,}]")
    # internal: the sequential fetch, run as a child process
    parser.add_argument("--sequential-fetch", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--account", action="append", default=[], help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _terminate(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.sequential_fetch:
        return sequential_fetch(args.base_url, args.account)

    signal.signal(signal.SIGTERM, _terminate)
    sizes = {name: getattr(args, name) for name in SIZES}
    if args.quick:
        sizes = {name: max(1, value // 10) for name, value in sizes.items()}
    only = {s.strip().lower() for s in args.only.split(",") if s.strip()}
    unknown = only - set("abcde")
    if unknown:
        print(f"bench: unknown scenario(s) {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2

    from etl import __version__ as etl_version

    command = command_line()
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    pg_version = pg_check(args.pg_url) if "a" in only else None
    dlt = dlt_version() if ("a" in only and not args.no_dlt) else None
    workdir = Path(tempfile.mkdtemp(prefix="vox-bench-"))
    bench = Bench(sizes, workdir, args.pg_url, pg_version, dlt, not args.no_dlt,
                  args.dlt_reload_timeout)
    interrupted = False
    try:
        for name in "abcde":
            if name not in only:
                continue
            try:
                SCENARIOS[name](bench)
            except Exception as exc:
                text = str(exc) if isinstance(exc, BenchError) else f"{type(exc).__name__}: {exc}"
                progress(f"scenario {name}: {text}")
                bench.add(Row(f"{name}. (could not run)", "-", note=text[:200]))
    except KeyboardInterrupt:
        interrupted = True
        progress("interrupted; stopping the simulator and cleaning up")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    elapsed = time.perf_counter() - started
    pg_database = args.pg_url.rsplit("/", 1)[-1].split("?")[0]
    rss_method = ("GNU time %M" if os.access(TIME_BIN, os.X_OK)
                  else "VmHWM polled from /proc every 20 ms")
    context = (
        f"{os.cpu_count()} cores, Python {platform.python_version()}, vox-etl {etl_version}, "
        f"dlt {dlt or 'not installed' if 'a' in only and not args.no_dlt else '-'}, "
        f"PostgreSQL {pg_version or ('unreachable' if 'a' in only else '-')}"
        f"{f' (database {pg_database})' if pg_version else ''}; "
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; the whole run took {elapsed:.0f} s; "
        f"1-min load average {load_before:.2f} before it"
        + ("; INTERRUPTED, partial" if interrupted else "")
        + ". seconds = wall time of each command (start-up and migrations included); "
        f"peak RSS = the client process's own max RSS ({rss_method}); CPU s = the client's "
        "own CPU time (user + system); server CPU s = the simulator's and the PostgreSQL "
        "server's meanwhile."
    )
    report = f"```\n$ {command}\n```\n\n{context}\n\n{markdown_table(bench.rows)}\n"
    print(report)
    if interrupted:
        progress(f"partial results: {args.out} left as it was")
        return 130
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report, encoding="utf-8")
    progress(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

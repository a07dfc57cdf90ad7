"""The loader's cost per call, in process: pages as the client returns them -> parse -> upsert ->
commit, timed on the one thread that does it, for a first load and for a re-load of the same
(unchanged) calls, into SQLite and PostgreSQL.

    .venv/bin/python scripts/bench_loader.py                   # 50,000 calls, SQLite + PostgreSQL
    .venv/bin/python scripts/bench_loader.py --calls 10000 --targets sqlite
    .venv/bin/python scripts/bench_loader.py --pages-per-transaction 1,4,16,64   # batch sizes
    .venv/bin/python scripts/bench_loader.py --profile sqlite  # cProfile of one first load

It also times the command's start-up: `etl --help`, a usage error (`etl sync --jobs 0`) and
a scheduled `etl sync` that finds nothing new, each run --startup-runs times as a child
process (min and median wall time), the way hyperfine would.

How it measures:
  - The simulator generates the calls in this process and serves them; every page's body is
    fetched once, before anything is timed. Each body is then wrapped in a `requests.Response`
    and turned into a `Page` by the client's own `_page_from`, as a fetch thread does. That
    decoding is timed apart ("decode"): in `etl sync` it runs on the fetch threads.
  - The loading thread's work is timed with time.perf_counter() around, per group of pages:
    `parse_call` for every record (`Sheet.read`, what the plan does with a page), then one
    transaction (`in_transaction`) of `runner.write_batches`, the function `etl sync` commits
    with: `upsert_calls`, `save_rejects`, `flag_absent` for each page's span and the sync
    state's coverage, committed.
  - "first load" starts from a freshly migrated, empty database; "re-load" loads the same
    pages again right after (every call unchanged, nothing written). Each is run --repeat
    times (3), each time from a fresh database, and the fastest run is printed: on a shared
    machine it is the one least disturbed by other work.
  - PostgreSQL uses its own database (default vox_bench_loader on 127.0.0.1:5432, created when
    missing; BENCH_LOADER_PG_URL overrides), whose public schema it drops first.

Every figure printed comes from this invocation.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import platform
import pstats
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

import requests  # noqa: E402
from sqlalchemy import Engine, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from etl.client import Page, _page_from  # noqa: E402
from etl.coverage import chain_interval  # noqa: E402
from etl.db import make_engine  # noqa: E402
from etl.loader import LoadCounts, in_transaction  # noqa: E402
from etl.migrate import upgrade  # noqa: E402
from etl.plans import Batch  # noqa: E402
from etl.records import Reject  # noqa: E402
from etl.runner import _PAGES_PER_TRANSACTION, write_batches  # noqa: E402
from etl.sheets import Sheet, span_of  # noqa: E402
from etl.simulator import Simulator  # noqa: E402

DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/vox_bench_loader"
PER_PAGE = 100


def bodies(calls: int) -> list[bytes]:
    """Every page's response body, newest page first, fetched from the simulator's server."""
    with Simulator(accounts=1, calls=calls, seed=7, port=0) as sim:
        account = sim.accounts[0]
        session = requests.Session()
        session.trust_env = False
        session.headers["Authorization"] = f"Bearer {account.token}"
        url = f"{sim.base_url}/voice/accounts/{account.auth_id}/calls"
        out = []
        for number in range(1, -(-calls // PER_PAGE) + 1):
            response = session.get(url, params={"page": number, "per_page": PER_PAGE}, timeout=60)
            response.raise_for_status()
            out.append(response.content)
        session.close()
        return out


def as_response(body: bytes) -> requests.Response:
    response = requests.Response()
    response.status_code = 200
    response._content = body
    response.headers["Content-Type"] = "application/json"
    response.encoding = None
    return response


def decode(raw: list[bytes]) -> tuple[list[Page], float]:
    responses = [as_response(b) for b in raw]
    start = time.perf_counter()
    pages = [_page_from(r, {"page": str(i)}) for i, r in enumerate(responses, start=1)]
    return pages, time.perf_counter() - start


def load(engine: Engine, pages: list[Page], per_tx: int,
         account_id: str) -> tuple[float, float, LoadCounts]:
    """The loading thread's work for every page, in transactions of `per_tx` pages; returns its
    wall time, its own CPU time (without the database server's) and the counts."""
    total = LoadCounts()
    cpu = time.thread_time()
    start = time.perf_counter()
    top: Sheet | None = None
    for first in range(0, len(pages), per_tx):
        batches = []
        for number, page in enumerate(pages[first : first + per_tx], start=first + 1):
            sheet = Sheet.read(page, account_id, answered=number)
            top = top or sheet
            span = span_of(sheet)
            batches.append(Batch(rows=sheet.calls,
                                 rejects=[i for i in sheet.items if isinstance(i, Reject)],
                                 spans=[span] if span else [], seen=list(sheet.uuids), pages=1))
        interval = chain_interval(top, sheet, head=True)
        batches[-1].coverage = [interval] if interval else []
        total += in_transaction(engine, partial(write_batches, account_id=account_id,
                                                account_name="bench", batches=batches,
                                                run_id="bench", restore=False)).counts
    return time.perf_counter() - start, time.thread_time() - cpu, total


def plain_insert(engine: Engine, pages: list[Page], per_tx: int,
                 account_id: str) -> tuple[float, float, LoadCounts]:
    """PostgreSQL's floor: the same rows, parsed beforehand (not timed), put into the empty
    `calls` table by a bare `INSERT ... SELECT FROM unnest(...) ON CONFLICT DO NOTHING` in the
    same chunks and transactions — no comparison, no counts, no deletion check, no sync state.
    What is left is the server's own work to store these rows in this table (jsonb, the
    primary key and three indexes, WAL) and the arrays' transfer."""
    from etl.db import pipelined
    from etl.loader import _ALL, _PG_ARRAYS, _PG_CHUNK, pg_arrays

    sql = (f"INSERT INTO calls ({', '.join(_ALL)}) SELECT *, %b::timestamptz, %b::timestamptz "
           f"FROM unnest({_PG_ARRAYS}) ON CONFLICT (call_uuid) DO NOTHING")
    groups = [[row for number, page in enumerate(pages[first : first + per_tx], start=first + 1)
               for row in Sheet.read(page, account_id, answered=number).calls]
              for first in range(0, len(pages), per_tx)]
    now = datetime.now(UTC)
    cpu = time.thread_time()
    start = time.perf_counter()
    for rows in groups:
        with engine.begin() as conn, pipelined(conn, "plain insert") as driver:
            for first in range(0, len(rows), _PG_CHUNK):
                chunk = rows[first : first + _PG_CHUNK]
                driver.cursor().execute(sql, (now, now, *pg_arrays(chunk)))
    seconds, cpu = time.perf_counter() - start, time.thread_time() - cpu
    return seconds, cpu, LoadCounts(new=sum(len(rows) for rows in groups))


def fresh_engine(target: str, workdir: Path) -> Engine:
    if target == "sqlite":
        path = workdir / "bench_loader.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        engine = make_engine(f"sqlite:///{path}")
    else:
        url = os.environ.get("BENCH_LOADER_PG_URL", DEFAULT_PG_URL)
        parsed = make_url(url)
        admin = make_engine(str(parsed.set(database="postgres")))
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            if not conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :d"),
                                {"d": parsed.database}).first():
                conn.execute(text(f'CREATE DATABASE "{parsed.database}"'))
        admin.dispose()
        engine = make_engine(url)
        with engine.begin() as conn:  # its own database: start from nothing
            conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
    upgrade(engine)
    return engine


def row(target: str, what: str, calls: int, per_tx: int, seconds: float, cpu: float,
        counts: LoadCounts) -> str:
    return (f"| {target} | {what} | {per_tx} | {calls:,} | {seconds:.3f} | {seconds / calls * 1e6:.1f} "
            f"| {cpu / calls * 1e6:.1f} "
            f"| {calls / seconds:,.0f} | new={counts.new} updated={counts.updated} "
            f"unchanged={counts.unchanged} |")


def startup(runs: int, workdir: Path) -> list[str]:
    """Wall time of `etl --help`, of a usage error, and of a scheduled `etl sync` that finds
    nothing new (one account of 1,000 calls already synced into SQLite, so one or two
    requests), each run `runs` times."""
    from etl.config import render_config
    from etl.tokens import token_variable

    etl = Path(sys.executable).with_name("etl")
    argv0 = [str(etl)] if etl.exists() else [sys.executable, "-m", "etl"]
    lines = ["| command | runs | min s | median s |", "| --- | ---: | ---: | ---: |"]
    with Simulator(accounts=1, calls=1000, seed=8, port=0) as sim:
        config = workdir / "startup.toml"
        config.write_text(render_config(sim.base_url, sim.accounts,
                                        f"sqlite:///{workdir / 'startup.db'}"), encoding="utf-8")
        env = {**os.environ, **{token_variable(a.name): a.token for a in sim.accounts}}
        env.pop("ETL_DATABASE_URL", None)
        sync = ["--config", str(config), "sync"]
        subprocess.run([*argv0, *sync], env=env, cwd=workdir, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # the first load
        for args, label in ((["--help"], "etl --help"),
                            (["sync", "--jobs", "0"], "etl sync --jobs 0"),
                            (sync, "etl sync (nothing new: 1,000 calls stored, SQLite)")):
            times = []
            for _ in range(runs):
                start = time.perf_counter()
                subprocess.run([*argv0, *args], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, cwd=workdir, env=env, check=False)
                times.append(time.perf_counter() - start)
            lines.append(f"| `{label}` | {runs} | {min(times):.3f} | "
                         f"{statistics.median(times):.3f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50_000)
    parser.add_argument("--targets", default="sqlite,postgresql")
    parser.add_argument("--pages-per-transaction", default=str(_PAGES_PER_TRANSACTION),
                        help="comma-separated page counts per transaction (default: etl "
                             "sync's own, %(default)s)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of each load; the fastest is printed")
    parser.add_argument("--startup-runs", type=int, default=20,
                        help="runs of each start-up command (0: skip)")
    parser.add_argument("--profile", choices=["sqlite", "postgresql"],
                        help="print a cProfile of one first load into this target instead")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.pages_per_transaction.split(",")]
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    command = "scripts/bench_loader.py " + shlex.join(sys.argv[1:] if argv is None else argv)

    raw = bodies(args.calls)
    pages, decode_s = decode(raw)
    for _ in range(args.repeat - 1):
        decode_s = min(decode_s, decode(raw)[1])
    calls = sum(len(p.records) for p in pages)
    account_id = "MABENCHLOADER"
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        if args.profile:
            engine = fresh_engine(args.profile, workdir)
            profiler = cProfile.Profile()
            profiler.enable()
            load(engine, pages, sizes[0], account_id)
            profiler.disable()
            engine.dispose()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
            return 0
        lines = [
            f"`.venv/bin/python {command}` — Python {platform.python_version()}, "
            f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
            f"1-min load average {os.getloadavg()[0]:.2f} before it",
            "",
            f"decode (`_page_from`, on the fetch threads in `etl sync`): {decode_s / calls * 1e6:.1f} µs per call",
            "",
            "| target | load | pages/transaction | calls | seconds | µs per call (wall) "
            "| µs per call (thread CPU) | calls/s | counts |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        print("\n".join(lines), flush=True)
        failed = False
        for target in targets:
            for per_tx in sizes:
                best: dict[str, tuple[float, float, LoadCounts]] = {}
                for _ in range(args.repeat):  # the fastest of N runs: the least disturbed one
                    try:
                        engine = fresh_engine(target, workdir)
                    except Exception as exc:  # a missing server: say so, go on
                        print(f"| {target} | - | {per_tx} | - | - | - | - | - | not run: "
                              f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]} |", flush=True)
                        failed = True
                        break
                    for what in ("first load", "re-load, unchanged"):
                        result = load(engine, pages, per_tx, account_id)
                        if what not in best or result[0] < best[what][0]:
                            best[what] = result
                    engine.dispose()
                if target == "postgresql" and not failed:
                    floor = "plain INSERT of the parsed rows (the server's floor)"
                    for _ in range(args.repeat):
                        engine = fresh_engine(target, workdir)
                        result = plain_insert(engine, pages, per_tx, account_id)
                        engine.dispose()
                        if floor not in best or result[0] < best[floor][0]:
                            best[floor] = result
                for what, (seconds, cpu, counts) in best.items():
                    print(row(target, what, calls, per_tx, seconds, cpu, counts), flush=True)
                if failed:
                    break
    if args.startup_runs > 0:
        with tempfile.TemporaryDirectory() as tmp:
            print("\n" + "\n".join(startup(args.startup_runs, Path(tmp))), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

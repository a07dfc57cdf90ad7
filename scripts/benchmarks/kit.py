"""What every benchmark scenario shares: child processes measured from outside, the
simulator as its own process, etl and dlt runs, database helpers and the result table."""


from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parents[2]
SCRIPTS = PROJECT / "scripts"
# Its own database on the test server, created when missing: the bench drops its public schema,
# which must not pull the tables from under a test suite running against `test` meanwhile.
DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/vox_bench"
PER_PAGE = 100
DLT_SCHEMAS = ("vox_dlt", "vox_dlt_staging")

# name -> (environment variable, default); --quick divides each by 10
SIZES = {
    "a_calls": ("BENCH_A_CALLS", 50_000),  # per account, 2 accounts
    "b_calls": ("BENCH_B_CALLS", 20_000),
    "c_calls": ("BENCH_C_CALLS", 100_000),
    "c_new": ("BENCH_C_NEW", 500),
    "d_calls": ("BENCH_D_CALLS", 90_000),
    "e_calls": ("BENCH_E_CALLS", 200_000),
}
D_DAYS = 90
A_ACCOUNTS = 2
A_CONCURRENCY = 4
B_RATE = 20
B_LATENCY_MS = 100
B_CONCURRENCY = 8
E_CONCURRENCY = 4

HEADERS = ["scenario", "target DB", "calls", "seconds", "calls/s", "requests", "requests/s",
           "429s", "peak RSS MB", "CPU s", "server CPU s", "note"]


def progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class BenchError(Exception):
    """A scenario could not be run; its rows say why."""


# ---------------------------------------------------------------------------------------------
# Rows


@dataclass
class Row:
    scenario: str
    target: str
    calls: int | None = None
    seconds: float | None = None
    requests: int | None = None
    throttled: int | None = None
    rss_kb: int | None = None
    note: str = ""
    cpu: float | None = None  # the client's own CPU time (user + system), seconds
    server_cpu: float | None = None  # the simulator's and the database server's meanwhile

    def cells(self) -> list[str]:
        def rate(n: int | None) -> str:
            if n is None or not self.seconds:
                return "-"
            return f"{n / self.seconds:,.0f}"

        return [
            self.scenario,
            self.target,
            "-" if self.calls is None else f"{self.calls:,}",
            "-" if self.seconds is None else f"{self.seconds:.2f}",
            rate(self.calls),
            "-" if self.requests is None else f"{self.requests:,}",
            rate(self.requests),
            "-" if self.throttled is None else f"{self.throttled:,}",
            "-" if self.rss_kb is None else f"{self.rss_kb / 1024:.1f}",
            "-" if self.cpu is None else f"{self.cpu:.2f}",
            "-" if self.server_cpu is None else f"{self.server_cpu:.2f}",
            self.note,
        ]


def markdown_table(rows: list[Row]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    right = {2, 3, 4, 5, 6, 7, 8, 9, 10}
    sep = ["---:" if i in right else "---" for i in range(len(HEADERS))]
    return "\n".join([line(HEADERS), line(sep), *(line(r.cells()) for r in rows)])


# ---------------------------------------------------------------------------------------------
# Child processes


@dataclass
class ChildRun:
    argv: list[str]
    returncode: int
    seconds: float
    rss_kb: int
    stdout: str
    stderr: str
    cpu: float | None = None  # user + system CPU seconds of the command (GNU time %U + %S)

    def json_lines(self, stream: str = "stdout") -> Iterator[dict[str, Any]]:
        for text in getattr(self, stream).splitlines():
            text = text.strip()
            if text.startswith("{"):
                with contextlib.suppress(ValueError):
                    yield json.loads(text)

    def failure(self) -> str:
        lines = [x for x in (self.stderr.strip() or self.stdout.strip()).splitlines() if x.strip()]
        last = lines[-1] if lines else ""
        if last.startswith("{"):
            with contextlib.suppress(ValueError):
                last = json.loads(last).get("message", last)
        return f"exit {self.returncode}: {last[:160]}"


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a child: ours without ETL_* overrides, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETL_")}
    env.update(extra or {})
    return env


TIME_BIN = "/usr/bin/time"


def _hwm_kb(pid: int) -> int | None:
    """VmHWM of a live process (its own address space's high-water mark), in KiB."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def run_child(argv: list[str], workdir: Path, env: dict[str, str], *, timeout: float = 1800,
              cwd: Path | None = None) -> ChildRun:
    """Run argv to completion: wall time, exit code, output, and its own peak RSS.

    Peak RSS comes from GNU time (`/usr/bin/time -f %M`), which forks the command from its own
    small process. Not from os.wait4()/RUSAGE_CHILDREN here: a child's ru_maxrss starts at the
    RSS of the process it was forked from (the kernel keeps the pre-exec high-water mark), so a
    child of this process would report this process's size once it holds an in-process
    simulator. Without /usr/bin/time, /proc/PID/status VmHWM is polled until the child exits.
    """
    stamp = time.monotonic_ns()
    out_path = workdir / f"child-{stamp}.out"
    err_path = workdir / f"child-{stamp}.err"
    rss_path = workdir / f"child-{stamp}.rss"
    use_time = os.access(TIME_BIN, os.X_OK)
    full = [TIME_BIN, "-f", "%M %U %S", "-o", str(rss_path), *argv] if use_time else argv
    polled: list[int] = []
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        started = time.perf_counter()
        # its own process group, so a timeout or Ctrl-C can stop the command with its wrapper
        proc = subprocess.Popen(full, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                env=env, cwd=cwd or workdir, start_new_session=True)

        def kill() -> None:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            if use_time:
                proc.wait()
            else:
                while proc.poll() is None:
                    hwm = _hwm_kb(proc.pid)
                    if hwm is not None:
                        polled.append(hwm)
                    time.sleep(0.02)
            seconds = time.perf_counter() - started
        except BaseException:
            kill()
            with contextlib.suppress(Exception):
                proc.wait(10)
            raise
        finally:
            timer.cancel()
    stdout = out_path.read_text(errors="replace")
    stderr = err_path.read_text(errors="replace")
    rss_kb = max(polled, default=0)
    cpu: float | None = None
    if use_time and rss_path.exists():
        # "%M %U %S", after a "Command exited with non-zero status N" line when it failed
        lines = rss_path.read_text(errors="replace").strip().splitlines()
        with contextlib.suppress(IndexError, ValueError):
            peak, user, system = lines[-1].split()
            rss_kb, cpu = int(peak), float(user) + float(system)
    for path in (out_path, err_path, rss_path):
        path.unlink(missing_ok=True)
    if seconds >= timeout:
        stderr += f"\nbench: killed after {timeout:.0f} s"
    return ChildRun(argv, proc.returncode, seconds, rss_kb, stdout, stderr, cpu)


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name (field 3, the state, first); [] when unreadable."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _proc_cpu(pid: int, *, children: bool = False) -> float:
    """CPU seconds of a live process from /proc (with `children`, also those of the children
    it has waited for); 0 when it cannot be read."""
    fields = _stat_fields(pid)
    if not fields:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / _TICK


def _children_of(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as listing:
            return [int(x) for x in listing.read().split()]
    except (OSError, ValueError):
        return []


class ServerCPU:
    """CPU seconds the simulator and the PostgreSQL server spend while a client runs: the
    other side of the work, on the same cores. PostgreSQL's is its postmaster's process tree
    (the backends that served the client have exited and been waited for by the end), read
    from /proc, so only for a server on this machine that /proc lets us read."""

    def __init__(self, simulator_pid: int | None, postgres_url: str | None) -> None:
        self.pids: list[tuple[int, bool]] = []  # (pid, count the children it waited for)
        if simulator_pid is not None:
            self.pids.append((simulator_pid, False))
        postmaster = _postmaster_pid(postgres_url) if postgres_url else None
        if postmaster is not None:
            self.pids.append((postmaster, True))

    def total(self) -> float:
        seconds = 0.0
        for pid, tree in self.pids:
            seconds += _proc_cpu(pid, children=tree)
            if tree:
                seconds += sum(_proc_cpu(child) for child in _children_of(pid))
        return seconds

    def start(self) -> Callable[[], float]:
        """A stopwatch: call what it returns once the client has exited, for the CPU seconds
        spent since."""
        before = self.total()

        def spent() -> float:
            time.sleep(0.2)  # the client's backends exit once it has; let them be reaped
            return self.total() - before

        return spent


def _postmaster_pid(url: str) -> int | None:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            backend = int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
        return int(_stat_fields(backend)[1])  # the backend's parent
    except Exception:
        return None
    finally:
        engine.dispose()


def etl_argv() -> list[str]:
    script = Path(sys.executable).parent / "etl"
    return [str(script)] if script.exists() else [sys.executable, "-m", "etl"]


@dataclass
class EtlOutcome:
    run: ChildRun
    summaries: list[dict[str, Any]]
    throttled: int

    @property
    def ok(self) -> bool:
        return self.run.returncode == 0 and all(s.get("outcome") == "ok" for s in self.summaries)

    def total(self, key: str) -> int:
        return sum(int(s.get(key, 0)) for s in self.summaries)

    @property
    def calls(self) -> int:
        return self.total("new") + self.total("updated") + self.total("unchanged")


def run_etl(config: Path, args: list[str], env: dict[str, str], workdir: Path) -> EtlOutcome:
    argv = [*etl_argv(), "--config", str(config), "--log-format", "json", "-v", *args]
    run = run_child(argv, workdir, child_env(env))
    summaries = [d for d in run.json_lines("stdout") if d.get("event") == "summary"]
    throttled = sum(
        1 for d in run.json_lines("stderr")
        if d.get("event") == "retry" and "429" in str(d.get("error", ""))
    )
    return EtlOutcome(run, summaries, throttled)


def etl_row(scenario: str, target: str, outcome: EtlOutcome, note: str = "") -> Row:
    row = Row(scenario, target, outcome.calls, outcome.run.seconds, outcome.total("requests"),
              outcome.throttled, outcome.run.rss_kb, note, outcome.run.cpu)
    if not outcome.ok:
        failed = [f"{s['account']}: {s.get('error', s.get('outcome'))}" for s in outcome.summaries
                  if s.get("outcome") != "ok"]
        row.note = "FAILED " + ("; ".join(failed) if failed else outcome.run.failure())
    return row


def write_config(path: Path, base_url: str, accounts: list[tuple[str, str, str]],
                 database_url: str, api: dict[str, Any]) -> dict[str, str]:
    """A config.toml for (name, auth_id, token) accounts; returns the tokens' environment."""
    from etl.config import render_config
    from etl.simulator import SimAccount
    from etl.tokens import token_variable

    simulated = [SimAccount(*account) for account in accounts]
    path.write_text(render_config(base_url, simulated, database_url, api=api), encoding="utf-8")
    return {token_variable(account.name): account.token for account in simulated}


# ---------------------------------------------------------------------------------------------
# The simulator as its own process


class SimProcess:
    """`etl simulate` in a child process; stopped (SIGTERM, then SIGKILL) on exit."""

    def __init__(self, workdir: Path, label: str, *, accounts: int, calls: int,
                 latency_ms: float = 0, rate_limit: float = 0, days: float | None = None) -> None:
        self.config_path = workdir / f"sim-{label}.toml"
        self.log_path = workdir / f"sim-{label}.log"
        self.argv = [*etl_argv(), "simulate", "--port", "0", "--write-config",
                     str(self.config_path), "--accounts", str(accounts), "--calls", str(calls),
                     "--seed", "1"]
        if latency_ms:
            self.argv += ["--latency-ms", str(latency_ms)]
        if rate_limit:
            self.argv += ["--rate-limit", str(rate_limit)]
        if days is not None:
            self.argv += ["--days", str(days)]
        self.proc: subprocess.Popen[bytes] | None = None
        self.base_url = ""
        self.accounts: list[tuple[str, str, str]] = []  # name, auth_id, token

    def __enter__(self) -> SimProcess:
        self.config_path.unlink(missing_ok=True)
        log = open(self.log_path, "wb")  # closed below; the child keeps its copy
        try:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=child_env())
        finally:
            log.close()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float = 600) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            text = self.log_path.read_text(errors="replace")
            if "listening on" in text and self.config_path.exists():
                break
            if self.proc.poll() is not None:
                raise BenchError(f"the simulator exited {self.proc.returncode}: "
                                 f"{text.strip().splitlines()[-1:] or ''}")
            if time.monotonic() > deadline:
                raise BenchError(f"the simulator was not ready after {timeout:.0f} s")
            time.sleep(0.1)
        # the file is written before the banner is printed, so it is complete by now
        tokens: dict[str, str] = {}
        for line in text.splitlines():
            line = line.strip()
            if line.startswith("export VOX_TOKEN_"):
                name, _, value = line.removeprefix("export ").partition("=")
                tokens[name] = value.strip()
        config = tomllib.loads(self.config_path.read_text(encoding="utf-8"))
        self.base_url = config["api"]["base_url"]
        for account in config.get("accounts", []):
            token = tokens.get(account["token_env"])
            if not token:
                raise BenchError(f"the simulator printed no token for {account['token_env']}")
            self.accounts.append((account["name"], account["auth_id"], token))

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------------------------------------
# Databases


def pg_check(url: str) -> str | None:
    """The server's version, or None when it cannot be reached; creates the database if the
    server is there but the database is not."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    def version(target: Any) -> str:
        engine = create_engine(target, connect_args={"connect_timeout": 5})
        try:
            with engine.connect() as conn:
                return str(conn.execute(text("SHOW server_version")).scalar()).split()[0]
        finally:
            engine.dispose()

    try:
        try:
            return version(url)
        except Exception as exc:
            if "does not exist" not in str(exc):
                raise
        target = make_url(url)
        name = target.database or ""
        admin = create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT",
                              connect_args={"connect_timeout": 5})
        try:
            with admin.connect() as conn:
                progress(f"creating the database {name!r} for the PostgreSQL rows")
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            admin.dispose()
        return version(url)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
        progress(f"PostgreSQL is unreachable at {url.split('@')[-1]}: "
                 f"{type(exc).__name__}: {first}")
        return None


def pg_reset(url: str) -> None:
    """Drop etl's tables (the public schema) and dlt's datasets."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
            for schema in DLT_SCHEMAS:
                conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
    finally:
        engine.dispose()


def count_calls(url: str) -> int:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM calls")).scalar() or 0)
    finally:
        engine.dispose()


def dlt_version() -> str | None:
    """dlt's version as the child interpreter sees it, or None when it is not importable."""
    result = subprocess.run([sys.executable, "-c", "import dlt; print(dlt.__version__)"],
                            capture_output=True, text=True, env=child_env())
    return result.stdout.strip() if result.returncode == 0 else None


# ---------------------------------------------------------------------------------------------
# The sequential fetch (run as a child: `bench.py --sequential-fetch ...`)


def sequential_fetch(base_url: str, accounts: list[str]) -> int:
    """One requests.Session, one page at a time, every account in turn, newest first until an
    empty page; parses each body as JSON (no database). Prints one JSON line."""
    import requests

    session = requests.Session()
    session.trust_env = False
    calls = sent = throttled = 0
    started = time.perf_counter()
    for spec in accounts:
        auth_id, _, token_env = spec.partition("=")
        session.headers["Authorization"] = f"Bearer {os.environ[token_env]}"
        url = f"{base_url}/voice/accounts/{auth_id}/calls"
        page = 1
        while True:
            response = session.get(url, params={"page": page, "per_page": PER_PAGE}, timeout=60)
            sent += 1
            if response.status_code == 429:
                throttled += 1
                time.sleep(float(response.headers.get("Retry-After", "1")))
                continue
            response.raise_for_status()
            records = response.json()["calls"]
            if not records:
                break
            calls += len(records)
            page += 1
    seconds = time.perf_counter() - started
    print(json.dumps({"event": "fetch", "calls": calls, "requests": sent,
                      "throttled": throttled, "seconds": round(seconds, 3)}))
    return 0


def run_sequential_fetch(scenario: str, base_url: str, accounts: list[tuple[str, str, str]],
                         workdir: Path, note: str = "") -> Row:
    env = {f"BENCH_TOKEN_{i}": token for i, (_, _, token) in enumerate(accounts)}
    argv = [sys.executable, str(SCRIPTS / "bench.py"), "--sequential-fetch",
            "--base-url", base_url]
    for i, (_, auth_id, _) in enumerate(accounts):
        argv += ["--account", f"{auth_id}=BENCH_TOKEN_{i}"]
    run = run_child(argv, workdir, child_env(env))
    result = next((d for d in run.json_lines() if d.get("event") == "fetch"), None)
    if run.returncode != 0 or result is None:
        return Row(scenario, "none", note=f"FAILED {run.failure()}")
    return Row(scenario, "none", result["calls"], run.seconds, result["requests"],
               result["throttled"], run.rss_kb, note, run.cpu)


def run_dlt(scenario: str, target: str, base_url: str, accounts: list[tuple[str, str, str]],
            destination: str, workdir: Path, *, timeout: float = 1800) -> Row:
    env = {f"BENCH_TOKEN_{i}": token for i, (_, _, token) in enumerate(accounts)}
    dlt_dir = workdir / f"dlt-{time.monotonic_ns()}"
    argv = [sys.executable, str(SCRIPTS / "bench_dlt.py"),
            "--base-url", base_url, "--destination", destination, "--workdir", str(dlt_dir)]
    for i, (_, auth_id, _) in enumerate(accounts):
        argv += ["--account", f"{auth_id}=BENCH_TOKEN_{i}"]
    run = run_child(argv, workdir, child_env(env), timeout=timeout)
    shutil.rmtree(dlt_dir, ignore_errors=True)
    if run.seconds >= timeout:
        return Row(scenario, target, None, run.seconds, None, None, run.rss_kb,
                   f"did not finish within {timeout:.0f} s; killed")
    result = next((d for d in run.json_lines() if d.get("event") == "dlt"), None)
    if run.returncode != 0 or result is None:
        return Row(scenario, target, note=f"FAILED {run.failure()}")
    return Row(scenario, target, result["rows"], run.seconds, result["requests"],
               result["throttled"], run.rss_kb, f"dlt {result['destination']}; rows stored",
               run.cpu)


# ---------------------------------------------------------------------------------------------
# Scenarios


@dataclass
class Bench:
    sizes: dict[str, int]
    workdir: Path
    pg_url: str
    pg_version: str | None
    dlt: str | None
    use_dlt: bool
    dlt_reload_timeout: float = 300.0
    rows: list[Row] = field(default_factory=list)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        cells = row.cells()
        progress("  " + " | ".join(f"{h}={c}" for h, c in zip(HEADERS, cells, strict=True)
                                  if c not in ("-", "")))
        return row

    def sqlite_url(self, name: str) -> str:
        path = self.workdir / f"{name}.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        shutil.rmtree(f"{path}.locks", ignore_errors=True)
        return f"sqlite:///{path}"

    def pg_fresh(self) -> str | None:
        """Empty the PostgreSQL database; a note for the row when that fails."""
        try:
            pg_reset(self.pg_url)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
            progress(f"PostgreSQL: could not reset: {type(exc).__name__}: {first}")
            return f"PostgreSQL error: {type(exc).__name__}"
        return None

    def target_url(self, scenario: str, target: str, sqlite_name: str) -> str | None:
        """A fresh database of the kind named, or None after adding a row that says why not."""
        if target != "PostgreSQL":
            return self.sqlite_url(sqlite_name)
        problem = "PostgreSQL unreachable" if self.pg_version is None else self.pg_fresh()
        if problem:
            self.add(Row(scenario, target, note=problem))
            return None
        return self.pg_url

    def check_stored(self, row: Row, url: str, expected: int) -> None:
        if row.note.startswith("FAILED"):
            return
        try:
            stored = count_calls(url)
        except Exception as exc:
            row.note = (row.note + "; " if row.note else "") + \
                f"could not count the stored rows: {type(exc).__name__}"
            return
        if stored != expected:
            row.note = (row.note + "; " if row.note else "") + \
                f"MISMATCH: {stored:,} rows stored, {expected:,} expected"

    # -- a ---------------------------------------------------------------------------------

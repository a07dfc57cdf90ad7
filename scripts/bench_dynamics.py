"""Request budgets under a list that changes at both ends: prints one markdown table, also
written to bench-results/dynamics.md.

    .venv/bin/python scripts/bench_dynamics.py          # what `make bench` runs
    .venv/bin/python scripts/bench_dynamics.py --quick  # 5,000 calls instead of 20,000

Each row runs the real CLI (`etl sync`, a child process, into a fresh SQLite file) against the
simulator in this process, which counts the requests it answered and knows which calls were
listed from a sync's start to its end. Scenarios (the issue's targets):

  1. first sync under a moving window: 20/s arriving and 20/s ageing out, 15 ms latency,
     concurrency 4 — requests against 1.10 x pages;
  2. first sync under arrivals alone — the same budget;
  3. five daily incremental syncs after the window dropped 300 calls and 150 arrived —
     against ceil(new/100) + 3 each;
  4. one deletion inside the window plus 50 new calls — against log2(pages) + ceil(new/100) + 4;
  5. a call listed two days late plus 50 new calls — the same budget.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from etl.config import render_config  # noqa: E402
from etl.simulator import Simulator  # noqa: E402
from etl.tokens import token_variable  # noqa: E402

Row = tuple[str, int, str, str, str]


class Case:
    """A simulator, a config and a database for one scenario; `sync()` runs the real CLI."""

    def __init__(self, workdir: Path, name: str, **sim: Any) -> None:
        self.sim = Simulator(accounts=1, seed=7, **sim).start()
        self.auth_id = self.sim.accounts[0].auth_id
        self.config = workdir / f"{name}.toml"
        database = f"sqlite:///{workdir / (name + '.db')}"
        self.config.write_text(render_config(self.sim.base_url, self.sim.accounts, database))
        account = self.sim.accounts[0]
        self.env = {**os.environ, token_variable(account.name): account.token}

    def sync(self, *args: str) -> int:
        """Run `etl sync`; return the requests the simulator answered for it."""
        self.sim.reset_stats()
        result = subprocess.run(
            [sys.executable, "-m", "etl", "--config", str(self.config), "sync", *args],
            env=self.env, capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            raise SystemExit(f"etl sync failed:\n{result.stdout}\n{result.stderr}")
        return int(self.sim.stats(self.auth_id)["requests"])

    def present(self) -> set[str]:
        return {u for u in self.sim.listed_uuids(self.auth_id) if u}

    def stored(self) -> set[str]:
        import sqlite3
        db = sqlite3.connect(str(self.config.with_suffix(".db")))
        try:
            return {u for (u,) in db.execute("SELECT call_uuid FROM calls")}
        finally:
            db.close()

    def close(self) -> None:
        self.sim.stop()


def first_sync(workdir: Path, calls: int, ageing: float) -> Row:
    case = Case(workdir, f"first{int(ageing)}", calls=calls, latency_ms=15)
    try:
        before = case.present()
        case.sim.set_faults(drift_rate=20, expire_rate=ageing)
        requests = case.sync()
        case.sim.set_faults(drift_rate=0, expire_rate=0)
        missing = len((before & case.present()) - case.stored())
        pages = math.ceil(calls / 100)
        budget = 1.10 * pages
        what = "moving window (20/s in, 20/s out)" if ageing else "arrivals alone (20/s)"
        return (f"first sync, {calls:,} calls, {what}, concurrency 4, 15 ms", requests,
                f"1.10 x {pages} pages = {budget:.0f}", _verdict(requests <= budget and not missing),
                f"{requests / pages:.3f} x pages; {missing} calls present throughout missing")
    finally:
        case.close()


def daily(workdir: Path, calls: int) -> Row:
    case = Case(workdir, "daily", calls=calls)
    try:
        case.sync()
        costs = []
        for _ in range(5):
            case.sim.advance_clock(86400)
            case.sim.expire_oldest(case.auth_id, 300)
            case.sim.add_calls(case.auth_id, 150, open_fraction=0.0, spread_s=3600)
            costs.append(case.sync())
        budget = math.ceil(150 / 100) + 3
        return (f"5 daily incremental syncs on {calls:,} calls: -300 aged out, +150 new each",
                max(costs), f"ceil(150/100) + 3 = {budget} each",
                _verdict(max(costs) <= budget), f"requests per run: {costs}")
    finally:
        case.close()


def one_change(workdir: Path, calls: int, kind: str) -> Row:
    case = Case(workdir, kind, calls=calls)
    try:
        case.sync()
        listed = case.sim.calls(case.auth_id)
        if kind == "deletion":
            case.sim.delete_call(case.auth_id, listed[len(listed) * 3 // 5]["call_uuid"])
        else:
            case.sim.add_late_call(case.auth_id, age_seconds=2 * 86400)
        case.sim.add_calls(case.auth_id, 50, open_fraction=0.0)
        requests = case.sync()
        pages = math.ceil(calls / 100)
        budget = math.log2(pages) + 1 + 4
        what = "one deletion inside the window" if kind == "deletion" else "a call listed 2 days late"
        return (f"incremental after {what} + 50 new, {pages} pages", requests,
                f"log2({pages}) + 1 + 4 = {budget:.1f}", _verdict(requests <= budget), "")
    finally:
        case.close()


def _verdict(ok: bool) -> str:
    return "within" if ok else "OVER"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5,000 calls instead of 20,000")
    args = parser.parse_args(argv)
    calls = 5_000 if args.quick else 20_000
    with tempfile.TemporaryDirectory(prefix="vox-dynamics-") as tmp:
        workdir = Path(tmp)
        rows = [first_sync(workdir, calls, 20), first_sync(workdir, calls, 0), daily(workdir, calls),
                one_change(workdir, calls, "deletion"), one_change(workdir, calls, "late")]
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", "scripts/bench_dynamics.py",
                                                 *(argv if argv is not None else sys.argv[1:])])
    lines = [f"Request budgets under list dynamics, made by `{command}`:", "",
             "| scenario | requests | budget | | note |", "| --- | ---: | --- | --- | --- |"]
    lines += [f"| {s} | {r} | {b} | {v} | {n} |" for s, r, b, v, n in rows]
    text = "\n".join(lines)
    print(text)
    out = PROJECT / "bench-results"
    out.mkdir(exist_ok=True)
    (out / "dynamics.md").write_text(text + "\n")
    return 0 if all(v == "within" for _, _, _, v, _ in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())

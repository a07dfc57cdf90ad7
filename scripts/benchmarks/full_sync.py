"""Scenario a. full sync of 2 accounts, etl against dlt and a sequential fetch."""

from __future__ import annotations

import os

from .kit import (
    A_ACCOUNTS,
    A_CONCURRENCY,
    Bench,
    Row,
    ServerCPU,
    SimProcess,
    etl_row,
    progress,
    run_dlt,
    run_etl,
    run_sequential_fetch,
    write_config,
)


def run(bench: Bench) -> None:
    n = bench.sizes["a_calls"]
    total = A_ACCOUNTS * n
    label = f"a. full sync {A_ACCOUNTS}x{n:,}"
    progress(f"{label}: starting the simulator ({A_ACCOUNTS} accounts x {n:,} calls)")
    firsts: dict[str, Row] = {}  # target -> etl's first load
    dlts: dict[str, Row] = {}
    with SimProcess(bench.workdir, "a", accounts=A_ACCOUNTS, calls=n) as sim:
        assert sim.proc is not None
        simulator = ServerCPU(sim.proc.pid, None)
        meters = {"SQLite": simulator,
                  "PostgreSQL": ServerCPU(sim.proc.pid, bench.pg_url if bench.pg_version else None)}
        api = {"concurrency": A_CONCURRENCY}
        for target in ("SQLite", "PostgreSQL"):
            scenario = f"{label}: etl sync --jobs 2, concurrency {A_CONCURRENCY}"
            url = bench.target_url(scenario, target, "a-etl")
            if url is None:
                continue
            config = bench.workdir / f"a-{target}.toml"
            env = write_config(config, sim.base_url, sim.accounts, url, api)
            progress(f"{scenario} -> {target}")
            spent = meters[target].start()
            outcome = run_etl(config, ["sync", "--jobs", "2"], env, bench.workdir)
            row = firsts[target] = etl_row(scenario, target, outcome)
            row.server_cpu = spent()
            bench.check_stored(bench.add(row), url, total)
            progress(f"{label}: re-load with etl sync --full -> {target}")
            spent = meters[target].start()
            outcome = run_etl(config, ["sync", "--full", "--jobs", "2"], env, bench.workdir)
            row = etl_row(f"{label}: re-load, etl sync --full (same calls again)", target, outcome)
            row.server_cpu = spent()
            bench.check_stored(bench.add(row), url, total)

        for target in ("SQLite", "PostgreSQL"):
            scenario = f"{label}: dlt rest_api (merge)"
            if not bench.use_dlt:
                bench.add(Row(scenario, target, note="skipped (--no-dlt)"))
                continue
            if bench.dlt is None:
                bench.add(Row(scenario, target, note="not installed"))
                continue
            url = bench.target_url(scenario, target, "a-dlt")
            if url is None:
                continue
            progress(f"{scenario} -> {target}")
            reload = f"{label}: re-load, dlt rest_api (merge, same calls again)"
            for name, limit in ((scenario, 1800.0), (reload, bench.dlt_reload_timeout)):
                spent = meters[target].start()
                row = run_dlt(name, target, sim.base_url, sim.accounts, url, bench.workdir,
                              timeout=limit)
                row.server_cpu = spent()
                bench.add(row)
                if name == scenario:
                    dlts[target] = row
                if row.calls is not None and row.calls != total:
                    row.note += f"; MISMATCH: {total:,} expected"
        if bench.dlt is not None and bench.use_dlt and bench.pg_version is not None:
            bench.pg_fresh()  # dlt's datasets are not left behind

        progress(f"{label}: sequential fetch")
        spent = simulator.start()
        fetch = run_sequential_fetch(f"{label}: sequential fetch (1 connection)", sim.base_url,
                                     sim.accounts, bench.workdir,
                                     "requests.Session, page by page, JSON parsed, no DB")
        fetch.server_cpu = spent()
        bench.add(fetch)
    for target, first in firsts.items():
        first.note = _against(first, dlts.get(target), fetch)


def _against(etl: Row, dlt: Row | None, fetch: Row) -> str:
    """etl's first load against dlt's and the sequential fetch's calls/s in this run, and what
    all the CPU it took (its own, the simulator's, the database server's) would allow if it
    were spread perfectly over every core of this machine."""
    if etl.note.startswith("FAILED") or not (etl.calls and etl.seconds):
        return etl.note
    rate = etl.calls / etl.seconds
    parts = []
    dlt_rate = dlt.calls / dlt.seconds if dlt and dlt.calls and dlt.seconds else None
    fetch_rate = fetch.calls / fetch.seconds if fetch.calls and fetch.seconds else None
    if dlt_rate:
        parts.append(f"{rate / dlt_rate:.1f}x dlt")
    if fetch_rate:
        parts.append(f"{100 * rate / fetch_rate:.0f}% of the sequential fetch")
    if etl.cpu is not None and etl.server_cpu is not None:
        cores = os.cpu_count() or 1
        best = (etl.cpu + etl.server_cpu) / cores
        bound = [f"{etl.calls / best:,.0f} calls/s"]
        if dlt_rate:
            bound.append(f"{etl.calls / best / dlt_rate:.1f}x dlt")
        if fetch_rate:
            bound.append(f"{100 * etl.calls / best / fetch_rate:.0f}%")
        parts.append(f"its CPU spread over all {cores} cores at best: {', '.join(bound)}")
    return "; ".join(parts)

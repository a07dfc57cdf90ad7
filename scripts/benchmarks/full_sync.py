"""Scenario a. full sync of 2 accounts, etl against dlt and a sequential fetch."""

from __future__ import annotations

from .kit import (
    A_ACCOUNTS,
    A_CONCURRENCY,
    Bench,
    Row,
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
    with SimProcess(bench.workdir, "a", accounts=A_ACCOUNTS, calls=n) as sim:
        api = {"concurrency": A_CONCURRENCY}
        for target in ("SQLite", "PostgreSQL"):
            scenario = f"{label}: etl sync --jobs 2, concurrency {A_CONCURRENCY}"
            url = bench.target_url(scenario, target, "a-etl")
            if url is None:
                continue
            config = bench.workdir / f"a-{target}.toml"
            env = write_config(config, sim.base_url, sim.accounts, url, api)
            progress(f"{scenario} -> {target}")
            outcome = run_etl(config, ["sync", "--jobs", "2"], env, bench.workdir)
            row = bench.add(etl_row(scenario, target, outcome))
            bench.check_stored(row, url, total)
            progress(f"{label}: re-load with etl sync --full -> {target}")
            outcome = run_etl(config, ["sync", "--full", "--jobs", "2"], env, bench.workdir)
            row = bench.add(etl_row(f"{label}: re-load, etl sync --full (same calls again)",
                                   target, outcome))
            bench.check_stored(row, url, total)

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
                row = bench.add(run_dlt(name, target, sim.base_url, sim.accounts, url,
                                       bench.workdir, timeout=limit))
                if row.calls is not None and row.calls != total:
                    row.note += f"; MISMATCH: {total:,} expected"
        if bench.dlt is not None and bench.use_dlt and bench.pg_version is not None:
            bench.pg_fresh()  # dlt's datasets are not left behind

        progress(f"{label}: sequential fetch")
        bench.add(run_sequential_fetch(f"{label}: sequential fetch (1 connection)",
                                      sim.base_url, sim.accounts, bench.workdir,
                                      "requests.Session, page by page, JSON parsed, no DB"))

"""Scenario e. peak memory of a large full sync."""

from __future__ import annotations

from .kit import (
    E_CONCURRENCY,
    Bench,
    SimProcess,
    etl_row,
    progress,
    run_etl,
    write_config,
)


def run(bench: Bench) -> None:
    n = bench.sizes["e_calls"]
    label = f"e. 1x{n:,}"
    progress(f"{label}: starting the simulator")
    with SimProcess(bench.workdir, "e", accounts=1, calls=n) as sim:
        url = bench.sqlite_url("e")
        config = bench.workdir / "e.toml"
        env = write_config(config, sim.base_url, sim.accounts, url,
                           {"concurrency": E_CONCURRENCY})
        scenario = f"{label}: full sync, peak memory (concurrency {E_CONCURRENCY})"
        progress(scenario)
        row = bench.add(etl_row(scenario, "SQLite",
                               run_etl(config, ["sync"], env, bench.workdir)))
        if not row.note.startswith("FAILED") and row.rss_kb and row.calls:
            row.note = f"{row.rss_kb * 1024 / row.calls:,.0f} bytes of peak RSS per call"
        bench.check_stored(row, url, n)

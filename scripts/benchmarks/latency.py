"""Scenario b. 100 ms latency, with and without a server limit."""

from __future__ import annotations

from .kit import (
    B_CONCURRENCY,
    B_LATENCY_MS,
    B_RATE,
    PER_PAGE,
    Bench,
    SimProcess,
    etl_row,
    progress,
    run_etl,
    run_sequential_fetch,
    write_config,
)


def run(bench: Bench) -> None:
    n = bench.sizes["b_calls"]
    ceiling = B_RATE * PER_PAGE
    label = f"b. 1x{n:,}, {B_LATENCY_MS} ms latency"
    progress(f"{label}, server limit {B_RATE} req/s: starting the simulator")
    with SimProcess(bench.workdir, "b-limit", accounts=1, calls=n, latency_ms=B_LATENCY_MS,
                    rate_limit=B_RATE) as sim:
        url = bench.sqlite_url("b-limit")
        config = bench.workdir / "b-limit.toml"
        env = write_config(config, sim.base_url, sim.accounts, url,
                           {"concurrency": B_CONCURRENCY, "requests_per_second": B_RATE})
        scenario = (f"{label}, server limit {B_RATE} req/s: etl sync, "
                    f"requests_per_second {B_RATE}, concurrency {B_CONCURRENCY}")
        progress(scenario)
        outcome = run_etl(config, ["sync"], env, bench.workdir)
        row = bench.add(etl_row(scenario, "SQLite", outcome))
        if not row.note.startswith("FAILED") and row.seconds and row.requests:
            share = (row.throttled or 0) / row.requests
            row.note = (f"{row.calls / row.seconds / ceiling:.0%} of the "
                        f"{ceiling:,} calls/s ceiling; 429 share {share:.1%}")
        bench.check_stored(row, url, n)

    progress(f"{label}, no limit: starting the simulator")
    with SimProcess(bench.workdir, "b-free", accounts=1, calls=n,
                    latency_ms=B_LATENCY_MS) as sim:
        url = bench.sqlite_url("b-free")
        config = bench.workdir / "b-free.toml"
        env = write_config(config, sim.base_url, sim.accounts, url,
                           {"concurrency": B_CONCURRENCY})
        scenario = f"{label}, no limit: etl sync, concurrency {B_CONCURRENCY}"
        progress(scenario)
        outcome = run_etl(config, ["sync"], env, bench.workdir)
        etl = bench.add(etl_row(scenario, "SQLite", outcome))
        bench.check_stored(etl, url, n)
        progress(f"{label}, no limit: sequential fetch")
        seq = bench.add(run_sequential_fetch(f"{label}, no limit: sequential fetch",
                                            sim.base_url, sim.accounts, bench.workdir))
        if etl.calls and etl.seconds and seq.calls and seq.seconds \
                and not etl.note.startswith("FAILED"):
            ratio = (etl.calls / etl.seconds) / (seq.calls / seq.seconds)
            etl.note = f"{ratio:.1f}x the sequential fetch's calls/s"

"""Scenario c. an incremental sync on top of a large history."""

from __future__ import annotations

import math

from .kit import (
    A_CONCURRENCY,
    PER_PAGE,
    Bench,
    etl_row,
    progress,
    run_etl,
    write_config,
)


def run(bench: Bench) -> None:
    from etl.simulator import Simulator

    n, new = bench.sizes["c_calls"], bench.sizes["c_new"]
    label = f"c. 1x{n:,}"
    progress(f"{label}: generating the in-process simulator")
    sim = Simulator(accounts=1, calls=n, seed=1).start()
    try:
        account = sim.accounts[0]
        url = bench.sqlite_url("c")
        config = bench.workdir / "c.toml"
        env = write_config(config, sim.base_url,
                           [(account.name, account.auth_id, account.token)], url,
                           {"concurrency": A_CONCURRENCY})
        scenario = f"{label}: first full sync (setup for the next row)"
        progress(scenario)
        first = bench.add(etl_row(scenario, "SQLite",
                                 run_etl(config, ["sync"], env, bench.workdir)))
        bench.check_stored(first, url, n)
        if first.note.startswith("FAILED"):
            return
        added = sim.add_calls(account.auth_id, new)
        opened = sum(1 for r in added if r.get("status") in ("ringing", "in-progress"))
        scenario = f"{label}: incremental sync, +{new:,} new calls"
        progress(scenario)
        outcome = run_etl(config, ["sync"], env, bench.workdir)
        row = bench.add(etl_row(scenario, "SQLite", outcome))
        if not row.note.startswith("FAILED"):
            history = math.ceil(n / PER_PAGE)
            row.note = (f"new={outcome.total('new'):,} updated={outcome.total('updated')} "
                        f"unchanged={outcome.total('unchanged'):,}; {opened} of the new "
                        f"calls open; history {history:,} pages, the new calls alone "
                        f"{math.ceil(new / PER_PAGE)}")
        bench.check_stored(row, url, n + new)
    finally:
        sim.stop()

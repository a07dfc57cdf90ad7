"""Scenario d. a one-day backfill out of 90 days."""

from __future__ import annotations

import datetime as dt
import math

from .kit import (
    A_CONCURRENCY,
    D_DAYS,
    PER_PAGE,
    Bench,
    etl_row,
    progress,
    run_etl,
    write_config,
)


def run(bench: Bench) -> None:
    from etl.simulator import Simulator

    n = bench.sizes["d_calls"]
    label = f"d. 1x{n:,} over {D_DAYS} days"
    progress(f"{label}: generating the in-process simulator")
    sim = Simulator(accounts=1, calls=n, days=D_DAYS, seed=1).start()
    try:
        account = sim.accounts[0]
        listing = sim.calls(account.auth_id)  # newest first, as served
        starts = [dt.datetime.fromisoformat(r["start_time"].replace("Z", "+00:00"))
                  for r in listing]
        newest = starts[0]
        since = (newest - dt.timedelta(days=D_DAYS // 2)).replace(
            hour=0, minute=0, second=0, microsecond=0)
        until = since + dt.timedelta(days=1)
        inside = [i for i, s in enumerate(starts) if since <= s < until]
        total_pages = math.ceil(len(listing) / PER_PAGE)
        window_pages = (inside[-1] // PER_PAGE - inside[0] // PER_PAGE + 1) if inside else 0
        del listing, starts
        url = bench.sqlite_url("d")
        config = bench.workdir / "d.toml"
        env = write_config(config, sim.base_url,
                           [(account.name, account.auth_id, account.token)], url,
                           {"concurrency": A_CONCURRENCY})
        scenario = f"{label}: etl backfill of 1 day ({since:%Y-%m-%d})"
        progress(scenario)
        outcome = run_etl(config, ["backfill", "--since", since.strftime("%Y-%m-%d"),
                                   "--until", until.strftime("%Y-%m-%d")],
                          env, bench.workdir)
        row = bench.add(etl_row(scenario, "SQLite (fresh)", outcome))
        if not row.note.startswith("FAILED") and row.requests is not None:
            bound = math.log2(total_pages) + window_pages + 4
            verdict = "within" if row.requests <= bound else "OVER"
            row.note = (f"bound log2({total_pages:,} pages)={math.log2(total_pages):.1f} + "
                        f"{window_pages} window pages + 4 = {bound:.1f}: {verdict}; "
                        f"{len(inside):,} calls in the day")
            if outcome.calls != len(inside):
                row.note += f"; MISMATCH: read {outcome.calls:,}"
        bench.check_stored(row, url, len(inside))
    finally:
        sim.stop()

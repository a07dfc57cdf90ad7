"""How fast the simulator is: generating a history, and answering pages while its list changes.

    .venv/bin/python scripts/bench_simulator.py [CALLS]

Prints one row per scenario: the seconds to generate CALLS calls (default 200,000), and the
median and worst milliseconds per page (per_page=100, pages spread over the whole history)
unfiltered, with one filter and with two, while the scenario's dynamics run.
"""

from __future__ import annotations

import statistics
import sys
import time

import requests

from etl.simulator import Simulator

SCENARIOS: list[tuple[str, dict[str, float]]] = [
    ("static", {}),
    ("tail expiry 100/s", {"expire_rate": 100}),
    ("arrivals 20/s, expiry 20/s", {"drift_rate": 20, "expire_rate": 20}),
    ("expiry 100/s, late 5/s, deletions 5/s",
     {"expire_rate": 100, "late_rate": 5, "delete_rate": 5, "late_max_age_s": 86400}),
]
FILTERS = [("unfiltered", {}), ("status", {"status": "completed"}),
           ("status+direction", {"status": "completed", "direction": "outbound"})]


def main() -> None:
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    print(f"$ {' '.join([sys.executable.rsplit('/', 1)[-1], *sys.argv])}")
    print(f"{'scenario':<40}{'generate s':>11}  " + "  ".join(f"{n + ' ms':>22}" for n, _ in FILTERS))
    for label, fields in SCENARIOS:
        started = time.perf_counter()
        sim = Simulator(accounts=1, calls=calls, seed=1, **fields)
        generate = time.perf_counter() - started
        with sim:
            account = sim.accounts[0]
            session = requests.Session()
            session.headers["Authorization"] = f"Bearer {account.token}"
            url = f"{sim.base_url}/voice/accounts/{account.auth_id}/calls"
            cells = []
            for _, params in FILTERS:
                times = []
                for i in range(300):
                    page = 1 + i * max(1, calls // 100 // 300 // 2)
                    t = time.perf_counter()
                    r = session.get(url, params={"page": page, "per_page": 100, **params}, timeout=30)
                    times.append((time.perf_counter() - t) * 1000)
                    r.raise_for_status()
                cells.append(f"median {statistics.median(times):5.2f} max {max(times):6.1f}")
            print(f"{label:<40}{generate:>11.2f}  " + "  ".join(f"{c:>22}" for c in cells),
                  flush=True)


if __name__ == "__main__":
    main()

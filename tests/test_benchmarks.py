"""The benchmark scripts still run and measure what they say (counts, not speed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import PROJECT


def _loader_bench(target: str, startup_runs: int) -> tuple[dict[str, str], str]:
    """Runs the loader benchmark on 300 calls: its rows for `target` by load, and its output."""
    result = subprocess.run(
        [sys.executable, str(PROJECT / "scripts" / "bench_loader.py"), "--calls", "300",
         "--targets", target, "--repeat", "1", "--startup-runs", str(startup_runs)],
        capture_output=True, text=True, timeout=180, cwd=PROJECT)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {line.split("|")[2].strip(): line for line in result.stdout.splitlines()
            if line.startswith(f"| {target} |")}
    return rows, result.stdout


def test_the_loader_benchmark_loads_every_call_then_finds_them_unchanged():
    rows, output = _loader_bench("sqlite", startup_runs=1)
    assert "new=300 updated=0 unchanged=0" in rows["first load"]
    assert "new=0 updated=0 unchanged=300" in rows["re-load, unchanged"]
    for command in ("`etl --help`", "`etl sync --jobs 0`", "`etl sync (nothing new"):
        assert f"| {command}" in output, command


def test_the_loader_benchmark_measures_the_postgres_servers_floor(postgres_url):
    # postgres_url: the server is there (or, outside CI, the test skips); the benchmark uses a
    # database of its own on it.
    rows, _ = _loader_bench("postgresql", startup_runs=0)
    assert "new=300 updated=0 unchanged=0" in rows["first load"]
    assert "new=0 updated=0 unchanged=300" in rows["re-load, unchanged"]
    assert "new=300" in rows["plain INSERT of the parsed rows (the server's floor)"]


def test_the_first_load_benchmark_reports_cpu_and_what_the_cores_allow(postgres_url,
                                                                        tmp_path: Path):
    out = tmp_path / "bench.md"
    result = subprocess.run(
        [sys.executable, str(PROJECT / "scripts" / "bench.py"), "--only", "a", "--no-dlt",
         "--a-calls", "500", "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=PROJECT)
    assert result.returncode == 0, result.stderr[-2000:]
    header, *rows = [[c.strip() for c in line.split("|")[1:-1]]
                     for line in out.read_text().splitlines() if line.startswith("| ")]
    del rows[0]  # the alignment row
    by = {(r[0], r[1]): dict(zip(header, r, strict=True)) for r in rows}
    for target in ("SQLite", "PostgreSQL"):
        first = by[("a. full sync 2x500: etl sync --jobs 2, concurrency 4", target)]
        assert first["calls"] == "1,000"
        assert float(first["CPU s"]) > 0
        # the simulator's share of a 1,000-call load can round to 0.00 s; PostgreSQL's cannot
        assert float(first["server CPU s"]) > (0 if target == "PostgreSQL" else -1)
        assert "% of the sequential fetch" in first["note"]
        assert "its CPU spread over all" in first["note"]
    fetch = by[("a. full sync 2x500: sequential fetch (1 connection)", "none")]
    assert float(fetch["CPU s"]) > 0

"""The benchmark scripts still run and measure what they say (counts, not speed)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import PROJECT


def test_the_loader_benchmark_loads_every_call_then_finds_them_unchanged():
    result = subprocess.run(
        [sys.executable, str(PROJECT / "scripts" / "bench_loader.py"), "--calls", "300",
         "--targets", "sqlite", "--repeat", "1", "--startup-runs", "1"],
        capture_output=True, text=True, timeout=180, cwd=PROJECT)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {line.split("|")[2].strip(): line for line in result.stdout.splitlines()
            if line.startswith("| sqlite |")}
    assert "new=300 updated=0 unchanged=0" in rows["first load"]
    assert "new=0 updated=0 unchanged=300" in rows["re-load, unchanged"]
    for command in ("`etl --help`", "`etl sync --jobs 0`", "`etl sync (nothing new"):
        assert f"| {command}" in result.stdout, command

"""The README is executable: its example queries and its step-by-step path are run as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.conftest import PROJECT

README = (PROJECT / "README.md").read_text()


def _section(title: str) -> str:
    start = README.index(title)
    following = re.search(r"^#{2,3} ", README[start + len(title):], re.MULTILINE)
    return README[start: start + len(title) + (following.start() if following else len(README))]


def _blocks(section: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", section, re.DOTALL)


def _statements(sql: str) -> list[str]:
    lines = [line for line in sql.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def test_the_readme_has_example_queries():
    assert len(_statements("\n".join(_blocks(_section("### Example queries"), "sql")))) >= 4


def test_readme_example_queries_run_as_written(simulator, project, any_database_url, engine_for):
    sim = simulator(accounts=2, calls=800, seed=51)
    project(sim, any_database_url).run("sync", check=True)
    engine = engine_for(any_database_url)
    statements = _statements("\n".join(_blocks(_section("### Example queries"), "sql")))

    with engine.connect() as conn:
        results = [conn.execute(text(statement)).all() for statement in statements]

    assert all(results), "every example query returns rows on the demo data"
    per_day = results[0]
    assert sum(row.calls for row in per_day) == 1_600
    assert all(0 <= float(row.answer_rate) <= 1 for row in per_day)
    assert len(results[2]) == len(sim.open_calls(sim.accounts[0].auth_id)) + len(
        sim.open_calls(sim.accounts[1].auth_id))


def test_a_newcomer_can_follow_the_readme_into_sqlite_then_duckdb(tmp_path: Path):
    pytest.importorskip("duckdb_engine", reason="the duckdb extra is not installed")
    (script,) = _blocks(_section("## Try it step by step"), "sh")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("ETL_DATABASE_URL", None)
    env.pop("ETL_CONFIG", None)

    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(": ok new=5000 ") == 4, result.stdout  # two accounts, two databases
    assert "acct1" in result.stdout and "MA100002" in result.stdout  # etl status
    assert re.search(r"│\s*day\s*│\s*calls\s*│\s*answered", result.stdout), result.stdout
    assert (tmp_path / "demo.db").exists() and (tmp_path / "demo.duckdb").exists()


def test_the_command_reference_is_the_commands_own_help():
    """The README quotes each command's `--help` (scripts/readme_commands.py writes it);
    a docstring or an option changed without rerunning the script fails here."""
    result = subprocess.run([sys.executable, str(PROJECT / "scripts" / "readme_commands.py"),
                             "--check"], capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, result.stderr


def test_the_quoted_help_is_what_an_80_column_terminal_shows(monkeypatch):
    from click.testing import CliRunner

    from etl.cli import cli

    monkeypatch.setenv("COLUMNS", "80")
    blocks = re.findall(r"<!-- (etl(?: [a-z-]+)?) --help: written by scripts/readme_commands\.py -->"
                        r"\n```text\n\$ [^\n]*\n(.*?)\n\n(.*?)\n(?:\n|```)", README, re.DOTALL)
    assert {name for name, _, _ in blocks} == {"etl", *(f"etl {c}" for c in cli.commands)}
    for name, usage, paragraph in blocks:
        shown = CliRunner().invoke(cli, [*name.split()[1:], "--help"], prog_name="etl").output
        assert f"{usage}\n\n{paragraph}\n" in shown, name

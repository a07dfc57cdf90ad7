"""Keep the README's command reference equal to the commands' own `--help`.

Each command's section in README.md holds a block between two markers:

    <!-- etl sync --help: written by scripts/readme_commands.py -->
    ...
    <!-- end etl sync --help -->

This script rewrites every such block from the CLI: the usage line and the first paragraph
verbatim from `--help` (as an 80-column terminal shows it), then the command's options. The
prose around the blocks is the README's own. With `--check` it changes nothing and exits 1
when a block differs or a command has no block (tests/test_readme.py runs it so).

    python scripts/readme_commands.py           # rewrite README.md
    python scripts/readme_commands.py --check   # exit 1 if README.md is out of date
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from etl.cli import cli  # noqa: E402

README = ROOT / "README.md"
WIDTH = 80  # the terminal `--help` is quoted from
_BLOCK = re.compile(
    r"(?P<open><!-- (?P<name>etl(?: [a-z-]+)?) --help: written by scripts/readme_commands\.py -->\n)"
    r".*?"
    r"(?P<close><!-- end (?P=name) --help -->)",
    re.DOTALL,
)


def _context(command: click.Command, name: str, parent: click.Context | None) -> click.Context:
    return click.Context(command, info_name=name, parent=parent, terminal_width=WIDTH,
                         max_content_width=WIDTH, resilient_parsing=True)


def _opening(help_text: str) -> list[str]:
    """The usage line and the first paragraph of a formatted `--help`."""
    lines = help_text.splitlines()
    usage = lines[0]
    rest = lines[1:]
    while rest and not rest[0].strip():
        rest.pop(0)
    paragraph = []
    for line in rest:
        if not line.strip():
            break
        paragraph.append(line)
    return [usage, "", *paragraph]


def _options(command: click.Command, ctx: click.Context) -> list[str]:
    """The command's options as `--help` names them, wrapped to the same width."""
    names = []
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is not None and "--help" not in record[0]:
            names.append(record[0])
    if not names:
        return []
    lines = ["Options:"]
    for name in names:  # as many whole options to a line as fit
        if len(lines[-1]) + 2 + len(name) > WIDTH and lines[-1] != "Options:":
            lines[-1] += ";"
            lines.append(" ")
        elif lines[-1] not in ("Options:", " "):
            lines[-1] += ";"
        lines[-1] += " " + name
    return lines


def block(name: str) -> str:
    """The text between the markers of `name` (`etl` or `etl COMMAND`)."""
    root = _context(cli, "etl", None)
    command: click.Command = cli
    ctx = root
    if name != "etl":
        sub = name.split(" ", 1)[1]
        found = cli.get_command(root, sub)
        if found is None:
            raise KeyError(f"README.md quotes `{name} --help`, but there is no such command")
        command, ctx = found, _context(found, sub, root)
    lines = [f"$ {name} --help", *_opening(command.get_help(ctx))]
    options = _options(command, ctx)
    if options:
        lines += ["", *options]
    return "```text\n" + "\n".join(line.rstrip() for line in lines) + "\n```\n"


def render(readme: str) -> str:
    """README text with every marked block written anew."""
    return _BLOCK.sub(lambda m: m["open"] + block(m["name"]) + m["close"], readme)


def missing(readme: str) -> list[str]:
    """Commands (and the group itself) whose `--help` the README does not quote."""
    quoted = {m["name"] for m in _BLOCK.finditer(readme)}
    wanted = ["etl", *(f"etl {name}" for name in cli.list_commands(_context(cli, "etl", None)))]
    return [name for name in wanted if name not in quoted]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 if README.md differs from the commands")
    args = parser.parse_args()
    before = README.read_text(encoding="utf-8")
    after = render(before)
    absent = missing(before)
    for name in absent:
        print(f"README.md: no block quoting `{name} --help`", file=sys.stderr)
    if args.check:
        if after != before:
            sys.stderr.writelines(difflib.unified_diff(
                before.splitlines(keepends=True), after.splitlines(keepends=True),
                "README.md", "README.md (from --help)"))
            print("README.md is out of date: run python scripts/readme_commands.py",
                  file=sys.stderr)
        return 1 if after != before or absent else 0
    if after != before:
        README.write_text(after, encoding="utf-8")
        print("README.md: command reference rewritten from --help")
    return 1 if absent else 0


if __name__ == "__main__":
    sys.exit(main())

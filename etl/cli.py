"""The `etl` command line: parses options, calls the library, turns outcomes into exit codes."""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable
from datetime import datetime
from functools import wraps
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from . import __version__, logs, stopping
from .config import Config, load_config, parse_when
from .errors import ConfigError, EtlError

# SQLAlchemy, Alembic, requests and rich (about 0.4 s of imports) load only when a command
# needs them, so `--help`, `--version` and usage errors answer at once.
if TYPE_CHECKING:
    from sqlalchemy import Engine

    from .progress import Reporter
    from .runner import AccountResult, Job

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_LOCKED = 0, 1, 2, 75

F = TypeVar("F", bound=Callable[..., Any])


class Settings:
    def __init__(self, config_path: str | None, database_url: str | None, log_format: str,
                 verbosity: int) -> None:
        self.config_path = config_path
        self.database_url = database_url
        self.log_format = log_format
        self.verbosity = verbosity

    def config(self, *, require_file: bool = True) -> Config:
        config = load_config(self.config_path, database_url=self.database_url,
                             require_file=require_file and not self.database_url)
        return config

    def engine(self, config: Config) -> Engine:
        from .db import make_engine

        return make_engine(config.database_url)


def fail(message: str, code: int) -> NoReturn:
    click.echo(f"etl: error: {message}", err=True)
    sys.exit(code)


def reports_errors(func: F) -> F:
    """Turn library errors into one line and the contract's exit code; tracebacks only with -v."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        settings: Settings = click.get_current_context().obj
        try:
            return func(*args, **kwargs)
        except ConfigError as exc:
            fail(str(exc), EXIT_USAGE)
        except EtlError as exc:
            fail(str(exc), EXIT_FAILED)
        except KeyboardInterrupt:  # Ctrl-C before the sync's own handler was in place
            fail("stopped by SIGINT", stopping.EXIT_CODES[signal.SIGINT])
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except Exception as exc:
            if settings.verbosity > 0:
                raise
            if _is_database_error(exc):
                from .errors import first_line

                fail(f"database error: {first_line(exc)}", EXIT_FAILED)
            fail(f"{type(exc).__name__}: {exc} (run with -v for the traceback)", EXIT_FAILED)

    return wrapper  # type: ignore[return-value]


def _is_database_error(exc: BaseException) -> bool:
    """Whether `exc` is SQLAlchemy's, without importing SQLAlchemy: if it was never imported,
    no database error can have been raised."""
    sa_exc = sys.modules.get("sqlalchemy.exc")
    return sa_exc is not None and isinstance(exc, sa_exc.SQLAlchemyError)


class Parsed(click.ParamType):
    """An option value read by one of the library's parsers; its ValueError becomes click's
    one-line usage error (exit 2). A value already parsed (a default) passes through."""

    def __init__(self, name: str, parse: Callable[[str], Any], parsed: type) -> None:
        self.name = name
        self.parse = parse
        self.parsed = parsed

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, self.parsed):
            return value
        try:
            return self.parse(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


WHEN = Parsed("WHEN", parse_when, datetime)


def account_option(func: F) -> F:
    return click.option(
        "--account", "accounts", multiple=True, metavar="NAME",
        help="Only this account (by its name in config.toml); repeat for several.",
    )(func)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--config", "config_path", envvar="ETL_CONFIG", metavar="PATH",
              help="Configuration file.  [default: ./config.toml; env ETL_CONFIG]")
@click.option("--database-url", envvar="ETL_DATABASE_URL", metavar="URL",
              help="SQLAlchemy URL; beats [database].url.  [env ETL_DATABASE_URL]")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="json: one object per line, for log shippers.")
@click.option("-v", "--verbose", count=True, help="More detail: -v info and tracebacks, -vv debug.")
@click.option("-q", "--quiet", is_flag=True, help="Only errors; no summary of accounts that succeeded.")
@click.version_option(__version__, "--version", prog_name="etl")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, database_url: str | None, log_format: str,
        verbose: int, quiet: bool) -> None:
    """Keep a SQL `calls` table in exact, up-to-date sync with the Vox voice API.

    \b
    Typical use:
      etl migrate                      create or upgrade the tables
      etl sync                         incremental sync of every account
      etl backfill --since 2026-01-01 --until 2026-02-01
      etl status                       what each account's last runs did

    Exit codes: 0 done, 1 an account failed (the others are committed),
    2 usage or configuration error, 75 an account was locked by another run,
    130 / 143 stopped by SIGINT / SIGTERM (the batch in flight committed or
    rolled back whole, the run recorded as interrupted).
    """
    verbosity = -1 if quiet else verbose
    logs.setup(log_format, verbosity)
    ctx.obj = Settings(config_path, database_url, log_format, verbosity)


@cli.command()
@click.pass_obj
@reports_errors
def migrate(settings: Settings) -> None:
    """Bring the database to the newest schema revision.

    A new SQLite file is created. Safe to run at any time: nothing happens when the
    database is up to date. `sync` and `backfill` do this themselves.

    \b
    Example:
      etl --database-url sqlite:///calls.db migrate
    """
    from .db import describe_url
    from .migrate import upgrade

    config = settings.config(require_file=False)
    engine = settings.engine(config)
    before, after = upgrade(engine)
    where = describe_url(config.database_url)
    if before == after:
        click.echo(f"{where}: already at revision {after}")
    else:
        click.echo(f"{where}: migrated from {before or 'empty'} to revision {after}")


def _exit_code(results: list[AccountResult], stop: stopping.StopToken) -> int:
    from .outcomes import Outcome

    outcomes = {r.outcome for r in results}
    if stop.exit_code is not None and Outcome.INTERRUPTED in outcomes:
        return stop.exit_code
    if Outcome.FAILED in outcomes:
        return EXIT_FAILED
    if Outcome.SKIPPED in outcomes:
        return EXIT_LOCKED
    return EXIT_OK


def _print_result(settings: Settings, result: AccountResult, progress: Reporter) -> None:
    from .outcomes import Outcome

    progress.done(result.account)
    summary = result.summary()
    if settings.log_format == "json":
        line = json.dumps({"event": "summary", **summary})
        progress.echo(line)
    elif result.outcome is not Outcome.OK or settings.verbosity >= 0:
        keys = ["new", "updated", "unchanged", "rejected", "requests", "seconds"]
        if result.deleted:
            keys.insert(4, "deleted")
        fields = " ".join(f"{k}={summary[k]}" for k in keys)
        progress.echo(f"{result.account}: {result.outcome} {fields}")
    if result.notice and settings.log_format != "json":
        progress.echo(f"etl: {result.account}: {result.notice}", err=True)
    if result.outcome is Outcome.FAILED:
        progress.echo(f"etl: error: {result.account}: {result.error}", err=True)
    elif result.outcome in (Outcome.SKIPPED, Outcome.INTERRUPTED) and settings.log_format != "json":
        progress.echo(f"etl: {result.account}: {result.error}", err=True)


def _run(settings: Settings, accounts: tuple[str, ...], job: Job, jobs: int, wait: bool) -> None:
    from .migrate import upgrade
    from .progress import for_terminal
    from .runner import run_accounts

    config = settings.config()
    selected = config.select(accounts)
    if not selected:
        raise ConfigError(f"{config.source}: no [[accounts]] configured")
    for account in selected:
        account.token()  # a missing token is a configuration error, before any request
    engine = settings.engine(config)
    progress = for_terminal(settings.log_format, settings.verbosity)
    with stopping.on_signals(stopping.StopToken()) as stop:
        upgrade(engine)
        try:
            results = run_accounts(
                engine, config, selected, job, jobs=jobs, wait=wait, progress=progress,
                on_result=lambda r: _print_result(settings, r, progress), stop=stop,
            )
        finally:
            progress.close()
            engine.dispose()
    sys.exit(_exit_code(results, stop))


def run_options(func: F) -> F:
    func = click.option("--wait", is_flag=True,
                        help="Wait for a locked account instead of skipping it (exit 75).")(func)
    func = click.option("--jobs", "-j", type=click.IntRange(1, 64), default=1, show_default=True,
                        help="Accounts synced at once.")(func)
    return account_option(func)


@cli.command()
@run_options
@click.option("--full", is_flag=True, help="Re-read the whole history, not only what is new.")
@click.pass_obj
@reports_errors
def sync(settings: Settings, accounts: tuple[str, ...], jobs: int, wait: bool, full: bool) -> None:
    """Sync every configured account (or those named) into the `calls` table.

    From the second run on it is incremental: it reads only the calls newer than the
    last sync (re-reading [sync].lookback behind it) and the stored calls that were still
    ringing or in progress, wherever they sit in the list. Safe to run from cron: a run
    that overlaps another skips the locked accounts (exit 75), and a killed run loses
    nothing.

    \b
    Examples:
      etl sync
      etl sync --account acme --account globex
      etl --log-format json sync --jobs 4
    """
    from .outcomes import Command
    from .runner import Job

    _run(settings, accounts, Job(Command.SYNC, full=full), jobs, wait)


@cli.command()
@click.option("--since", type=WHEN, required=True, help="First start_time to include (YYYY-MM-DD or ISO-8601; UTC).")
@click.option("--until", type=WHEN, required=True, help="End of the window, excluded.")
@run_options
@click.pass_obj
@reports_errors
def backfill(settings: Settings, since: datetime, until: datetime, accounts: tuple[str, ...],
             jobs: int, wait: bool) -> None:
    """Re-pull the calls with since <= start_time < until and upsert them.

    The window is found by bisection on start_time (about log2(pages) requests), then
    read page by page. The incremental state is left alone, and running the same
    backfill twice changes nothing the second time.

    \b
    Example:
      etl backfill --since 2026-03-01 --until 2026-03-08 --account acme
    """
    if until <= since:
        raise ConfigError(f"--until ({until.isoformat()}) must be after --since ({since.isoformat()})")
    from .outcomes import Command
    from .runner import Job

    _run(settings, accounts, Job(Command.BACKFILL, since=since, until=until), jobs, wait)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON document, for scripts.")
@click.pass_obj
@reports_errors
def status(settings: Settings, as_json: bool) -> None:
    """Per account: last successful sync, watermark, calls stored, open calls, last outcome.

    \b
    Example:
      etl status --json | jq '.accounts[] | select(.last_outcome != "ok")'
    """
    from .migrate import upgrade
    from .state import account_status, flag_dead_runs

    config = settings.config(require_file=False)
    engine = settings.engine(config)
    upgrade(engine)
    with engine.connect() as conn:
        rows = account_status(conn, [(a.auth_id, a.name) for a in config.accounts])
    flag_dead_runs(engine, rows)
    if as_json:
        click.echo(json.dumps({"accounts": [r.as_dict() for r in rows]}, indent=2))
        return
    if not rows:
        click.echo("no accounts synced yet")
        return
    headers = ["account", "auth_id", "last success", "watermark", "window from", "calls", "open",
               "deleted", "rejects", "last run", "error"]
    table = [
        [r.account_name, r.account_id, _when(r.last_success_at), _when(r.watermark),
         _when(r.window_start), f"{r.calls:,}", str(r.open_calls), str(r.deleted_calls),
         str(r.rejects), r.last_outcome or "-", (r.last_error or "")[:60]]
        for r in rows
    ]
    click.echo(_table(headers, table))


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%SZ") if moment else "-"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


@cli.command()
@account_option
@click.pass_obj
@reports_errors
def verify(settings: Settings, accounts: tuple[str, ...]) -> None:
    """Reconcile stored rows with the API's own counts; exit 1 on a mismatch.

    Compares, per account, the number of stored calls overall, per status and per
    direction with the API's `total_count` for the same filters (about a dozen requests).
    Calls that arrived since the last sync, and stored open calls that have finished
    since, are accounted for exactly, so they never raise a false alarm.

    \b
    Example:
      etl verify --account acme
    """
    from .migrate import upgrade
    from .verify import verify_accounts

    config = settings.config()
    selected = config.select(accounts)
    for account in selected:
        account.token()  # a missing token is a configuration error, before any request
    engine = settings.engine(config)
    upgrade(engine)
    rows: list[list[str]] = []
    results = verify_accounts(engine, config, selected,
                              on_result=lambda r: _print_reconciliation(settings, r, rows))
    if rows and settings.log_format != "json":
        click.echo(_table(["account", "measure", "api", "stored", "diff", ""], rows))
    sys.exit(EXIT_OK if all(r.ok for r in results) else EXIT_FAILED)


def _print_reconciliation(settings: Settings, result: Any, rows: list[list[str]]) -> None:
    """One account's verification: an error line, a JSON line, or an `ok` line; mismatches
    and notes go into `rows`, printed as one table at the end."""
    if result.error is not None:
        click.echo(f"etl: error: {result.account}: {result.error}", err=True)
        return
    if result.note:
        rows.append([result.account, "-", "-", "-", "-", result.note])
    for diff in result.differences:
        rows.append([result.account, diff.measure, str(diff.api), str(diff.stored),
                     f"{diff.delta:+d}", "mismatch"])
    if settings.log_format == "json":
        click.echo(json.dumps({
            "event": "verify", "account": result.account, "ok": result.ok, "note": result.note,
            "requests": result.requests, "arrived_since_sync": result.arrived_since_sync,
            "changed_since_sync": result.changed_since_sync,
            "compared": {k: {"api": a, "stored": b} for k, (a, b) in result.compared.items()},
        }))
    elif result.ok and settings.verbosity >= 0:
        extra = []
        if result.arrived_since_sync:
            extra.append(f"{result.arrived_since_sync} arrived since the last sync")
        if result.changed_since_sync:
            extra.append(f"{result.changed_since_sync} open calls changed since the last sync")
        total = result.compared.get("total", (0, 0))[1]
        click.echo(f"{result.account}: ok, {total:,} calls match the API"
                   + (f" ({'; '.join(extra)})" if extra else "")
                   + f" requests={result.requests}")


class _SimulateCommand(click.Command):
    """`etl simulate` reports a bad option in one line (exit 2), like a bad config key."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            click.echo(f"etl: error: simulate: {exc.format_message()}", err=True)
            raise click.exceptions.Exit(EXIT_USAGE) from None


def _rate_window(text: str) -> tuple[int, float]:
    from .simulator.config import parse_rate_window  # the simulator loads only when used

    return parse_rate_window(text)


def _seconds(text: str) -> float:
    from .config import parse_duration

    return parse_duration(text).total_seconds()


_SIM_FLAGS = {"finish_after_s": "--finish-after", "late_max_age_s": "--late-max-age",
              "window_limit": "--rate-window", "window_seconds": "--rate-window"}


def _flag_names(message: str) -> str:
    """A SimulatorConfig message, with field names as the flags that set them."""
    import re

    from .simulator import SimulatorConfig

    names = "|".join(sorted(SimulatorConfig.__dataclass_fields__, key=len, reverse=True))
    return re.sub(rf"\b({names})\b",
                  lambda m: _SIM_FLAGS.get(m[1], "--" + m[1].replace("_", "-")), message)


@cli.command(cls=_SimulateCommand)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True,
              help="Port; 0 picks a free one.")
@click.option("--accounts", type=click.IntRange(0, 1000), default=3, show_default=True)
@click.option("--calls", type=click.IntRange(0, 5_000_000), default=5000, show_default=True,
              help="Calls per account.")
@click.option("--days", type=click.FloatRange(0), default=30, show_default=True,
              help="History the calls span, ending now.")
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--burst-every", type=click.IntRange(0), default=0, show_default=True, metavar="N",
              help="History: every Nth call opens a burst of --burst-calls calls in one second.")
@click.option("--burst-calls", type=click.IntRange(0), default=0, show_default=True, metavar="K",
              help="Calls per history burst (2..N; more than a page tests ties across pages).")
@click.option("--drift-rate", type=click.FloatRange(0), default=0, show_default=True,
              help="New calls per second per account arriving at the head while serving.")
@click.option("--burst-size", type=click.IntRange(1), default=1, show_default=True, metavar="K",
              help="Drift arrives K calls at a time, sharing one start_time second.")
@click.option("--drift-per-request", type=click.IntRange(0), default=0, show_default=True,
              metavar="N", help="New calls arriving after every page answered.")
@click.option("--open-fraction", type=click.FloatRange(0, 1), default=0.3, show_default=True,
              help="Share of new calls that arrive ringing or in progress.")
@click.option("--finish-after", type=click.FloatRange(0), default=None, metavar="SECONDS",
              help="Open calls finish this long after they appear (default: never by themselves).")
@click.option("--retention-days", type=click.FloatRange(0), default=None, metavar="D",
              help="The list keeps D days: older calls leave it continuously, also while you page.")
@click.option("--expire-rate", type=click.FloatRange(0), default=0, show_default=True,
              metavar="N", help="Besides the clock, the N oldest calls per second leave the list.")
@click.option("--delete-rate", type=click.FloatRange(0), default=0, show_default=True,
              metavar="N", help="Random calls per second vanish from inside the window.")
@click.option("--late-rate", type=click.FloatRange(0), default=0, show_default=True, metavar="N",
              help="Calls per second listed late, behind the head.")
@click.option("--late-max-age", "late_max_age_s", type=Parsed("DURATION", _seconds, float), default="1h",
              show_default=True,
              help="How much older than now a late call may be: 90s, 30m, 2h, 2d (log-uniform, "
                   "mostly minutes).")
@click.option("--latency-ms", type=click.FloatRange(0), default=0, show_default=True,
              help="Delay before every answer.")
@click.option("--error-rate", type=click.FloatRange(0, 1), default=0, show_default=True,
              help="Share of requests answered 500/502/503 (some as HTML pages).")
@click.option("--reset-rate", type=click.FloatRange(0, 1), default=0, show_default=True,
              help="Share of requests whose connection is reset.")
@click.option("--truncate-rate", type=click.FloatRange(0, 1), default=0, show_default=True,
              help="Share of answers cut off mid-body.")
@click.option("--per-page-cap", type=click.IntRange(1, 100), default=100, show_default=True,
              help="Largest page the server grants.")
@click.option("--rate-limit", type=click.FloatRange(0), default=0, show_default=True,
              metavar="RPS", help="Token bucket: requests per second per account; more get 429.")
@click.option("--rate-burst", type=click.FloatRange(1), default=None, metavar="N",
              help="Token bucket size  [default: rate/5, between 1 and 10].")
@click.option("--rate-window", type=Parsed("N/SECONDS", _rate_window, tuple), default=None,
              help="Fixed window per account, e.g. 300/5 (Plivo's default: 300 requests per 5 s); "
                   "combines with --rate-limit.")
@click.option("--rate-headers", type=click.Choice(["none", "ietf", "x", "both"]), default="none",
              show_default=True,
              help="Announce the limit: RateLimit-* (Reset in seconds), X-RateLimit-* (Reset as "
                   "epoch seconds), both, or none (the usual: the client must find it).")
@click.option("--retry-after-format", type=click.Choice(["seconds", "http-date", "both", "none"]),
              default="both", show_default=True,
              help="Retry-After on a 429: delta seconds, an HTTP date, alternating, or absent.")
@click.option("--foreign-rate", type=click.FloatRange(0), default=0, show_default=True,
              metavar="RPS",
              help="The customer's own requests per second, drawing on the same limits.")
@click.option("--write-config", type=click.Path(dir_okay=False), default=None,
              help="Write a config.toml for the simulated accounts here (database from --database-url).")
@click.pass_obj
@reports_errors
def simulate(settings: Settings, write_config: str | None, finish_after: float | None,
             rate_window: tuple[int, float] | None, **options: Any) -> None:
    """Serve a local Vox API that behaves like a real provider, for demos, tests and benchmarks.

    Serves GET /v1/voice/accounts/{auth_id}/calls exactly as the API reference describes
    (auth, filters, pagination), over seeded, realistic data. Prints its base URL and the
    demo tokens; stops on Ctrl-C.

    \b
    Like a real provider, if you ask it to:
      - the list changes at both ends: new calls arrive at the head (--drift-rate), the
        oldest leave it (--retention-days, --expire-rate), calls vanish from inside it
        (--delete-rate) or are listed late, behind the head (--late-rate);
      - many calls share one start_time second (--burst-size, --burst-every/--burst-calls);
        ties are ordered consistently (the call listed later first);
      - per-account rate limits nobody announces (--rate-limit, --rate-window), shared with
        the customer's own traffic (--foreign-rate), optionally announced (--rate-headers);
      - latency, 5xx (some HTML), connection resets, truncated bodies, a lower page cap.

    \b
    Test hooks on the same port, loopback only, JSON in and out (GET /_sim/help lists them):
      curl -s -XPOST localhost:8765/_sim/add-calls -d '{"auth_id":"MA100001","n":250}'
      curl -s -XPOST localhost:8765/_sim/delete -d '{"auth_id":"MA100001","call_uuid":"..."}'
      curl -s 'localhost:8765/_sim/stats?auth_id=MA100001'

    \b
    Examples:
      etl simulate --port 8765 --accounts 2 --calls 50000 --error-rate 0.05 --drift-rate 5
      etl simulate --calls 20000 --drift-rate 20 --expire-rate 20 --late-rate 0.2
      etl simulate --rate-window 300/5 --foreign-rate 30 --retry-after-format none
    """
    from .config import render_config
    from .simulator import SimulatorConfig, serve

    window_limit, window_seconds = rate_window or (0, 5.0)
    try:
        config = SimulatorConfig(finish_after_s=finish_after, window_limit=window_limit,
                                 window_seconds=window_seconds, **options)
        config.validate()
    except ValueError as exc:
        raise ConfigError(f"simulate: {_flag_names(str(exc))}") from None

    def on_ready(sim: Any) -> None:
        if write_config:
            database = settings.database_url or "sqlite:///calls.db"
            with open(write_config, "w", encoding="utf-8") as handle:
                handle.write(render_config(sim.base_url, sim.accounts, database))

    serve(config, on_ready=on_ready)


def main() -> None:
    cli(prog_name="etl")


if __name__ == "__main__":
    main()

"""vox-etl on Dagster: one partition per configured account, the CLI's own account sync.

`pip install 'vox-etl[dagster]'`, then point Dagster at this module:

    dagster dev -m etl.dagster_defs              # or: dagster-webserver / dagster-daemon

What `defs` holds:

- `vox_accounts`, a dynamic partitions definition with one key per `[[accounts]].name`, kept
  in step with `config.toml` by the sensor `vox_accounts_sensor` (new accounts are added and
  get a first sync at once; removed ones are dropped);
- `vox_calls`, the partitioned asset (the `calls` table, one partition per account). It runs
  `etl.runner.run_accounts` for its account exactly as `etl sync` / `etl backfill` do —
  same locks, migrations, state and run log — and reports new, updated, unchanged, rejected,
  requests, watermark and window as metadata;
- `vox_sync` (incremental syncs) with the schedule `vox_sync_schedule` (every 15 minutes, or
  `$ETL_DAGSTER_SCHEDULE`), and `vox_backfill`, whose run config gives the window:
  `ops: {vox_calls: {config: {since: 2026-03-01, until: 2026-03-08}}}`;
- retries: an account another run holds raises `RetryRequested` (it waits its turn rather
  than fails); a failure a retry can cure (the API's 5xx/429 past `max_attempts`, a lost
  connection, a database that went away) is retried by `RETRY_POLICY`; one it cannot (401,
  403, 404, a configuration error) fails at once;
- the concurrency pool `vox_api` on the asset: set its limit in the instance
  (`dagster instance concurrency set vox_api 8`, or `concurrency.pools.default_limit` in
  `deploy/dagster.yaml`) to bound how many accounts page the API at once across all runs;
  each of them keeps at most `[api].concurrency` requests in flight.

Configuration: the resource `vox_etl` (`VoxEtl`) names the config file and database; by
default it reads `$ETL_CONFIG` (else `./config.toml`) and `$ETL_DATABASE_URL` (else
`[database].url`), like `etl`. The tokens come from the environment variables the accounts
name, in the run worker's environment.
"""

import os
from datetime import UTC, datetime
from typing import Any

import requests
from dagster import (
    AddDynamicPartitionsRequest,
    AssetExecutionContext,
    Backoff,
    Config,
    ConfigurableResource,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    Definitions,
    DeleteDynamicPartitionsRequest,
    DynamicPartitionsDefinition,
    Failure,
    Jitter,
    MaterializeResult,
    MetadataValue,
    RetryPolicy,
    RetryRequested,
    RunRequest,
    ScheduleEvaluationContext,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    asset,
    define_asset_job,
    schedule,
    sensor,
)
from sqlalchemy.exc import DBAPIError

from .config import Config as EtlConfig
from .config import load_config, parse_when
from .db import make_engine
from .errors import ConfigError, FatalAPIError, RetriableAPIError
from .loader import is_transient, iso_utc
from .migrate import upgrade
from .outcomes import Command, Outcome
from .runner import AccountResult, Job, run_accounts
from .state import read_state

ACCOUNTS = "vox_accounts"
API_POOL = "vox_api"

accounts_partitions = DynamicPartitionsDefinition(name=ACCOUNTS)

# For failures a later attempt can cure; the client has already retried each request
# `[api].max_attempts` times, so these are minutes apart, not seconds.
RETRY_POLICY = RetryPolicy(max_retries=3, delay=60, backoff=Backoff.EXPONENTIAL,
                           jitter=Jitter.PLUS_MINUS)


class VoxEtl(ConfigurableResource):
    """Where vox-etl finds its configuration, and how long a locked account waits its turn."""

    config_path: str | None = None
    """config.toml; default `$ETL_CONFIG`, else `./config.toml`."""
    database_url: str | None = None
    """SQLAlchemy URL; default `$ETL_DATABASE_URL`, else `[database].url`."""
    lock_retries: int = 20
    """How many times a run finding its account locked by another run tries again."""
    lock_retry_seconds: float = 30.0
    """Seconds between those tries."""

    def load(self) -> EtlConfig:
        return load_config(self.config_path, database_url=self.database_url)


class VoxCallsConfig(Config):
    """Run config of `vox_calls`: an incremental sync by default; `full` re-reads the whole
    history; `since` and `until` together make it a backfill of that window."""

    full: bool = False
    since: str | None = None
    until: str | None = None


def _job(config: VoxCallsConfig) -> Job:
    if config.since is None and config.until is None:
        return Job(Command.SYNC, full=config.full)
    if config.since is None or config.until is None:
        raise Failure("a backfill needs both `since` and `until`", allow_retries=False)
    try:
        since, until = parse_when(config.since), parse_when(config.until)
    except ValueError as exc:
        raise Failure(f"backfill window: {exc}", allow_retries=False) from None
    if until <= since:
        raise Failure(f"`until` ({config.until}) must be after `since` ({config.since})",
                      allow_retries=False)
    return Job(Command.BACKFILL, since=since, until=until)


def run_account(config: EtlConfig, name: str, job: Job) -> AccountResult:
    """What `etl sync --account NAME` (or `etl backfill`) does, returning the account's result:
    migrations first (under the migration lock), then the runner under the account's lock."""
    [account] = config.select([name])
    account.token()  # a missing token is a configuration error, before any request
    engine = make_engine(config.database_url)
    try:
        upgrade(engine)
        [result] = run_accounts(engine, config, [account], job)
        if result.watermark is None:
            with engine.connect() as conn:
                state = read_state(conn, account.auth_id)
            result.watermark = state.watermark if state is not None else None
        return result
    finally:
        engine.dispose()


def retryable(exc: BaseException | None) -> bool:
    """Whether a later attempt may succeed where this one failed."""
    if isinstance(exc, FatalAPIError | ConfigError):
        return False
    if isinstance(exc, RetriableAPIError | requests.RequestException):
        return True
    return isinstance(exc, DBAPIError) and is_transient(exc)


def _utc(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _metadata(result: AccountResult, job: Job) -> dict[str, Any]:
    watermark = _utc(result.watermark)
    if job.command is Command.BACKFILL:
        window = {"kind": Command.BACKFILL.value, "since": _iso(job.since), "until": _iso(job.until)}
    else:
        # The provider's window: it lists calls from `since` on (the oldest call it listed).
        window = {"kind": "full" if job.full else "incremental",
                  "since": _iso(result.window_start), "until": None}
    return {
        "auth_id": result.auth_id,
        "new": result.counts.new,
        "updated": result.counts.updated,
        "unchanged": result.counts.unchanged,
        "rejected": result.counts.rejected,
        "deleted": result.deleted,
        "requests": result.requests,
        "pages": result.pages,
        "seconds": MetadataValue.float(round(result.seconds, 3)),
        "watermark": (MetadataValue.timestamp(watermark) if watermark is not None
                      else MetadataValue.null()),
        "window": MetadataValue.json(window),
    }


def _iso(moment: datetime | None) -> str | None:
    return iso_utc(moment) if moment is not None else None


@asset(
    partitions_def=accounts_partitions,
    pool=API_POOL,
    retry_policy=RETRY_POLICY,
    kinds={"sql"},
    description="The `calls` table: one partition per configured Vox account.",
)
def vox_calls(context: AssetExecutionContext, config: VoxCallsConfig,
              vox_etl: VoxEtl) -> MaterializeResult:
    job = _job(config)
    try:
        etl_config = vox_etl.load()
        result = run_account(etl_config, context.partition_key, job)
    except ConfigError as exc:
        raise Failure(str(exc), allow_retries=False) from None
    metadata = _metadata(result, job)
    if result.outcome is Outcome.SKIPPED:
        context.log.info(f"{result.account}: another run holds its lock; trying again in "
                         f"{vox_etl.lock_retry_seconds:g} s")
        raise RetryRequested(max_retries=vox_etl.lock_retries,
                             seconds_to_wait=vox_etl.lock_retry_seconds)
    if result.outcome is not Outcome.OK:
        raise Failure(f"{result.account}: {result.error}", metadata=metadata,
                      allow_retries=retryable(result.failure))
    context.log.info(" ".join(f"{k}={v}" for k, v in result.summary().items()))
    return MaterializeResult(metadata=metadata)


vox_sync = define_asset_job(
    "vox_sync", selection=[vox_calls],
    description="Incremental sync of one account (the partition), as `etl sync --account`.",
)

# Run config: {"ops": {"vox_calls": {"config": {"since": "2026-03-01", "until": "2026-03-08"}}}}
vox_backfill = define_asset_job(
    "vox_backfill", selection=[vox_calls],
    description="Re-pull one account's calls with since <= start_time < until, as `etl backfill`; "
                "run config ops.vox_calls.config.since / .until (YYYY-MM-DD or ISO-8601, UTC).",
    tags={"vox/command": Command.BACKFILL.value},
)


@sensor(job=vox_sync, minimum_interval_seconds=60, default_status=DefaultSensorStatus.RUNNING,
        description="Keeps the vox_accounts partitions equal to the accounts of config.toml.")
def vox_accounts_sensor(context: SensorEvaluationContext, vox_etl: VoxEtl) -> SensorResult | SkipReason:
    configured = [account.name for account in vox_etl.load().accounts]
    known = set(context.instance.get_dynamic_partitions(ACCOUNTS))
    added = [name for name in configured if name not in known]
    removed = sorted(known - set(configured))
    if not added and not removed:
        return SkipReason(f"the {len(configured)} configured accounts all have a partition")
    requests_: list[AddDynamicPartitionsRequest | DeleteDynamicPartitionsRequest] = []
    if added:
        requests_.append(accounts_partitions.build_add_request(added))
    if removed:
        requests_.append(accounts_partitions.build_delete_request(removed))
    return SensorResult(
        # A new account gets its first sync now rather than at the next scheduled tick.
        run_requests=[RunRequest(partition_key=name) for name in added],
        dynamic_partitions_requests=requests_,
    )


@schedule(job=vox_sync, cron_schedule=os.environ.get("ETL_DAGSTER_SCHEDULE", "*/15 * * * *"),
          default_status=DefaultScheduleStatus.RUNNING,
          description="An incremental sync of every account.")
def vox_sync_schedule(context: ScheduleEvaluationContext) -> list[RunRequest] | SkipReason:
    names = context.instance.get_dynamic_partitions(ACCOUNTS)
    if not names:
        return SkipReason("no accounts yet: the vox_accounts_sensor adds them from config.toml")
    tick = context.scheduled_execution_time.isoformat()
    return [RunRequest(partition_key=name, run_key=f"{name}:{tick}") for name in names]


defs = Definitions(
    assets=[vox_calls],
    jobs=[vox_sync, vox_backfill],
    schedules=[vox_sync_schedule],
    sensors=[vox_accounts_sensor],
    resources={"vox_etl": VoxEtl()},
)

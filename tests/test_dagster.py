"""vox-etl on Dagster, through Dagster's own API: `materialize()` and `execute_in_process()` on
ephemeral instances, against the simulator over real sockets, into SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

dagster = pytest.importorskip(
    "dagster", reason="the dagster extra is not installed (pip install 'vox-etl[dagster]')")

from dagster import (  # noqa: E402
    DagsterInstance,
    Definitions,
    SensorResult,
    build_sensor_context,
    materialize,
)
from sqlalchemy import select, text  # noqa: E402

from etl import locks  # noqa: E402
from etl.dagster_defs import (  # noqa: E402
    ACCOUNTS,
    API_POOL,
    VoxEtl,
    defs,
    vox_accounts_sensor,
    vox_calls,
)
from etl.records import parse_timestamp  # noqa: E402
from etl.schema import sync_runs  # noqa: E402
from etl.state import read_state  # noqa: E402
from tests.conftest import PROJECT, write_config  # noqa: E402
from tests.helpers import assert_matches_simulator, stored_rows  # noqa: E402


@pytest.fixture
def instance():
    with DagsterInstance.ephemeral() as ephemeral:
        yield ephemeral


def _metadata(result, key):
    [materialization] = [m for m in result.asset_materializations_for_node("vox_calls")
                         if m.partition == key]
    return {name: value.value for name, value in materialization.metadata.items()}


def _window(since, until):
    return {"ops": {"vox_calls": {"config": {"since": since, "until": until}}}}


def _events(result, kind):
    return [e for e in result.all_events if e.event_type_value == kind]


def _outcomes(engine, auth_id):
    with engine.connect() as conn:
        return conn.execute(select(sync_runs.c.outcome).where(sync_runs.c.account_id == auth_id)
                            .order_by(sync_runs.c.started_at)).scalars().all()


def test_defs_load_with_the_partitions_jobs_schedule_sensor_pool_and_retry_policy():
    Definitions.validate_loadable(defs)
    assert {job.name for job in defs.resolve_all_job_defs()} >= {"vox_sync", "vox_backfill"}
    assert defs.resolve_schedule_def("vox_sync_schedule").job_name == "vox_sync"
    assert defs.resolve_sensor_def("vox_accounts_sensor").job_name == "vox_sync"
    asset = defs.resolve_assets_def("vox_calls")
    assert asset.partitions_def.name == ACCOUNTS
    [spec] = asset.specs
    assert asset.op.pool == API_POOL
    assert asset.op.retry_policy is not None and asset.op.retry_policy.max_retries >= 1
    assert spec.key.path == ["vox_calls"]


def test_two_partitions_materialize_the_cli_sync_with_its_metadata(
        simulator, project, database_url, engine_for, instance, monkeypatch):
    sim = simulator(accounts=2, calls=700, seed=91)
    proj = project(sim, database_url)
    for name, value in proj.env.items():
        monkeypatch.setenv(name, value)
    resources = {"vox_etl": VoxEtl(config_path=str(proj.config))}
    instance.add_dynamic_partitions(ACCOUNTS, ["acct1", "acct2"])

    for key in ("acct1", "acct2"):
        before = sim.stats(sim.accounts[int(key[-1]) - 1].auth_id)["requests"]
        result = materialize([vox_calls], instance=instance, partition_key=key, resources=resources)
        assert result.success
        meta = _metadata(result, key)
        auth_id = sim.accounts[int(key[-1]) - 1].auth_id
        assert (meta["new"], meta["updated"], meta["rejected"]) == (700, 0, 0)
        assert meta["requests"] == sim.stats(auth_id)["requests"] - before
        newest = max(parse_timestamp(c["start_time"]) for c in sim.calls(auth_id))
        assert meta["watermark"] == newest.timestamp()
        assert meta["window"]["kind"] == "incremental"

    engine = engine_for(database_url)
    assert_matches_simulator(engine, sim)
    # A second materialization is the CLI's incremental sync: the new calls, a few requests.
    sim.add_calls(sim.accounts[0].auth_id, 30)
    again = materialize([vox_calls], instance=instance, partition_key="acct1", resources=resources)
    meta = _metadata(again, "acct1")
    assert meta["new"] == 30 and meta["requests"] <= 3
    assert_matches_simulator(engine, sim)
    assert _outcomes(engine, sim.accounts[0].auth_id) == ["ok", "ok"]
    # Dagster's own record of the partitions it has materialized.
    assert instance.get_materialized_partitions(vox_calls.key) == {"acct1", "acct2"}


def test_the_backfill_job_takes_since_and_until_as_run_config(
        simulator, project, engine_for, instance, monkeypatch):
    sim = simulator(accounts=1, calls=3_000, days=30, seed=92)
    auth_id = sim.accounts[0].auth_id
    proj = project(sim)
    for name, value in proj.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("ETL_CONFIG", str(proj.config))  # the defs' own resource reads it
    instance.add_dynamic_partitions(ACCOUNTS, ["acct1"])
    starts = sorted(parse_timestamp(c["start_time"]) for c in sim.calls(auth_id))
    since, until = starts[1000].date().isoformat(), starts[1400].date().isoformat()

    result = defs.resolve_job_def("vox_backfill").execute_in_process(
        run_config=_window(since, until), partition_key="acct1", instance=instance)

    assert result.success
    engine = engine_for(proj.database_url)
    want = {c["call_uuid"] for c in sim.calls(auth_id)
            if since <= parse_timestamp(c["start_time"]).date().isoformat() < until}
    assert want and set(stored_rows(engine, auth_id)) == want
    meta = _metadata(result, "acct1")
    assert meta["new"] == len(want)
    assert meta["window"] == {"kind": "backfill", "since": f"{since}T00:00:00Z",
                              "until": f"{until}T00:00:00Z"}
    with engine.connect() as conn:
        assert read_state(conn, auth_id) is None  # the incremental state is left alone
    assert _outcomes(engine, auth_id) == ["ok"]

    bad = defs.resolve_job_def("vox_backfill").execute_in_process(
        run_config=_window(until, since), partition_key="acct1", instance=instance,
        raise_on_error=False)
    assert not bad.success and not _events(bad, "STEP_UP_FOR_RETRY")


def test_a_locked_account_raises_retry_requested_and_syncs_when_the_lock_is_free(
        simulator, project, engine_for, instance, monkeypatch):
    sim = simulator(accounts=1, calls=400, seed=93)
    auth_id = sim.accounts[0].auth_id
    proj = project(sim)
    for name, value in proj.env.items():
        monkeypatch.setenv(name, value)
    engine = engine_for(proj.database_url)
    instance.add_dynamic_partitions(ACCOUNTS, ["acct1"])
    holder = locks.acquire(engine, auth_id)  # another run holds the account

    def release_after_the_first_try():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if "skipped" in _outcomes(engine, auth_id):
                    break
            except Exception:  # the tables do not exist yet
                pass
            time.sleep(0.01)
        holder.release()

    releaser = threading.Thread(target=release_after_the_first_try)
    releaser.start()
    resources = {"vox_etl": VoxEtl(config_path=str(proj.config), lock_retries=50,
                                   lock_retry_seconds=0.1)}
    try:
        result = materialize([vox_calls], instance=instance, partition_key="acct1",
                             resources=resources)
    finally:
        releaser.join()

    assert result.success
    assert len(_events(result, "STEP_UP_FOR_RETRY")) >= 1
    assert _outcomes(engine, auth_id)[0] == "skipped" and _outcomes(engine, auth_id)[-1] == "ok"
    assert_matches_simulator(engine, sim)

    # Locked for good: the step gives up after its retries, having sent no request.
    with locks.acquire(engine, auth_id):
        before = sim.stats()["requests"]
        stuck = materialize([vox_calls], instance=instance, partition_key="acct1",
                            resources={"vox_etl": VoxEtl(config_path=str(proj.config),
                                                         lock_retries=2, lock_retry_seconds=0)},
                            raise_on_error=False)
    assert not stuck.success
    assert len(_events(stuck, "STEP_UP_FOR_RETRY")) == 2
    assert sim.stats()["requests"] == before


def test_an_incurable_failure_is_not_retried(simulator, project, instance, monkeypatch):
    sim = simulator(accounts=1, calls=50, seed=94)
    proj = project(sim)
    monkeypatch.setenv("VOX_TOKEN_ACCT1", "tvx_wrong_token")
    instance.add_dynamic_partitions(ACCOUNTS, ["acct1"])

    result = materialize([vox_calls], instance=instance, partition_key="acct1",
                         resources={"vox_etl": VoxEtl(config_path=str(proj.config))},
                         raise_on_error=False)

    assert not result.success
    assert not _events(result, "STEP_UP_FOR_RETRY")
    [failure] = _events(result, "STEP_FAILURE")
    message = str(failure.event_specific_data.error.message)
    assert "acct1" in message and "401" in message and "tvx_wrong_token" not in message


def test_the_schedule_asks_for_one_incremental_run_per_account():
    from dagster import SkipReason, build_schedule_context, instance_for_test

    schedule = defs.resolve_schedule_def("vox_sync_schedule")
    with instance_for_test() as instance:  # schedules need a persistent instance
        tick = datetime(2026, 12, 1, 9, 15, tzinfo=UTC)
        context = build_schedule_context(instance=instance, scheduled_execution_time=tick)
        assert isinstance(schedule(context), SkipReason)
        instance.add_dynamic_partitions(ACCOUNTS, ["acct1", "acct2"])

        requests = schedule(build_schedule_context(instance=instance, scheduled_execution_time=tick))

    assert sorted(r.partition_key for r in requests) == ["acct1", "acct2"]
    assert {r.run_key for r in requests} == {f"acct1:{tick.isoformat()}", f"acct2:{tick.isoformat()}"}


def test_only_failures_a_retry_can_cure_are_retried():
    import requests
    from sqlalchemy.exc import OperationalError

    from etl.dagster_defs import retryable
    from etl.errors import ConfigError, FatalAPIError, RetriableAPIError

    assert retryable(RetriableAPIError("HTTP 503 Service Unavailable"))
    assert retryable(requests.ConnectionError("reset"))
    assert retryable(OperationalError("SELECT 1", {}, Exception("server closed the connection")))
    assert not retryable(FatalAPIError("HTTP 401 Unauthorized"))
    assert not retryable(ConfigError("[api].timeout: expected a number"))
    assert not retryable(ValueError("a bug"))


def test_the_sensor_keeps_the_partitions_equal_to_config_toml(
        simulator, tmp_path, engine_for, instance, monkeypatch):
    sim = simulator(accounts=2, calls=200, seed=95)
    config = tmp_path / "config.toml"
    url = f"sqlite:///{tmp_path / 'calls.db'}"
    env = write_config(config, sim, url, accounts=sim.accounts[:1])
    for name, value in {**env, **write_config(tmp_path / "x.toml", sim, url)}.items():
        monkeypatch.setenv(name, value)
    resources = {"vox_etl": VoxEtl(config_path=str(config))}

    def tick() -> SensorResult:
        result = vox_accounts_sensor(build_sensor_context(instance=instance, resources=resources))
        if isinstance(result, SensorResult):  # what the daemon does with the answer
            for request in result.dynamic_partitions_requests or []:
                if type(request).__name__.startswith("Add"):
                    instance.add_dynamic_partitions(ACCOUNTS, list(request.partition_keys))
                else:
                    for key in request.partition_keys:
                        instance.delete_dynamic_partition(ACCOUNTS, key)
        return result

    first = tick()
    assert [r.partition_key for r in first.run_requests] == ["acct1"]
    assert instance.get_dynamic_partitions(ACCOUNTS) == ["acct1"]
    assert not isinstance(tick(), SensorResult)  # nothing changed: a skip

    write_config(config, sim, url)  # acct2 is added to config.toml
    second = tick()
    assert [r.partition_key for r in second.run_requests] == ["acct2"]
    assert sorted(instance.get_dynamic_partitions(ACCOUNTS)) == ["acct1", "acct2"]
    result = materialize([vox_calls], instance=instance, partition_key="acct2", resources=resources)
    assert result.success and _metadata(result, "acct2")["new"] == 200

    write_config(config, sim, url, accounts=sim.accounts[1:])  # acct1 leaves config.toml
    tick()
    assert instance.get_dynamic_partitions(ACCOUNTS) == ["acct2"]


@pytest.fixture
def template_instance(postgres_url, monkeypatch, tmp_path):
    """A Dagster instance made from deploy/dagster.yaml, its storage in a PostgreSQL database
    of its own on the test server (and its compute logs in a temporary $DAGSTER_HOME)."""
    import shutil

    from sqlalchemy import create_engine

    shutil.copy(PROJECT / "deploy" / "dagster.yaml", tmp_path / "dagster.yaml")

    database = "vox_dagster_test"
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
        conn.execute(text(f"CREATE DATABASE {database}"))
    url = admin.url
    for name, value in {"DAGSTER_PG_HOST": url.host, "DAGSTER_PG_PORT": str(url.port or 5432),
                        "DAGSTER_PG_USER": url.username, "DAGSTER_PG_PASSWORD": url.password or "",
                        "DAGSTER_PG_DB": database}.items():
        monkeypatch.setenv(name, value)
    instance = DagsterInstance.from_config(str(tmp_path))
    try:
        yield instance
    finally:
        instance.dispose()
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
        admin.dispose()


def test_the_dagster_yaml_template_runs_on_postgres_with_one_run_per_partition(template_instance):
    from dagster._core.storage.dagster_run import DagsterRun
    from dagster._utils.tags import TagConcurrencyLimitsCounter

    assert type(template_instance.run_storage).__name__ == "PostgresRunStorage"
    assert type(template_instance.run_coordinator).__name__ == "QueuedRunCoordinator"
    limits = template_instance.get_concurrency_config().run_queue_config.tag_concurrency_limits

    def run(partition: str) -> DagsterRun:
        return DagsterRun(job_name="vox_sync", run_id=str(uuid.uuid4()),
                          tags={"dagster/partition": partition})

    counter = TagConcurrencyLimitsCounter(limits, [run("acct1")])
    assert counter.is_blocked(run("acct1"))  # a second run of the same account waits
    assert not counter.is_blocked(run("acct2"))  # another account does not


def test_the_api_pool_holds_a_run_back_until_a_slot_is_free(
        simulator, project, template_instance, monkeypatch):
    sim = simulator(accounts=1, calls=300, seed=96)
    proj = project(sim)
    for name, value in proj.env.items():
        monkeypatch.setenv(name, value)
    storage = template_instance.event_log_storage
    storage.set_concurrency_slots(API_POOL, 1)
    template_instance.add_dynamic_partitions(ACCOUNTS, ["acct1"])
    storage.claim_concurrency_slot(API_POOL, "another-run", "vox_calls")  # another account pages
    outcome = {}

    def materialize_acct1():
        outcome["result"] = materialize(
            [vox_calls], instance=template_instance, partition_key="acct1",
            resources={"vox_etl": VoxEtl(config_path=str(proj.config))})

    worker = threading.Thread(target=materialize_acct1)
    worker.start()
    worker.join(timeout=3)
    held_back = worker.is_alive() and sim.stats()["requests"] == 0
    storage.free_concurrency_slot_for_step("another-run", "vox_calls")
    worker.join(timeout=120)

    assert held_back, "the run paged the API while the pool's only slot was taken"
    assert outcome["result"].success and sim.stats()["requests"] > 0
    assert _metadata(outcome["result"], "acct1")["new"] == 300


def test_the_readme_documents_the_deployment():
    readme = (PROJECT / "README.md").read_text()
    assert "## Running at scale" in readme
    assert "deploy/dagster.yaml" in readme and Path(PROJECT / "deploy" / "dagster.yaml").exists()

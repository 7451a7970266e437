"""End to end on a real Airflow: scheduler, dag-processor, triggerer and api-server, LocalExecutor,
its metadata in PostgreSQL.

One scenario, against a throwaway PostgreSQL whose archiver is gated, with a DAG built with
:func:`~airflow_provider_walthrottle.wal_throttled_migration` (written into the DAGs folder, as a
user would) over a table where four tenants in ten are in scope:

1. gate closed, 50 segments pending (above 42), flag on: a triggered run's sensor waits deferred
   through many checks, is never failed (apache/airflow#71172 fails reschedule-mode sensors) and
   no batch runs;
2. ``airflow variables set batched_migrations_health_status_wal false``: the trigger's next check
   lets the run go, and one batch is applied;
3. flag on again, a new run waits; the gate opens, the backlog drains, the run applies a batch;
4. ``airflow backfill create`` over six logical dates with ``--max-active-runs 4``: the last five
   batches are applied, each exactly once, and the sixth run finds nothing left and is skipped;
5. the table is checked row by row, and the state table shows seven succeeded, disjoint ranges.

It takes about four minutes; ``WALTHROTTLE_E2E_THROTTLED_SECONDS`` shortens or lengthens step 1.
"""

from __future__ import annotations

import collections
import itertools
import os
import time
from typing import TYPE_CHECKING, Any

import pytest
from psycopg import sql

from tests.support.airflow_standalone import AirflowStandalone, make_home, serving_dag
from tests.support.statsd_listener import StatsdListener

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.support.postgres_cluster import ClusterFactory, PostgresCluster

DAG_ID = "e2e_wal_throttled_migration"
MIGRATION = "e2e_increment_counter"
SENSOR = f"{MIGRATION}.wait_for_wal_archival"
BATCH = f"{MIGRATION}.apply_batch"
CONN_ID = "e2e_db"
FLAG = "batched_migrations_health_status_wal"
TABLE = "e2e_items"
BATCH_SIZE = 200
#: One batch in step 2, one in step 3, five in the backfill: the migration needs exactly seven.
BATCHES = 7
IN_SCOPE_ROWS = BATCH_SIZE * BATCHES
BACKFILL_FROM, BACKFILL_TO, BACKFILL_DATES = "2020-01-01", "2025-01-01", 6
POKE_SECONDS = 5
#: How long step 1 watches the sensor wait; the rest of the test takes about a minute and a half.
THROTTLED_SECONDS = float(os.environ.get("WALTHROTTLE_E2E_THROTTLED_SECONDS", "150"))
BACKLOG = 50
#: States of a sensor on its way to its first check; anything else before it defers is a failure.
WAITING_STATES = {None, "scheduled", "queued", "running", "deferred"}

DAG_FILE = f'''
"""Written by tests/e2e/test_scheduler.py: one batch of {MIGRATION} per run."""

import datetime

from airflow.sdk import DAG

from airflow_provider_walthrottle import wal_throttled_migration

UTC = datetime.timezone.utc

# Every run here is triggered or backfilled: with its end date in the past, the scheduler creates
# none of its own (with catchup=False it would otherwise start the latest interval at once).
with DAG(
    dag_id="{DAG_ID}",
    schedule="@yearly",
    start_date=datetime.datetime(2020, 1, 1, tzinfo=UTC),
    end_date=datetime.datetime(2025, 12, 31, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["walthrottle", "e2e"],
) as dag:
    wal_throttled_migration(
        postgres_conn_id="{CONN_ID}",
        migration_name="{MIGRATION}",
        table="public.{TABLE}",
        column="id",
        scope="tenant %% 3 = 0",
        batch_sql=(
            "UPDATE public.{TABLE} SET counter = counter + 1 "
            "WHERE id BETWEEN %(start)s AND %(end)s AND tenant %% 3 = 0"
        ),
        poke_interval={POKE_SECONDS},
        concurrency=4,
        operator_kwargs={{
            "batch_size": {BATCH_SIZE},
            "min_batch_size": {BATCH_SIZE},
            "max_batch_size": {BATCH_SIZE},
            "sub_batch_size": 50,
            "pause_ms": 0,
        }},
    )
'''


# --------------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def database(pg_cluster_factory: ClusterFactory) -> PostgresCluster:
    """A cluster of its own, with the test table: ids with gaps, four tenants in ten in scope."""
    cluster = pg_cluster_factory(name="e2e")
    make_items_table(cluster)
    return cluster


@pytest.fixture(scope="module")
def statsd() -> Iterator[StatsdListener]:
    """The StatsD server Airflow's metrics go to."""
    with StatsdListener() as listener:
        yield listener


@pytest.fixture(scope="module")
def metadata_db(pg_cluster_factory: ClusterFactory) -> str:
    """A PostgreSQL database for Airflow's metadata, on a cluster of its own (no archiving).

    SQLite, Airflow's default here, refuses a write at once when a lock upgrade would deadlock,
    which `airflow backfill create` met while the scheduler wrote; PostgreSQL waits instead.
    """
    cluster = pg_cluster_factory(name="e2e-airflow-metadata", archive_mode="off")
    cluster.execute("CREATE DATABASE airflow")
    return cluster.uri(dbname="airflow").replace("postgresql://", "postgresql+psycopg://", 1)


@pytest.fixture(scope="module")
def airflow(
    database: PostgresCluster, statsd: StatsdListener, metadata_db: str
) -> Iterator[AirflowStandalone]:
    """A real Airflow in a fresh home, with the test DAG; every process it started is stopped after."""
    home = make_home()
    instance = AirflowStandalone(
        home,
        dags_folder=home / "dags",
        metadata_db=metadata_db,
        connections={CONN_ID: database.uri()},
        parallelism=4,
        config={
            "metrics": {
                "statsd_on": "True",
                "statsd_host": "127.0.0.1",
                "statsd_port": str(statsd.port),
                "statsd_prefix": "airflow",
            },
            "walthrottle": {"ui_connection_ids": CONN_ID},
        },
    )
    with serving_dag(instance, DAG_ID, DAG_FILE) as ready:
        yield ready


# --------------------------------------------------------------------------------------------------
# the database side
# --------------------------------------------------------------------------------------------------


def make_items_table(cluster: PostgresCluster) -> None:
    """Create ``e2e_items`` with exactly :data:`IN_SCOPE_ROWS` rows in scope (``tenant % 3 = 0``).

    Every 7th id is missing, so ranges cross gaps; out-of-scope rows sit between and after them.
    """
    ids, in_scope = [], 0
    candidate = 0
    while in_scope < IN_SCOPE_ROWS:
        candidate += 1
        if candidate % 7:
            ids.append(candidate)
            in_scope += (candidate % 10) % 3 == 0
    last_in_scope = ids[-1]
    ids += [i for i in range(last_in_scope + 1, last_in_scope + 40) if i % 7 and (i % 10) % 3]
    table = sql.Identifier(TABLE)
    cluster.execute(
        sql.SQL(
            "CREATE TABLE {} (id bigint PRIMARY KEY, tenant int NOT NULL, counter int NOT NULL DEFAULT 0)"
        ).format(table)
    )
    cluster.execute(
        sql.SQL("INSERT INTO {} (id, tenant) SELECT i, i %% 10 FROM unnest(%s::bigint[]) AS i").format(table),
        [ids],
    )


def rows_done(cluster: PostgresCluster) -> dict[int, int]:
    """Return ``{counter: rows}`` over the in-scope rows."""
    rows = cluster.execute(
        sql.SQL("SELECT counter, count(*) FROM {} WHERE tenant % 3 = 0 GROUP BY 1").format(
            sql.Identifier(TABLE)
        )
    )
    return dict(rows)


def state_tables_exist(cluster: PostgresCluster) -> bool:
    return bool(cluster.execute("SELECT to_regclass('walthrottle.batched_migration_jobs') IS NOT NULL")[0][0])


def jobs(cluster: PostgresCluster) -> list[dict[str, Any]]:
    """Return the migration's jobs, by start key."""
    rows = cluster.execute(
        """
SELECT id, start_key::bigint, end_key::bigint, status, rows_affected, attempts, run_id, try_number
FROM walthrottle.batched_migration_jobs WHERE migration_name = %s ORDER BY start_key::bigint
""",
        [MIGRATION],
    )
    keys = ("id", "start", "end", "status", "rows", "attempts", "run_id", "try_number")
    return [dict(zip(keys, row, strict=True)) for row in rows]


# --------------------------------------------------------------------------------------------------
# the Airflow side
# --------------------------------------------------------------------------------------------------


def ti_of(airflow: AirflowStandalone, run_id: str, task_id: str) -> dict[str, Any]:
    return next(ti for ti in airflow.task_instances(DAG_ID, run_id) if ti["task_id"] == task_id)


def wait_for_deferred_sensor(airflow: AirflowStandalone, run_id: str) -> dict[str, Any]:
    def deferred() -> dict[str, Any] | None:
        ti = ti_of(airflow, run_id, SENSOR)
        assert ti["state"] in WAITING_STATES, f"the sensor left its wait: {ti['state']}"
        return ti if ti["state"] == "deferred" else None

    return airflow.wait_until(
        deferred,
        timeout=90,
        interval=1,
        what=f"the sensor of {run_id} to defer",
        describe=lambda: airflow.describe_runs(DAG_ID),
    )


def checks_logged(airflow: AirflowStandalone, run_id: str) -> int:
    """Count the trigger's "waiting" checks in the sensor's logs."""
    return airflow.task_log(DAG_ID, run_id, SENSOR).count("waiting, next check in")


class Timer:
    """Wall time of each step, printed at the end."""

    def __init__(self) -> None:
        self.started = self.last = time.monotonic()
        self.steps: list[tuple[str, float]] = []

    def step(self, name: str) -> None:
        now = time.monotonic()
        self.steps.append((name, now - self.last))
        self.last = now
        print(f"[e2e] {name}: {self.steps[-1][1]:.1f} s (total {now - self.started:.1f} s)", flush=True)


# --------------------------------------------------------------------------------------------------
# the scenario
# --------------------------------------------------------------------------------------------------


def test_throttled_migration_on_a_real_scheduler(
    airflow: AirflowStandalone, database: PostgresCluster, statsd: StatsdListener
):
    timer = Timer()
    database.make_backlog(BACKLOG)
    airflow.set_variable(FLAG, "true")
    airflow.start()
    airflow.wait_for_dag(DAG_ID)
    airflow.unpause(DAG_ID)
    timer.step("Airflow started, DAG parsed, flag on, 50 segments pending")

    # 1. gate closed, backlog above 42, flag on: the sensor waits, deferred, through many checks
    first = airflow.trigger(DAG_ID, run_id="throttled_then_flag_off")
    wait_for_deferred_sensor(airflow, first)
    seen: collections.Counter[str | None] = collections.Counter()
    deadline = time.monotonic() + THROTTLED_SECONDS
    while time.monotonic() < deadline:
        sensor = ti_of(airflow, first, SENSOR)
        seen[sensor["state"]] += 1
        # deferred all along: no worker slot held, no reschedule for apache/airflow#71172 to fail
        assert sensor["state"] == "deferred", f"the waiting sensor left its deferred wait: {sensor}"
        assert sensor["try_number"] == 1, f"the waiting sensor was retried: {sensor}"
        assert ti_of(airflow, first, BATCH)["state"] is None
        time.sleep(2)
    checks = checks_logged(airflow, first)
    assert checks >= max(3, THROTTLED_SECONDS / POKE_SECONDS / 2), (
        f"only {checks} checks logged by the trigger:\n{airflow.task_log(DAG_ID, first, SENSOR)}"
    )
    assert not state_tables_exist(database), "a batch ran while the backlog was above the threshold"
    assert rows_done(database) == {0: IN_SCOPE_ROWS}
    assert len(database.ready_segments()) >= BACKLOG
    # metrics: the sensor's first check (in its task) counted a throttle event, under the migration's
    # name (the sensor of a migration DAG asks as the migration, as its operator does); the
    # trigger's checks (in the triggerer) keep the backlog gauge up to date
    assert statsd.lines(f"airflow.walthrottle.throttle_events.{MIGRATION}:") == [
        f"airflow.walthrottle.throttle_events.{MIGRATION}:1|c"
    ]
    gauges = statsd.lines(f"airflow.walthrottle.wal.pending_segments.{CONN_ID}:")
    assert len(gauges) >= checks and all(int(line.split(":")[1].split("|")[0]) >= BACKLOG for line in gauges)
    timer.step(f"1. throttled: sensor states {dict(seen)}, {checks} checks, no batch")

    # 2. the flag off: the trigger's next check lets the run go, and one batch is applied
    airflow.set_variable(FLAG, "false")
    (run,) = airflow.wait_for_runs(DAG_ID, [first], timeout=120).values()
    assert run["state"] == "success"
    assert airflow.task_states(DAG_ID, first) == {SENSOR: "success", BATCH: "success"}
    assert {ti["try_number"] for ti in airflow.task_instances(DAG_ID, first)} == {1}
    assert "turned off during the wait: proceeding" in airflow.task_log(DAG_ID, first, SENSOR)
    assert rows_done(database) == {1: BATCH_SIZE, 0: IN_SCOPE_ROWS - BATCH_SIZE}
    statsd.wait_for(
        lambda lines: f"airflow.walthrottle.rows.{MIGRATION}:{BATCH_SIZE}|c" in lines,
        prefix=f"airflow.walthrottle.rows.{MIGRATION}:",
    )
    batches = f"airflow.walthrottle.batches.{MIGRATION}:"
    assert statsd.lines(batches) == [f"{batches}1|c"]
    # the task's extra link leads to its migration on the migrations page, which shows it
    links = airflow.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{first}/taskInstances/{BATCH}/links")
    links = links["extra_links"]
    assert links == {"Batched migration": f"/walthrottle/?conn_id={CONN_ID}&migration={MIGRATION}"}
    page = airflow.get_text(links["Batched migration"])
    assert MIGRATION in page and "tr id='migration-e2e_db-e2e_increment_counter' class='highlight'" in page
    timer.step("2. flag off: the run went on and applied one batch")

    # 3. flag on again, backlog still above 42: a new run waits; the gate opens and it goes on
    airflow.set_variable(FLAG, "true")
    second = airflow.trigger(DAG_ID, run_id="throttled_then_drained")
    wait_for_deferred_sensor(airflow, second)
    assert rows_done(database) == {1: BATCH_SIZE, 0: IN_SCOPE_ROWS - BATCH_SIZE}
    database.drain()
    (run,) = airflow.wait_for_runs(DAG_ID, [second], timeout=120).values()
    assert run["state"] == "success"
    assert airflow.task_states(DAG_ID, second) == {SENSOR: "success", BATCH: "success"}
    assert "WAL archival check passed" in airflow.task_log(DAG_ID, second, SENSOR)
    assert rows_done(database) == {1: 2 * BATCH_SIZE, 0: IN_SCOPE_ROWS - 2 * BATCH_SIZE}
    timer.step("3. drained: the waiting run went on and applied one batch")

    # 4. a backfill over six logical dates, four runs at a time: five batches, then nothing left
    runs, most_running = airflow.backfill(
        DAG_ID, from_date=BACKFILL_FROM, to_date=BACKFILL_TO, max_active_runs=4, timeout=240
    )
    backfill_ids = [run["dag_run_id"] for run in runs]
    assert len(backfill_ids) == BACKFILL_DATES, backfill_ids
    assert {run["state"] for run in runs} == {"success"}, runs
    assert most_running <= 4
    batch_tis = [ti for ti in airflow.task_instances(DAG_ID) if ti["dag_run_id"] in backfill_ids]
    states = collections.Counter((ti["task_id"], ti["state"]) for ti in batch_tis)
    assert states == {
        (SENSOR, "success"): BACKFILL_DATES,
        (BATCH, "success"): BATCHES - 2,
        (BATCH, "skipped"): BACKFILL_DATES - (BATCHES - 2),
    }, states
    assert {ti["try_number"] for ti in batch_tis} == {1}
    timer.step(f"4. backfill: {len(runs)} runs (at most {most_running} at once), {BATCHES - 2} batches")

    # 5. every in-scope row touched exactly once, every other row untouched; disjoint succeeded ranges
    wrong = database.execute(
        sql.SQL(
            "SELECT id, tenant, counter FROM {} "
            "WHERE counter <> CASE WHEN tenant % 3 = 0 THEN 1 ELSE 0 END ORDER BY id"
        ).format(sql.Identifier(TABLE))
    )
    assert wrong == [], f"rows touched the wrong number of times (id, tenant, counter): {wrong[:20]}"
    assert rows_done(database) == {1: IN_SCOPE_ROWS}
    done = jobs(database)
    assert [job["status"] for job in done] == ["succeeded"] * BATCHES, done
    assert [job["rows"] for job in done] == [BATCH_SIZE] * BATCHES, done
    assert all(later["start"] > earlier["end"] for earlier, later in itertools.pairwise(done))
    assert {job["attempts"] for job in done} == {1}
    # one job per run that applied a batch, and one run per job
    batch_runs = {ti["dag_run_id"] for ti in batch_tis if ti["task_id"] == BATCH and ti["state"] == "success"}
    assert sorted(job["run_id"] for job in done) == sorted({first, second} | batch_runs)
    first_key, last_key = database.execute(
        sql.SQL("SELECT min(id), max(id) FROM {} WHERE tenant % 3 = 0").format(sql.Identifier(TABLE))
    )[0]
    assert done[0]["start"] == first_key and done[-1]["end"] == last_key
    timer.step("5. table checked row by row; 7 disjoint succeeded ranges")
    print("[e2e] steps: " + ", ".join(f"{name.split(':')[0]} {secs:.0f}s" for name, secs in timer.steps))

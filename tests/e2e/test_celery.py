"""End to end on the CeleryExecutor: a migration with ``concurrency=3`` on two Celery workers.

Everything is started by the test (``tests/support/celery_cluster.py``): a Redis broker
(Debian's ``redis-server``), a scheduler, dag-processor, triggerer and api-server with their metadata
in PostgreSQL (Celery's results too), and two ``airflow celery worker`` processes of two slots each,
with distinct Celery hostnames. The DAG comes from
:func:`~airflow_provider_walthrottle.batched_migration_dag` with ``concurrency=3``, written into the
DAGs folder as a user would, over a table of a throwaway PostgreSQL with ``archive_mode=on``, the
WAL flag on.

A backfill of nine logical dates with ``--max-active-runs 4`` drives it, so the batch task's
``concurrency`` (``max_active_tis_per_dag``), not the number of runs, is what limits the batches
running at once. Each batch is 200 keys in four sub-batches with a fixed 1.5 s pause between them
(about 5 s of wall time), long enough for batches to meet. Then one more run finds nothing left,
and the migration finishes. The test shows, from the provider's state tables, Airflow's API and its
metadata database, and the workers' own logs:

1. batches ran at the same time (their jobs' ``started_at``/``finished_at`` overlap), never more
   than three at once, while four runs were active;
2. on both workers, and batches that overlapped on different workers: each task instance's
   ``hostname`` names its worker, and its Celery task id (``external_executor_id``) is in that
   worker's log and no other's;
3. every in-scope row was updated exactly once and every other row not at all (row by row), by
   nine disjoint succeeded ranges;
4. the migration is finished.

Nothing here is timed: throughput against concurrency is ``bench/scheduler_throughput.py
--executor celery``. It takes about two minutes here.
"""

from __future__ import annotations

import collections
import itertools
import time
from typing import TYPE_CHECKING, Any

import pytest
from psycopg import sql

from tests.support.airflow_standalone import make_home, serving_dag
from tests.support.celery_cluster import CeleryAirflow

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.support.postgres_cluster import ClusterFactory, PostgresCluster

DAG_ID = "e2e_celery_migration"
MIGRATION = "e2e_celery_counter"
SENSOR = f"{MIGRATION}.wait_for_wal_archival"
BATCH = f"{MIGRATION}.apply_batch"
CONN_ID = "e2e_celery_db"
FLAG = "batched_migrations_health_status_wal"
TABLE = "celery_items"
CONCURRENCY = 3
#: One more run than batches may run at once: the cap, not the runs, must hold the batches back.
MAX_ACTIVE_RUNS = CONCURRENCY + 1
WORKERS = 2
#: Task slots per worker: 4 in all, so three batches at once cannot all fit on one worker.
WORKER_SLOTS = 2
BATCH_SIZE = 200
SUB_BATCH_SIZE = 50
PAUSE_MS = 1500
BATCHES = 9
IN_SCOPE_ROWS = BATCH_SIZE * BATCHES
BACKFILL_FROM, BACKFILL_TO = "2020-01-01", "2020-01-09"

DAG_FILE = f'''
"""Written by tests/e2e/test_celery.py: a migration with concurrency={CONCURRENCY}, driven by backfills."""

import datetime

from airflow_provider_walthrottle import batched_migration_dag

UTC = datetime.timezone.utc

# an explicit daily schedule whose end date is past: the scheduler starts no run of its own, and
# each logical date of a backfill applies one batch
dag = batched_migration_dag(
    dag_id="{DAG_ID}",
    start_date=datetime.datetime(2020, 1, 1, tzinfo=UTC),
    schedule="@daily",
    max_active_runs={MAX_ACTIVE_RUNS},
    dag_kwargs={{"end_date": datetime.datetime(2020, 12, 31, tzinfo=UTC)}},
    tags=["e2e", "celery"],
    postgres_conn_id="{CONN_ID}",
    migration_name="{MIGRATION}",
    table="public.{TABLE}",
    column="id",
    scope="tenant %% 3 = 0",
    batch_sql=(
        "UPDATE public.{TABLE} SET counter = counter + 1 "
        "WHERE id BETWEEN %(start)s AND %(end)s AND tenant %% 3 = 0"
    ),
    poke_interval=5,
    concurrency={CONCURRENCY},
    operator_kwargs={{
        "batch_size": {BATCH_SIZE},
        "min_batch_size": {BATCH_SIZE},
        "max_batch_size": {BATCH_SIZE},
        "sub_batch_size": {SUB_BATCH_SIZE},
        "pause_ms": {PAUSE_MS},
    }},
)
'''


# --------------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def database(pg_cluster_factory: ClusterFactory) -> PostgresCluster:
    """A cluster of its own (``archive_mode=on``), with the test table: three tenants in ten in scope."""
    cluster = pg_cluster_factory(name="e2e-celery")
    make_items_table(cluster)
    return cluster


@pytest.fixture(scope="module")
def metadata(pg_cluster_factory: ClusterFactory) -> PostgresCluster:
    """A cluster for Airflow's metadata and Celery's results (no archiving), with an ``airflow`` database."""
    cluster = pg_cluster_factory(name="e2e-celery-metadata", archive_mode="off")
    cluster.execute("CREATE DATABASE airflow")
    return cluster


@pytest.fixture(scope="module")
def airflow(database: PostgresCluster, metadata: PostgresCluster) -> Iterator[CeleryAirflow]:
    """A real Airflow on the CeleryExecutor, with its broker and two workers; all stopped after."""
    home = make_home()
    instance = CeleryAirflow(
        home,
        dags_folder=home / "dags",
        metadata_db=metadata.uri(dbname="airflow").replace("postgresql://", "postgresql+psycopg://", 1),
        connections={CONN_ID: database.uri()},
        parallelism=WORKERS * WORKER_SLOTS,
        workers=WORKERS,
        worker_concurrency=WORKER_SLOTS,
    )
    with serving_dag(instance, DAG_ID, DAG_FILE) as ready:
        yield ready


# --------------------------------------------------------------------------------------------------
# the database side
# --------------------------------------------------------------------------------------------------


def make_items_table(cluster: PostgresCluster) -> None:
    """Create the table with exactly :data:`IN_SCOPE_ROWS` rows in scope (``tenant % 3 = 0``).

    Every 7th id is missing, so ranges cross gaps; out-of-scope rows sit between and after them.
    """
    ids, in_scope, candidate = [], 0, 0
    while in_scope < IN_SCOPE_ROWS:
        candidate += 1
        if candidate % 7:
            ids.append(candidate)
            in_scope += (candidate % 10) % 3 == 0
    ids += [i for i in range(ids[-1] + 1, ids[-1] + 40) if i % 7 and (i % 10) % 3]
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


def jobs(cluster: PostgresCluster) -> list[dict[str, Any]]:
    """Return the migration's jobs, by start key, with their start and end as epoch seconds."""
    rows = cluster.execute(
        """
SELECT start_key::bigint, end_key::bigint, status, rows_affected, attempts, run_id, try_number,
       extract(epoch FROM started_at)::float8, extract(epoch FROM finished_at)::float8
FROM walthrottle.batched_migration_jobs WHERE migration_name = %s ORDER BY start_key::bigint
""",
        [MIGRATION],
    )
    keys = ("start", "end", "status", "rows", "attempts", "run_id", "try_number", "started", "finished")
    return [dict(zip(keys, row, strict=True)) for row in rows]


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    """Return how many of the ``(start, end)`` intervals overlapped at most (an end before a start)."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def overlap(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return bool(a["started"] < b["finished"] and b["started"] < a["finished"])


# --------------------------------------------------------------------------------------------------
# the Airflow side
# --------------------------------------------------------------------------------------------------


def executor_ids(metadata: PostgresCluster) -> dict[str, str]:
    """Return ``{run_id: external_executor_id}`` of the batch task (its Celery task id), from the metadata."""
    with metadata.connect(dbname="airflow") as conn:
        rows = conn.execute(
            "SELECT run_id, external_executor_id FROM task_instance WHERE dag_id = %s AND task_id = %s",
            [DAG_ID, BATCH],
        ).fetchall()
    return {run_id: executor_id for run_id, executor_id in rows}


# --------------------------------------------------------------------------------------------------
# the scenario
# --------------------------------------------------------------------------------------------------


def test_concurrent_batches_on_two_celery_workers(
    airflow: CeleryAirflow, database: PostgresCluster, metadata: PostgresCluster
):
    started = time.monotonic()
    database.drain()
    airflow.set_variable(FLAG, "true")
    airflow.start()
    assert airflow.ping_workers() == [f"celery@{name}" for name in airflow.worker_names]
    airflow.wait_for_dag(DAG_ID)
    airflow.unpause(DAG_ID)
    print(f"[e2e] Airflow, broker and {WORKERS} workers up: {time.monotonic() - started:.0f} s", flush=True)

    # a backfill of nine logical dates, four runs at a time: nine batches, at most three at once
    runs, most_running = airflow.backfill(
        DAG_ID, from_date=BACKFILL_FROM, to_date=BACKFILL_TO, max_active_runs=MAX_ACTIVE_RUNS, timeout=300
    )
    backfill_ids = [run["dag_run_id"] for run in runs]
    assert len(backfill_ids) == BATCHES, backfill_ids
    assert {run["state"] for run in runs} == {"success"}, airflow.describe_runs(DAG_ID)
    # four runs at once: the fourth one's batch waited for one of the three before it
    assert most_running == MAX_ACTIVE_RUNS
    print(f"[e2e] backfill done: {time.monotonic() - started:.0f} s", flush=True)

    # one more run finds every range done: its batch is skipped, and the migration is finished
    last = airflow.trigger(DAG_ID, run_id="after_the_last_batch")
    (run,) = airflow.wait_for_runs(DAG_ID, [last], timeout=120).values()
    assert run["state"] == "success"
    assert airflow.task_states(DAG_ID, last) == {SENSOR: "success", BATCH: "skipped"}
    assert "nothing left to do" in airflow.task_log(DAG_ID, last, BATCH)
    status = database.execute(
        "SELECT status FROM walthrottle.batched_migrations WHERE name = %s", [MIGRATION]
    )
    assert status == [("finished",)]

    # every in-scope row exactly once, every other row untouched, by nine disjoint succeeded ranges
    wrong = database.execute(
        sql.SQL(
            "SELECT id, tenant, counter FROM {} "
            "WHERE counter <> CASE WHEN tenant % 3 = 0 THEN 1 ELSE 0 END ORDER BY id"
        ).format(sql.Identifier(TABLE))
    )
    assert wrong == [], f"rows touched the wrong number of times (id, tenant, counter): {wrong[:20]}"
    done = jobs(database)
    assert [job["status"] for job in done] == ["succeeded"] * BATCHES, done
    assert [job["rows"] for job in done] == [BATCH_SIZE] * BATCHES, done
    assert {job["attempts"] for job in done} == {1}
    assert all(later["start"] > earlier["end"] for earlier, later in itertools.pairwise(done))
    assert sorted(job["run_id"] for job in done) == sorted(backfill_ids)

    # 1. batches ran at the same time, never more than `concurrency` at once (with four runs active)
    peak = most_at_once([(job["started"], job["finished"]) for job in done])
    assert 2 <= peak <= CONCURRENCY, f"at most {peak} batches ran at once: {done}"

    # 2. on both workers, and batches that overlapped ran on different workers
    batch_tis = {ti["dag_run_id"]: ti for ti in airflow.task_instances(DAG_ID) if ti["task_id"] == BATCH}
    worker_of = {job["run_id"]: batch_tis[job["run_id"]]["hostname"] for job in done}
    assert {batch_tis[run_id]["try_number"] for run_id in backfill_ids} == {1}
    assert set(worker_of.values()) == set(airflow.worker_names), worker_of
    across = [
        (a["run_id"], b["run_id"])
        for a, b in itertools.combinations(done, 2)
        if overlap(a, b) and worker_of[a["run_id"]] != worker_of[b["run_id"]]
    ]
    assert across, f"no two overlapping batches ran on different workers: {worker_of}, {done}"
    # the workers' own logs agree: each batch's Celery task was received by its worker and no other
    received = airflow.celery_task_ids()
    for run_id, celery_id in executor_ids(metadata).items():
        if run_id in backfill_ids:
            takers = [name for name, ids in received.items() if celery_id in ids]
            assert takers == [worker_of[run_id]], (run_id, celery_id, takers, worker_of[run_id])

    per_worker = collections.Counter(worker_of.values())
    print(
        f"[e2e] {BATCHES} batches, at most {peak} at once, {len(across)} overlapping pairs across "
        f"workers, per worker {dict(per_worker)}; total {time.monotonic() - started:.0f} s",
        flush=True,
    )

"""A migration DAG from ``batched_migration_dag()`` under a real Airflow scheduler: how fast is it?

What users run, not the core in-process: a real scheduler, dag-processor, triggerer and api-server
(LocalExecutor, ``parallelism`` 4, metadata in a PostgreSQL of its own), started as the end-to-end
test starts them, and one DAG built by ``batched_migration_dag()`` with the helper's defaults unless
``--schedule`` or ``--operator-kwargs`` say otherwise. The WAL flag is on. Against it, a throwaway
PostgreSQL with ``archive_mode=on`` and an archiver of a chosen pace (``--archive-delay``: seconds
``archive_command`` sleeps before each copy, so at most ``1 / delay`` segments a second).

For ``--seconds`` after the first batch starts it samples, every 0.25 s, the keys done (from the
provider's state tables) and the ``.ready`` files, and reports:

- rows/s of the migration: the keys done, divided by the time from its first batch's start to the
  window's end, or to its last batch's end if it finished in the window (ramp-up included, as in
  the core's figure; use ``--rows`` large enough that batches reach their time target);
- the archiver-bound limit for this table: the archiver's pace times the segment size, divided by
  the WAL bytes a key cost (measured from the WAL position before and after), and rows/s as a
  fraction of it (only with ``--archive-delay``; a fast archiver does not bind);
- max pending segments and the seconds above the threshold (42);
- the batches in the window, their median size and duration, and the median gap from one batch's
  end to the next one's start (what the scheduler adds);
- if the migration finished in the window: the DAG runs that started after its last batch, and in
  how many seconds (what a finished migration costs the scheduler; use ``--rows`` small enough).

With ``--core`` it also runs the batching core in-process on a fresh copy of the table, with the
same operator arguments and no scheduler, for the same number of seconds, and reports the DAG's
rate as a fraction of it.

``--executor celery``: the CeleryExecutor, with a Redis broker and ``--workers`` workers of two slots
(``tests/support/celery_cluster.py``). ``--concurrency N`` gives the helper ``concurrency=N`` and
``max_active_runs=N``; N batches at once need N runs at once, which the default schedule never has
(one chain of runs): ``--schedule @daily --catchup`` starts the past days of 2026, N at a time.

    .venv/bin/python bench/scheduler_throughput.py --seconds 120 --core
    .venv/bin/python bench/scheduler_throughput.py --seconds 120 --rows 100000 --schedule @continuous \\
        --operator-kwargs '{"max_batch_size": 5000}'
    .venv/bin/python bench/scheduler_throughput.py --wal-segsize-mb 1 --archive-delay 0.125 \\
        --operator-kwargs '{"sub_batch_size": 1000, "pause_ms": 0}'
    .venv/bin/python bench/scheduler_throughput.py --seconds 120 --executor celery --workers 2 \\
        --concurrency 3 --schedule @daily --catchup
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import itertools
import json
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cluster import bench_cluster, copy_items_table, machine, make_items_table, update_sql, write_json

from airflow_provider_walthrottle.flags import WAL_HEALTH_FLAG
from airflow_provider_walthrottle.wal.health import DEFAULT_MAX_PENDING_SEGMENTS
from tests.support.airflow_standalone import AirflowStandalone, make_home
from tests.support.celery_cluster import CeleryAirflow
from tests.support.postgres_cluster import wait_until

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.support.postgres_cluster import PostgresCluster

DAG_ID = "bench_scheduler_throughput"
MIGRATION = "bench_scheduler_migration"
TABLE = "items"
CONN_ID = "bench_db"
SAMPLE_SECONDS = 0.25
#: Task slots of each Celery worker (``--concurrency`` of ``airflow celery worker``).
CELERY_SLOTS = 2

DAG_FILE = '''
"""Written by bench/scheduler_throughput.py."""

import datetime
import itertools
import json

from airflow_provider_walthrottle import batched_migration_dag

dag = batched_migration_dag(
    dag_id={dag_id!r},
    start_date=datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc),
    postgres_conn_id={conn_id!r},
    migration_name={migration!r},
    table="public.{table}",
    column="id",
    batch_sql={batch_sql!r},
    **json.loads({helper_kwargs!r}),
)
'''


@contextlib.contextmanager
def airflow_running(
    target: PostgresCluster, metadata: PostgresCluster, dag_source: str, *, celery_workers: int = 0
) -> Iterator[Any]:
    """Start a real Airflow with one DAG file and a connection to ``target`` (on Celery with workers)."""
    metadata.execute("CREATE DATABASE airflow")
    home = make_home()
    (home / "dags").mkdir(parents=True, exist_ok=True)
    (home / "dags" / f"{DAG_ID}.py").write_text(dag_source)
    options: dict[str, Any] = {
        "dags_folder": home / "dags",
        "metadata_db": metadata.uri(dbname="airflow").replace("postgresql://", "postgresql+psycopg://", 1),
        "connections": {CONN_ID: target.uri()},
        "parallelism": 4,
    }
    airflow = (
        CeleryAirflow(home, workers=celery_workers, worker_concurrency=CELERY_SLOTS, **options)
        if celery_workers
        else AirflowStandalone(home, **options)
    )
    try:
        airflow.prepare()
        airflow.set_variable(WAL_HEALTH_FLAG, "true")
        airflow.start()
        airflow.wait_for_dag(DAG_ID)
        yield airflow
    finally:
        airflow.stop()
        airflow.remove_home()


def keys_done(target: PostgresCluster) -> int:
    """Return the keys the migration has walked so far (0 before its state tables exist)."""
    if target.execute("SELECT to_regclass('walthrottle.batched_migration_jobs')")[0][0] is None:
        return 0
    rows = target.execute(
        "SELECT coalesce(sum(keys_done), 0) FROM walthrottle.batched_migration_jobs "
        "WHERE migration_name = %s",
        [MIGRATION],
    )
    return int(rows[0][0])


def wal_position(target: PostgresCluster) -> int:
    """Return the server's WAL insert position, in bytes."""
    return int(target.execute("SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn")[0][0])


def sample(target: PostgresCluster, seconds: float, threshold: int) -> dict[str, Any]:
    """Wait for the first batch, then sample keys done and pending segments for ``seconds``."""
    deadline = time.monotonic() + 300
    while keys_done(target) == 0:
        if time.monotonic() > deadline:
            raise RuntimeError("no batch finished a sub-batch within 300 s of the DAG's start")
        time.sleep(SAMPLE_SECONDS)
    start, keys_at_start, wal_at_start = time.monotonic(), keys_done(target), wal_position(target)
    pending: list[int] = []
    above = 0.0
    while time.monotonic() - start < seconds:
        time.sleep(SAMPLE_SECONDS)
        pending.append(len(target.ready_segments()))
        above += SAMPLE_SECONDS if pending[-1] > threshold else 0.0
    elapsed = time.monotonic() - start
    keys = keys_done(target) - keys_at_start
    first_start, last_end = migration_span(target)
    # from the first batch's start to the window's end, or to the last batch's end if it finished
    # in the window: the whole migration as the core's figure is, ramp-up included
    span = (last_end or time.time()) - first_start
    return {
        "seconds": round(elapsed, 1),
        "keys": keys,
        "rows_per_second": keys_done(target) / span,
        "span_seconds": round(span, 1),
        "finished_in_window": last_end is not None,
        "wal_bytes_per_key": (wal_position(target) - wal_at_start) / keys if keys else None,
        "max_pending": max(pending, default=0),
        "seconds_above_threshold": round(above, 2),
        **batches(target, start_wall=time.time() - elapsed),
    }


def migration_span(target: PostgresCluster) -> tuple[float, float | None]:
    """Return when the migration's first batch started, and when its last ended if it is finished."""
    first, last = target.execute(
        "SELECT extract(epoch FROM min(j.started_at)), "
        "extract(epoch FROM max(j.finished_at) FILTER (WHERE m.status = 'finished')) "
        "FROM walthrottle.batched_migration_jobs j "
        "JOIN walthrottle.batched_migrations m ON m.name = j.migration_name WHERE m.name = %s",
        [MIGRATION],
    )[0]
    return float(first), None if last is None else float(last)


def batches(target: PostgresCluster, *, start_wall: float) -> dict[str, Any]:
    """Describe the jobs that started in the window: their sizes, durations and the gaps between them."""
    rows = target.execute(
        "SELECT planned_rows, extract(epoch FROM started_at), extract(epoch FROM finished_at) "
        "FROM walthrottle.batched_migration_jobs WHERE migration_name = %s AND status = 'succeeded' "
        "AND started_at >= to_timestamp(%s) ORDER BY started_at",
        [MIGRATION, start_wall],
    )
    gaps = [float(b[1]) - float(a[2]) for a, b in itertools.pairwise(rows)]
    return {
        "batches": len(rows),
        "median_batch_keys": statistics.median(int(r[0]) for r in rows) if rows else None,
        "median_batch_seconds": statistics.median(float(r[2]) - float(r[1]) for r in rows) if rows else None,
        "median_gap_seconds": statistics.median(gaps) if gaps else None,
    }


def job_timeline(target: PostgresCluster) -> list[dict[str, Any]]:
    """Return every job of the migration: its keys, status, and when it ran from the first job's start."""
    rows = target.execute(
        "SELECT id, status, planned_rows, keys_done, sub_batches, wal_bytes, "
        "extract(epoch FROM started_at - min(started_at) OVER ()), "
        "extract(epoch FROM finished_at - started_at) "
        "FROM walthrottle.batched_migration_jobs WHERE migration_name = %s ORDER BY id",
        [MIGRATION],
    )
    return [
        {
            "job": int(job),
            "status": status,
            "planned_keys": int(planned),
            "keys_done": int(done),
            "sub_batches": int(sub_batches),
            "wal_bytes": int(wal_bytes),
            "started_after": None if start is None else round(float(start), 2),
            "seconds": None if seconds is None else round(float(seconds), 2),
        }
        for job, status, planned, done, sub_batches, wal_bytes, start, seconds in rows
    ]


def most_batches_at_once(target: PostgresCluster) -> int:
    """Return the most batches of the migration that ran at the same time (by their jobs' times)."""
    rows = target.execute(
        "SELECT extract(epoch FROM started_at), extract(epoch FROM coalesce(finished_at, now())) "
        "FROM walthrottle.batched_migration_jobs WHERE migration_name = %s AND started_at IS NOT NULL",
        [MIGRATION],
    )
    # +1 at each start, -1 at each end; at the same instant an end comes first
    events = sorted([(float(start), 1) for start, _ in rows] + [(float(end), -1) for _, end in rows])
    return max(itertools.accumulate(step for _, step in events), default=0)


def after_the_last_batch(target: PostgresCluster, airflow: AirflowStandalone) -> dict[str, Any]:
    """If the migration is finished: the DAG runs that started after its last batch ended, and since when."""
    finished = target.execute(
        "SELECT extract(epoch FROM max(j.finished_at)) FROM walthrottle.batched_migration_jobs j "
        "JOIN walthrottle.batched_migrations m ON m.name = j.migration_name "
        "WHERE m.name = %s AND m.status = 'finished' AND j.status = 'succeeded'",
        [MIGRATION],
    )[0][0]
    if finished is None:
        return {"runs_after_last_batch": None, "seconds_after_last_batch": None}
    last_batch = datetime.datetime.fromtimestamp(float(finished), datetime.timezone.utc)
    page = airflow.api(
        "GET", f"/api/v2/dags/{DAG_ID}/dagRuns", start_date_gte=last_batch.isoformat(), limit=1
    )
    return {
        "runs_after_last_batch": page["total_entries"],
        "seconds_after_last_batch": round(time.time() - float(finished), 1),
    }


def core_rate(target: PostgresCluster, seconds: float, operator_kwargs: dict[str, Any]) -> float:
    """Run the batching core in-process on a fresh copy of the table for ``seconds``; return rows/s."""
    import psycopg
    from _core import operator_task

    from airflow_provider_walthrottle.migrations.batch import BatchDone
    from airflow_provider_walthrottle.migrations.runner import prepare
    from airflow_provider_walthrottle.operators.batched_migration import BatchedMigrationOperator

    copy_items_table(target, TABLE, "items_core")
    # the operator's own defaults, as the DAG's task has them: build the operator and read them back
    operator = BatchedMigrationOperator(
        task_id="core",
        migration_name="bench_core",
        table="public.items_core",
        column="id",
        batch_sql=update_sql("items_core"),
        **operator_kwargs,
    )
    settings = operator.run_settings(DEFAULT_MAX_PENDING_SEGMENTS)
    batch_size = operator.batch_size
    keys = 0
    with psycopg.connect(target.dsn(), autocommit=True) as conn:
        store = prepare(conn, operator.definition, batch_size)
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            step = operator_task(store, settings, conn_id=CONN_ID)
            if not isinstance(step, BatchDone):
                break
            keys += step.result.keys
        return keys / (time.monotonic() - start)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run one case; return its figures and the settings it ran with."""
    helper_kwargs: dict[str, Any] = {"operator_kwargs": args.operator_kwargs}
    if args.schedule is not None:
        helper_kwargs["schedule"] = args.schedule
    if args.catchup:
        helper_kwargs["catchup"] = True
    if args.concurrency is not None:
        helper_kwargs.update(concurrency=args.concurrency, max_active_runs=args.concurrency)
    dag_source = DAG_FILE.format(
        dag_id=DAG_ID,
        conn_id=CONN_ID,
        migration=MIGRATION,
        table=TABLE,
        batch_sql=update_sql(TABLE),
        helper_kwargs=json.dumps(helper_kwargs),
    )
    with (
        bench_cluster(
            "scheduler-target", wal_segsize_mb=args.wal_segsize_mb, archive_delay_seconds=args.archive_delay
        ) as target,
        bench_cluster("scheduler-metadata", archive_mode="off") as metadata,
    ):
        make_items_table(target, TABLE, args.rows)
        # start from an empty backlog: with a slow archiver, making the table leaves hundreds behind
        wait_until(lambda: not target.ready_segments(), timeout=3600, what="the table's WAL archived")
        target.archive_one_segment()
        workers = args.workers if args.executor == "celery" else 0
        with airflow_running(target, metadata, dag_source, celery_workers=workers) as airflow:
            airflow.unpause(DAG_ID)
            if args.schedule not in (None, "@continuous") and not args.catchup:
                airflow.trigger(DAG_ID, run_id="bench_first")
            figures = sample(target, args.seconds, DEFAULT_MAX_PENDING_SEGMENTS)
            figures["max_batches_at_once"] = most_batches_at_once(target)
            figures.update(after_the_last_batch(target, airflow))
            figures["jobs"] = job_timeline(target)
        if args.core:
            figures["core_rows_per_second"] = core_rate(target, args.seconds, args.operator_kwargs)
            figures["fraction_of_core"] = figures["rows_per_second"] / figures["core_rows_per_second"]
    if args.archive_delay and figures["wal_bytes_per_key"]:
        limit = (1 / args.archive_delay) * args.wal_segsize_mb * 1024 * 1024 / figures["wal_bytes_per_key"]
        figures["archiver_bound_rows_per_second"] = limit
        figures["fraction_of_archiver_bound"] = figures["rows_per_second"] / limit
    settings = {
        "rows": args.rows,
        "schedule": args.schedule or "the helper's default",
        "operator_kwargs": args.operator_kwargs or "the helper's defaults",
        "wal_segsize_mb": args.wal_segsize_mb,
        "archive_delay_seconds": args.archive_delay,
        "executor": (
            f"CeleryExecutor, {workers} workers of {CELERY_SLOTS} slots" if workers else "LocalExecutor"
        ),
        "parallelism": 4,
        "concurrency": args.concurrency or "the helper's default (1)",
        "catchup": args.catchup,
    }
    return {"settings": settings, "figures": figures, "machine": machine(), "when": _now()}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def build_parser() -> argparse.ArgumentParser:
    """Return the command line's parser (``bench/scheduler_suite.py`` builds its cases with it)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="the measured window (default 120)")
    parser.add_argument("--rows", type=int, default=20_000_000, help="rows in the table (default 20,000,000)")
    parser.add_argument("--wal-segsize-mb", type=int, default=16, help="initdb --wal-segsize (default 16)")
    parser.add_argument(
        "--archive-delay", type=float, default=0.0, help="seconds archive_command sleeps per segment"
    )
    parser.add_argument("--schedule", help="the DAG's schedule; the helper's default if not given")
    parser.add_argument(
        "--operator-kwargs", type=json.loads, default={}, help="JSON: more operator arguments"
    )
    parser.add_argument("--catchup", action="store_true", help="the DAG catches up on its schedule's past")
    parser.add_argument("--executor", choices=("local", "celery"), default="local", help="default: local")
    parser.add_argument("--workers", type=int, default=2, help="Celery workers (default 2)")
    parser.add_argument("--concurrency", type=int, help="the helper's concurrency and max_active_runs")
    parser.add_argument("--core", action="store_true", help="also run the core in-process, for the ratio")
    parser.add_argument("--out", help="write the results as JSON here")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run the case, print its figures as JSON (and write them with ``--out``)."""
    args = build_parser().parse_args(argv)
    results = run(args)
    print(json.dumps(results, indent=2, default=str))
    write_json(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

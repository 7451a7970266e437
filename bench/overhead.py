"""Overhead of the operator's batch loop over a plain psycopg loop issuing the same statements.

One throwaway PostgreSQL (archiving on, a fast archiver, so the backlog stays near 0 and the
check never stops the run) and one table of ``--rows`` rows with ids 1 to N. Each run migrates a
fresh copy of it (``CREATE TABLE ... AS``, new primary key, ``VACUUM ANALYZE``, ``CHECKPOINT``):

``plain``
    a psycopg loop, autocommit, that runs ``batch_sql`` over ``[1, s]``, ``[s + 1, 2s]``, ... (``s``
    the sub-batch size): the same statements over the same key ranges as the operator's
    sub-batches, one transaction each, and nothing else.
``operator, WAL check on``
    ``BatchedMigrationOperator``'s batch loop in-process, through the public core as the operator
    drives it (``bench/_core.py``): per task ``prepare()`` and ``run_batch()`` on one open
    connection, until the migration is finished. That is the runner (claim a job, per sub-batch the
    job's row lock, the range query with the WAL position, the statement and the progress update in
    one transaction), the optimizer, the throttle accounting and, with the flag on, the WAL check
    before the batch and between sub-batches (the flag read and the metrics sent at each).
    Connecting, the kill switch and the scheduler, which a real task adds, are left out.
``operator, WAL check off``
    the same with the flag Variable off: the check reads the flag and returns.

The order of the three rotates from one repeat to the next; the median wall time of
``--repeat`` runs is reported, and the ratio of the operator's median to the plain loop's.

    .venv/bin/python bench/overhead.py --sub-batch-size 1000
    .venv/bin/python bench/overhead.py --batch-size 200000   # one task: per-task costs paid once
    .venv/bin/python bench/overhead.py --profile   # cProfile of one operator run (check on)
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import os
import pstats
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cluster import (
    bench_cluster,
    copy_items_table,
    machine,
    make_items_table,
    markdown_table,
    update_sql,
    write_json,
)
from _core import operator_settings, operator_task

from airflow_provider_walthrottle.flags import WAL_HEALTH_FLAG
from airflow_provider_walthrottle.migrations import schema_queries
from airflow_provider_walthrottle.migrations.batch import BatchDone, Finished
from airflow_provider_walthrottle.migrations.definition import MigrationDefinition
from airflow_provider_walthrottle.migrations.runner import prepare

if TYPE_CHECKING:
    from tests.support.postgres_cluster import PostgresCluster

CONN_ID = "bench_overhead"
THRESHOLD = 42
BATCH_SIZE = 10_000
VARIANTS = ("plain", "check_on", "check_off")
LABELS = {
    "plain": "plain psycopg loop",
    "check_on": "operator, WAL check on",
    "check_off": "operator, WAL check off",
}


def run_plain(dsn: str, table: str, rows: int, sub_batch_size: int) -> int:
    """Run ``batch_sql`` over consecutive ranges of ``sub_batch_size`` ids; return the statements."""
    statement = sql.SQL(update_sql(table))
    statements = 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        for start in range(1, rows + 1, sub_batch_size):
            conn.execute(statement, {"start": start, "end": min(start + sub_batch_size - 1, rows)})
            statements += 1
    return statements


def run_operator(dsn: str, table: str, sub_batch_size: int, batch_size: int = BATCH_SIZE) -> int:
    """Run the operator's batch loop until the migration is finished; return its sub-batches."""
    definition = MigrationDefinition(
        name=f"overhead_{table}", table=table, column="id", batch_sql=update_sql(table)
    )
    settings = operator_settings(batch_size=batch_size, sub_batch_size=sub_batch_size, threshold=THRESHOLD)
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            step = operator_task(prepare(conn, definition, batch_size), settings, conn_id=CONN_ID)
            if isinstance(step, Finished):
                break
            assert isinstance(step, BatchDone), step
        row = conn.execute(
            sql.SQL("SELECT sum(sub_batches) FROM {} WHERE migration_name = %s").format(schema_queries.JOBS),
            [definition.name],
        ).fetchone()
    return int(row[0]) if row and row[0] is not None else -1


def fresh_copy(cluster: PostgresCluster, name: str) -> None:
    copy_items_table(cluster, "items_template", name)
    cluster.execute("CHECKPOINT")


def measure(cluster: PostgresCluster, variant: str, args: argparse.Namespace, run: int) -> float:
    """Migrate a fresh copy with ``variant``; return the wall time in seconds."""
    table = f"items_{variant}_{args.sub_batch_size}_{run}"
    fresh_copy(cluster, table)
    os.environ[f"AIRFLOW_VAR_{WAL_HEALTH_FLAG.upper()}"] = "false" if variant == "check_off" else "true"
    started = time.perf_counter()
    if variant == "plain":
        statements = run_plain(cluster.dsn(), table, args.rows, args.sub_batch_size)
    else:
        statements = run_operator(cluster.dsn(), table, args.sub_batch_size, args.batch_size)
    elapsed = time.perf_counter() - started
    expected = -(-args.rows // args.sub_batch_size)
    assert statements == expected, (variant, statements, expected)
    (migrated,) = cluster.execute(
        sql.SQL("SELECT count(*) FROM {} WHERE migrated").format(sql.Identifier(table))
    )[0]
    assert migrated == args.rows, (variant, migrated)
    cluster.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(table)))
    return elapsed


#: Where the operator's time goes: (label, file, function) of the profiled calls.
PARTS = (
    ("sub-batch transactions (statement and bookkeeping)", "executor.py", "run"),
    ("WAL checks (flag and archiver status)", "gate.py", "check"),
    ("claiming a job (plans its range)", "jobs.py", "claim"),
    ("prepare() per task", "runner.py", "prepare"),
    ("log lines", "structlog.py", "meth"),
)


def breakdown(cluster: PostgresCluster, sub_batch_size: int, batch_size: int) -> dict[str, float]:
    """Profile one operator run (check on); return seconds spent in each of :data:`PARTS`, and in all."""
    table = f"items_profiled_{sub_batch_size}"
    fresh_copy(cluster, table)
    os.environ[f"AIRFLOW_VAR_{WAL_HEALTH_FLAG.upper()}"] = "true"
    profile = cProfile.Profile()
    profile.runcall(run_operator, cluster.dsn(), table, sub_batch_size, batch_size)
    stats: dict[Any, Any] = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    seconds = {"total": sum(tt for _, _, tt, _, _ in stats.values())}
    for label, file, function in PARTS:
        seconds[label] = sum(
            cumulative
            for (path, _, name), (_, _, _, cumulative, _) in stats.items()
            if name == function and path.endswith(file)
        )
    cluster.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(table)))
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--sub-batch-size", type=int, action="append", help="keys per statement (repeatable)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--batch-size",
        type=int,
        default=BATCH_SIZE,
        help="the operator's first batch_size (keys per task); the optimizer grows it from there",
    )
    parser.add_argument("--profile", action="store_true", help="profile one operator run, then stop")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)
    sizes = args.sub_batch_size or [1_000, 10_000]
    logging.getLogger("airflow.task").setLevel(logging.WARNING)  # one line per sub-batch otherwise

    results: dict[str, Any] = {
        "rows": args.rows,
        "repeat": args.repeat,
        "batch_size": args.batch_size,
        "cases": [],
    }
    with bench_cluster("overhead") as cluster:
        os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = cluster.uri()
        make_items_table(cluster, "items_template", args.rows)
        measure(
            cluster, "check_on", argparse.Namespace(**{**vars(args), "sub_batch_size": 1000}), -1
        )  # warm-up
        if args.profile:
            fresh_copy(cluster, "items_profiled")
            os.environ[f"AIRFLOW_VAR_{WAL_HEALTH_FLAG.upper()}"] = "true"
            profile = cProfile.Profile()
            profile.runcall(run_operator, cluster.dsn(), "items_profiled", sizes[0], args.batch_size)
            pstats.Stats(profile).sort_stats("cumulative").print_stats(40)
            return 0
        for size in sizes:
            case_args = argparse.Namespace(**{**vars(args), "sub_batch_size": size})
            times: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
            for run in range(args.repeat):
                order = VARIANTS[run % 3 :] + VARIANTS[: run % 3]
                for variant in order:
                    times[variant].append(measure(cluster, variant, case_args, run))
            medians = {variant: statistics.median(samples) for variant, samples in times.items()}
            case = {
                "sub_batch_size": size,
                "statements": -(-args.rows // size),
                "times": times,
                "median": medians,
                "ratio_check_on": medians["check_on"] / medians["plain"],
                "ratio_check_off": medians["check_off"] / medians["plain"],
            }
            case["breakdown"] = breakdown(cluster, size, args.batch_size)
            results["cases"].append(case)
            print(
                f"sub-batch {size}: plain {medians['plain']:.2f} s, operator {medians['check_on']:.2f} s "
                f"with the check ({case['ratio_check_on']:.3f}x), {medians['check_off']:.2f} s without "
                f"({case['ratio_check_off']:.3f}x)",
                flush=True,
            )
    results["machine"] = machine()
    print(table(results))
    print(breakdown_table(results))
    write_json(args.json, results)
    return 0


def breakdown_table(results: dict[str, Any]) -> str:
    """Return the Markdown table of where the operator's time goes, by sub-batch size."""
    cases = results["cases"]
    rows = []
    for label, _, _ in PARTS:
        rows.append(
            (label, *(f"{case['breakdown'][label] / case['breakdown']['total']:.0%}" for case in cases))
        )
    return markdown_table(
        ("part of the operator's loop", *(f"{case['sub_batch_size']:,} keys a statement" for case in cases)),
        rows,
        "l" + "r" * len(cases),
    )


def table(results: dict[str, Any]) -> str:
    """Return the Markdown table of the results."""
    rows = []
    for case in results["cases"]:
        plain = case["median"]["plain"]
        for variant in VARIANTS:
            median = case["median"][variant]
            per_statement = median / case["statements"] * 1000
            rows.append(
                (
                    f"{case['sub_batch_size']:,}",
                    LABELS[variant],
                    f"{case['statements']:,}",
                    f"{median:.2f}",
                    f"{per_statement:.2f}",
                    f"{median / plain:.3f}",
                )
            )
    return markdown_table(
        ("keys per statement", "loop", "statements", "median wall s", "ms per statement", "ratio to plain"),
        rows,
        "rlrrrr",
    )


if __name__ == "__main__":
    sys.exit(main())

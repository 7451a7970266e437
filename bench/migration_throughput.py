"""Rows per second of a batched migration run in-process, with no scheduler.

Starts a throwaway PostgreSQL (the test harness), fills a table with ROWS rows, and runs the
batching core (:func:`run_batch`, what the operator calls once per task) until the migration is
finished, with the WAL check off. Prints one line of results per configuration and a table.

    .venv/bin/python bench/migration_throughput.py --rows 1000000
    .venv/bin/python bench/migration_throughput.py --batch-size 1000 --sub-batch-size 100
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cluster import bench_cluster, machine, make_items_table, markdown_table, update_sql, write_json

from airflow_provider_walthrottle.migrations.batch import BatchDone, run_batch
from airflow_provider_walthrottle.migrations.definition import MigrationDefinition
from airflow_provider_walthrottle.migrations.optimizer import BatchSizePolicy
from airflow_provider_walthrottle.migrations.runner import HealthVerdict, RunSettings, prepare

if TYPE_CHECKING:
    from tests.support.postgres_cluster import PostgresCluster


def run(cluster: PostgresCluster, rows: int, batch_size: int, sub_batch_size: int) -> dict[str, Any]:
    """Migrate a fresh table of ``rows`` rows to the end; return what it measured."""
    table = f"items_{batch_size}_{sub_batch_size}"
    make_items_table(cluster, table, rows)
    cluster.execute("CHECKPOINT")
    definition = MigrationDefinition(name=table, table=table, column="id", batch_sql=update_sql(table))
    settings = RunSettings(
        sub_batch_size=sub_batch_size,
        pause_ms=0,
        policy=BatchSizePolicy(min_batch_size=batch_size, max_batch_size=batch_size),
    )
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        store = prepare(conn, definition, batch_size)
        started = time.perf_counter()
        batches = 0
        healthy = HealthVerdict(proceed=True)
        while isinstance(run_batch(store, settings, lambda: healthy), BatchDone):
            batches += 1
        elapsed = time.perf_counter() - started
        progress = store.progress()
    assert progress.keys_done == rows, progress
    return {
        "rows": rows,
        "batch_size": batch_size,
        "sub_batch_size": sub_batch_size,
        "batches": batches,
        "seconds": elapsed,
        "rows_per_second": rows / elapsed,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, action="append", help="repeatable; default 10000 and 1000")
    parser.add_argument("--sub-batch-size", type=int, action="append", help="one per --batch-size")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)
    batch_sizes = args.batch_size or [10_000, 1_000]
    sub_batch_sizes = args.sub_batch_size or [max(size // 10, 1) for size in batch_sizes]
    if len(sub_batch_sizes) != len(batch_sizes):
        parser.error("give one --sub-batch-size per --batch-size")

    runs = []
    with bench_cluster("throughput", extra_conf={"max_wal_size": "4GB"}) as cluster:
        for batch_size, sub_batch_size in zip(batch_sizes, sub_batch_sizes, strict=True):
            result = run(cluster, args.rows, batch_size, sub_batch_size)
            print(
                f"{args.rows} rows in {result['batches']} batches of {batch_size} "
                f"(sub-batches of {sub_batch_size}): {result['seconds']:.1f} s, "
                f"{result['rows_per_second']:,.0f} rows/s",
                flush=True,
            )
            runs.append(result)
    results = {"runs": runs, "machine": machine()}
    print(table(results))
    write_json(args.json, results)
    return 0


def table(results: dict[str, Any]) -> str:
    """Return the Markdown table of the results."""
    return markdown_table(
        ("rows", "batch size", "sub-batch size", "wall time", "rows/s"),
        [
            (
                f"{run['rows']:,}",
                f"{run['batch_size']:,}",
                f"{run['sub_batch_size']:,}",
                f"{run['seconds']:.1f} s",
                f"{run['rows_per_second']:,.0f}",
            )
            for run in results["runs"]
        ],
        "rrrrr",
    )


if __name__ == "__main__":
    sys.exit(main())

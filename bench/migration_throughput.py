"""Rows per second of a batched migration run in-process, with no scheduler.

Starts a throwaway PostgreSQL (the test harness), fills a table with ROWS rows, and runs the
batching core (:func:`run_one_batch`, what the operator calls once per task) until the migration
is finished, with the WAL check off. Prints one line of results and, with ``--markdown``, a table
row for ``docs/performance.md``.

    .venv/bin/python bench/migration_throughput.py --rows 1000000
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from airflow_provider_walthrottle.migrations.definition import MigrationDefinition
from airflow_provider_walthrottle.migrations.optimizer import BatchSizePolicy
from airflow_provider_walthrottle.migrations.runner import (
    HealthVerdict,
    Outcome,
    RunSettings,
    prepare,
    run_one_batch,
)
from tests.postgres_cluster import PostgresCluster, make_base_dir, remove_base_dir, stop_all_clusters


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=10_000)
    parser.add_argument("--sub-batch-size", type=int, default=1_000)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()

    base = make_base_dir("walthrottle-bench-")
    try:
        cluster = PostgresCluster.create(base, name="bench", extra_conf={"max_wal_size": "4GB"})
        cluster.start()
        cluster.execute("CREATE TABLE items (id bigint PRIMARY KEY, payload text NOT NULL, migrated bool)")
        cluster.execute(
            "INSERT INTO items SELECT i, md5(i::text), NULL FROM generate_series(1, %s) AS i", [args.rows]
        )
        cluster.execute("VACUUM ANALYZE items")
        definition = MigrationDefinition(
            name="bench",
            table="items",
            column="id",
            batch_sql="UPDATE items SET migrated = true WHERE id BETWEEN %(start)s AND %(end)s",
        )
        settings = RunSettings(
            sub_batch_size=args.sub_batch_size,
            pause_ms=0,
            policy=BatchSizePolicy(min_batch_size=args.batch_size, max_batch_size=args.batch_size),
        )
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            store = prepare(conn, definition, args.batch_size)
            started = time.perf_counter()
            batches = 0
            healthy = HealthVerdict(proceed=True)
            while run_one_batch(store, settings, lambda: healthy).outcome is Outcome.COMPLETED:
                batches += 1
            elapsed = time.perf_counter() - started
            progress = store.progress()
        assert progress.keys_done == args.rows, progress
        rate = args.rows / elapsed
        print(
            f"{args.rows} rows in {batches} batches of {args.batch_size} "
            f"(sub-batches of {args.sub_batch_size}): {elapsed:.1f} s, {rate:,.0f} rows/s"
        )
        if args.markdown:
            print(
                f"| {args.rows:,} | {args.batch_size:,} | {args.sub_batch_size:,} | {elapsed:.1f} s | "
                f"{rate:,.0f} | {platform.processor() or platform.machine()} |"
            )
        return 0
    finally:
        stop_all_clusters()
        remove_base_dir(base)


if __name__ == "__main__":
    sys.exit(main())

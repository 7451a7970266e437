"""Cost of one WAL backlog check, by method, at 10, 1,000 and 10,000 pending segments.

Starts a throwaway PostgreSQL (the test harness) with the archive gate closed. Real backlogs of
thousands of segments would need tens of GB of WAL, so the pending segments beyond the first ten
are ``.ready`` status files written into ``pg_wal/archive_status`` by this script: the exact method
lists that directory, so its cost is what is measured; the LSN method does arithmetic on
``pg_stat_archiver`` and is independent of the count. Each check is timed on an open connection
(the queries alone) and through ``WalArchivalHook.get_archiver_status()`` (connect included).

    .venv/bin/python bench/check_cost.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cluster import bench_cluster, machine, markdown_table, write_json

from airflow_provider_walthrottle.hooks.wal_archival import WalArchivalHook
from airflow_provider_walthrottle.hooks.wal_archival_sql import read_archiver_status
from airflow_provider_walthrottle.wal import segment_file_name

if TYPE_CHECKING:
    from tests.support.postgres_cluster import PostgresCluster


def timed(call, repeat: int) -> tuple[float, float]:
    """Return the median and p95 of ``repeat`` calls, in milliseconds."""
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.95) - 1]


def add_fake_ready_files(cluster: PostgresCluster, total: int) -> None:
    """Top the ``.ready`` segment files up to ``total`` with names past the segment being written."""
    status_dir = cluster.data_dir / "pg_wal" / "archive_status"
    size = 16 * 1024 * 1024
    segment = 0x10000
    uid, gid = os.stat(status_dir).st_uid, os.stat(status_dir).st_gid
    while len(cluster.ready_segments()) < total:
        missing = total - len(cluster.ready_segments())
        for _ in range(missing):
            segment += 1
            path = status_dir / f"{segment_file_name(1, segment, size)}.ready"
            path.touch()
            os.chown(path, uid, gid)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)

    rows = []
    with bench_cluster("check-cost") as cluster:
        cluster.create_role("reader", "reader-pw", pg_monitor=False)
        cluster.archive_one_segment()
        os.environ["AIRFLOW_CONN_BENCH_EXACT"] = cluster.uri()
        os.environ["AIRFLOW_CONN_BENCH_LSN"] = cluster.uri(user="reader", password="reader-pw")
        cluster.make_backlog(10)
        for pending in (10, 1_000, 10_000):
            add_fake_ready_files(cluster, pending)
            for method, conn_id, user in (("exact", "bench_exact", None), ("lsn", "bench_lsn", "reader")):
                dsn = cluster.dsn() if user is None else cluster.dsn(user=user, password="reader-pw")
                with psycopg.connect(dsn, autocommit=True) as conn:
                    status = read_archiver_status(conn)
                    assert status.method.value == method, status
                    queries = timed(lambda conn=conn: read_archiver_status(conn), args.repeat)
                hook = WalArchivalHook(postgres_conn_id=conn_id)
                whole = timed(hook.get_archiver_status, max(args.repeat // 4, 10))
                rows.append(
                    {
                        "pending": pending,
                        "method": method,
                        "reported": status.pending_segments,
                        "queries_median_ms": queries[0],
                        "queries_p95_ms": queries[1],
                        "hook_median_ms": whole[0],
                        "hook_p95_ms": whole[1],
                    }
                )
    results = {"repeat": args.repeat, "rows": rows, "machine": machine()}
    print(table(results))
    write_json(args.json, results)
    return 0


def table(results: dict[str, Any]) -> str:
    """Return the Markdown table of the results."""
    return markdown_table(
        (
            "pending",
            "method",
            "reported",
            "queries median ms",
            "queries p95 ms",
            "hook call median ms",
            "hook call p95 ms",
        ),
        [
            (
                f"{row['pending']:,}",
                row["method"],
                row["reported"],
                f"{row['queries_median_ms']:.2f}",
                f"{row['queries_p95_ms']:.2f}",
                f"{row['hook_median_ms']:.1f}",
                f"{row['hook_p95_ms']:.1f}",
            )
            for row in results["rows"]
        ],
        "rlrrrrr",
    )


if __name__ == "__main__":
    sys.exit(main())

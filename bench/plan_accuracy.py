"""Plan accuracy: what ``walthrottle plan`` projects for a migration, against what the migration does.

For each table, on a fresh throwaway PostgreSQL with 1 MiB WAL segments and a slow archiver
(``archive_command`` sleeps ``--archive-delay`` seconds, then copies):

1. make the table and let a fast archiver ship its WAL;
2. make the archiver slow, give it a backlog of ``--window-backlog`` segments to ship (a plan made
   on an idle archiver has no pace to measure), ``CHECKPOINT``, and plan the migration with
   :func:`~airflow_provider_walthrottle.migrations.plan.compute_plan` and the CLI's defaults (5
   sample ranges of 1,000 keys, the archiver watched for 10 s while it ships the backlog, threshold
   42, a first batch of 1,000);
3. once the backlog is drained, ``CHECKPOINT`` (a migration starts minutes after its plan, in a later
   checkpoint cycle) and run the same migration to its end, in-process, as
   ``BatchedMigrationOperator`` runs it with its defaults (``bench/_core.py``: time-sized
   statements and signal-paced pauses, the WAL flag on; a wait for the backlog runs the trigger the
   operator defers on, the real ``WalArchivalTrigger``, to its first event);
4. measure the WAL (``pg_current_wal_insert_lsn()`` before and after), the wall time, the time
   until the backlog is drained, the seconds in ``batch_sql`` statements, the archiver's pace and
   idle seconds, the checkpoints, and what the WAL consists of (``pg_waldump --stats=record`` over
   the plan and over the migration: full-page images against records).

The figures and tables are computed in ``bench/_plan_figures.py``.

The tables:

``items``
    the throttle-fidelity table, ``UPDATE items SET migrated = true`` (1.5 M rows).
``docs``
    a wide table whose ``body`` (2 to 6 kB, out of line in TOAST) is rewritten:
    ``UPDATE docs SET body = upper(body)``.
``scores``
    ``UPDATE scores SET score = score + 1`` with two indexes on ``score``: no update is HOT.
``scores_no_checkpoint``
    the same with ``max_wal_size = 8GB``, so that no checkpoint falls in the run.

    .venv/bin/python bench/plan_accuracy.py            # about 7 minutes on 2 cores
    .venv/bin/python bench/plan_accuracy.py --quick    # smaller tables, about 2.5 minutes
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cluster import (
    ROOT,
    bench_cluster,
    machine,
    make_docs_table,
    make_items_table,
    make_scores_table,
    update_sql,
    write_json,
)
from _core import operator_gate, operator_task
from _plan_figures import (
    archiver_in_run,
    duration_table,
    figures,
    fixes_table,
    format_ratio,
    mib,
    parse_waldump_stats,
    parts_table,
    wal_parts,
    wal_table,
)
from throttle_fidelity import Sampler

from airflow_provider_walthrottle.flags import WAL_HEALTH_FLAG, FeatureFlag
from airflow_provider_walthrottle.migrations.batch import BatchDone, Finished, WaitFixedTime, WaitForBacklog
from airflow_provider_walthrottle.migrations.definition import MigrationDefinition
from airflow_provider_walthrottle.migrations.plan import compute_plan
from airflow_provider_walthrottle.migrations.runner import RunSettings, prepare
from airflow_provider_walthrottle.operators.batched_migration import BatchedMigrationOperator
from airflow_provider_walthrottle.wal.health import DEFAULT_MAX_PENDING_SEGMENTS
from tests.support.postgres_cluster import find_binary, lsn_to_int

if TYPE_CHECKING:
    from collections.abc import Callable

    from airflow_provider_walthrottle.migrations.plan import MigrationPlan
    from airflow_provider_walthrottle.migrations.store import MigrationStore
    from tests.support.postgres_cluster import PostgresCluster

SEGMENT_MB = 1
SEGMENT_BYTES = SEGMENT_MB * 1024 * 1024
THRESHOLD = DEFAULT_MAX_PENDING_SEGMENTS
CONN_ID = "bench_plan_accuracy"
#: The CLI's defaults (``walthrottle plan``).
SAMPLE_RANGES, SAMPLE_KEYS, WINDOW_SECONDS = 5, 1000, 10.0
#: The server settings the report shows, as each cluster has them (the harness turns autovacuum off).
SERVER_SETTINGS = (
    "max_wal_size",
    "min_wal_size",
    "checkpoint_timeout",
    "checkpoint_completion_target",
    "shared_buffers",
    "autovacuum",
    "full_page_writes",
    "wal_compression",
)


def _docs_sql(table: str) -> str:
    return (
        sql.SQL("UPDATE {} SET body = upper(body) WHERE id BETWEEN %(start)s AND %(end)s")
        .format(sql.Identifier(table))
        .as_string()
    )


def _scores_sql(table: str) -> str:
    return (
        sql.SQL("UPDATE {} SET score = score + 1 WHERE id BETWEEN %(start)s AND %(end)s")
        .format(sql.Identifier(table))
        .as_string()
    )


@dataclass(frozen=True)
class Case:
    """One table and its migration.

    :param name: the case's name (and its cluster's).
    :param table: the table's name.
    :param title: how the report names it.
    :param rows: rows of the full run.
    :param quick_rows: rows of ``--quick``.
    :param make: makes the table (``cluster, name, rows``).
    :param batch_sql: the migration's ``batch_sql`` for a table name.
    :param conf: server settings on top of the harness's.
    """

    name: str
    table: str
    title: str
    rows: int
    quick_rows: int
    make: Callable[[PostgresCluster, str, int], None]
    batch_sql: Callable[[str], str]
    conf: dict[str, str] = field(default_factory=dict)


CASES = {
    case.name: case
    for case in (
        Case("items", "items", "(a) throttle-fidelity items, `SET migrated = true`", 1_500_000, 300_000,
             make_items_table, update_sql),
        Case("docs", "docs", "(b) wide, TOASTed body rewritten, `SET body = upper(body)`", 50_000, 12_000,
             make_docs_table, _docs_sql),
        Case("scores", "scores", "(c) two indexes on score, `SET score = score + 1`", 350_000, 100_000,
             make_scores_table, _scores_sql),
        Case("scores_no_checkpoint", "scores", "(c) the same, `max_wal_size = 8GB`: no checkpoint in the run",
             350_000, 100_000, make_scores_table, _scores_sql, {"max_wal_size": "8GB"}),
    )
}  # fmt: skip


# ---------------------------------------------------------------------------------------- measuring


def waldump(cluster: PostgresCluster, start: str, end: str) -> dict[str, int]:
    """Return :func:`wal_parts` of the WAL from ``start`` to ``end``, once it is all archived.

    :param cluster: the cluster; its archive directory holds the segments.
    :param start: an LSN.
    :param end: a later LSN.
    """
    proc = subprocess.run(
        [find_binary("pg_waldump"), "--stats=record", "-p", str(cluster.archive_dir), "-s", start, "-e", end],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    stats = parse_waldump_stats(proc.stdout)
    if not stats:
        raise RuntimeError(f"pg_waldump read nothing from {start} to {end}: {proc.stderr.strip()}")
    return wal_parts(stats)


def server_settings(cluster: PostgresCluster) -> dict[str, str]:
    """Return the settings of :data:`SERVER_SETTINGS` as the server reports them."""
    show = sql.SQL("SHOW {}")
    return {name: str(cluster.execute(show.format(sql.Identifier(name)))[0][0]) for name in SERVER_SETTINGS}


def operator_settings(table: str, batch_sql: str) -> tuple[RunSettings, int]:
    """Return the run settings and first batch of a ``BatchedMigrationOperator`` with its defaults."""
    operator = BatchedMigrationOperator(
        task_id="plan_accuracy", migration_name=table, table=table, column="id", batch_sql=batch_sql
    )
    return operator.run_settings(THRESHOLD), operator.batch_size


async def _first_event(trigger: Any) -> Any:
    async for event in trigger.run():
        return event
    return None


def migrate(store: MigrationStore, settings: RunSettings, wait_interval: float) -> dict[str, float]:
    """Run the migration to its end as the operator's tasks would; return what the batches reported.

    :param store: the migration's store (after ``prepare()``).
    :param settings: from :func:`operator_settings`.
    :param wait_interval: the operator's ``wait_interval``.
    """
    totals = {"statement_seconds": 0.0, "statement_wal_bytes": 0, "keys": 0, "batches": 0, "waits": 0}
    while True:
        step = operator_task(store, settings, conn_id=CONN_ID)
        result = getattr(step, "result", None)
        if result is not None:
            totals["statement_seconds"] += result.seconds
            totals["statement_wal_bytes"] += result.wal_bytes
            totals["keys"] += result.keys
        if isinstance(step, Finished):
            return totals
        if isinstance(step, BatchDone):
            totals["batches"] += 1
        elif isinstance(step, WaitForBacklog):  # what the operator defers on
            totals["waits"] += 1
            trigger = operator_gate(store, settings, conn_id=CONN_ID).trigger(
                poll_interval=wait_interval, max_pending_segments=step.at_most
            )
            event = asyncio.run(_first_event(trigger))
            assert event is not None and event.payload["status"] == "success", event
        elif isinstance(step, WaitFixedTime):  # the operator defers for wait_interval
            totals["waits"] += 1
            time.sleep(wait_interval)
        else:
            raise RuntimeError(f"unexpected step {step!r}")


def make_plan(
    cluster: PostgresCluster, definition: MigrationDefinition, backlog: int, delay: float
) -> tuple[MigrationPlan, str, str]:
    """Give the archiver, slowed to one segment per ``delay``, ``backlog`` segments to ship; then
    ``CHECKPOINT`` (the backlog's segment switches would request checkpoints during the sample) and
    plan as the CLI does by default. Return the plan and the WAL positions before and after it."""
    cluster.make_backlog(backlog)
    cluster.execute("CHECKPOINT")
    cluster.set_archive_delay(delay)
    before = cluster.archiver_stats()["archived_count"]
    cluster.open_gate()
    cluster.wait_until(lambda: cluster.archiver_stats()["archived_count"] > before, what="the first copy")
    start = cluster.insert_lsn()
    with psycopg.connect(cluster.dsn(), autocommit=True, connect_timeout=10) as conn:
        plan = compute_plan(
            conn,
            definition,
            max_pending_segments=THRESHOLD,
            sample_ranges=SAMPLE_RANGES,
            sample_keys=SAMPLE_KEYS,
            archiver_window_seconds=WINDOW_SECONDS,
        )
    return plan, start, cluster.insert_lsn()


def run_case(case: Case, rows: int, args: argparse.Namespace) -> dict[str, Any]:
    """Plan, then run, one case on a fresh cluster; return both sides and the WAL's parts."""
    with bench_cluster(f"plan-{case.name}", wal_segsize_mb=SEGMENT_MB, extra_conf=case.conf) as cluster:
        made = time.monotonic()
        case.make(cluster, case.table, rows)
        cluster.drain(timeout=600)
        made = time.monotonic() - made
        relation_bytes = int(
            cluster.execute("SELECT pg_total_relation_size(%s::regclass)", [case.table])[0][0]
        )
        batch_sql = case.batch_sql(case.table)
        definition = MigrationDefinition(name=case.name, table=case.table, column="id", batch_sql=batch_sql)

        plan, plan_start, plan_end = make_plan(cluster, definition, args.window_backlog, args.archive_delay)
        cluster.drain(timeout=600)
        # a migration starts minutes after its plan: in a later checkpoint cycle than the sample's
        cluster.execute("CHECKPOINT")

        os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = cluster.uri()
        os.environ[f"AIRFLOW_VAR_{WAL_HEALTH_FLAG.upper()}"] = "true"
        settings, first_batch = operator_settings(case.table, batch_sql)
        sampler = Sampler(cluster.dsn(), interval=0.25)
        with psycopg.connect(cluster.dsn(), autocommit=True, connect_timeout=10) as conn:
            store = prepare(conn, definition, first_batch)
            FeatureFlag(WAL_HEALTH_FLAG).is_enabled(definition.name)  # Airflow's one-time set-up
            sampler.start()
            sampler.latest()
            start = str(conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0])
            started = time.monotonic()
            totals = migrate(store, settings, args.wait_interval)
            seconds = time.monotonic() - started
            end = str(conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0])
            progress = store.progress()
        assert progress.keys_done == rows, progress
        cluster.wait_until(lambda: sampler.latest()[1] == 0, timeout=600, interval=0.1, what="the drain")
        drained = time.monotonic() - started
        sampler.done.set()
        sampler.join()
        if sampler.error is not None:
            raise sampler.error
        archiver = archiver_in_run(
            [(t - started, pending, archived) for t, pending, archived, _ in sampler.samples]
        )
        cluster.execute("SELECT pg_switch_wal()")
        cluster.drain(timeout=600)
        sample_wal, run_wal = waldump(cluster, plan_start, plan_end), waldump(cluster, start, end)
        conf = server_settings(cluster)
    wal_bytes = lsn_to_int(end) - lsn_to_int(start)
    measured = {
        "rows": rows,
        "seconds": seconds,
        "drained_seconds": drained,
        "wal_bytes": wal_bytes,
        **archiver,
        "max_pending": max(pending for _, pending, _, _ in sampler.samples),
        "checkpoints": run_wal["checkpoints"],
        **totals,
    }
    return {
        "case": case.name,
        "title": case.title,
        "table_seconds": made,
        "relation_bytes": relation_bytes,
        "server": conf,
        "plan": plan.to_dict(),
        "plan_text": plan.render(),
        "measured": measured,
        "sample_wal": sample_wal,
        "run_wal": run_wal,
    }


def tree_state() -> dict[str, Any]:
    """Return the commit the benchmark runs on and the package's files changed since (not committed)."""

    def git(*args: str) -> str:
        proc = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return proc.stdout.rstrip()

    changed = git("status", "--porcelain", "--", "airflow_provider_walthrottle")
    return {"commit": git("rev-parse", "--short", "HEAD"), "package_changes": changed.splitlines()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller tables: a smoke run")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated: " + ", ".join(CASES))
    parser.add_argument("--archive-delay", type=float, default=0.125, help="seconds archive_command sleeps")
    parser.add_argument(
        "--window-backlog", type=int, default=120, help="segments the archiver ships while the plan watches"
    )
    parser.add_argument("--wait-interval", type=float, default=60.0, help="the operator's wait_interval")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)
    # the operator logs one line per sub-batch at DEBUG and one per batch at INFO
    logging.getLogger("airflow.task").setLevel(logging.WARNING)

    tree = tree_state()
    cases = []
    for name in args.cases.split(","):
        case = CASES[name]
        load = os.getloadavg()[0]
        result = run_case(case, case.quick_rows if args.quick else case.rows, args)
        result["load_before"], result["load_after"] = load, os.getloadavg()[0]
        result["figures"] = figures(result)
        fig, measured = result["figures"], result["measured"]
        print(result["plan_text"], flush=True)
        print(
            f"{name}: WAL {mib(result['plan']['total_wal_bytes'])} MiB projected, "
            f"{mib(measured['wal_bytes'])} MiB measured ({format_ratio(fig['wal_ratio'])}); archiver-bound "
            f"{result['plan']['bounds']['archiver']:.0f} s projected, {measured['seconds']:.0f} s measured "
            f"({format_ratio(fig['archiver_ratio'])}), archived after {measured['drained_seconds']:.0f} s; "
            f"{measured['checkpoints']} checkpoints, {measured['waits']} waits, load {load:.1f}",
            flush=True,
        )
        cases.append(result)
    results = {
        "quick": args.quick,
        "segment_bytes": SEGMENT_BYTES,
        "archive_delay": args.archive_delay,
        "threshold": THRESHOLD,
        "sample_ranges": SAMPLE_RANGES,
        "sample_keys": SAMPLE_KEYS,
        "window_seconds": WINDOW_SECONDS,
        "window_backlog": args.window_backlog,
        "wait_interval": args.wait_interval,
        "machine": machine(),
        "tree": tree,
        "cases": cases,
    }
    print(wal_table(results))
    print(duration_table(results))
    print(parts_table(results))
    print(fixes_table(results))
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

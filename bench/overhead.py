"""Overhead of the operator's batch loop over a plain psycopg loop issuing the same statements.

One throwaway PostgreSQL (archiving on, a fast archiver, so the backlog stays near 0 and the
check never stops the run) and one table of ``--rows`` rows with ids 1 to N. Each run migrates a
fresh copy of it (``CREATE TABLE ... AS``, new primary key, ``VACUUM ANALYZE``, ``CHECKPOINT``):

``plain``
    a psycopg loop, autocommit, that runs ``batch_sql`` over ``[1, s]``, ``[s + 1, 2s]``, ... (``s``
    the sub-batch size): the same statements over the same key ranges as the operator's
    sub-batches, one transaction each, and nothing else. It knows the keys are 1 to N, so it finds
    no range, and it records no progress: the ratio to it is the target's.
``exactly_once``
    the plain loop with what exactly-once takes at least: each statement and a progress row (where
    the loop resumes, the rows the statement affected, a count) in one transaction, the progress
    sent once the statement's row count is known. Two round trips a statement, in psycopg's
    pipeline mode (``BEGIN`` and the statement; the progress and ``COMMIT``). It still finds no
    range: its ranges are arithmetic.
``operator, WAL check on``
    ``BatchedMigrationOperator``'s batch loop in-process, through the public core as the operator
    drives it (``bench/_core.py``): per task ``prepare()`` and ``run_batch()`` on one open
    connection, until the migration is finished. That is the runner (claim a job, which walks its
    keys to plan its range; per sub-batch, the job's row lock, the check of its planned range and
    the statement, then the progress update, in one transaction; the ranges of the sub-batches
    planned ahead, many in one query), the optimizer, the throttle accounting and, with the flag
    on, the WAL check before the batch and between sub-batches (the flag read and the metrics sent
    at each). Connecting, the kill switch and the scheduler, which a real task adds, are left out.
``operator, WAL check off``
    the same with the flag Variable off: the check reads the flag and returns.

The order of the four rotates from one repeat to the next; the median wall time of ``--repeat``
runs is reported, and the ratio of each median to the plain loop's. Then three more runs of the
operator are timed by part of its loop (:data:`PARTS`), and three more of each loop on a cluster
with ``pg_stat_statements`` say how much of its time the server spent, and on what
(:data:`SERVER_PARTS`); the rest is the client's and the round trips'. Medians, again.

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
import re
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _overhead_loops
from _cluster import (
    bench_cluster,
    machine,
    make_items_table,
    markdown_table,
    write_json,
)
from _overhead_loops import BATCH_SIZE, CONN_ID, fresh_copy, make_progress_table, run_operator, run_variant

from airflow_provider_walthrottle.flags import WAL_HEALTH_FLAG
from airflow_provider_walthrottle.gate import HealthGate
from airflow_provider_walthrottle.migrations.accounts import MigrationAccounts
from airflow_provider_walthrottle.migrations.executor import SubBatchExecutor
from airflow_provider_walthrottle.migrations.jobs import JobQueue

if TYPE_CHECKING:
    from tests.support.postgres_cluster import PostgresCluster

VARIANTS = ("plain", "exactly_once", "check_on", "check_off")
LABELS = {
    "plain": "plain psycopg loop",
    "exactly_once": "plain loop, progress in the same transaction",
    "check_on": "operator, WAL check on",
    "check_off": "operator, WAL check off",
}


def measure(cluster: PostgresCluster, variant: str, args: argparse.Namespace, run: int) -> float:
    """Migrate a fresh copy with ``variant``; return the wall time in seconds."""
    table = f"items_{variant}_{args.sub_batch_size}_{run}"
    fresh_copy(cluster, table)
    os.environ[f"AIRFLOW_VAR_{WAL_HEALTH_FLAG.upper()}"] = "false" if variant == "check_off" else "true"
    started = time.perf_counter()
    statements = run_variant(cluster, variant, table, args)
    elapsed = time.perf_counter() - started
    expected = -(-args.rows // args.sub_batch_size)
    assert statements == expected, (variant, statements, expected)
    (migrated,) = cluster.execute(
        sql.SQL("SELECT count(*) FROM {} WHERE migrated").format(sql.Identifier(table))
    )[0]
    assert migrated == args.rows, (variant, migrated)
    cluster.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(table)))
    return elapsed


#: Where the operator's time goes: (label, class or module, function) of the calls timed, none
#: inside another; the rest is the runner's own loop, the accounts, the metrics and the log lines.
PARTS: tuple[tuple[str, Any, str], ...] = (
    ("sub-batches (SubBatchExecutor.run: the statement and its transaction)", SubBatchExecutor, "run"),
    ("claims (a job's walk, which plans its sub-batches' ranges too)", JobQueue, "claim"),
    ("prepare() per task (state tables, the migration registered)", _overhead_loops, "prepare"),
    ("the migration's progress, read per task", MigrationAccounts, "progress"),
    ("health checks (flag and archiver status)", HealthGate, "check"),
)


def breakdown(cluster: PostgresCluster, sub_batch_size: int, batch_size: int, run: int) -> dict[str, float]:
    """Time one operator run (check on) by :data:`PARTS`: the seconds of each, and in all (``total``)."""
    table = f"items_timed_{sub_batch_size}_{run}"
    fresh_copy(cluster, table)
    os.environ[f"AIRFLOW_VAR_{WAL_HEALTH_FLAG.upper()}"] = "true"
    seconds = dict.fromkeys([label for label, _, _ in PARTS], 0.0)
    originals = [(owner, name, getattr(owner, name)) for _, owner, name in PARTS]

    def timed(label: str, function: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                seconds[label] += time.perf_counter() - started

        return call

    for (label, owner, name), (_, _, function) in zip(PARTS, originals, strict=True):
        setattr(owner, name, timed(label, function))
    try:
        started = time.perf_counter()
        run_operator(cluster.dsn(), table, sub_batch_size, batch_size)
        seconds["total"] = time.perf_counter() - started
    finally:
        for owner, name, function in originals:
            setattr(owner, name, function)
    cluster.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(table)))
    return seconds


#: What the server spends a loop's time on, by the text of its statements as ``pg_stat_statements``
#: keeps them: (label, pattern); a statement counts in the first part it matches, or in "per task"
#: (``prepare()``, the claim's own statements, the accounts, the health checks).
SERVER_PARTS = (
    ("batch_sql (the statement itself)", r"^UPDATE \S+ SET migrated = "),
    (
        "the ranges: a claim's walk of its job's keys (it plans the sub-batches too)",
        r"WITH (RECURSIVE ranges|probes)",
    ),
    (
        "the sub-batch's check (job row lock, first key, WAL position)",
        r"SELECT resume_key FROM|AS wal_position",
    ),
    ("the progress update", r"^WITH written AS|^UPDATE \S*overhead_progress"),
    ("BEGIN, COMMIT", r"^(BEGIN|COMMIT|ROLLBACK)$"),
)
#: The runs of each loop whose time is broken down (by :data:`PARTS` and :data:`SERVER_PARTS`); the
#: medians are reported.
BREAKDOWN_RUNS = 3
#: The loops whose server time is broken down.
SERVER_VARIANTS = ("plain", "exactly_once", "check_on")
#: Settings of the cluster that breaks the server's time down.
STATEMENTS_CONF = {
    "shared_preload_libraries": "pg_stat_statements",
    "pg_stat_statements.track": "all",
    "pg_stat_statements.track_planning": "on",
}


def server_breakdown(args: argparse.Namespace, sizes: list[int]) -> dict[str, Any]:
    """Run each of :data:`SERVER_VARIANTS` again on a cluster with ``pg_stat_statements``.

    Each runs :data:`BREAKDOWN_RUNS` times.

    :return: by size and loop, the medians of microseconds per statement: the wall time, the
        server's time in each of :data:`SERVER_PARTS` and per task (execution and planning), and
        the rest (the client's and the round trips').
    """
    found: dict[str, Any] = {}
    with bench_cluster("overhead-statements", extra_conf=STATEMENTS_CONF) as cluster:
        os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = cluster.uri()
        os.environ[f"AIRFLOW_VAR_{WAL_HEALTH_FLAG.upper()}"] = "true"
        cluster.execute("CREATE EXTENSION pg_stat_statements")
        make_items_table(cluster, "items_template", args.rows)
        make_progress_table(cluster)
        for size in sizes:
            case_args = argparse.Namespace(**{**vars(args), "sub_batch_size": size})
            runs: dict[str, list[dict[str, float]]] = {variant: [] for variant in SERVER_VARIANTS}
            for run in range(BREAKDOWN_RUNS):
                for variant in SERVER_VARIANTS:
                    runs[variant].append(server_times(cluster, variant, f"{size}_{run}", case_args))
            for variant, measured in runs.items():
                found[f"{size}/{variant}"] = {
                    key: statistics.median(times[key] for times in measured) for key in measured[0]
                }
    return found


def server_times(
    cluster: PostgresCluster, variant: str, name: str, args: argparse.Namespace
) -> dict[str, float]:
    """Migrate a fresh copy with ``variant``; return µs per statement: wall, by server part, the rest."""
    table = f"items_statements_{variant}_{name}"
    statements = -(-args.rows // args.sub_batch_size)
    fresh_copy(cluster, table)
    cluster.execute("SELECT pg_stat_statements_reset()")
    started = time.perf_counter()
    run_variant(cluster, variant, table, args)
    wall = (time.perf_counter() - started) * 1e6 / statements
    rows = cluster.execute(
        "SELECT query, total_exec_time + total_plan_time FROM pg_stat_statements "
        "WHERE query NOT LIKE '%%pg_stat_statements%%'"
    )
    times = dict.fromkeys([label for label, _ in SERVER_PARTS] + ["per task"], 0.0)
    for query, milliseconds in rows:
        label = next(
            (label for label, pattern in SERVER_PARTS if re.search(pattern, query.strip())), "per task"
        )
        times[label] += milliseconds * 1000 / statements
    cluster.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(table)))
    return {"wall": wall, **times, "rest": wall - sum(times.values())}


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
        make_progress_table(cluster)
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
                order = VARIANTS[run % len(VARIANTS) :] + VARIANTS[: run % len(VARIANTS)]
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
                "ratio_exactly_once": medians["exactly_once"] / medians["plain"],
            }
            timed = [breakdown(cluster, size, args.batch_size, run) for run in range(BREAKDOWN_RUNS)]
            case["breakdown"] = {key: statistics.median(times[key] for times in timed) for key in timed[0]}
            results["cases"].append(case)
            print(
                f"sub-batch {size}: plain {medians['plain']:.2f} s, with its progress "
                f"{medians['exactly_once']:.2f} s ({case['ratio_exactly_once']:.3f}x), operator "
                f"{medians['check_on']:.2f} s with the check ({case['ratio_check_on']:.3f}x), "
                f"{medians['check_off']:.2f} s without ({case['ratio_check_off']:.3f}x)",
                flush=True,
            )
    results["server"] = server_breakdown(args, sizes)
    results["machine"] = machine()
    print(table(results))
    print(breakdown_table(results))
    print(server_table(results))
    write_json(args.json, results)
    return 0


def breakdown_table(results: dict[str, Any]) -> str:
    """Return the Markdown table of where the operator's time goes, by sub-batch size."""
    cases = results["cases"]

    def cell(case: dict[str, Any], seconds: float) -> str:
        per_statement = seconds / case["statements"] * 1e6
        return f"{per_statement:,.0f} µs ({seconds / case['breakdown']['total']:.0%})"

    rows = [(label, *(cell(case, case["breakdown"][label]) for case in cases)) for label, _, _ in PARTS]
    rest = [
        case["breakdown"]["total"] - sum(case["breakdown"][label] for label, _, _ in PARTS) for case in cases
    ]
    rows.append(
        (
            "the rest (the runner's loop, the accounts, metrics, log lines)",
            *(cell(case, seconds) for case, seconds in zip(cases, rest, strict=True)),
        )
    )
    rows.append(("the whole run", *(cell(case, case["breakdown"]["total"]) for case in cases)))
    return markdown_table(
        (
            "part of the operator's loop, per statement (share)",
            *(f"{case['sub_batch_size']:,} keys a statement" for case in cases),
        ),
        rows,
        "l" + "r" * len(cases),
    )


def server_table(results: dict[str, Any]) -> str:
    """Return the Markdown table of the server's time per statement, by part, loop and size."""
    columns = [(case["sub_batch_size"], variant) for case in results["cases"] for variant in SERVER_VARIANTS]
    found = results["server"]

    def cell(size: int, variant: str, value: str) -> str:
        return f"{found[f'{size}/{variant}'][value]:,.0f}"

    rows = [("wall time", *(cell(size, variant, "wall") for size, variant in columns))]
    for label in [label for label, _ in SERVER_PARTS] + ["per task"]:
        rows.append(
            (
                f"server: {label}",
                *(cell(size, variant, label) for size, variant in columns),
            )
        )
    rows.append(
        ("the client, and the round trips", *(cell(size, variant, "rest") for size, variant in columns))
    )
    return markdown_table(
        ("µs per statement", *(f"{LABELS[variant]}, {size:,} keys" for size, variant in columns)),
        rows,
        "l" + "r" * len(columns),
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

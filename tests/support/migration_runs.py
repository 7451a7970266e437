"""Running the batching core in tests: workers in processes of their own, and the state tables read back."""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from airflow_provider_walthrottle.migrations.runner import (
    BatchResult,
    HealthVerdict,
    Outcome,
    RunSettings,
    run_one_batch,
)
from airflow_provider_walthrottle.migrations.schema_queries import LOCK_NAMESPACE
from airflow_provider_walthrottle.wal.health import OnUnavailable, evaluate_wal_archival, may_proceed
from airflow_provider_walthrottle.wal.queries import read_archiver_status

if TYPE_CHECKING:
    from collections.abc import Callable

    from airflow_provider_walthrottle.migrations.definition import MigrationDefinition
    from airflow_provider_walthrottle.migrations.optimizer import BatchSizePolicy
    from airflow_provider_walthrottle.wal.health import HealthSignal

REPO_ROOT = Path(__file__).resolve().parents[2]


def always_healthy() -> HealthVerdict:
    """A ``check_health`` that always lets the migration go on."""
    return HealthVerdict(proceed=True)


JOB_COLUMNS = (
    "id",
    "start_key",
    "end_key",
    "planned_rows",
    "resume_key",
    "status",
    "attempts",
    "rows_affected",
    "sub_batches",
    "dag_id",
    "last_error",
    "started_at",
    "finished_at",
)

#: A worker process: prepare the migration, say "ready" with its backend pid, wait for a line on
#: stdin if asked, then run batches until the outcome is FINISHED or NOTHING_TO_CLAIM, printing
#: one JSON line per call.
WORKER = r"""
import json, sys

import psycopg

from airflow_provider_walthrottle.migrations.definition import MigrationDefinition
from airflow_provider_walthrottle.migrations.optimizer import BatchSizePolicy
from airflow_provider_walthrottle.migrations.runner import (
    HealthVerdict, Outcome, RunSettings, prepare, run_one_batch,
)

args = json.loads(sys.argv[1])
settings = RunSettings(
    sub_batch_size=args["sub_batch_size"], pause_ms=0, policy=BatchSizePolicy(**args["policy"])
)
with psycopg.connect(args["dsn"], autocommit=True, application_name=args["dag_id"]) as conn:
    store = prepare(conn, MigrationDefinition(**args["definition"]), args["batch_size"])
    print(json.dumps({"ready": conn.info.backend_pid}), flush=True)
    if args["wait"]:
        sys.stdin.readline()
    while True:
        result = run_one_batch(
            store, settings, lambda: HealthVerdict(proceed=True), dag_id=args["dag_id"]
        )
        job = result.job.id if result.job is not None else None
        print(json.dumps({"outcome": result.outcome.value, "job": job}), flush=True)
        if result.outcome in (Outcome.FINISHED, Outcome.NOTHING_TO_CLAIM):
            break
"""


def start_worker(
    cluster,
    definition: MigrationDefinition,
    *,
    dag_id: str,
    batch_size: int,
    sub_batch_size: int,
    policy: BatchSizePolicy,
    wait: bool,
) -> subprocess.Popen[str]:
    """Start :data:`WORKER` in a new Python process; it opens its own connection."""
    args = {
        "dsn": cluster.dsn(),
        "definition": dataclasses.asdict(definition),
        "dag_id": dag_id,
        "batch_size": batch_size,
        "sub_batch_size": sub_batch_size,
        "policy": dataclasses.asdict(policy),
        "wait": wait,
    }
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, json.dumps(args)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )


def job_rows(cluster, migration: str) -> list[dict[str, Any]]:
    """Return the migration's job rows, oldest first."""
    query = sql.SQL("SELECT {} FROM walthrottle.batched_migration_jobs WHERE migration_name = %s ORDER BY id")
    rows = cluster.execute(query.format(sql.SQL(", ").join(map(sql.Identifier, JOB_COLUMNS))), [migration])
    return [dict(zip(JOB_COLUMNS, row, strict=True)) for row in rows]


def migration_row(cluster, migration: str) -> dict[str, Any]:
    """Return the migration's status, cursor and last error."""
    rows = cluster.execute(
        "SELECT status, cursor_key, last_error FROM walthrottle.batched_migrations WHERE name = %s",
        [migration],
    )
    assert len(rows) == 1, rows
    return dict(zip(("status", "cursor_key", "last_error"), rows[0], strict=True))


def assert_ranges_partition(jobs: list[dict[str, Any]], keys: list[Any], convert=int) -> None:
    """Assert that the jobs' ranges do not overlap and hold every key exactly once.

    :param jobs: the succeeded jobs.
    :param keys: every key in scope, in the column's order (as ``convert`` orders them).
    :param convert: reads a key back from its text form.
    """
    ranges = sorted((convert(job["start_key"]), convert(job["end_key"])) for job in jobs)
    for (_, end), (start, _) in itertools.pairwise(ranges):
        assert end < start, f"ranges overlap: ..{end} and {start}.."
    starts = [start for start, _ in ranges]
    uncovered = []
    for key in keys:
        at = bisect.bisect_right(starts, key) - 1
        if at < 0 or key > ranges[at][1]:
            uncovered.append(key)
    assert not uncovered, f"{len(uncovered)} keys in no job, e.g. {uncovered[:5]}"
    assert sum(job["planned_rows"] for job in jobs) == len(keys)


def sub_batch_budget(lines: list[str] | None = None, limit: int = 2000) -> Callable[[str], None]:
    """Return a ``log`` for :func:`run_one_batch` that keeps its lines and fails a call that never ends.

    :param lines: where to keep the lines, if anywhere.
    :param limit: the most sub-batches one call may run.
    """
    count = itertools.count(1)

    def log(line: str) -> None:
        if lines is not None:
            lines.append(line)
        if next(count) > limit:
            raise AssertionError(f"one call ran more than {limit} sub-batches, the last: {line}")

    return log


def run_bounded_batch(
    store, settings: RunSettings, check_health=always_healthy, **kwargs: Any
) -> BatchResult:
    """Call :func:`run_one_batch`, failing instead of hanging if its job never ends."""
    kwargs.setdefault("log", sub_batch_budget())
    return run_one_batch(store, settings, check_health, **kwargs)


def run_until_finished(store, settings: RunSettings, check_health=always_healthy, limit: int = 1000):
    """Run batches until the migration is finished; return the results."""
    results = []
    for _ in range(limit):
        results.append(run_bounded_batch(store, settings, check_health))
        if results[-1].outcome is Outcome.FINISHED:
            return results
        assert results[-1].outcome is Outcome.COMPLETED, results[-1]
    raise AssertionError(f"not finished after {limit} batches")


def lock_is_free(cluster, job_id: int) -> bool:
    """Whether no session holds the advisory lock of ``job_id`` (taken and released at once)."""
    rows = cluster.execute(
        "SELECT CASE WHEN pg_try_advisory_lock(%(ns)s::int, %(id)s::int) "
        "THEN pg_advisory_unlock(%(ns)s::int, %(id)s::int) ELSE false END",
        {"ns": LOCK_NAMESPACE, "id": job_id},
    )
    return bool(rows[0][0])


class ArchiveHealth:
    """A ``check_health`` that really measures the backlog, on a connection of its own."""

    def __init__(self, conn: psycopg.Connection[Any], max_pending_segments: int) -> None:
        self.conn = conn
        self.max_pending_segments = max_pending_segments
        self.seen: list[HealthSignal] = []

    def __call__(self) -> HealthVerdict:
        health = evaluate_wal_archival(read_archiver_status(self.conn), self.max_pending_segments)
        self.seen.append(health)
        return HealthVerdict(proceed=may_proceed(health, OnUnavailable.WAIT), health=health)

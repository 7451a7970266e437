"""Throttle fidelity: how close four policies keep the WAL archival backlog to 42, and how fast they go.

Each policy gets a fresh throwaway PostgreSQL with 1 MiB WAL segments (``initdb --wal-segsize=1``)
and a slow archiver: ``archive_command`` sleeps ``1/rate`` seconds, then copies the segment, so it
ships at most ``--archive-rate`` segments a second. The archiver's real pace is measured on each
cluster before the run (a backlog of 60 segments, drained). The migration updates every row of a
table big enough to write at least ten times the threshold in WAL:
``UPDATE items SET migrated = true WHERE id BETWEEN %(start)s AND %(end)s``. A separate connection
samples the pending ``.ready`` segments (``pg_ls_archive_statusdir()``) every 100 ms.

The policies, all on the same batching core (:func:`run_one_batch`, sub-batches of 1,000 keys, no
pause between them):

``none``
    fixed batches of ``--batch-size`` keys, back to back, no check.
``gitlab``
    GitLab's batched background migrations: fixed batches; before each batch (so after the last
    one) check the backlog, and above 42 hold for a fixed time before checking again. GitLab holds
    10 minutes; here the hold is scaled down by ``--time-scale`` (default 1/100: 6 s).
``ours_default``
    the same, with the operator's default ``wait_interval`` of 60 s, not scaled: its waits end when
    the trigger, which re-checks when the drain rate it measured says the backlog is back at 42,
    sees room.
``ours``
    ``BatchedMigrationOperator``'s own batch loop, in-process, through the public core as the
    operator drives it (``bench/_core.py``): ``run_batch()`` (the runner, its checks between
    sub-batches and the batch-size optimizer, with the WAL flag on), one call per task; when it says
    to wait for the backlog, the benchmark runs the trigger the operator would defer on (the real
    ``WalArchivalTrigger``) to its first event, or sleeps for a fixed wait, then calls it again. The
    operator's ``wait_interval`` (60 s by default) is scaled by the same factor (0.6 s). What a real
    scheduler adds between two tasks (queueing, a worker start, the triggerer's round trip) is not
    modelled.

Reported per policy: the highest backlog and its overshoot above 42, the seconds above 42 (until
the backlog is back at or below 42, so after the migration for ``none``), the rows per second,
the WAL bytes per row (``pg_current_wal_lsn()`` before and after), the archiver-bound limit
(archive rate x segment size / WAL bytes per row) and the ratio to it.

    .venv/bin/python bench/throttle_fidelity.py --plots docs/images
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cluster import bench_cluster, machine, make_items_table, markdown_table, update_sql, write_json
from _core import operator_gate, operator_settings, operator_task

from airflow_provider_walthrottle.flags import WAL_HEALTH_FLAG, FeatureFlag
from airflow_provider_walthrottle.migrations.batch import BatchDone, Finished, WaitForBacklog
from airflow_provider_walthrottle.migrations.definition import MigrationDefinition
from airflow_provider_walthrottle.migrations.optimizer import BatchSizePolicy
from airflow_provider_walthrottle.migrations.runner import (
    HealthVerdict,
    Outcome,
    RunSettings,
    prepare,
    run_one_batch,
)
from airflow_provider_walthrottle.wal.queries import read_archiver_status

if TYPE_CHECKING:
    from airflow_provider_walthrottle.migrations.store import MigrationStore
    from tests.support.postgres_cluster import PostgresCluster

THRESHOLD = 42
POLICIES = ("none", "gitlab", "ours", "ours_default")
GITLAB_HOLD_SECONDS = 600.0
OPERATOR_WAIT_INTERVAL = 60.0
SEGMENT_MB = 1
SEGMENT_BYTES = SEGMENT_MB * 1024 * 1024
SUB_BATCH_SIZE = 1_000
CONN_ID = "bench_fidelity"

#: One sample: pending ``.ready`` segments, segments archived so far, and the WAL position in bytes.
SAMPLE = (
    "SELECT (SELECT count(*) FROM pg_catalog.pg_ls_archive_statusdir()"
    r"         WHERE name ~ '^[0-9A-F]{24}\.ready$'),"
    " archived_count, pg_catalog.pg_current_wal_lsn() - '0/0'::pg_lsn FROM pg_catalog.pg_stat_archiver"
)


@dataclass
class PolicyRun:
    """What one policy's run measured; times are seconds from the start of the migration."""

    policy: str
    rows: int
    archive_rate: float
    seconds: float = 0.0
    wal_bytes: int = 0
    samples: list[tuple[float, int, int]] = field(default_factory=list)
    batches: list[tuple[float, int]] = field(default_factory=list)
    waits: int = 0

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds

    @property
    def wal_bytes_per_row(self) -> float:
        return self.wal_bytes / self.rows

    @property
    def limit_rows_per_second(self) -> float:
        return self.archive_rate * SEGMENT_BYTES / self.wal_bytes_per_row

    @property
    def max_pending(self) -> int:
        return max(pending for _, pending, _ in self.samples)

    @property
    def seconds_above(self) -> float:
        above = 0.0
        for (t0, pending, _), (t1, _, _) in zip(self.samples, self.samples[1:], strict=False):
            if pending > THRESHOLD:
                above += t1 - t0
        return above

    @property
    def seconds_idle(self) -> float:
        """Seconds with nothing pending during the migration, once the first segment was pending."""
        idle, began = 0.0, False
        for (t0, pending, _), (t1, _, _) in zip(self.samples, self.samples[1:], strict=False):
            began = began or pending > 0
            if began and pending == 0 and t0 < self.seconds:
                idle += min(t1, self.seconds) - t0
        return idle

    @property
    def largest_batch_segments(self) -> float:
        return max(size for _, size in self.batches) * self.wal_bytes_per_row / SEGMENT_BYTES

    def summary(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "rows": self.rows,
            "seconds": self.seconds,
            "wal_bytes": self.wal_bytes,
            "wal_bytes_per_row": self.wal_bytes_per_row,
            "archive_rate": self.archive_rate,
            "max_pending": self.max_pending,
            "overshoot": max(self.max_pending - THRESHOLD, 0),
            "seconds_above": self.seconds_above,
            "seconds_idle": self.seconds_idle,
            "rows_per_second": self.rows_per_second,
            "limit_rows_per_second": self.limit_rows_per_second,
            "ratio": self.rows_per_second / self.limit_rows_per_second,
            "largest_batch_segments": self.largest_batch_segments,
            "sub_batch_segments": SUB_BATCH_SIZE * self.wal_bytes_per_row / SEGMENT_BYTES,
            "waits": self.waits,
        }


class Sampler(threading.Thread):
    """Sample the backlog every ``interval`` seconds on a connection of its own."""

    def __init__(self, dsn: str, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.interval = interval
        self.samples: list[tuple[float, int, int, int]] = []
        self.started = time.monotonic()
        self.done = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                due = time.monotonic()
                while not self.done.is_set():
                    row = conn.execute(SAMPLE).fetchone()
                    assert row is not None
                    self.samples.append((time.monotonic(), int(row[0]), int(row[1]), int(row[2])))
                    due += self.interval
                    self.done.wait(max(due - time.monotonic(), 0))
        except BaseException as error:  # reported by the main thread
            self.error = error

    def latest(self) -> tuple[float, int, int, int]:
        while not self.samples:
            time.sleep(0.01)
        return self.samples[-1]


def calibrate(cluster: PostgresCluster, delay: float, segments: int = 60) -> float:
    """Return the archiver's pace in segments per second with ``delay``, from a backlog it drains."""
    cluster.make_backlog(segments)
    cluster.set_archive_delay(delay)
    start = cluster.archiver_stats()["archived_count"]
    cluster.open_gate()
    cluster.wait_until(lambda: cluster.archiver_stats()["archived_count"] > start, what="the first copy")
    first, began = start + 1, time.monotonic()
    target = first + segments * 2 // 3
    cluster.wait_until(
        lambda: cluster.archiver_stats()["archived_count"] >= target, timeout=120, interval=0.01
    )
    rate = (cluster.archiver_stats()["archived_count"] - first) / (time.monotonic() - began)
    cluster.wait_until(lambda: not cluster.ready_segments(), timeout=120, what="the calibration backlog")
    return rate


def fixed_policy(batch_size: int) -> RunSettings:
    return RunSettings(
        sub_batch_size=SUB_BATCH_SIZE,
        pause_ms=0,
        max_pending_segments=THRESHOLD,
        policy=BatchSizePolicy(min_batch_size=batch_size, max_batch_size=batch_size),
    )


def proceed() -> HealthVerdict:
    return HealthVerdict(proceed=True)


def run_none(store: MigrationStore, run: PolicyRun, started: float, batch_size: int, **_: Any) -> None:
    settings = fixed_policy(batch_size)
    while (result := run_one_batch(store, settings, proceed)).outcome is Outcome.COMPLETED:
        run.batches.append((time.monotonic() - started, result.keys))


def run_gitlab(
    store: MigrationStore, run: PolicyRun, started: float, batch_size: int, hold: float, **_: Any
) -> None:
    settings = fixed_policy(batch_size)
    while True:
        pending = read_archiver_status(store.conn).pending_segments
        if pending is not None and pending > THRESHOLD:
            run.waits += 1
            time.sleep(hold)
            continue
        result = run_one_batch(store, settings, proceed)
        if result.outcome is not Outcome.COMPLETED:
            return
        run.batches.append((time.monotonic() - started, result.keys))


async def _first_event(trigger: Any) -> Any:
    async for event in trigger.run():
        return event
    return None


def run_ours(
    store: MigrationStore, run: PolicyRun, started: float, batch_size: int, wait_interval: float, **_: Any
) -> None:
    settings = operator_settings(batch_size=batch_size, sub_batch_size=SUB_BATCH_SIZE, threshold=THRESHOLD)
    while True:
        step = operator_task(store, settings, conn_id=CONN_ID)
        if isinstance(step, Finished):
            return
        if isinstance(step, BatchDone):
            if step.summary["batch_size"]:
                run.batches.append((time.monotonic() - started, step.summary["batch_size"]))
            continue
        run.waits += 1
        if isinstance(step, WaitForBacklog):  # what the operator defers on
            gate = operator_gate(store, settings, conn_id=CONN_ID)
            trigger = gate.trigger(poll_interval=wait_interval, max_pending_segments=step.at_most)
            event = asyncio.run(_first_event(trigger))
            assert event is not None and event.payload["status"] == "success", event
        else:  # a fixed wait: the headroom the smallest batch needs is unknown
            time.sleep(wait_interval)


def run_ours_default(
    store: MigrationStore, run: PolicyRun, started: float, batch_size: int, **_: Any
) -> None:
    run_ours(store, run, started, batch_size, wait_interval=OPERATOR_WAIT_INTERVAL)


RUNNERS = {"none": run_none, "gitlab": run_gitlab, "ours": run_ours, "ours_default": run_ours_default}
#: How the tables and plots name the policies.
NAMES = {
    "none": "no throttle",
    "gitlab": "GitLab: check, then hold",
    "ours": "ours (the operator)",
    "ours_default": f"ours, default wait_interval ({OPERATOR_WAIT_INTERVAL:g} s, not scaled)",
}


def run_policy(policy: str, args: argparse.Namespace, delay: float) -> PolicyRun:
    """Run one policy on a fresh cluster and return what it measured."""
    with bench_cluster(
        f"fidelity-{policy}",
        wal_segsize_mb=SEGMENT_MB,
        extra_conf={"max_wal_size": "8GB", "checkpoint_timeout": "1h", "wal_keep_size": "0"},
    ) as cluster:
        make_items_table(cluster, "items", args.rows)
        cluster.execute("CHECKPOINT")
        cluster.drain(timeout=300)
        rate = calibrate(cluster, delay)
        cluster.execute("CHECKPOINT")
        os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = cluster.uri()
        os.environ[f"AIRFLOW_VAR_{WAL_HEALTH_FLAG.upper()}"] = "true"
        definition = MigrationDefinition(
            name=f"fidelity_{policy}", table="items", column="id", batch_sql=update_sql("items")
        )
        run = PolicyRun(policy=policy, rows=args.rows, archive_rate=rate)
        sampler = Sampler(cluster.dsn())
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            store = prepare(conn, definition, args.batch_size)
            FeatureFlag(WAL_HEALTH_FLAG).is_enabled(definition.name)  # Airflow's one-time set-up
            sampler.start()
            _, _, _, lsn_before = sampler.latest()
            started = time.monotonic()
            RUNNERS[policy](
                store,
                run,
                started,
                batch_size=args.batch_size,
                hold=GITLAB_HOLD_SECONDS * args.time_scale,
                wait_interval=OPERATOR_WAIT_INTERVAL * args.time_scale,
            )
            run.seconds = time.monotonic() - started
            lsn_after = int(
                conn.execute("SELECT pg_catalog.pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()[0]
            )
            progress = store.progress()
        assert progress.keys_done == args.rows, progress
        run.wal_bytes = lsn_after - lsn_before
        # keep sampling until the backlog is back at or below the threshold, and a second more
        deadline = time.monotonic() + 600
        while sampler.latest()[1] > THRESHOLD and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)
        sampler.done.set()
        sampler.join()
        if sampler.error is not None:
            raise sampler.error
        run.samples = [(t - started, pending, archived) for t, pending, archived, _ in sampler.samples]
        return run


def plot(runs: list[dict[str, Any]], directory: Path) -> list[Path]:
    """Draw the backlog of every policy over time, and our batch size over time; return the files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=110)
    for run in runs:
        times = [t for t, _, _ in run["samples"]]
        pending = [p for _, p, _ in run["samples"]]
        ax.plot(times, pending, label=NAMES[run["policy"]], linewidth=1.2)
    ax.axhline(THRESHOLD, color="black", linestyle="--", linewidth=0.8, label=f"threshold {THRESHOLD}")
    ax.set_xlabel("seconds since the migration started")
    ax.set_ylabel("WAL segments pending archival")
    ax.set_title("Backlog, sampled every 100 ms")
    ax.set_ylim(bottom=0)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    backlog = directory / "throttle_fidelity_backlog.png"
    fig.savefig(backlog)
    plt.close(fig)

    ours = next(run for run in runs if run["policy"] == "ours")
    fig, ax = plt.subplots(figsize=(9, 3.5), dpi=110)
    ax.step([t for t, _ in ours["batches"]], [s for _, s in ours["batches"]], where="post", color="C2")
    ax.plot([t for t, _ in ours["batches"]], [s for _, s in ours["batches"]], ".", color="C2")
    ax.set_xlabel("seconds since the migration started")
    ax.set_ylabel("rows in the batch")
    ax.set_title("Ours: the size of each completed batch")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    sizes = directory / "throttle_fidelity_batch_size.png"
    fig.savefig(sizes)
    plt.close(fig)
    return [backlog, sizes]


def table(results: dict[str, Any]) -> str:
    """Return the Markdown table of the runs."""
    rows = []
    for run in results["runs"]:
        rows.append(
            (
                NAMES[run["policy"]],
                run["max_pending"],
                f"{run['overshoot']}",
                f"{run['seconds_above']:.1f}",
                f"{run['seconds']:.1f}",
                f"{run['seconds_idle']:.1f}",
                f"{run['rows_per_second']:,.0f}",
                f"{run['wal_bytes_per_row']:.0f}",
                f"{run['archive_rate']:.2f}",
                f"{run['limit_rows_per_second']:,.0f}",
                f"{run['ratio']:.2f}",
                f"{run['largest_batch_segments']:.1f}",
            )
        )
    return markdown_table(
        (
            "policy",
            "max pending",
            "overshoot above 42",
            "s above 42",
            "migration s",
            "s with the archiver idle",
            "rows/s",
            "WAL bytes/row",
            "archiver segments/s",
            "archiver-bound rows/s",
            "ratio to the limit",
            "largest batch, segments",
        ),
        rows,
        "lrrrrrrrrrrr",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_500_000, help="rows in the table")
    parser.add_argument("--archive-rate", type=float, default=8.0, help="segments per second, nominal")
    parser.add_argument("--batch-size", type=int, default=10_000, help="fixed batches; ours starts here")
    parser.add_argument("--time-scale", type=float, default=0.01, help="scale of GitLab's hold and our wait")
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--plots", type=Path, help="write the PNG plots into this directory")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)
    # the operator logs one line per sub-batch: thousands here
    logging.getLogger("airflow.task").setLevel(logging.WARNING)

    delay = 1 / args.archive_rate
    runs = []
    for policy in args.policies.split(","):
        run = run_policy(policy, args, delay)
        summary = run.summary()
        print(
            f"{policy}: max pending {summary['max_pending']}, {summary['seconds_above']:.1f} s above "
            f"{THRESHOLD}, {summary['rows_per_second']:,.0f} rows/s = {summary['ratio']:.2f} of the "
            f"archiver-bound {summary['limit_rows_per_second']:,.0f} ({summary['wal_bytes_per_row']:.0f} "
            f"WAL bytes/row, archiver {summary['archive_rate']:.2f} segments/s), {run.waits} waits",
            flush=True,
        )
        runs.append({**summary, "samples": run.samples, "batches": run.batches})
    results = {
        "rows": args.rows,
        "segment_bytes": SEGMENT_BYTES,
        "threshold": THRESHOLD,
        "nominal_archive_rate": args.archive_rate,
        "batch_size": args.batch_size,
        "sub_batch_size": SUB_BATCH_SIZE,
        "time_scale": args.time_scale,
        "gitlab_hold_seconds": GITLAB_HOLD_SECONDS * args.time_scale,
        "wait_interval": OPERATOR_WAIT_INTERVAL * args.time_scale,
        "archive_rate_median": statistics.median(run["archive_rate"] for run in runs),
        "machine": machine(),
        "runs": runs,
    }
    print(table(results))
    if args.plots and any(run["policy"] == "ours" for run in runs):
        for path in plot(runs, args.plots):
            print(f"wrote {path}")
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

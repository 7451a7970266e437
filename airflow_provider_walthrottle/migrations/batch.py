"""Run one batch of a migration, with its throttle accounting, and say what to do next.

:func:`run_batch` is the batching core's entry point: the operator calls it once per task and only
maps its answer onto Airflow, and the benchmarks call it in a loop. The answer is one of

- :class:`BatchDone`: a batch ran to the end of its range; here is its summary;
- :class:`WaitForBacklog`: wait until at most ``at_most`` WAL segments are pending;
- :class:`WaitFixedTime`: wait a fixed time (the backlog that would let the batch run is unknown);
- :class:`Paused`: the migration is paused;
- :class:`Finished`: every range is done;
- :class:`NothingToClaim`: every remaining range is being run by another worker.

Plain Python over a psycopg connection in autocommit mode, with no Airflow import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg

from airflow_provider_walthrottle.migrations.headroom import backlog_for_min_batch
from airflow_provider_walthrottle.migrations.runner import (
    BatchResult,
    HealthVerdict,
    JobFailedError,
    Outcome,
    run_one_batch,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from airflow_provider_walthrottle.migrations.runner import RunSettings
    from airflow_provider_walthrottle.migrations.store import MigrationStore


@dataclass(frozen=True)
class BatchDone:
    """A batch ran to the end of its range.

    :param result: what the batch did.
    :param summary: its summary, JSON-ready: the operator's XCom.
    """

    result: BatchResult
    summary: dict[str, Any]

    def describe(self) -> str:
        """Return the batch's line for a task log: its job, rows, progress, rate and ETA."""
        summary, progress = self.summary, self.result.progress
        return (
            "job {} (keys {}..{}) done, {} rows ({} in this try, {:.1f}s); {:.1f}% of {} keys, {} rows/s, "
            "ETA {} s (throttled {:.0f} s so far)"
        ).format(
            summary["job_id"],
            *summary["range"],
            summary["job_rows_affected"],
            self.result.rows_affected,
            self.result.seconds,
            progress.percentage,
            progress.total_keys,
            summary["rows_per_second"],
            summary["eta_seconds"],
            progress.throttled_seconds,
        )


@dataclass(frozen=True)
class WaitForBacklog:
    """Wait until at most ``at_most`` WAL segments are pending, then run the next batch.

    :param at_most: the backlog to wait for: the threshold, or less when the smallest batch needs
        more room below it.
    :param reason: why, for the log.
    :param result: what the call did before it stopped.
    :param headroom: whether the backlog is below the threshold, but leaves too little room for the
        smallest batch (a throttle event of its own, ``headroom``).
    """

    at_most: int
    reason: str
    result: BatchResult
    headroom: bool = False


@dataclass(frozen=True)
class WaitFixedTime:
    """Wait a fixed time, then run the next batch: the backlog that would let it run is unknown.

    :param reason: why, for the log.
    :param result: what the call did before it stopped.
    :param headroom: as ``headroom`` of :class:`WaitForBacklog`.
    """

    reason: str
    result: BatchResult
    headroom: bool = False


@dataclass(frozen=True)
class Stopped:
    """No batch ran, and none waits for the backlog: the base of the answers below.

    :param reason: what the log or the skipped task says.
    :param result: the migration's progress.
    """

    reason: str
    result: BatchResult


class Paused(Stopped):
    """The migration is paused: wait until it is resumed, or skip."""


class Finished(Stopped):
    """The migration is finished: every range is done."""


class NothingToClaim(Stopped):
    """Every remaining range is being run by another worker."""


#: What :func:`run_batch` says to do next.
NextStep = BatchDone | WaitForBacklog | WaitFixedTime | Paused | Finished | NothingToClaim


def run_batch(
    store: MigrationStore,
    settings: RunSettings,
    check_health: Callable[[], HealthVerdict],
    *,
    dag_id: str | None = None,
    run_id: str | None = None,
    try_number: int | None = None,
    log: Callable[[str], None] = lambda line: None,
) -> NextStep:
    """Run one batch with its throttle accounting, and say what to do next.

    It closes the migration's open wait on the WAL backlog (the time since counts as throttled),
    runs :func:`~airflow_provider_walthrottle.migrations.runner.run_one_batch`, keeps the backlog
    its last check saw on the job, and, when the backlog stopped it, opens a new wait and says until
    when to wait.

    :param store: the migration's store, from :func:`~airflow_provider_walthrottle.migrations.runner.prepare`.
    :param settings: how batches run; ``settings.max_pending_segments`` is the threshold.
    :param check_health: as for :func:`~airflow_provider_walthrottle.migrations.runner.run_one_batch`
        (the operator checks through its :class:`~airflow_provider_walthrottle.gate.HealthGate`).
    :param dag_id: recorded on the job.
    :param run_id: recorded on the job.
    :param try_number: recorded on the job.
    :param log: receives one line per sub-batch.
    :raises JobFailedError: when ``batch_sql`` fails, or the connection is lost (then not
        ``final``: no attempt is used, and the job resumes where it stopped).
    :raises MigrationStateError: as :func:`~.runner.run_one_batch`.
    :raises MigrationDefinitionError: as :func:`~.runner.run_one_batch`.
    """
    accounts, name = store.accounts, store.definition.name
    try:
        accounts.end_throttle()
        result = run_one_batch(
            store, settings, check_health, dag_id=dag_id, run_id=run_id, try_number=try_number, log=log
        )
    except psycopg.OperationalError as error:
        if not store.conn.broken:
            raise
        # e.g. a restart while the backlog was checked: the job stays claimable as it was
        raise JobFailedError(
            f"migration {name!r}: lost the connection ({' '.join(str(error).split())}); no attempt used, "
            "the job resumes where it stopped",
            final=False,
        ) from None
    if result.job is not None and result.health is not None:
        pending = result.health.status.pending_segments
        if pending is not None:
            accounts.note_backlog(result.job.id, pending)
    progress = result.progress
    if result.outcome is Outcome.COMPLETED:
        return BatchDone(result, batch_summary(name, result))
    if result.outcome is Outcome.THROTTLED:
        accounts.begin_throttle()
        return _wait(result, settings.max_pending_segments)
    if result.outcome is Outcome.PAUSED:
        return Paused(f"migration {name} is paused", result)
    if result.outcome is Outcome.FINISHED:
        return Finished(
            f"Migration {name} is finished: {progress.rows_affected} rows affected over "
            f"{progress.total_keys} keys in {progress.jobs_succeeded} batches; nothing left to do",
            result,
        )
    return NothingToClaim(
        f"Migration {name}: every remaining range is being run by another task "
        f"({progress.jobs_open} open); nothing to claim",
        result,
    )


def _wait(result: BatchResult, threshold: int) -> WaitForBacklog | WaitFixedTime:
    """Say how long a throttled batch waits: for the threshold, or for room for the smallest batch."""
    decision, health = result.decision, result.health
    if decision is None or not decision.must_wait:
        reason = health.summary() if health else "the WAL backlog is too long"
        return WaitForBacklog(threshold, f"throttled: {reason}", result)
    # the backlog is below the threshold, but not by enough for the smallest batch
    reason = f"throttled: {decision.describe()}"
    if decision.policy is None or health is None or decision.limited_by == "replication":
        return WaitFixedTime(reason, result, headroom=True)
    at_most = backlog_for_min_batch(
        decision.policy.min_batch_size,
        decision.estimate.wal_bytes_per_row if decision.estimate else None,
        max_pending_segments=threshold,
        wal_segment_size=health.status.wal_segment_size,
    )
    return WaitForBacklog(at_most, reason, result, headroom=True)


def batch_summary(name: str, result: BatchResult) -> dict[str, Any]:
    """Return what a batch did and where the migration stands, JSON-ready (the operator's XCom).

    :param name: the migration's name.
    :param result: the batch's result.
    """
    progress, job = result.progress, result.job
    return {
        "migration": name,
        "outcome": result.outcome.value,
        "job_id": job.id if job else None,
        "range": [job.start_key, job.end_key] if job else None,
        "keys": result.keys,
        "rows_affected": result.rows_affected,
        "job_rows_affected": (job.rows_affected if job else 0) + result.rows_affected,
        "seconds": round(result.seconds, 3),
        "wal_bytes": result.wal_bytes,
        "rows_done": progress.rows_affected,
        "keys_done": progress.keys_done,
        "total_keys": progress.total_keys,
        "percentage": round(progress.percentage, 2),
        "key_position": progress.cursor_key,
        "rows_per_second": round(result.rows_per_second, 1) if result.rows_per_second else None,
        "eta_seconds": round(progress.eta_seconds, 1) if progress.eta_seconds is not None else None,
        "throttled_seconds": round(progress.throttled_seconds, 1),
        "batch_size": result.decision.size if result.decision else None,
    }

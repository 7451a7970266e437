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

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg

from airflow_provider_walthrottle.durations import format_duration
from airflow_provider_walthrottle.migrations.headroom import backlog_for_min_batch
from airflow_provider_walthrottle.migrations.runner import (
    BatchResult,
    HealthVerdict,
    JobFailedError,
    Outcome,
    run_one_batch,
)
from airflow_provider_walthrottle.migrations.state import DEFAULT_THROTTLE_REASON
from airflow_provider_walthrottle.wal.health import Signal

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
        """Return the batch's line for a task log: its job, rows, progress, both rates, ETA and time.

        ``job 70 (keys 690001..700000) done, 10000 rows (10000 in this try, 0.7 s); 70.0% of 1000000
        keys; effective rate 33.3 keys/s over the last 10 batches (33.0 since it started); statement
        rate 14285.7 keys/s; ETA about 2 h 30 min at the last 10 batches' pace; wall clock 5 h 54 min:
        running 1 min 45 s, throttled by wal_archival 4 min, waiting between batches 5 h 48 min``
        """
        summary, progress = self.summary, self.result.progress
        pace, eta, breakdown = progress.pace, progress.eta_seconds, progress.breakdown
        effective = f"effective rate {_rate(progress.effective_keys_per_second)} keys/s since it started"
        if pace is not None and progress.recent_keys_per_second is not None:
            window = pace.description if pace.since_first_batch else f"over {pace.description}"
            effective = (
                f"effective rate {_rate(progress.recent_keys_per_second)} keys/s {window} "
                f"({_rate(progress.effective_keys_per_second)} since it started)"
            )
        start, end = summary["range"]
        eta_text = (
            "unknown" if eta is None else f"{format_duration(eta, estimate=True)} {progress.eta_assumes}"
        )
        return (
            f"job {summary['job_id']} (keys {start}..{end}) done, {summary['job_rows_affected']} rows "
            f"({self.result.rows_affected} in this try, {self.result.seconds:.1f} s); "
            f"{progress.percentage:.1f}% of {progress.total_keys} keys; {effective}; "
            f"statement rate {_rate(progress.statement_keys_per_second)} keys/s; ETA {eta_text}; "
            f"{breakdown.describe() if breakdown is not None else 'time spent not read'}"
        )


def _rate(keys_per_second: float | None) -> str:
    return "-" if keys_per_second is None else f"{keys_per_second:.1f}"


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

    It keeps the migration's time accounts (see
    :class:`~airflow_provider_walthrottle.migrations.accounts.MigrationAccounts`): the time since
    the last change goes to its account (waiting between batches, throttled, paused, failed) and
    the batch's to ``running``; it runs
    :func:`~airflow_provider_walthrottle.migrations.runner.run_one_batch`, keeps the backlog and
    the other numbers its last check saw on the job (:func:`checked_values`), and, when a health
    signal stopped it, opens a throttled entry under that signal and says until when to wait. A
    batch that raises counts, with the time until the next call, as failed and retried.

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
    last_check: list[HealthVerdict] = []

    def check() -> HealthVerdict:
        verdict = check_health()
        last_check[:] = [verdict]  # the verdict the batch ends with: the backlog and numbers the job keeps
        return verdict

    try:
        accounts.begin_batch()
        result = run_one_batch(
            store, settings, check, dag_id=dag_id, run_id=run_id, try_number=try_number, log=log
        )
    except psycopg.OperationalError as error:
        if not store.conn.broken:
            _account_failure(store)
            raise
        # e.g. a restart while the backlog was checked: the job stays claimable as it was
        raise JobFailedError(
            f"migration {name!r}: lost the connection ({' '.join(str(error).split())}); no attempt used, "
            "the job resumes where it stopped",
            final=False,
        ) from None
    except BaseException:
        _account_failure(store)
        raise
    if result.job is not None and last_check:
        values = checked_values(last_check[0])
        if values:
            accounts.note_readings(result.job.id, values)
    progress = result.progress
    if result.outcome is Outcome.THROTTLED:
        accounts.begin_throttle(throttle_reason(result))
        return _wait(result, settings.max_pending_segments)
    accounts.end_batch(progressed=result.outcome is Outcome.COMPLETED)
    if result.outcome is Outcome.COMPLETED:
        return BatchDone(result, batch_summary(name, result))
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


def checked_values(verdict: HealthVerdict) -> dict[str, dict[str, float | int | None]]:
    """Return the numbers a health check saw, by indicator, as a job keeps them for the page's chart.

    They are the ``values`` of its readings (see
    :class:`~airflow_provider_walthrottle.indicators.base.Reading`), as the verdict carries them; a
    verdict made with the WAL archival backlog alone (``health``) gives the backlog's. ``{}`` when
    the check read nothing (every flag off).

    :param verdict: the check's answer.
    """
    from airflow_provider_walthrottle.indicators.wal_archival import wal_archival_reading

    values = {indicator: dict(numbers) for indicator, numbers in verdict.values.items()}
    if verdict.health is not None and "wal_archival" not in values:
        values["wal_archival"] = dict(wal_archival_reading(verdict.health).values)
    return values


def throttle_reason(result: BatchResult) -> str:
    """Return the signal a throttled batch is put down to in the time accounts.

    A stop is put down to the indicators that said stop (``wal_archival``, ``replication_lag``...,
    joined with ``+``); a wait for room below a WAL bound (headroom, or the WAL budget other
    batches share) to the WAL archival backlog, or to ``replication`` when the replication
    headroom bound the batch.

    :param result: a batch whose outcome is ``throttled``.
    """
    decision, health = result.decision, result.health
    if result.stopped_by:
        return "+".join(result.stopped_by)
    if result.shortfall is not None:
        return DEFAULT_THROTTLE_REASON
    if decision is not None and decision.must_wait:
        return "replication" if decision.limited_by == "replication" else DEFAULT_THROTTLE_REASON
    if health is not None and health.signal is Signal.NORMAL:
        return "another indicator"
    return DEFAULT_THROTTLE_REASON


def _account_failure(store: MigrationStore) -> None:
    """Put the failed batch's time down as failed, if the connection still works; never raise."""
    if store.conn.closed or store.conn.broken:
        return  # the open entry stays running until the next batch
    with contextlib.suppress(psycopg.Error):
        store.accounts.batch_failed()


def _wait(result: BatchResult, threshold: int) -> WaitForBacklog | WaitFixedTime:
    """Say how long a throttled batch waits: for the threshold, or for room for the smallest batch."""
    decision, health = result.decision, result.health
    if result.shortfall is not None:  # the statement fits once the backlog leaves room beside the others
        at_most = result.shortfall.backlog_to_wait_for(threshold)
        return WaitForBacklog(at_most, f"throttled: {result.shortfall.describe()}", result, headroom=True)
    if decision is None or not decision.must_wait:
        if result.stopped_by and "wal_archival" not in result.stopped_by:
            reason = f"stopped by {', '.join(result.stopped_by)} (see the check's line above)"
        else:
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
        reserved_bytes=decision.reserved_bytes or 0,
    )
    return WaitForBacklog(at_most, reason, result, headroom=True)


def batch_summary(name: str, result: BatchResult) -> dict[str, Any]:
    """Return what a batch did and where the migration stands, JSON-ready (the operator's XCom).

    Both rates are keys per second, under names that say which: ``effective_keys_per_second``
    (per second of wall-clock time since the migration started), ``recent_keys_per_second`` (the
    same over ``recent_window``) and ``statement_keys_per_second`` (per second of the statements'
    own time: what the server does while they run). ``eta_wall_clock_seconds`` is the wall-clock
    time left at the recent pace, which ``eta_assumes`` names; ``time_spent_seconds`` is where the
    wall-clock time went. ``rows_per_second`` and ``eta_seconds`` are deprecated aliases of
    ``statement_keys_per_second`` and ``eta_wall_clock_seconds``, removed in 0.3 (before 0.2,
    ``eta_seconds`` left out the time between batches).

    :param name: the migration's name.
    :param result: the batch's result.
    """
    progress, job = result.progress, result.job
    statement_rate = _rounded(progress.statement_keys_per_second)
    eta = _rounded(progress.eta_seconds)
    breakdown = progress.breakdown
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
        "effective_keys_per_second": _rounded(progress.effective_keys_per_second),
        "recent_keys_per_second": _rounded(progress.recent_keys_per_second),
        "recent_window": progress.pace.description if progress.pace is not None else None,
        "statement_keys_per_second": statement_rate,
        "eta_wall_clock_seconds": eta,
        "eta_assumes": progress.eta_assumes,
        "time_spent_seconds": breakdown.to_dict() if breakdown is not None else None,
        "throttled_seconds": round(progress.throttled_seconds, 1),
        "batch_size": result.decision.size if result.decision else None,
        # deprecated aliases, removed in 0.3
        "rows_per_second": statement_rate,
        "eta_seconds": eta,
    }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)

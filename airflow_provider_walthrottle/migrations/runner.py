"""Run one batch of a migration: claim a job, walk it in sub-batches, check health in between.

Plain Python over a psycopg connection in autocommit mode; the caller says how to judge the WAL
backlog. :func:`run_one_batch` is the batch itself, without the throttle accounting around it;
:func:`~airflow_provider_walthrottle.migrations.batch.run_batch` adds that and says what to do
next, and is what the operator and the benchmarks call. Tests call either, from as many processes
as they like.
"""

from __future__ import annotations

import contextlib
import enum
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg

from airflow_provider_walthrottle.migrations.definition import MigrationDefinitionError
from airflow_provider_walthrottle.migrations.jobs import SPLITTABLE_ERRORS
from airflow_provider_walthrottle.migrations.optimizer import (
    BatchObservation,
    BatchSizeDecision,
    ThroughputEstimate,
)
from airflow_provider_walthrottle.migrations.pacing import StatementSizer, signal_pause
from airflow_provider_walthrottle.migrations.run_settings import RunSettings  # noqa: TC001 - importable here
from airflow_provider_walthrottle.migrations.state import (
    Job,
    JobStatus,
    MigrationStateError,
    MigrationStatus,
    RangeEscapedError,
    SubBatchResult,
    attempts_used_up,
)
from airflow_provider_walthrottle.migrations.store import MigrationStore
from airflow_provider_walthrottle.migrations.verdict import HealthVerdict  # noqa: TC001 - its home until 0.2
from airflow_provider_walthrottle.migrations.wal_budget import BatchBudget, BudgetShortfall

if TYPE_CHECKING:
    from collections.abc import Callable

    from airflow_provider_walthrottle.migrations.definition import MigrationDefinition
    from airflow_provider_walthrottle.migrations.progress import Progress
    from airflow_provider_walthrottle.wal.health import HealthSignal


#: Seconds between two counts while a batch waits for room in the shared WAL budget (at most
#: ``RunSettings.max_pause_seconds`` in all before it ends, throttled, and its task defers).
ROOM_WAIT_SECONDS = 0.25


class Outcome(str, enum.Enum):
    """How a call to :func:`run_one_batch` ended."""

    #: A batch ran to the end of its range.
    COMPLETED = "completed"
    #: The WAL backlog is too long: stopped before or between sub-batches, progress committed.
    THROTTLED = "throttled"
    #: The migration is paused (its status is ``paused``).
    PAUSED = "paused"
    #: The migration is finished: every range is done.
    FINISHED = "finished"
    #: Every open range is being worked on by other live workers.
    NOTHING_TO_CLAIM = "nothing_to_claim"


@dataclass(frozen=True)
class BatchResult:
    """What one call did, and where the migration stands.

    :param outcome: how it ended.
    :param progress: the migration's progress afterwards.
    :param job: the job worked on, if any.
    :param rows_affected: rows ``batch_sql`` reported in this call.
    :param keys: keys walked in this call.
    :param seconds: seconds spent in sub-batches in this call.
    :param wal_bytes: WAL written in this call (by the whole server during its statements).
    :param decision: how the size of a newly planned batch was chosen.
    :param health: the last health signal seen.
    :param rows_per_second: the migration's moving average after this call.
    :param stopped_by: the indicators that stopped a throttled call (``wal_archival``...).
    :param shortfall: why the shared WAL budget stopped a throttled call, if it did.
    """

    outcome: Outcome
    progress: Progress
    job: Job | None = None
    rows_affected: int = 0
    keys: int = 0
    seconds: float = 0.0
    wal_bytes: int = 0
    decision: BatchSizeDecision | None = None
    health: HealthSignal | None = None
    rows_per_second: float | None = None
    stopped_by: tuple[str, ...] = ()
    shortfall: BudgetShortfall | None = None


class JobFailedError(RuntimeError):
    """``batch_sql`` failed; the job was released for a retry, split, or failed for good.

    :param message: one line naming the migration, the range, the attempt and the error.
    :param final: whether the migration failed for good.
    """

    def __init__(self, message: str, *, final: bool) -> None:
        super().__init__(message)
        self.final = final


def prepare(
    conn: psycopg.Connection[Any], definition: MigrationDefinition, batch_size: int
) -> MigrationStore:
    """Create the state tables if needed and register (or check) the migration.

    :param conn: a connection in autocommit mode.
    :param definition: the migration.
    :param batch_size: the first batch size, used when the migration is new.
    :raises MigrationDefinitionError: for a bad table, column, ``batch_sql`` or a reused name.
    """
    store = MigrationStore(conn, definition)
    store.registry.ensure_state_tables()
    store.registry.register(batch_size)
    return store


def run_one_batch(
    store: MigrationStore,
    settings: RunSettings,
    check_health: Callable[[], HealthVerdict],
    *,
    dag_id: str | None = None,
    run_id: str | None = None,
    try_number: int | None = None,
    log: Callable[[str], None] = lambda line: None,
    sleep: Callable[[float], None] = time.sleep,
) -> BatchResult:
    """Claim one job and run it to its end, unless the WAL backlog says stop first.

    :param store: the migration's store, from :func:`prepare`.
    :param settings: how batches run.
    :param check_health: called before the batch and between sub-batches, unless the last count
        shows the backlog cannot have passed the threshold since (see ``settings.recheck_seconds``).
    :param dag_id: recorded on the job.
    :param run_id: recorded on the job.
    :param try_number: recorded on the job.
    :param log: receives one line per sub-batch.
    :param sleep: how to pause between sub-batches.
    :raises JobFailedError: when ``batch_sql`` fails, or the connection is lost; the job is released
        first (or, with the connection gone, left to be taken over where it stopped).
    :raises MigrationStateError: when the migration failed, earlier or now: a range query found keys
        outside its bounds
        (:class:`~airflow_provider_walthrottle.migrations.state.RangeEscapedError`), before anything
        of it was applied.
    :raises MigrationDefinitionError: when the table or its column is gone; the job is paused.
    """
    migration = store.registry.load()
    if migration.status is not MigrationStatus.ACTIVE:
        return _result_for_status(store, migration.status)
    verdict = check_health()
    checked_at = time.monotonic()
    if not verdict.proceed:
        return BatchResult(
            Outcome.THROTTLED, store.accounts.progress(), health=verdict.health, stopped_by=verdict.stopped_by
        )

    estimate = ThroughputEstimate(migration.rows_per_second, migration.wal_bytes_per_row)
    budget = BatchBudget.open(store, verdict, settings.max_pending_segments, shared=settings.share_wal_budget)
    decision = budget.size(migration.batch_size, estimate, settings.policy)
    if decision.must_wait:
        log(decision.describe())
        return BatchResult(
            Outcome.THROTTLED, store.accounts.progress(), decision=decision, health=verdict.health
        )

    migration, job = store.jobs.claim(
        decision.size,
        max_attempts=settings.max_attempts,
        dag_id=dag_id,
        run_id=run_id,
        try_number=try_number,
        sub_batch_size=settings.sub_batch_size,  # fixed statements: the claim plans their ranges too
    )
    if job is None:
        if migration.status is MigrationStatus.ACTIVE:
            return BatchResult(Outcome.NOTHING_TO_CLAIM, store.accounts.progress())
        return _result_for_status(store, migration.status)

    rows = keys = wal_bytes = 0
    seconds = 0.0
    wal_since_check = 0  # bytes, since the last count
    started = time.monotonic()  # the batch's wall-clock time is what the time target sizes
    sizer = StatementSizer.for_settings(settings.sub_batch_size, settings.target_statement_seconds)

    def ended(outcome: Outcome, **more: Any) -> BatchResult:
        budget.release()
        return BatchResult(
            outcome,
            store.accounts.progress(),
            job=job,
            rows_affected=rows,
            keys=keys,
            seconds=seconds,
            wal_bytes=wal_bytes,
            health=verdict.health,
            **more,
        )

    budget.hold(job, decision)  # its projected WAL is reserved before its first statement
    while True:
        try:
            covered = budget.covers(sizer.keys)  # reserves the statement's WAL, if it must ask for it
            waited = 0.0
            while not covered and verdict.proceed and waited < settings.max_pause_seconds:
                # room comes back as the archiver ships segments: wait here a moment, counting
                # again, rather than end the batch and defer (the archiver idles while a deferred
                # task is resumed)
                sleep(ROOM_WAIT_SECONDS)
                waited += ROOM_WAIT_SECONDS
                verdict, checked_at, wal_since_check = check_health(), time.monotonic(), 0
                budget.counted(verdict)
                covered = verdict.proceed and budget.covers(sizer.keys)
            result = _sub_batch(store, job, settings, sizer.keys) if covered else None
        except JobFailedError:
            raise  # the job was released as the error said
        except RangeEscapedError as error:
            # a bug in the definition, not an error to retry: the job and the migration fail
            store.jobs.fail_job(job, str(error), migration_error=str(error))
            raise
        except MigrationDefinitionError as error:
            # the table is gone: nothing can run until it is back, and then the job resumes
            _release_quietly(store, job, JobStatus.PAUSED, str(error))
            raise
        except BaseException:
            # not the statement's fault (an interrupt, a lost connection): leave the job to a retry
            _release_quietly(store, job, JobStatus.PAUSED)
            raise
        if result is None:  # the shared WAL budget has no room for the statement, even after a count
            store.jobs.release(job, status=JobStatus.PAUSED)
            if not verdict.proceed:  # a count while waiting for room said stop
                return ended(Outcome.THROTTLED, stopped_by=verdict.stopped_by)
            return ended(Outcome.THROTTLED, shortfall=budget.shortfall)
        rows += result.rows_affected
        keys += result.keys
        seconds += result.seconds
        wal_bytes += result.wal_bytes
        if result.keys:
            log(
                f"job {job.id}: keys {result.first_key}..{result.last_key} of "
                f"{job.start_key}..{job.end_key}, {result.rows_affected} rows in "
                f"{result.seconds * 1000:.0f} ms, {result.wal_bytes} WAL bytes"
            )
        if result.job_finished:
            break
        wal_since_check += result.wal_bytes
        budget.wrote(result.wal_bytes, result.keys)
        sizer = sizer.after(result.keys, result.seconds)
        try:
            pause = (
                settings.pause_ms / 1000
                if settings.pause_ms is not None
                else signal_pause(
                    verdict.load_now(wal_since_check), result.seconds, settings.max_pause_seconds
                )
            )
            if pause:
                sleep(pause)
            seconds_since_check = time.monotonic() - checked_at
            if not budget.covers(sizer.keys) or verdict.recheck_due(  # a grant short of room: count again
                wal_since_check,
                seconds_since_check,
                recheck_seconds=settings.recheck_seconds,
                reserved_bytes=budget.reserved_elsewhere,
            ):
                verdict = check_health()
                checked_at = time.monotonic()
                wal_since_check = 0  # bytes, since the last count
                budget.counted(verdict)
        except BaseException:
            # the check failed, not the job: it resumes where it stopped, with no attempt used
            _release_quietly(store, job, JobStatus.PAUSED)
            raise
        if not verdict.proceed:
            store.jobs.release(job, status=JobStatus.PAUSED)
            return ended(Outcome.THROTTLED, stopped_by=verdict.stopped_by)
    store.jobs.release(job)
    if keys:
        wall = time.monotonic() - started  # statements, pauses and checks: the whole batch
        estimate = estimate.observe(BatchObservation(rows=keys, seconds=wall, wal_bytes=wal_bytes))
    store.accounts.record_throughput(
        batch_size=max(decision.size, 1),
        rows_per_second=estimate.rows_per_second,
        wal_bytes_per_row=estimate.wal_bytes_per_row,
    )
    return ended(Outcome.COMPLETED, decision=decision, rows_per_second=estimate.rows_per_second)


def _result_for_status(store: MigrationStore, status: MigrationStatus) -> BatchResult:
    """Return the result of a call that found the migration not active: paused or finished.

    :raises MigrationStateError: if it failed, with its reason.
    """
    if status is MigrationStatus.FAILED:
        error = store.registry.load().last_error or "no reason was recorded"
        raise MigrationStateError(f"migration {store.definition.name!r} failed: {error}")
    outcome = {MigrationStatus.PAUSED: Outcome.PAUSED, MigrationStatus.FINISHED: Outcome.FINISHED}[status]
    return BatchResult(outcome, store.accounts.progress())


def _sub_batch(store: MigrationStore, job: Job, settings: RunSettings, keys: int) -> SubBatchResult:
    """Run the job's next sub-batch of ``keys`` keys; turn its SQL's error into a :class:`JobFailedError`."""
    try:
        return store.executor.run(job, keys, settings.statement_timeout_ms)
    except psycopg.Error as error:
        raise _job_failed(store, job, error, settings) from error


def _job_failed(
    store: MigrationStore, job: Job, error: psycopg.Error, settings: RunSettings
) -> JobFailedError:
    """Release a job whose statement failed: split it, retry it later, or fail the migration.

    Only an error of the batch's own SQL uses the attempt: with the connection lost, the job stays
    ``running`` under no lock, and the next claim takes it over where it stopped, on this attempt.
    """
    reason = " ".join(str(error).split())
    job_name = job.describe()
    where = f"migration {store.definition.name!r}, {job_name}, attempt {job.attempts}/{settings.max_attempts}"
    if _lost_connection(store, error):
        return JobFailedError(
            f"{where}: lost the connection ({reason}); no attempt used, the job resumes where it stopped",
            final=False,
        )
    splittable = isinstance(error, SPLITTABLE_ERRORS) and job.attempts >= settings.split_after_attempts
    if splittable and store.jobs.split(job, reason):
        return JobFailedError(f"{where}: {reason}; its range was split in two for the retry", final=False)
    if job.attempts >= settings.max_attempts:
        store.jobs.fail_job(job, reason, migration_error=attempts_used_up(job_name, job.attempts, reason))
        return JobFailedError(f"{where}: {reason}; the migration fails", final=True)
    store.jobs.fail_job(job, reason)
    return JobFailedError(f"{where}: {reason}; it will be retried", final=False)


#: SQLSTATEs that say the session is gone, not that the statement is wrong: class 08 (connection
#: exception), and the server shutting down or starting (57P01 to 57P03).
_SESSION_LOST = ("08", "57P01", "57P02", "57P03")


def _lost_connection(store: MigrationStore, error: psycopg.Error) -> bool:
    """Whether ``error`` means the connection was lost rather than the batch's SQL failing."""
    return store.conn.closed or store.conn.broken or (error.sqlstate or "").startswith(_SESSION_LOST)


def _release_quietly(store: MigrationStore, job: Job, status: JobStatus, error: str | None = None) -> None:
    """Release a job on the way out of an exception, if the connection still works."""
    if store.conn.closed or store.conn.broken:
        return
    with contextlib.suppress(psycopg.Error):  # the connection's end releases the lock anyway
        store.jobs.release(job, status=status, error=error)

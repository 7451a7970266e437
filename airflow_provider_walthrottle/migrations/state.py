"""What a migration's state is, as Python sees it: its statuses, its rows, its errors.

The statuses are listed once, here, as :class:`str` enums; the state tables' ``CHECK`` constraints
and the queries in :mod:`~airflow_provider_walthrottle.migrations.schema_queries`,
:mod:`~airflow_provider_walthrottle.migrations.queries` and
:mod:`~airflow_provider_walthrottle.migrations.job_queries` are built from them.
Being ``str``, a status compares equal to its value (``MigrationStatus.ACTIVE == "active"``), and
psycopg sends it as that text. A migration's progress and time accounts are in
:mod:`~airflow_provider_walthrottle.migrations.progress`.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import datetime
    from collections.abc import Callable


class Status(str, enum.Enum):
    """A status: its value is what the state tables hold, and what it prints as."""

    def __str__(self) -> str:
        return self.value


class MigrationStatus(Status):
    """A migration's status: where its tasks stand."""

    #: Its tasks claim and run jobs.
    ACTIVE = "active"
    #: Its tasks wait or skip (paused from the migrations page or the CLI).
    PAUSED = "paused"
    #: Every range is done.
    FINISHED = "finished"
    #: A job used up its attempts, or a range escaped its bounds; ``last_error`` says why.
    FAILED = "failed"


class JobStatus(Status):
    """A job's status: a range of keys, from planned to done."""

    #: Planned, or one of the two halves of a split job; not claimed yet.
    PENDING = "pending"
    #: Claimed by a worker, which holds its advisory lock (or did, if the worker was lost).
    RUNNING = "running"
    #: Stopped where it was (throttled, interrupted or its table gone); resumes there.
    PAUSED = "paused"
    #: Its range is done.
    SUCCEEDED = "succeeded"
    #: Its ``batch_sql`` failed; retried until it used up its attempts.
    FAILED = "failed"
    #: Replaced by two halves after repeated timeouts.
    SPLIT = "split"


class Activity(Status):
    """What a migration's wall-clock time goes to now: the open entry of its time accounts.

    Each change of activity closes the open entry into its account, so that the accounts and the
    open entry add up to the wall-clock time since the migration started.
    """

    #: A task runs a batch of it: from the start of :func:`~.batch.run_batch` to its answer,
    #: the health checks, the claim and the sub-batches included.
    RUNNING = "running"
    #: A health signal stopped it; ``activity_reason`` names the signal (``wal_archival``, ...).
    THROTTLED = "throttled"
    #: Between batches: the schedule, the scheduler and the queue, until the next task starts.
    WAITING = "waiting"
    #: Paused (from the page or the hook), or found paused by a task (paused by hand in SQL).
    PAUSED = "paused"
    #: A batch failed: the failed attempt, and the time until the next one (the retry delay), or
    #: until somebody fixes a migration that failed for good.
    FAILED = "failed"
    #: Every range is done: the clock stopped when a task found it so.
    FINISHED = "finished"


#: The signal a throttle is put down to when the caller does not say: the WAL archival backlog.
DEFAULT_THROTTLE_REASON = "wal_archival"

#: Job statuses that need no more work: the job's keys are done, or handed on to its halves.
SETTLED_JOB_STATUSES = (JobStatus.SUCCEEDED, JobStatus.SPLIT)

#: Key column types the migration can walk, and how their text form is read back.
KEY_TYPES: dict[str, Callable[[str], Any]] = {
    "int2": int,
    "int4": int,
    "int8": int,
    "text": str,
    "varchar": str,
    "uuid": uuid.UUID,
}


class MigrationStateError(RuntimeError):
    """The migration cannot go on: it failed, or its state says so. The message says why."""


class RangeEscapedError(MigrationStateError):
    """A range query found keys outside its bounds: the scope escaped its ``AND (...)``.

    Nothing of that range was applied; the migration fails with this message, which is a bug in its
    definition, not an error to retry.
    """


@dataclass(frozen=True)
class Migration:
    """A migration's row, as the claim saw it."""

    name: str
    key_type: str
    min_key: str | None
    max_key: str | None
    total_keys: int
    cursor_key: str | None
    status: MigrationStatus
    batch_size: int
    rows_per_second: float | None
    wal_bytes_per_row: float | None
    throttled_seconds: float
    created_at: datetime.datetime
    fingerprint: str
    last_error: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", MigrationStatus(self.status))


@dataclass(frozen=True)
class Job:
    """A claimed range of keys: this worker holds its advisory lock until it releases it."""

    id: int
    start_key: str
    end_key: str
    planned_keys: int
    resume_key: str | None
    attempts: int
    rows_affected: int

    @property
    def planned_rows(self) -> int:
        """Deprecated alias of ``planned_keys`` (it always counted keys); removed in 0.3."""
        return self.planned_keys

    def describe(self) -> str:
        """Return ``job <id> (keys <start>..<end>)``, as messages name a job."""
        return f"job {self.id} (keys {self.start_key}..{self.end_key})"


@dataclass(frozen=True)
class SubBatchResult:
    """What one committed sub-batch did."""

    first_key: str
    last_key: str
    keys: int
    rows_affected: int
    seconds: float
    wal_bytes: int
    job_finished: bool


def attempts_used_up(job: str, attempts: int, error: str | None) -> str:
    """Return the reason a migration failed when one of its jobs used up its attempts.

    :param job: the job, e.g. ``job 7 (keys 1..100)``.
    :param attempts: its failed attempts.
    :param error: the last one's error.
    """
    return (
        f"{job} failed {attempts} times, the last with: {error or 'an error that was not recorded'}; "
        "fix the cause, then set that job's attempts to 0 and the migration's status to active"
    )

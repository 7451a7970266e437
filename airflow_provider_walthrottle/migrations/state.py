"""What a migration's state is, as Python sees it: its statuses, its rows, its progress, its errors.

The statuses are listed once, here, as :class:`str` enums; the state tables' ``CHECK`` constraints
and the queries in :mod:`~airflow_provider_walthrottle.migrations.queries` are built from them.
Being ``str``, a status compares equal to its value (``MigrationStatus.ACTIVE == "active"``), and
psycopg sends it as that text.
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


@dataclass(frozen=True)
class Progress:
    """The whole migration's progress, summed over its jobs."""

    rows_affected: int
    keys_done: int
    total_keys: int
    jobs_succeeded: int
    jobs_open: int
    active_seconds: float
    throttled_seconds: float
    cursor_key: str | None
    status: MigrationStatus

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", MigrationStatus(self.status))

    @property
    def total_rows(self) -> int:
        """Deprecated alias of ``total_keys`` (it always counted keys); removed in 0.3."""
        return self.total_keys

    @property
    def percentage(self) -> float:
        """Share of the planned keys that are done, 0 to 100; 100 once finished.

        A finished migration whose rows were deleted under it walked fewer keys than it planned.
        """
        if self.status is MigrationStatus.FINISHED or self.total_keys == 0:
            return 100.0
        return min(100.0, 100.0 * self.keys_done / self.total_keys)

    @property
    def eta_seconds(self) -> float | None:
        """Seconds left at the rate achieved so far, time spent throttled included."""
        elapsed = self.active_seconds + self.throttled_seconds
        if self.keys_done == 0 or elapsed <= 0:
            return None
        return max(self.total_keys - self.keys_done, 0) * elapsed / self.keys_done


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

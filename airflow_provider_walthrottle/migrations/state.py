"""What a migration's state is, as Python sees it: its statuses, its rows, its progress, its errors.

The statuses are listed once, here, as :class:`str` enums; the state tables' ``CHECK`` constraints
and the queries in :mod:`~airflow_provider_walthrottle.migrations.queries` are built from them.
Being ``str``, a status compares equal to its value (``MigrationStatus.ACTIVE == "active"``), and
psycopg sends it as that text.

Progress is told in wall-clock time (:class:`Progress`): the **effective rate** is keys done per
second of wall-clock time, since the migration started and over a recent window
(:class:`RecentPace`), and the ETA divides the keys left by it; the **statement rate** is what the
server does: keys per second of the statements' own time. Where the wall-clock time went is kept in the state
tables as time accounts (:class:`TimeAccounts`): running, throttled (by signal), waiting between
batches, paused, and failed and retried.
"""

from __future__ import annotations

import datetime
import enum
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_provider_walthrottle.durations import format_duration

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping


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

#: The recent pace is the last this many minutes', when they hold at least :data:`RECENT_BATCHES`
#: finished batches ...
RECENT_MINUTES = 15
#: ... and else the last this many batches' (a slow schedule runs fewer in 15 minutes).
RECENT_BATCHES = 10

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
class TimeBreakdown:
    """Where a migration's wall-clock time went, in seconds; the parts add up to ``wall_clock``.

    :param wall_clock: since the migration started; until it finished, if it did.
    :param running: tasks ran batches of it.
    :param throttled_by: stopped by a health signal, by signal (``{"wal_archival": 120.0}``).
    :param waiting: between batches: the schedule, the scheduler, the queue.
    :param paused: paused.
    :param failed: failed batches and the time until their retry.
    """

    wall_clock: float
    running: float
    throttled_by: Mapping[str, float]
    waiting: float
    paused: float
    failed: float

    @property
    def throttled(self) -> float:
        """Seconds throttled, whatever the signal."""
        return float(sum(self.throttled_by.values()))

    @property
    def not_recorded(self) -> float:
        """Seconds before the state tables kept time accounts (a migration begun before 0.2), else 0.

        Below a millisecond it is the rounding of the accounts (microseconds, summed), and reads 0.
        """
        recorded = self.running + self.throttled + self.waiting + self.paused + self.failed
        left = self.wall_clock - recorded
        return left if left >= 0.001 else 0.0

    def parts(self) -> list[tuple[str, str, float]]:
        """Return ``(kind, label, seconds)`` for each part, throttling by signal, in a fixed order.

        The kinds are ``running``, ``throttled``, ``waiting``, ``paused``, ``failed`` and
        ``not_recorded``; the labels say them in words (``throttled by wal_archival``).
        """
        parts = [("running", "running", self.running)]
        parts += [
            ("throttled", f"throttled by {reason}", s) for reason, s in sorted(self.throttled_by.items())
        ]
        parts += [
            ("waiting", "waiting between batches", self.waiting),
            ("paused", "paused", self.paused),
            ("failed", "failed and retried", self.failed),
            ("not_recorded", "not recorded (before 0.2)", self.not_recorded),
        ]
        return parts

    def describe(self) -> str:
        """Return ``wall clock 30 min: running 2 min, waiting between batches 28 min``: the parts above 0."""
        shown = [
            f"{label} {format_duration(seconds)}" for _, label, seconds in self.parts() if seconds >= 0.05
        ]
        return f"wall clock {format_duration(self.wall_clock)}: {', '.join(shown) or 'nothing yet'}"

    def to_dict(self) -> dict[str, Any]:
        """Return the parts as JSON-ready seconds, under names that say what they are."""
        return {
            "wall_clock": round(self.wall_clock, 1),
            "running": round(self.running, 1),
            "throttled": round(self.throttled, 1),
            "throttled_by": {
                reason: round(seconds, 1) for reason, seconds in sorted(self.throttled_by.items())
            },
            "waiting_between_batches": round(self.waiting, 1),
            "paused": round(self.paused, 1),
            "failed_and_retried": round(self.failed, 1),
            "not_recorded": round(self.not_recorded, 1),
        }


@dataclass(frozen=True)
class TimeAccounts:
    """A migration's time accounts as read from its row, with the entry still open.

    :param started_at: when the migration was registered: its first task.
    :param read_at: when they were read (the database's ``now()``).
    :param activity: what the time goes to now; ``None`` for a row written before 0.2.
    :param activity_reason: for ``throttled``, the signal (``wal_archival``, ...).
    :param activity_since: since when; for ``finished``, when the clock stopped.
    :param held_since: since when it has made no progress while paused or throttled.
    :param running_seconds: the closed entries of each account ...
    :param waiting_seconds: ...
    :param paused_seconds: ...
    :param failed_seconds: ...
    :param throttled_by: ... and the throttled ones, by signal.
    """

    started_at: datetime.datetime
    read_at: datetime.datetime
    activity: Activity | None = None
    activity_reason: str | None = None
    activity_since: datetime.datetime | None = None
    held_since: datetime.datetime | None = None
    running_seconds: float = 0.0
    waiting_seconds: float = 0.0
    paused_seconds: float = 0.0
    failed_seconds: float = 0.0
    throttled_by: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.activity is not None:
            object.__setattr__(self, "activity", Activity(self.activity))

    @property
    def clock_end(self) -> datetime.datetime:
        """When the wall clock stopped (a finished migration), or when the accounts were read."""
        if self.activity is Activity.FINISHED and self.activity_since is not None:
            return self.activity_since
        return self.read_at

    @property
    def wall_seconds(self) -> float:
        """Wall-clock seconds since the migration started (until it finished, if it did)."""
        return max((self.clock_end - self.started_at).total_seconds(), 0.0)

    @property
    def open_seconds(self) -> float:
        """Seconds of the entry still open: since the activity began."""
        if self.activity in (None, Activity.FINISHED) or self.activity_since is None:
            return 0.0
        return max((self.read_at - self.activity_since).total_seconds(), 0.0)

    @property
    def held_seconds(self) -> float | None:
        """Seconds it has been held, paused or throttled, without progress; ``None`` if it is not."""
        if self.activity not in (Activity.THROTTLED, Activity.PAUSED):
            return None
        since = self.held_since or self.activity_since
        return None if since is None else max((self.read_at - since).total_seconds(), 0.0)

    def breakdown(self) -> TimeBreakdown:
        """Return where the wall-clock time went: the closed entries plus the open one."""
        accounts = {
            Activity.RUNNING: self.running_seconds,
            Activity.WAITING: self.waiting_seconds,
            Activity.PAUSED: self.paused_seconds,
            Activity.FAILED: self.failed_seconds,
        }
        throttled_by = dict(self.throttled_by)
        open_seconds = self.open_seconds
        if self.activity is Activity.THROTTLED:
            reason = self.activity_reason or DEFAULT_THROTTLE_REASON
            throttled_by[reason] = throttled_by.get(reason, 0.0) + open_seconds
        elif self.activity in accounts:
            accounts[self.activity] += open_seconds
        return TimeBreakdown(
            wall_clock=self.wall_seconds,
            running=accounts[Activity.RUNNING],
            throttled_by=throttled_by,
            waiting=accounts[Activity.WAITING],
            paused=accounts[Activity.PAUSED],
            failed=accounts[Activity.FAILED],
        )


@dataclass(frozen=True)
class RecentPace:
    """The keys a migration did in a recent window of wall-clock time: its recent effective rate.

    The window is the last :data:`RECENT_MINUTES` minutes when they hold at least
    :data:`RECENT_BATCHES` finished batches, else the last :data:`RECENT_BATCHES` batches, from the
    end of the batch before them: whole cycles of wait and batch. A window that would reach back
    to the migration's start begins when its first batch finished instead, since the first batch
    starts at once and a later one only after its wait. Keys count when their batch (job)
    finished.

    :param keys: keys of the batches that finished in the window.
    :param seconds: the window's wall-clock length, up to when it was read.
    :param batches: the batches that finished in it.
    :param minutes: the window's length in minutes, or ``None`` when it is the last ``batches``
        batches.
    :param since_first_batch: whether the window begins when the first batch finished.
    """

    keys: int
    seconds: float
    batches: int
    minutes: int | None
    since_first_batch: bool

    @classmethod
    def choose(
        cls,
        *,
        read_at: datetime.datetime,
        minutes_batches: int,
        minutes_keys: int,
        last_batches: int,
        last_batches_keys: int,
        last_batches_since: datetime.datetime | None,
        first_batch_at: datetime.datetime | None,
        first_batch_keys: int | None,
    ) -> RecentPace:
        """Return the window, from what the state tables hold.

        :param read_at: when the figures were read.
        :param minutes_batches: batches finished in the last :data:`RECENT_MINUTES` minutes ...
        :param minutes_keys: ... and their keys.
        :param last_batches: the last :data:`RECENT_BATCHES` finished batches (fewer early on) ...
        :param last_batches_keys: ... their keys ...
        :param last_batches_since: ... and when the batch before them finished (``None``: none did).
        :param first_batch_at: when the first batch finished (``None``: none did) ...
        :param first_batch_keys: ... and its keys.
        """
        first_at, first_keys = first_batch_at, first_batch_keys or 0
        if minutes_batches >= RECENT_BATCHES:
            begin = read_at - datetime.timedelta(minutes=RECENT_MINUTES)
            if first_at is None or begin > first_at:
                return cls(
                    minutes_keys, (read_at - begin).total_seconds(), minutes_batches, RECENT_MINUTES, False
                )
            keys, batches = minutes_keys - first_keys, minutes_batches - 1
        elif last_batches_since is not None:
            seconds = max((read_at - last_batches_since).total_seconds(), 0.0)
            return cls(last_batches_keys, seconds, last_batches, None, False)
        else:
            keys, batches = last_batches_keys - first_keys, max(last_batches - 1, 0)
        seconds = 0.0 if first_at is None else max((read_at - first_at).total_seconds(), 0.0)
        return cls(keys, seconds, batches, None, True)

    @property
    def keys_per_second(self) -> float | None:
        """The recent effective rate: keys per wall-clock second; ``None`` before two batches finished."""
        if self.batches == 0 or self.seconds <= 0:
            return None
        return self.keys / self.seconds

    @property
    def description(self) -> str:
        """``the last 15 min``, ``the last 10 batches`` or ``since the first batch``."""
        if self.since_first_batch:
            return "since the first batch"
        if self.minutes is not None:
            return f"the last {self.minutes} min"
        return f"the last {self.batches} batches"

    @property
    def assumption(self) -> str:
        """What an ETA from this pace assumes: ``at the last 15 minutes' pace``."""
        if self.since_first_batch:
            return "at the pace since the first batch"
        if self.minutes is not None:
            return f"at the last {self.minutes} minutes' pace"
        return f"at the last {self.batches} batches' pace"


@dataclass(frozen=True)
class Progress:
    """The whole migration's progress, summed over its jobs, in wall-clock time.

    :param active_seconds: seconds the batches' statements ran (the statement rate's time).
    :param throttled_seconds: seconds of the waits on health signals that ended.
    :param time: the time accounts; ``None`` when not read.
    :param pace: the recent window; ``None`` when not read.
    """

    rows_affected: int
    keys_done: int
    total_keys: int
    jobs_succeeded: int
    jobs_open: int
    active_seconds: float
    throttled_seconds: float
    cursor_key: str | None
    status: MigrationStatus
    time: TimeAccounts | None = None
    pace: RecentPace | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", MigrationStatus(self.status))

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Progress:
        """Return the progress from a row of :data:`~.queries.PROGRESS` (or the page's summaries).

        :param row: the query's columns by name.
        """
        time = TimeAccounts(**{name: row[name] for name in TimeAccounts.__dataclass_fields__ if name in row})
        pace = RecentPace.choose(
            read_at=row["read_at"],
            minutes_batches=row["recent_minutes_batches"],
            minutes_keys=row["recent_minutes_keys"],
            last_batches=row["last_batches"],
            last_batches_keys=row["last_batches_keys"],
            last_batches_since=row["last_batches_since"],
            first_batch_at=row["first_batch_at"],
            first_batch_keys=row["first_batch_keys"],
        )
        return cls(
            rows_affected=row["rows_affected"],
            keys_done=row["keys_done"],
            total_keys=row["total_keys"],
            jobs_succeeded=row["jobs_succeeded"],
            jobs_open=row["jobs_open"],
            active_seconds=row["active_seconds"],
            throttled_seconds=row["throttled_seconds"],
            cursor_key=row["cursor_key"],
            status=row["status"],
            time=time,
            pace=pace,
        )

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
    def statement_keys_per_second(self) -> float | None:
        """The statement rate: keys per second of the statements' own time, what the server does.

        Keys done over the seconds ``batch_sql`` ran, summed over every sub-batch; nothing between
        statements (pauses, health checks, bookkeeping) or between batches counts. ``None`` before
        any statement ran.
        """
        if self.active_seconds <= 0:
            return None
        return self.keys_done / self.active_seconds

    @property
    def effective_keys_per_second(self) -> float | None:
        """The effective rate since the start: keys done per wall-clock second since the migration began."""
        if self.time is None or self.time.wall_seconds <= 0:
            return None
        return self.keys_done / self.time.wall_seconds

    @property
    def recent_keys_per_second(self) -> float | None:
        """The recent effective rate: keys per wall-clock second over the window of ``pace``."""
        return self.pace.keys_per_second if self.pace is not None else None

    @property
    def breakdown(self) -> TimeBreakdown | None:
        """Where the wall-clock time went; ``None`` when the time accounts were not read."""
        return self.time.breakdown() if self.time is not None else None

    @property
    def held_by(self) -> str | None:
        """What holds the migration: ``paused``, ``throttled by wal_archival``; ``None`` if nothing."""
        if self.status is MigrationStatus.PAUSED:
            return "paused"
        time = self.time
        if self.status is MigrationStatus.ACTIVE and time is not None and time.activity is Activity.THROTTLED:
            return f"throttled by {time.activity_reason or DEFAULT_THROTTLE_REASON}"
        return None

    @property
    def held_seconds(self) -> float | None:
        """How long it has been held (see :attr:`held_by`), instead of an ETA that counts down."""
        if self.held_by is None or self.time is None:
            return None
        held = self.time.held_seconds
        return held if held is not None else self.time.open_seconds

    def _eta(self) -> tuple[float, str] | None:
        if self.status is MigrationStatus.FINISHED:
            return 0.0, "finished"
        if self.status is not MigrationStatus.ACTIVE or self.held_by is not None:
            return None
        left = max(self.total_keys - self.keys_done, 0)
        recent = self.recent_keys_per_second
        if recent and self.pace is not None:
            return left / recent, self.pace.assumption
        overall = self.effective_keys_per_second
        if overall:
            return left / overall, "at the pace since it started"
        return None

    @property
    def eta_seconds(self) -> float | None:
        """Wall-clock seconds left at the recent effective rate (see :attr:`eta_assumes`).

        ``0`` once finished; ``None`` when it cannot be told: nothing done yet, or the migration is
        paused, throttled (see :attr:`held_seconds`) or failed. Before 0.2 this left out the time
        between batches, and was optimistic by their share of the wall-clock time.
        """
        eta = self._eta()
        return eta[0] if eta is not None else None

    @property
    def eta_assumes(self) -> str | None:
        """What :attr:`eta_seconds` assumes, e.g. ``at the last 15 minutes' pace``."""
        eta = self._eta()
        return eta[1] if eta is not None else None


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

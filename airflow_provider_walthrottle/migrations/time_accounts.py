"""A migration's time accounts: where its wall-clock time went, as Python reads them.

The state tables keep, on each migration's row, the wall-clock time since it started split into
running, throttled (by signal), waiting between batches, paused, and failed and retried, with one
entry open at a time (:class:`TimeAccounts`); :class:`TimeBreakdown` adds the open entry to its
account. :mod:`~airflow_provider_walthrottle.migrations.accounts` keeps them;
:class:`~airflow_provider_walthrottle.migrations.progress.Progress` reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_provider_walthrottle.durations import format_duration
from airflow_provider_walthrottle.migrations.state import DEFAULT_THROTTLE_REASON, Activity

if TYPE_CHECKING:
    import datetime
    from collections.abc import Mapping


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

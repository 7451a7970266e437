"""A migration's progress, told in wall-clock time, and where that time went.

Progress is told in wall-clock time (:class:`Progress`): the **effective rate** is keys done per
second of wall-clock time, since the migration started and over a recent window
(:class:`RecentPace`), and the ETA divides the keys left by it; the **statement rate** is what the
server does: keys per second of the statements' own time. Where the wall-clock time went is kept
in the state tables as time accounts (:class:`~.time_accounts.TimeAccounts`): running, throttled
(by signal), waiting between batches, paused, and failed and retried.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_provider_walthrottle.migrations.state import DEFAULT_THROTTLE_REASON, Activity, MigrationStatus
from airflow_provider_walthrottle.migrations.time_accounts import TimeAccounts

if TYPE_CHECKING:
    from collections.abc import Mapping

    from airflow_provider_walthrottle.migrations.time_accounts import TimeBreakdown

#: The recent pace is the last this many minutes', when they hold at least :data:`RECENT_BATCHES`
#: finished batches ...
RECENT_MINUTES = 15
#: ... and else the last this many batches' (a slow schedule runs fewer in 15 minutes).
RECENT_BATCHES = 10


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

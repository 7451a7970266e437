"""Every batched migration of one database as the migrations page shows it; pause and resume by name.

The reads here span migrations (the :class:`~.store.MigrationStore` works on one definition): the
migrations with their progress (both rates, the ETA, where the wall-clock time went), their last
jobs, and the history of batch sizes, health numbers (the WAL backlog and every other indicator's
measurements each job's last check saw) and effective rate drawn from the job table. A
database where no migration ever ran has no state tables; it reads as no migrations. State tables
of 0.1 that no task has upgraded yet are read too, with their time accounts as the upgrade would
seed them.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from psycopg.rows import dict_row

from airflow_provider_walthrottle.migrations import queries, schema_queries
from airflow_provider_walthrottle.migrations.progress import (
    RECENT_BATCHES,
    RECENT_MINUTES,
    Progress,
    RecentPace,
)
from airflow_provider_walthrottle.migrations.state import MigrationStatus

if TYPE_CHECKING:
    from collections.abc import Mapping

    import psycopg

    from airflow_provider_walthrottle.migrations.time_accounts import TimeAccounts, TimeBreakdown

#: Statuses a migration can be paused from, and resumed from.
PAUSABLE, RESUMABLE = MigrationStatus.ACTIVE, MigrationStatus.PAUSED


class MigrationNotFoundError(LookupError):
    """No migration of that name in the database."""


class MigrationStatusError(ValueError):
    """The migration's status does not allow the change (e.g. resuming a finished migration)."""


@dataclass(frozen=True)
class JobSummary:
    """One job (a claimed range of keys) as the migrations page lists it."""

    id: int
    start_key: str
    end_key: str
    planned_keys: int
    status: str
    attempts: int
    rows_affected: int
    keys_done: int
    duration_seconds: float
    wal_bytes: int
    pending_segments: int | None
    dag_id: str | None
    run_id: str | None
    try_number: int | None
    last_error: str | None
    started_at: datetime.datetime | None
    finished_at: datetime.datetime | None

    @property
    def planned_rows(self) -> int:
        """Deprecated alias of ``planned_keys`` (it always counted keys); removed in 0.3."""
        return self.planned_keys


@dataclass(frozen=True)
class HistoryPoint:
    """A finished job on the migration's chart: its batch size, what its last check saw, the pace then.

    :param keys_done: the keys this job walked.
    :param recent_keys: the keys of the last :data:`~.progress.RECENT_BATCHES` batches up to this one
        (of the first ones: the keys of the batches after the first) ...
    :param recent_seconds: ... over the wall-clock seconds since the batch before them finished (since
        the first one finished); 0 for the first batch, which has no rate.
    :param indicator_values: the numbers the job's last health check saw, by indicator: each
        reading's ``values``, thresholds included (see
        :class:`~airflow_provider_walthrottle.indicators.base.Reading`), e.g.
        ``{"replication_lag": {"max_replay_lag_bytes": 1024, "max_lag_bytes": ...}}``; ``None`` for
        a job that kept only ``pending_segments`` (before 0.2).
    """

    at: datetime.datetime
    batch_size: int
    pending_segments: int | None
    rows_affected: int
    duration_seconds: float
    keys_done: int = 0
    recent_keys: int = 0
    recent_seconds: float | None = None
    indicator_values: Mapping[str, Mapping[str, float | int | None]] | None = None

    @property
    def effective_keys_per_second(self) -> float | None:
        """The effective rate when this job finished: keys per wall-clock second over its last batches."""
        if not self.recent_seconds or self.recent_seconds <= 0:
            return None
        return self.recent_keys / self.recent_seconds


@dataclass(frozen=True)
class MigrationSummary:
    """A migration with its progress, last jobs and history."""

    name: str
    table_schema: str
    table_name: str
    column_name: str
    status: str
    total_keys: int
    cursor_key: str | None
    batch_size: int
    rows_per_second: float | None
    throttled_seconds: float
    throttled_since: datetime.datetime | None
    last_error: str | None
    created_at: datetime.datetime
    updated_at: datetime.datetime
    finished_at: datetime.datetime | None
    rows_affected: int
    keys_done: int
    active_seconds: float
    jobs_succeeded: int
    jobs_open: int
    read_at: datetime.datetime
    recent_jobs: tuple[JobSummary, ...] = ()
    history: tuple[HistoryPoint, ...] = ()
    time: TimeAccounts | None = None
    pace: RecentPace | None = None

    @property
    def total_rows(self) -> int:
        """Deprecated alias of ``total_keys`` (it always counted keys); removed in 0.3."""
        return self.total_keys

    @property
    def table(self) -> str:
        """``schema.table``."""
        return f"{self.table_schema}.{self.table_name}"

    @property
    def throttling(self) -> bool:
        """Whether a health signal holds the migration right now."""
        if self.time is not None and self.time.activity is not None:
            return self.status == MigrationStatus.ACTIVE and self.progress.held_by is not None
        return self.throttled_since is not None and self.status == MigrationStatus.ACTIVE

    @property
    def throttled_seconds_total(self) -> float:
        """Seconds spent throttled, the wait still open included."""
        if self.time is not None:
            return self.time.breakdown().throttled
        open_wait = (self.read_at - self.throttled_since).total_seconds() if self.throttled_since else 0.0
        return self.throttled_seconds + max(open_wait, 0.0)

    @property
    def progress(self) -> Progress:
        """The migration's progress as the operator computes it, the entry still open included."""
        return Progress(
            rows_affected=self.rows_affected,
            keys_done=self.keys_done,
            total_keys=self.total_keys,
            jobs_succeeded=self.jobs_succeeded,
            jobs_open=self.jobs_open,
            active_seconds=self.active_seconds,
            throttled_seconds=self.throttled_seconds_total,
            cursor_key=self.cursor_key,
            status=MigrationStatus(self.status),
            time=self.time,
            pace=self.pace,
        )

    @property
    def percentage(self) -> float:
        """Share of the planned keys that are done, 0 to 100; 100 once finished."""
        return self.progress.percentage

    @property
    def statement_keys_per_second(self) -> float | None:
        """The statement rate: keys per second of the statements' own time (what the server does)."""
        return self.progress.statement_keys_per_second

    @property
    def effective_keys_per_second(self) -> float | None:
        """The effective rate since the start: keys per wall-clock second since the migration began."""
        return self.progress.effective_keys_per_second

    @property
    def recent_keys_per_second(self) -> float | None:
        """The recent effective rate: keys per wall-clock second over :attr:`recent_window`."""
        return self.progress.recent_keys_per_second

    @property
    def recent_window(self) -> str | None:
        """The recent rate's window: ``the last 15 min``, ``the last 10 batches``, ``since the first batch``.

        The ETA assumes its pace.
        """
        return self.pace.description if self.pace is not None else None

    @property
    def eta_seconds(self) -> float | None:
        """Wall-clock seconds left at the recent effective rate; see :attr:`eta_assumes`.

        ``0`` once finished; ``None`` when it cannot be told: nothing done yet, or the migration is
        paused, throttled (see :attr:`held_seconds`) or failed.
        """
        return self.progress.eta_seconds

    @property
    def eta_assumes(self) -> str | None:
        """What :attr:`eta_seconds` assumes: ``at the last 15 minutes' pace``."""
        return self.progress.eta_assumes

    @property
    def held_by(self) -> str | None:
        """What holds the migration now: ``paused``, ``throttled by wal_archival``; ``None`` if nothing."""
        return self.progress.held_by

    @property
    def held_seconds(self) -> float | None:
        """How long it has been held, shown instead of an ETA."""
        return self.progress.held_seconds

    @property
    def breakdown(self) -> TimeBreakdown | None:
        """Where the wall-clock time went."""
        return self.progress.breakdown

    def to_dict(self) -> dict[str, Any]:
        """Return the migration as JSON-ready values (timestamps in ISO 8601).

        ``rows_per_second`` and ``eta_seconds`` are deprecated aliases of
        ``statement_keys_per_second`` and ``eta_wall_clock_seconds``, removed in 0.3.
        """
        breakdown = self.breakdown
        return _jsonable(
            {
                "name": self.name,
                "table": self.table,
                "column": self.column_name,
                "status": self.status,
                "throttling": self.throttling,
                "activity": self.time.activity if self.time is not None else None,
                "total_keys": self.total_keys,
                "keys_done": self.keys_done,
                "rows_affected": self.rows_affected,
                "percentage": round(self.percentage, 2),
                "key_position": self.cursor_key,
                "batch_size": self.batch_size,
                "effective_keys_per_second": self.effective_keys_per_second,
                "recent_keys_per_second": self.recent_keys_per_second,
                "recent_window": self.recent_window,
                "statement_keys_per_second": self.statement_keys_per_second,
                "eta_wall_clock_seconds": self.eta_seconds,
                "eta_assumes": self.eta_assumes,
                "held_by": self.held_by,
                "held_seconds": self.held_seconds,
                "time_spent_seconds": breakdown.to_dict() if breakdown is not None else None,
                "throttled_seconds": round(self.throttled_seconds_total, 1),
                "throttled_since": self.throttled_since,
                "jobs_succeeded": self.jobs_succeeded,
                "jobs_open": self.jobs_open,
                "last_error": self.last_error,
                "created_at": self.created_at,
                "updated_at": self.updated_at,
                "finished_at": self.finished_at,
                # planned_rows: the name of planned_keys before 0.2, for one release
                "recent_jobs": [{**vars(job), "planned_rows": job.planned_keys} for job in self.recent_jobs],
                "history": [
                    {**vars(point), "effective_keys_per_second": point.effective_keys_per_second}
                    for point in self.history
                ],
                # deprecated aliases, removed in 0.3
                "rows_per_second": self.statement_keys_per_second,
                "eta_seconds": self.eta_seconds,
            }
        )


def read_migrations(
    conn: psycopg.Connection[Any],
    *,
    name: str | None = None,
    dag_id: str | None = None,
    run_id: str | None = None,
    recent_jobs: int = 5,
    history: int = 200,
) -> list[MigrationSummary]:
    """Return the database's migrations, unfinished ones first, most recently updated first.

    :param conn: a connection to the database (read-only is enough).
    :param name: only this migration.
    :param dag_id: only migrations with a job run by this DAG.
    :param run_id: with ``dag_id``: only migrations with a job run by this DAG run.
    :param recent_jobs: how many of each migration's last jobs to include.
    :param history: how many of each migration's last finished jobs to chart.
    """
    recent = {"recent_minutes": RECENT_MINUTES, "recent_batches": RECENT_BATCHES}
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cursor:
        cursor.execute(schema_queries.STATE_TABLES_EXIST)
        tables = cursor.fetchone()
        if not tables or not tables["exist"]:
            return []
        summaries = (
            queries.MIGRATION_SUMMARIES if tables["upgraded"] else queries.MIGRATION_SUMMARIES_BEFORE_0_2
        )
        cursor.execute(summaries, {"name": name, "dag_id": dag_id, "run_id": run_id, **recent})
        migrations = cursor.fetchall()
        names = [migration["name"] for migration in migrations]
        jobs: dict[str, list[JobSummary]] = {}
        points: dict[str, list[HistoryPoint]] = {}
        if names:
            cursor.execute(queries.RECENT_JOBS, {"names": names, "limit": recent_jobs})
            for job in cursor.fetchall():
                jobs.setdefault(job["migration_name"], []).append(
                    JobSummary(**{field: job[field] for field in JobSummary.__dataclass_fields__})
                )
            job_history = (
                queries.JOB_HISTORY
                if tables["indicator_values"]
                else queries.JOB_HISTORY_WITHOUT_INDICATOR_VALUES
            )
            cursor.execute(job_history, {"names": names, "limit": history, **recent})
            for point in cursor.fetchall():
                points.setdefault(point["migration_name"], []).append(
                    HistoryPoint(**{field: point[field] for field in HistoryPoint.__dataclass_fields__})
                )
    return [_summary(row, jobs.get(row["name"], ()), points.get(row["name"], ())) for row in migrations]


def _summary(
    row: dict[str, Any], jobs: list[JobSummary] | tuple[()], points: list[HistoryPoint] | tuple[()]
) -> MigrationSummary:
    """Return a migration's summary from its row of :data:`~.queries.MIGRATION_SUMMARIES`."""
    progress = Progress.from_row(row)
    fields = {name: row[name] for name in MigrationSummary.__dataclass_fields__ if name in row}
    return MigrationSummary(
        **fields, recent_jobs=tuple(jobs), history=tuple(points), time=progress.time, pace=progress.pace
    )


def set_migration_paused(conn: psycopg.Connection[Any], name: str, paused: bool) -> str:
    """Pause an active migration or resume a paused one; return its new status.

    Pausing or resuming twice is not an error: the migration is already where it was asked to be.
    Its tasks see the change at their next batch or sub-batch (a paused migration waits or skips).
    Its time accounts count paused time from now, and waiting time again from the resume.

    :param conn: a connection to the database, allowed to update the state tables.
    :param name: the migration.
    :param paused: ``True`` to pause, ``False`` to resume.
    :raises MigrationNotFoundError: no migration has that name.
    :raises MigrationStatusError: it is finished or failed.
    """
    new, old = (MigrationStatus.PAUSED, PAUSABLE) if paused else (MigrationStatus.ACTIVE, RESUMABLE)
    with conn.transaction(), conn.cursor() as cursor:
        cursor.execute(schema_queries.STATE_TABLES_EXIST)
        tables = cursor.fetchone()
        if tables is not None and tables[1]:  # upgraded: the pause or resume changes the time accounts
            cursor.execute(queries.SET_STATUS, {"new": new, "name": name, "old": old})
        else:
            cursor.execute(queries.SET_STATUS_BEFORE_0_2, [new, name, old])
        if cursor.fetchone() is not None:
            return new.value
        cursor.execute(queries.MIGRATION_STATUS, [name])
        row = cursor.fetchone()
    if row is None:
        raise MigrationNotFoundError(f"no batched migration named {name!r} in this database")
    status = str(row[0])
    if status == new:
        return status
    raise MigrationStatusError(
        f"migration {name!r} is {status}: only an active migration can be paused and only a paused one "
        "resumed"
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    return value

"""A migration's accounts: its throughput between tasks, where its wall-clock time went, and its progress.

What the optimizer learned (the next batch size and the moving averages of throughput) is kept on
the migration's row between tasks. So are its time accounts: the wall-clock time since it started,
split into running, throttled (by signal), waiting between batches, paused, and failed and
retried. One entry is open at a time (``activity`` since ``activity_since``); each change closes it
into its account and opens the next, so the accounts and the open entry always add up to the wall
clock. :func:`~airflow_provider_walthrottle.migrations.batch.run_batch` makes the changes around
each batch; pausing and resuming make theirs. The migrations page reads the same figures.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from psycopg.rows import dict_row

from airflow_provider_walthrottle.migrations import job_queries, queries
from airflow_provider_walthrottle.migrations.progress import RECENT_BATCHES, RECENT_MINUTES, Progress
from airflow_provider_walthrottle.migrations.state import (
    DEFAULT_THROTTLE_REASON,
    Activity,
    MigrationStateError,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    import psycopg
    from psycopg import sql


class MigrationAccounts:
    """
    Keep and read the accounts of one migration; each method is a transaction of its own.

    :param conn: a connection in autocommit mode.
    :param name: the migration's name.
    """

    def __init__(self, conn: psycopg.Connection[Any], name: str) -> None:
        self.conn = conn
        self.name = name

    def record_throughput(
        self, *, batch_size: int, rows_per_second: float | None, wal_bytes_per_row: float | None
    ) -> None:
        """Keep the next batch size and the throughput estimate for the next task.

        :param batch_size: the size the next batch starts from.
        :param rows_per_second: the moving average of keys walked per second of a batch's time.
        :param wal_bytes_per_row: the moving average of WAL bytes written per key.
        """
        self._update(queries.RECORD_THROUGHPUT, [batch_size, rows_per_second, wal_bytes_per_row, self.name])

    def note_backlog(self, job_id: int, pending_segments: int) -> None:
        """Keep the WAL backlog a job's last health check saw, for the migrations page's chart.

        :param job_id: the job.
        :param pending_segments: the segments that waited for ``archive_command``.
        """
        self._update(job_queries.NOTE_JOB_BACKLOG, [pending_segments, job_id])

    def note_readings(self, job_id: int, values: Mapping[str, Mapping[str, float | int | None]]) -> None:
        """Keep the numbers a job's last health check saw, by indicator, for the migrations page's chart.

        The WAL backlog among them (``wal_archival``'s ``pending_segments``) also goes where
        :meth:`note_backlog` keeps it.

        :param job_id: the job.
        :param values: each indicator's ``values`` (of its
            :class:`~airflow_provider_walthrottle.indicators.base.Reading`), by indicator name.
        """
        from psycopg.types.json import Jsonb

        pending = values.get("wal_archival", {}).get("pending_segments")
        numbers = {indicator: dict(named) for indicator, named in values.items()}
        self._update(
            job_queries.NOTE_JOB_READINGS,
            {"values": Jsonb(numbers), "pending_segments": pending, "id": job_id},
        )

    def begin_batch(self) -> None:
        """Note that a task runs a batch now: the time since the last change goes to its account."""
        self._change(Activity.RUNNING)

    def end_batch(self, *, progressed: bool) -> None:
        """Note that the task's batch ended: the migration waits for the next one from now.

        It is ``running`` still while another task runs a job of it, and ``paused``, ``failed`` or
        ``finished`` if its status says so.

        :param progressed: whether the batch completed a range (then it is no longer held).
        """
        self._change(None, release=progressed)

    def begin_throttle(self, reason: str = DEFAULT_THROTTLE_REASON) -> None:
        """Note that a health signal stopped the migration: it is throttled, and held, from now.

        :param reason: the signal, as the page and the accounts name it (an indicator's name:
            ``wal_archival``, ``replication_lag``, ...).
        """
        self._change(Activity.THROTTLED, reason=reason, hold=True)

    def end_throttle(self) -> None:
        """Close an open wait on a health signal: the time since counts as throttled; it waits now."""
        self._change(Activity.WAITING, only_from=Activity.THROTTLED)

    def batch_failed(self) -> None:
        """Note that the task's batch failed: its time, and the time until the next try, count as failed."""
        self._change(Activity.FAILED, closing_as=Activity.FAILED)

    def progress(self) -> Progress:
        """Sum the jobs into the migration's progress, with its time accounts and recent pace.

        :raises MigrationStateError: if the migration is not registered.
        """
        with self.conn.transaction(), self.conn.cursor(row_factory=dict_row) as cursor:
            cursor.execute(
                queries.PROGRESS,
                {"name": self.name, "recent_minutes": RECENT_MINUTES, "recent_batches": RECENT_BATCHES},
            )
            row = cursor.fetchone()
        if row is None:
            raise MigrationStateError(f"migration {self.name!r} is not registered")
        return Progress.from_row(row)

    def _change(
        self,
        activity: Activity | None,
        *,
        reason: str | None = None,
        closing_as: Activity | None = None,
        hold: bool = False,
        release: bool = False,
        only_from: Activity | None = None,
    ) -> None:
        """Close the open entry of the time accounts and open the next (:data:`~.queries.CLOCK_CHANGE`)."""
        self._update(
            queries.CLOCK_CHANGE,
            {
                "name": self.name,
                "activity": activity,
                "reason": reason,
                "closing_as": closing_as,
                "hold": hold,
                "release": release,
                "only_from": only_from,
            },
        )

    def _update(self, statement: sql.Composed, params: list[Any] | dict[str, Any]) -> None:
        """Run one statement that changes the accounts, in a transaction of its own."""
        with self.conn.transaction(), self.conn.cursor() as cursor:
            cursor.execute(statement, params)

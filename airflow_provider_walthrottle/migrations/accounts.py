"""A migration's accounts: its throughput between tasks, its time throttled, and its progress.

What the optimizer learned (the next batch size and the moving averages of throughput) is kept on
the migration's row between tasks. So is the time the migration spent waiting on the WAL backlog:
a wait opens when a batch stops for the backlog and closes when the next batch starts, so the
time between tasks counts too. The migrations page reads the same figures.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from psycopg.rows import class_row

from airflow_provider_walthrottle.migrations import queries
from airflow_provider_walthrottle.migrations.state import MigrationStateError, Progress

if TYPE_CHECKING:
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
        :param rows_per_second: the moving average of keys walked per second.
        :param wal_bytes_per_row: the moving average of WAL bytes written per key.
        """
        self._update(queries.RECORD_THROUGHPUT, [batch_size, rows_per_second, wal_bytes_per_row, self.name])

    def note_backlog(self, job_id: int, pending_segments: int) -> None:
        """Keep the WAL backlog a job's last health check saw, for the migrations page's chart.

        :param job_id: the job.
        :param pending_segments: the segments that waited for ``archive_command``.
        """
        self._update(queries.NOTE_JOB_BACKLOG, [pending_segments, job_id])

    def begin_throttle(self) -> None:
        """Note that the migration waits on the WAL backlog, unless a wait is already open."""
        self._update(queries.BEGIN_THROTTLE, [self.name])

    def end_throttle(self) -> None:
        """Close an open wait: add its duration to the time the migration spent throttled."""
        self._update(queries.END_THROTTLE, [self.name])

    def progress(self) -> Progress:
        """Sum the jobs into the migration's progress.

        :raises MigrationStateError: if the migration is not registered.
        """
        with self.conn.transaction(), self.conn.cursor(row_factory=class_row(Progress)) as cursor:
            cursor.execute(queries.PROGRESS, [self.name])
            progress = cursor.fetchone()
        if progress is None:
            raise MigrationStateError(f"migration {self.name!r} is not registered")
        return progress

    def _update(self, statement: sql.Composed, params: list[Any]) -> None:
        """Run one statement that changes the accounts, in a transaction of its own."""
        with self.conn.transaction(), self.conn.cursor() as cursor:
            cursor.execute(statement, params)

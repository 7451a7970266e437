"""Run the DAG author's ``batch_sql`` over the next keys of a job, one sub-batch per transaction.

A sub-batch and its progress commit together: a crash at any instant loses at most one
uncommitted sub-batch and never applies one twice. Before the statement runs, the range it will
cover is checked to lie inside the job's bounds, so a scope that escapes its ``AND (...)`` fails
the migration before anything of that range is applied.
"""

from __future__ import annotations

import contextlib
import datetime
from typing import TYPE_CHECKING, Any

import psycopg

from airflow_provider_walthrottle.migrations import job_queries, table_queries
from airflow_provider_walthrottle.migrations.state import MigrationStateError, MigrationStatus, SubBatchResult

if TYPE_CHECKING:
    from airflow_provider_walthrottle.migrations.state import Job
    from airflow_provider_walthrottle.migrations.table import MigrationTable


class SubBatchExecutor:
    """
    Run the sub-batches of the jobs this session holds.

    A sub-batch is one transaction in three round trips, in psycopg's pipeline mode: ``BEGIN``
    with the job's row lock and the range query; the DAG author's statement (between ``SET LOCAL
    statement_timeout`` and its reset, when a timeout is set); the progress update with ``COMMIT``.
    The range is checked before the statement is sent, and the statement's row count is known
    before the progress is. The range query cannot wait for the row lock's answer, so it starts
    where this executor's last sub-batch of the job ended (or where the claimed job resumes); when
    the locked row says the job resumes elsewhere, the range is planned again from there, before
    anything runs.

    :param conn: a connection in autocommit mode; each sub-batch is a transaction of its own.
    :param table: the migration's table, registered (its key type known).
    """

    def __init__(self, conn: psycopg.Connection[Any], table: MigrationTable) -> None:
        self.conn = conn
        self.table = table
        #: Where each job resumes after the last sub-batch this executor committed on it.
        self._resume_keys: dict[int, str | None] = {}
        #: The range queries, from a job's start (``True``) or after a key, composed once.
        self._range_queries: dict[bool, bytes] = {}

    def run(self, job: Job, sub_batch_size: int, statement_timeout_ms: int | None) -> SubBatchResult:
        """Run ``batch_sql`` over the next keys of the job, and record it, in one transaction.

        :param job: a job this session holds.
        :param sub_batch_size: keys per statement.
        :param statement_timeout_ms: ``statement_timeout`` for the statement, if any.
        :raises MigrationStateError: if the job is no longer ``running`` (the migration failed, or
            a peer stopped it), or a range escaped its bounds
            (:class:`~airflow_provider_walthrottle.migrations.state.RangeEscapedError`).
        :raises psycopg.Error: the statement's own error; the transaction is rolled back.
        """
        conn = self.conn
        with conn.cursor() as cursor, conn.cursor() as ranged, conn.pipeline() as pipeline:
            try:
                result = self._transaction(
                    pipeline, cursor, ranged, job, sub_batch_size, statement_timeout_ms
                )
            except BaseException:
                self._roll_back(pipeline)
                raise
        if result.job_finished:
            self._resume_keys.pop(job.id, None)
        else:
            self._resume_keys[job.id] = result.last_key
        return result

    def _transaction(
        self,
        pipeline: psycopg.Pipeline,
        cursor: psycopg.Cursor[Any],
        ranged: psycopg.Cursor[Any],
        job: Job,
        sub_batch_size: int,
        statement_timeout_ms: int | None,
    ) -> SubBatchResult:
        """Run one sub-batch's transaction in the pipeline, up to its ``COMMIT``."""
        expected = self._resume_keys.get(job.id, job.resume_key)
        # round trip 1: BEGIN, the job's row lock, the range after where the job should resume
        cursor.execute(job_queries.BEGIN)
        cursor.execute(job_queries.RUNNING_JOB_RESUME_KEY, [job.id])
        with self.table.reading():
            self._plan(ranged, job, expected, sub_batch_size)
            resume = cursor.fetchone()
            if resume is None:
                raise MigrationStateError(self._why_not_running(cursor, job))
            resume_key = resume[0]
            if resume_key != expected:  # another session moved the job on: plan from there
                self._plan(ranged, job, resume_key, sub_batch_size)
            planned = ranged.fetchone()
        assert planned is not None
        first_key, last_key, keys, in_range, wal_before = planned
        if not in_range:  # before batch_sql is sent: nothing is applied twice
            bounds = f"after {resume_key}" if resume_key is not None else f"from {job.start_key}"
            raise self.table.escaped(
                f"{job.describe()}: its next sub-batch found keys {first_key}..{last_key}, "
                f"not all {bounds} up to {job.end_key}"
            )
        # round trip 2: the DAG author's statement
        started = datetime.datetime.now(datetime.timezone.utc)
        rows_affected = 0
        if keys:
            rows_affected = self._statement(pipeline, cursor, first_key, last_key, statement_timeout_ms)
        seconds = (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds()
        finished = keys == 0 or last_key == job.end_key
        # round trip 3: the progress, which reads the WAL the statement wrote before it writes, and
        # COMMIT; commit() sends both and waits
        cursor.execute(
            job_queries.RECORD_SUB_BATCH,
            {
                "last": last_key,
                "rows": rows_affected,
                "keys": keys,
                "one": 1 if keys else 0,
                "seconds": seconds,
                "wal_before": wal_before if keys else None,
                "finished": finished,
                "id": job.id,
            },
        )
        self.conn.commit()
        recorded = cursor.fetchone()
        assert recorded is not None
        return SubBatchResult(
            first_key=first_key,
            last_key=last_key,
            keys=keys,
            rows_affected=rows_affected,
            seconds=seconds,
            wal_bytes=int(recorded[0]),
            job_finished=finished,
        )

    def _plan(self, cursor: psycopg.Cursor[Any], job: Job, resume_key: str | None, rows: int) -> None:
        """Queue the range query for the next ``rows`` keys of the job after ``resume_key``."""
        table = self.table
        inclusive = resume_key is None
        query = self._range_queries.get(inclusive)
        if query is None:  # composed once: composing it costs as much as a round trip
            query = table.range_query(inclusive=inclusive, wal_position=True).as_bytes(self.conn)
            self._range_queries[inclusive] = query
        cursor.execute(
            query,
            {
                "after": table.key(job.start_key if resume_key is None else resume_key),
                "last": table.key(job.end_key),
                "rows": rows,
            },
        )

    def _statement(
        self,
        pipeline: psycopg.Pipeline,
        cursor: psycopg.Cursor[Any],
        first_key: str,
        last_key: str,
        statement_timeout_ms: int | None,
    ) -> int:
        """Run ``batch_sql`` over ``[first_key, last_key]`` in one round trip; return the rows it affected.

        ``statement_timeout`` is set for this statement only, not for the bookkeeping around it;
        the ``SET LOCAL`` and its reset ride in the statement's round trip. The sync that ends the
        round trip does not end the transaction.
        """
        table = self.table
        with self.conn.cursor() as statement:
            if statement_timeout_ms:
                cursor.execute(table_queries.set_statement_timeout(statement_timeout_ms))
            statement.execute(
                table_queries.batch_statement(table.definition.batch_sql),
                {"start": table.key(first_key), "end": table.key(last_key)},
            )
            if statement_timeout_ms:
                cursor.execute(table_queries.RESET_STATEMENT_TIMEOUT)
            pipeline.sync()  # raises the statement's error, if any
            return max(statement.rowcount, 0)

    def _roll_back(self, pipeline: psycopg.Pipeline) -> None:
        """End a sub-batch that failed: roll its transaction back, if the connection still works.

        The sync first ends the pipeline's aborted state, if a statement failed, so that the
        ``ROLLBACK`` reaches the server; psycopg's own rollback then forgets the statements it
        may have prepared in the failed transaction.
        """
        if self.conn.closed or self.conn.broken:
            return  # the server rolls back when the session ends
        with contextlib.suppress(psycopg.Error):
            pipeline.sync()
        with contextlib.suppress(psycopg.Error):
            self.conn.rollback()

    def _why_not_running(self, cursor: psycopg.Cursor[Any], job: Job) -> str:
        """Say why a job this worker claimed is no longer ``running``."""
        name = self.table.definition.name
        cursor.execute(job_queries.JOB_AND_MIGRATION_STATUS, [job.id])
        row = cursor.fetchone()
        if row is None:
            return f"job {job.id} of migration {name!r} no longer exists"
        job_status, job_error, migration_status, migration_error = row
        if migration_status == MigrationStatus.FAILED:
            return f"migration {name!r} failed: {migration_error}; job {job.id} stopped"
        because = f" ({job_error})" if job_error else ""
        return f"job {job.id} of migration {name!r} is {job_status} now, not running{because}"

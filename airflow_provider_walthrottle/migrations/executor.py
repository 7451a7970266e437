"""Run the DAG author's ``batch_sql`` over the next keys of a job, one sub-batch per transaction.

A sub-batch and its progress commit together: a crash at any instant loses at most one
uncommitted sub-batch and never applies one twice. Before the statement runs, the range it will
cover is checked to lie inside the job's bounds, so a scope that escapes its ``AND (...)`` fails
the migration before anything of that range is applied.
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Any

from airflow_provider_walthrottle.migrations import queries, table_queries
from airflow_provider_walthrottle.migrations.state import MigrationStateError, MigrationStatus, SubBatchResult

if TYPE_CHECKING:
    import psycopg

    from airflow_provider_walthrottle.migrations.state import Job
    from airflow_provider_walthrottle.migrations.table import MigrationTable


class SubBatchExecutor:
    """
    Run the sub-batches of the jobs this session holds.

    :param conn: a connection in autocommit mode; each sub-batch is a transaction of its own.
    :param table: the migration's table, registered (its key type known).
    """

    def __init__(self, conn: psycopg.Connection[Any], table: MigrationTable) -> None:
        self.conn = conn
        self.table = table

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
        table = self.table
        with self.conn.transaction(), self.conn.cursor() as cursor:
            cursor.execute(queries.RUNNING_JOB_RESUME_KEY, [job.id])
            resume = cursor.fetchone()
            if resume is None:
                raise MigrationStateError(self._why_not_running(cursor, job))
            resume_key = resume[0]
            with table.reading():
                cursor.execute(
                    table.range_query(
                        inclusive=resume_key is None, key_type=table.key_type, wal_position=True
                    ),
                    {
                        "after": table.key(job.start_key if resume_key is None else resume_key),
                        "last": table.key(job.end_key),
                        "rows": sub_batch_size,
                    },
                )
            planned = cursor.fetchone()
            assert planned is not None
            first_key, last_key, keys, in_range, wal_before = planned
            if not in_range:  # before batch_sql: nothing is applied twice
                bounds = f"after {resume_key}" if resume_key is not None else f"from {job.start_key}"
                raise table.escaped(
                    f"{job.describe()}: its next sub-batch found keys {first_key}..{last_key}, "
                    f"not all {bounds} up to {job.end_key}"
                )
            started = datetime.datetime.now(datetime.timezone.utc)
            rows_affected = 0
            if keys:
                if statement_timeout_ms:  # for the DAG author's statement only, not the bookkeeping
                    cursor.execute(table_queries.set_statement_timeout(statement_timeout_ms))
                cursor.execute(
                    table_queries.batch_statement(table.definition.batch_sql),
                    {"start": table.key(first_key), "end": table.key(last_key)},
                )
                rows_affected = max(cursor.rowcount, 0)
                if statement_timeout_ms:
                    cursor.execute(table_queries.RESET_STATEMENT_TIMEOUT)
            seconds = (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds()
            finished = keys == 0 or last_key == job.end_key
            # the WAL the statement wrote is read by the progress update itself, before it writes
            cursor.execute(
                queries.RECORD_SUB_BATCH,
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

    def _why_not_running(self, cursor: psycopg.Cursor[Any], job: Job) -> str:
        """Say why a job this worker claimed is no longer ``running``."""
        name = self.table.definition.name
        cursor.execute(queries.JOB_AND_MIGRATION_STATUS, [job.id])
        row = cursor.fetchone()
        if row is None:
            return f"job {job.id} of migration {name!r} no longer exists"
        job_status, job_error, migration_status, migration_error = row
        if migration_status == MigrationStatus.FAILED:
            return f"migration {name!r} failed: {migration_error}; job {job.id} stopped"
        because = f" ({job_error})" if job_error else ""
        return f"job {job.id} of migration {name!r} is {job_status} now, not running{because}"

"""The job queue of a migration: claim a range of keys, hold it, split it, release it, fail it.

A job being worked on is held by a session-level advisory lock (namespace
:data:`~airflow_provider_walthrottle.migrations.schema_queries.LOCK_NAMESPACE`, the job's id). When its
worker dies, PostgreSQL releases the lock with the session, and the next claim finds the job
orphaned and runs it again at once, without waiting for a timeout. The connection is in autocommit
mode: each method opens its own transaction, and a session-level lock outlives them all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.rows import dict_row

from airflow_provider_walthrottle.migrations import job_queries, queries, schema_queries, table_queries
from airflow_provider_walthrottle.migrations.state import (
    Job,
    JobStatus,
    Migration,
    MigrationStatus,
    RangeEscapedError,
    attempts_used_up,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from airflow_provider_walthrottle.migrations.registry import MigrationRegistry
    from airflow_provider_walthrottle.migrations.table import MigrationTable

#: Errors after which a job's range is split in half (:meth:`JobQueue.split`), as GitLab's
#: split-and-retry does.
SPLITTABLE_ERRORS = (psycopg.errors.QueryCanceled, psycopg.errors.LockNotAvailable)

#: The most sub-batch ranges a claim plans in its walk of a new job's keys; a job of more of them
#: is planned by one walk to its end, and its ranges by the executor.
MAX_CLAIMED_RANGES = 1024


class JobQueue:
    """
    Claim, release, split and fail the jobs of one migration on one connection.

    :param conn: a connection in autocommit mode; its session holds the advisory lock of the
        claimed job.
    :param table: the migration's table.
    :param registry: the migration's registry, whose row lock a claim takes first.
    :param ranges_planned: receives the sub-batch ranges a claim planned for a new job (see
        :meth:`claim`'s ``sub_batch_size``): the sub-batch executor, which then runs them without
        walking the job's keys again.
    """

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        table: MigrationTable,
        registry: MigrationRegistry,
        *,
        ranges_planned: Callable[[int, int, list[tuple[Any, ...]]], None] | None = None,
    ) -> None:
        self.conn = conn
        self.table = table
        self.registry = registry
        self.name = table.definition.name
        self.ranges_planned = ranges_planned

    def claim(
        self,
        batch_size: int,
        *,
        max_attempts: int,
        dag_id: str | None = None,
        run_id: str | None = None,
        try_number: int | None = None,
        sub_batch_size: int | None = None,
    ) -> tuple[Migration, Job | None]:
        """Take the next job: an orphaned, paused or failed one first, else a new range after the cursor.

        Returns the job with its advisory lock held by this session, or ``None`` when nothing is
        left to claim (the migration's status then says whether it finished).

        A job whose worker died (its session ended, and with it the advisory lock) is taken over
        where it stopped, on the same attempt; only a job whose ``batch_sql`` failed starts a new
        attempt.

        :param batch_size: keys to plan into a new range.
        :param max_attempts: how many times a job's ``batch_sql`` may fail before the migration fails.
        :param dag_id: recorded on the job, for the UI.
        :param run_id: recorded on the job.
        :param try_number: recorded on the job.
        :param sub_batch_size: the keys of each of the job's statements, when they are fixed: the
            walk of a new job's keys then plans each of its sub-batches' ranges too (up to
            :data:`MAX_CLAIMED_RANGES` of them), and the ranges go to ``ranges_planned``.
        """
        locked: list[int] = []
        try:
            with self.conn.transaction(), self.conn.cursor(row_factory=dict_row) as cursor:
                migration = self.registry.load_for_update(cursor)
                if migration.status is not MigrationStatus.ACTIVE:
                    return migration, None
                job = self._claim_open_job(cursor, max_attempts, locked)
                if job is None:
                    try:
                        job = self._plan_job(cursor, migration, batch_size, locked, sub_batch_size)
                    except RangeEscapedError as error:
                        # nothing was written yet: fail the migration in this same transaction
                        self._fail_migration_in(cursor, str(error))
                        return self.registry.load_for_update(cursor), None
                if job is None:
                    return self._close_if_drained(cursor, migration, max_attempts), None
                cursor.execute(
                    job_queries.START_JOB,
                    {"id": job.id, "dag_id": dag_id, "run_id": run_id, "try_number": try_number},
                )
                return migration, job
        except BaseException:
            for job_id in locked:
                self._unlock(job_id)
            raise

    def release(self, job: Job, *, status: JobStatus | None = None, error: str | None = None) -> None:
        """Set a job's status (``paused`` or ``failed``) if given, then release its advisory lock.

        :param job: a job this session holds.
        :param status: the new status, for a job that did not finish.
        :param error: the error that stopped it.
        """
        try:
            if status is not None:
                with self.conn.transaction(), self.conn.cursor() as cursor:
                    cursor.execute(job_queries.STOP_JOB, [status, error, job.id])
        finally:
            self._unlock(job.id)

    def split(self, job: Job, error: str) -> bool:
        """Split the rest of a job's range in two new jobs (GitLab's split-and-retry), and release it.

        The halves are sized by the keys the range holds now (rows may have been inserted into it
        since it was planned), and the second one ends where the job ended.

        :param job: a failed job this session holds.
        :param error: why it failed.
        :return: whether it was split; a range of one key cannot be (the job is then still held).
        """
        table = self.table
        with self.conn.transaction(), self.conn.cursor() as cursor:
            cursor.execute(job_queries.JOB_RESUME_KEY, [job.id])
            row = cursor.fetchone()
            assert row is not None
            resume_key = row[0]
            inclusive = resume_key is None
            after = table.key(job.start_key if inclusive else resume_key)
            rest = {"after": after, "last": table.key(job.end_key), "rows": None}
            with table.reading():
                cursor.execute(table.range_query(inclusive=inclusive), rest)
            counted = cursor.fetchone()
            assert counted is not None
            if not counted[3]:
                raise table.escaped(
                    f"{job.describe()}: splitting it found keys {counted[0]}..{counted[1]} outside its range"
                )
            remaining = counted[2]
            if remaining < 2:
                return False
            cursor.execute(table.range_query(inclusive=inclusive), {**rest, "rows": remaining // 2})
            first_half = cursor.fetchone()
            assert first_half is not None
            cursor.execute(table.range_query(inclusive=False), {**rest, "after": table.key(first_half[1])})
            second_half = cursor.fetchone()
            assert second_half is not None
            for start_key, end_key, keys in (first_half[:3], (second_half[0], job.end_key, second_half[2])):
                cursor.execute(job_queries.INSERT_JOB, [self.name, start_key, end_key, keys, 0])
            cursor.execute(job_queries.MARK_JOB_SPLIT, [error, job.id])
        self._unlock(job.id)
        return True

    def fail_migration(self, error: str) -> None:
        """Mark the migration failed, with its reason; no job of it starts, and none stays ``running``.

        :param error: why, shown to every later task.
        """
        with self.conn.transaction(), self.conn.cursor() as cursor:
            self._fail_migration_in(cursor, error)

    def fail_job(self, job: Job, error: str, *, migration_error: str | None = None) -> None:
        """Mark a job ``failed`` with its error, and release it; fail the migration too if given.

        Both in one transaction: a job never ends failed for good under a migration still active.

        :param job: a job this session holds.
        :param error: why its ``batch_sql`` failed.
        :param migration_error: the migration's error, when this failure fails it.
        """
        try:
            with self.conn.transaction(), self.conn.cursor() as cursor:
                if migration_error is not None:
                    self.registry.load_for_update(
                        cursor
                    )  # the migration's row before jobs' rows, as claims do
                cursor.execute(job_queries.STOP_JOB, [JobStatus.FAILED, error, job.id])
                if migration_error is not None:
                    self._fail_migration_in(cursor, migration_error)
        finally:
            self._unlock(job.id)

    # ------------------------------------------------------------------------------------- claiming

    def _claim_open_job(
        self, cursor: psycopg.Cursor[Any], max_attempts: int, locked: list[int]
    ) -> Job | None:
        # Candidates are read without row locks: a live worker's job row must stay free for its
        # next sub-batch. Each candidate's advisory lock decides; then its row is read again, locked.
        # A 'running' job whose lock is free is an orphan: its worker or its connection was lost.
        cursor.execute(job_queries.OPEN_JOBS, {"name": self.name, "max_attempts": max_attempts})
        for candidate in cursor.fetchall():
            if not self._try_lock(cursor, candidate["id"], locked):
                continue  # a live worker holds it
            cursor.execute(
                job_queries.OPEN_JOB_FOR_UPDATE,
                {"name": self.name, "max_attempts": max_attempts, "id": candidate["id"]},
            )
            row = cursor.fetchone()
            if row is None:  # finished or failed for good since it was read
                locked.remove(candidate["id"])
                self._unlock(candidate["id"])
                continue
            # only a failed batch_sql starts a new attempt: a paused job, or an orphan whose worker
            # or connection was lost, resumes where it stopped on the attempt it was on
            attempts = row["attempts"] + 1 if row["status"] == JobStatus.FAILED else max(row["attempts"], 1)
            if attempts != row["attempts"]:
                cursor.execute(job_queries.SET_JOB_ATTEMPTS, [attempts, row["id"]])
            row.pop("status")
            return Job(**{**row, "attempts": attempts})
        return None

    def _plan_job(
        self,
        cursor: psycopg.Cursor[Any],
        migration: Migration,
        batch_size: int,
        locked: list[int],
        sub_batch_size: int | None,
    ) -> Job | None:
        if migration.min_key is None or migration.max_key is None:
            return None
        table = self.table
        inclusive = migration.cursor_key is None
        after = migration.min_key if migration.cursor_key is None else migration.cursor_key
        keys_from = {"after": table.key(after), "last": table.key(migration.max_key)}
        count = -(-batch_size // sub_batch_size) if sub_batch_size else 0
        ranges: list[tuple[Any, ...]] = []
        row: dict[str, Any] | None
        with table.reading():
            if 0 < count <= MAX_CLAIMED_RANGES:  # one walk plans the job and its sub-batches
                query = table_queries.range_plan(
                    table.identifier, table.column, table.definition.scope, inclusive=inclusive
                )
                cursor.execute(query, {**keys_from, "rows": sub_batch_size, "total": batch_size})
                ranges = [(r["first"], r["last"], r["keys"], r["in_range"]) for r in cursor.fetchall()]
                row = {
                    "first": ranges[0][0],
                    "last": ranges[-1][1],
                    "keys": sum(keys for _, _, keys, _ in ranges),
                    "in_range": all(in_range for *_, in_range in ranges),
                }
            else:
                cursor.execute(table.range_query(inclusive=inclusive), {**keys_from, "rows": batch_size})
                row = cursor.fetchone()
        assert row is not None
        start_key, end_key, keys = row["first"], row["last"], row["keys"]
        if keys == 0:
            return None
        if not row["in_range"]:
            bounds = f"{'from' if inclusive else 'after'} {after} up to {migration.max_key}"
            raise table.escaped(f"planning a new job found keys {start_key}..{end_key}, not all {bounds}")
        cursor.execute(job_queries.INSERT_JOB, [self.name, start_key, end_key, keys, 1])
        created = cursor.fetchone()
        assert created is not None
        self._try_lock(cursor, created["id"], locked)
        cursor.execute(queries.ADVANCE_CURSOR, [end_key, self.name])
        if ranges and sub_batch_size and self.ranges_planned is not None:
            self.ranges_planned(created["id"], sub_batch_size, ranges)
        return Job(
            id=created["id"],
            start_key=start_key,
            end_key=end_key,
            planned_keys=keys,
            resume_key=None,
            attempts=1,
            rows_affected=0,
        )

    def _close_if_drained(
        self, cursor: psycopg.Cursor[Any], migration: Migration, max_attempts: int
    ) -> Migration:
        """Nothing to claim: finish the migration if all is done, fail it if a job used up its attempts."""
        cursor.execute(job_queries.JOBS_LEFT, {"name": self.name, "max_attempts": max_attempts})
        row = cursor.fetchone()
        assert row is not None
        if row["id"] is not None:
            job = f"job {row['id']} (keys {row['start_key']}..{row['end_key']})"
            self._fail_migration_in(cursor, attempts_used_up(job, row["attempts"], row["last_error"]))
        elif row["open"] == 0:
            cursor.execute(queries.FINISH_MIGRATION, [self.name])
        else:
            return migration  # other workers hold the remaining jobs
        return self.registry.load_for_update(cursor)

    # ---------------------------------------------------------------------------------------- locks

    def _try_lock(self, cursor: psycopg.Cursor[Any], job_id: int, locked: list[int]) -> bool:
        cursor.execute(job_queries.TRY_LOCK_JOB, [schema_queries.LOCK_NAMESPACE, job_id])
        row = cursor.fetchone()
        assert row is not None
        if row["ok"]:
            locked.append(job_id)
        return bool(row["ok"])

    def _unlock(self, job_id: int) -> None:
        """Release a job's advisory lock (session-level: in or out of a transaction alike)."""
        if not self.conn.closed:
            self.conn.execute(job_queries.UNLOCK_JOB, [schema_queries.LOCK_NAMESPACE, job_id])

    def _fail_migration_in(self, cursor: psycopg.Cursor[Any], error: str) -> None:
        """Fail the migration and stop its running jobs, in the caller's transaction."""
        cursor.execute(queries.FAIL_MIGRATION, [error, self.name])
        cursor.execute(
            job_queries.STOP_RUNNING_JOBS, [f"stopped where it was: the migration failed: {error}", self.name]
        )

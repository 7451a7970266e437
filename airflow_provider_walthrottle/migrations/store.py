"""The state of batched migrations, kept in the target database next to the data it describes.

Every change of state is committed in the same transaction as the work it describes: a sub-batch
and its progress commit together, so a crash at any instant loses at most one uncommitted
sub-batch and never applies one twice. A job being worked on is held by a session-level advisory
lock; when its worker dies, PostgreSQL releases the lock with the session, and the next claim
finds the job orphaned and runs it again at once, without waiting for a timeout.
"""

from __future__ import annotations

import contextlib
import datetime
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from airflow_provider_walthrottle.migrations import queries
from airflow_provider_walthrottle.migrations.definition import MigrationDefinition, MigrationDefinitionError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

#: Key column types the migration can walk, and how their text form is read back.
KEY_TYPES: dict[str, Callable[[str], Any]] = {
    "int2": int,
    "int4": int,
    "int8": int,
    "text": str,
    "varchar": str,
    "uuid": uuid.UUID,
}

#: Errors after which a job's range is split in half, as GitLab's split-and-retry does.
SPLITTABLE_ERRORS = (psycopg.errors.QueryCanceled, psycopg.errors.LockNotAvailable)


class MigrationStateError(RuntimeError):
    """The migration cannot go on: it failed, or its state says so. The message says why."""


class RangeEscapedError(MigrationStateError):
    """A range query found keys outside its bounds: the scope escaped its ``AND (...)``.

    Nothing of that range was applied; the migration fails with this message, which is a bug in its
    definition, not an error to retry.
    """


#: Errors of a query on the migration's table that mean the table, or a column it names, is gone.
TABLE_GONE_ERRORS = (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn)


@dataclass(frozen=True)
class Migration:
    """A migration's row, as the claim saw it."""

    name: str
    key_type: str
    min_key: str | None
    max_key: str | None
    total_rows: int
    cursor_key: str | None
    status: str
    batch_size: int
    rows_per_second: float | None
    wal_bytes_per_row: float | None
    throttled_seconds: float
    created_at: datetime.datetime
    fingerprint: str
    last_error: str | None = None


@dataclass(frozen=True)
class Job:
    """A claimed range of keys: this worker holds its advisory lock until it releases it."""

    id: int
    start_key: str
    end_key: str
    planned_rows: int
    resume_key: str | None
    attempts: int
    rows_affected: int


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
    total_rows: int
    jobs_succeeded: int
    jobs_open: int
    active_seconds: float
    throttled_seconds: float
    cursor_key: str | None
    status: str

    @property
    def percentage(self) -> float:
        """Share of the planned keys that are done, 0 to 100; 100 once finished.

        A finished migration whose rows were deleted under it walked fewer keys than it planned.
        """
        if self.status == "finished" or self.total_rows == 0:
            return 100.0
        return min(100.0, 100.0 * self.keys_done / self.total_rows)

    @property
    def eta_seconds(self) -> float | None:
        """Seconds left at the rate achieved so far, time spent throttled included."""
        elapsed = self.active_seconds + self.throttled_seconds
        if self.keys_done == 0 or elapsed <= 0:
            return None
        return max(self.total_rows - self.keys_done, 0) * elapsed / self.keys_done


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


class MigrationStore:
    """
    Read and change a migration's state on one psycopg connection (not in autocommit).

    :param conn: the connection; its session holds the advisory lock of the claimed job.
    :param definition: the migration.
    """

    def __init__(self, conn: psycopg.Connection[Any], definition: MigrationDefinition) -> None:
        self.conn = conn
        self.definition = definition
        self.table = sql.Identifier(definition.schema_name, definition.table_name)
        self.column = sql.Identifier(definition.column)
        self.key_type: str | None = None

    # ------------------------------------------------------------------------------ definition

    def ensure_state_tables(self) -> None:
        """Create the provider's schema and tables if they are missing; safe to run concurrently."""
        with self.conn.transaction(), self.conn.cursor() as cursor:
            cursor.execute(queries.LOCK_STATE_CREATION)
            for statement in queries.CREATE_STATE:
                cursor.execute(statement)

    def inspect_key_column(self) -> str:
        """Check that the key column can be walked; return its type name.

        :raises MigrationDefinitionError: naming the table or column and what is wrong with it.
        """
        definition = self.definition
        where = f"{definition.schema_name}.{definition.table_name}"
        with self.conn.transaction(), self.conn.cursor(row_factory=dict_row) as cursor:
            cursor.execute(
                queries.KEY_COLUMN,
                {
                    "schema": definition.schema_name,
                    "table": definition.table_name,
                    "column": definition.column,
                },
            )
            row = cursor.fetchone()
        if row is None:
            raise MigrationDefinitionError(f"table {where} does not exist (or this role cannot see it)")
        if row["column_name"] is None:
            raise MigrationDefinitionError(f"column {definition.column!r} does not exist in table {where}")
        column = f"column {where}.{definition.column}"
        if row["type_name"] not in KEY_TYPES:
            raise MigrationDefinitionError(
                f"{column} is of type {row['type_name']}; the key must be smallint, integer, bigint, text, "
                "varchar or uuid"
            )
        if not row["not_null"]:
            raise MigrationDefinitionError(f"{column} may be NULL; the key must be NOT NULL")
        if not row["unique_indexed"]:
            what = "indexed but not unique" if row["indexed"] else "not indexed"
            raise MigrationDefinitionError(
                f"{column} is {what}; the key needs a unique index of its own "
                f"(e.g. CREATE UNIQUE INDEX CONCURRENTLY ON {where} ({definition.column}))"
            )
        if not row["deterministic_collation"]:
            raise MigrationDefinitionError(
                f"{column} has a nondeterministic collation; its order is not defined"
            )
        return str(row["type_name"])

    def check_batch_sql(self, key_type: str, sample_key: str | None) -> None:
        """Plan ``batch_sql`` with ``EXPLAIN`` (which runs nothing), to catch its errors before any row.

        :param key_type: the key column's type.
        :param sample_key: a key to bind as both ends of the range (NULL when the table is empty).
        :raises MigrationDefinitionError: with the server's error.
        """
        key = None if sample_key is None else KEY_TYPES[key_type](sample_key)
        explain = sql.SQL("EXPLAIN {}").format(sql.SQL(self.definition.batch_sql))
        try:
            with self.conn.transaction(force_rollback=True), self.conn.cursor() as cursor:
                cursor.execute(explain, {"start": key, "end": key})
        except psycopg.Error as error:
            message = " ".join(str(error).split())
            raise MigrationDefinitionError(
                f"batch_sql of migration {self.definition.name!r} does not plan: {message}"
            ) from None

    def register(self, batch_size: int) -> Migration:
        """Record the migration at its first run, with its key bounds; check it on later runs.

        :param batch_size: the first batch size.
        :raises MigrationDefinitionError: if the name is taken by a migration that does something else,
            or the table or its key column is not fit (or no longer fit) to walk.
        """
        definition = self.definition
        try:
            key_type = self.inspect_key_column()
        except MigrationDefinitionError as error:
            if not self._registered():
                raise
            where = f"{definition.schema_name}.{definition.table_name}"
            raise MigrationDefinitionError(
                f"migration {definition.name!r} was registered on table {where}, but {error}; if the table "
                "or its column was renamed or changed since, restore it and the migration resumes where it "
                "stopped, or start a new migration under a new migration_name"
            ) from None
        with self.conn.transaction(), self.conn.cursor() as cursor:
            cursor.execute(queries.MIGRATION_EXISTS, [definition.name])
            if cursor.fetchone() is None:
                min_key, max_key, total = self._key_bounds(cursor)
                # before the row exists, so that a typo does not take the name
                self.check_batch_sql(key_type, min_key)
                cursor.execute(
                    sql.SQL(
                        """
INSERT INTO {} (name, table_schema, table_name, column_name, key_type, batch_sql, scope, fingerprint,
                min_key, max_key, total_rows, batch_size, status)
VALUES (%(name)s, %(schema)s, %(table)s, %(column)s, %(key_type)s, %(batch_sql)s, %(scope)s,
        %(fingerprint)s, %(min_key)s, %(max_key)s, %(total)s, %(batch_size)s,
        CASE WHEN %(total)s = 0 THEN 'finished' ELSE 'active' END)
ON CONFLICT (name) DO NOTHING"""
                    ).format(queries.MIGRATIONS),
                    {
                        "name": definition.name,
                        "schema": definition.schema_name,
                        "table": definition.table_name,
                        "column": definition.column,
                        "key_type": key_type,
                        "batch_sql": definition.batch_sql,
                        "scope": definition.scope,
                        "fingerprint": definition.fingerprint,
                        "min_key": min_key,
                        "max_key": max_key,
                        "total": total,
                        "batch_size": batch_size,
                    },
                )
        migration = self.load()
        self.key_type = migration.key_type
        if migration.fingerprint != definition.fingerprint:
            raise MigrationDefinitionError(
                f"migration name {definition.name!r} is already used in this database for another migration "
                f"(a different table, column, scope or batch_sql); choose a new migration_name"
            )
        return migration

    def _registered(self) -> bool:
        """Whether the migration's row exists."""
        with self.conn.transaction(), self.conn.cursor() as cursor:
            cursor.execute(queries.MIGRATION_EXISTS, [self.definition.name])
            return cursor.fetchone() is not None

    def _key_bounds(self, cursor: psycopg.Cursor[Any]) -> tuple[str | None, str | None, int]:
        """Return the first and last key in the scope, and how many keys it holds."""
        try:
            with self.conn.transaction():
                # with parameters (none), so that %% in the scope reads as % as it does everywhere else
                cursor.execute(queries.key_bounds(self.table, self.column, self.definition.scope), {})
        except psycopg.Error as error:
            raise MigrationDefinitionError(
                f"scope {self.definition.scope!r} of migration {self.definition.name!r} does not plan: "
                f"{' '.join(str(error).split())}"
            ) from None
        row = cursor.fetchone()
        assert row is not None
        return row[0], row[1], row[2]

    def load(self, *, for_update: bool = False) -> Migration:
        """Return the migration's row (inside the current transaction when ``for_update``)."""
        query = sql.SQL(
            """
SELECT name, key_type, min_key, max_key, total_rows, cursor_key, status, batch_size, rows_per_second,
       wal_bytes_per_row, throttled_seconds, created_at, fingerprint, last_error
FROM {} WHERE name = %s{}"""
        ).format(queries.MIGRATIONS, sql.SQL(" FOR UPDATE") if for_update else sql.SQL(""))
        if for_update:
            return self._load(query)
        with self.conn.transaction():
            return self._load(query)

    def _load(self, query: sql.Composed) -> Migration:
        with self.conn.cursor(row_factory=dict_row) as cursor:
            cursor.execute(query, [self.definition.name])
            row = cursor.fetchone()
        if row is None:
            raise MigrationStateError(f"migration {self.definition.name!r} is not registered")
        return Migration(**row)

    # -------------------------------------------------------------------------------- claiming

    def claim_job(
        self,
        batch_size: int,
        *,
        max_attempts: int,
        dag_id: str | None = None,
        run_id: str | None = None,
        try_number: int | None = None,
    ) -> tuple[Migration, Job | None]:
        """Take the next job: an orphaned, paused or failed one first, else a new range after the cursor.

        Returns the job with its advisory lock held by this session, or ``None`` when nothing is
        left to claim (the migration's status then says whether it finished).

        A job whose worker died (its session ended, and with it the advisory lock) is taken over
        where it stopped, on the same attempt; only a job whose ``batch_sql`` failed starts a new
        attempt.

        :param batch_size: rows to plan into a new range.
        :param max_attempts: how many times a job's ``batch_sql`` may fail before the migration fails.
        :param dag_id: recorded on the job, for the UI.
        :param run_id: recorded on the job.
        :param try_number: recorded on the job.
        """
        locked: list[int] = []
        try:
            with self.conn.transaction(), self.conn.cursor(row_factory=dict_row) as cursor:
                migration = self.load(for_update=True)
                if migration.status != "active":
                    return migration, None
                job = self._claim_open_job(cursor, max_attempts, locked)
                if job is None:
                    try:
                        job = self._plan_job(cursor, migration, batch_size, locked)
                    except RangeEscapedError as error:
                        # nothing was written yet: fail the migration in this same transaction
                        self._fail_migration_in(cursor, str(error))
                        return self.load(for_update=True), None
                if job is None:
                    migration = self._settle(cursor, migration, max_attempts)
                    return migration, None
                cursor.execute(
                    sql.SQL(
                        """
UPDATE {} SET status = 'running', started_at = coalesce(started_at, now()), dag_id = %(dag_id)s,
              run_id = %(run_id)s, try_number = %(try_number)s, last_error = NULL
WHERE id = %(id)s"""
                    ).format(queries.JOBS),
                    {"id": job.id, "dag_id": dag_id, "run_id": run_id, "try_number": try_number},
                )
                return migration, job
        except BaseException:
            for job_id in locked:
                self._unlock(job_id)
            raise

    def _try_lock(self, cursor: psycopg.Cursor[Any], job_id: int, locked: list[int]) -> bool:
        cursor.execute(
            "SELECT pg_try_advisory_lock(%s::int, %s::int) AS ok", [queries.LOCK_NAMESPACE, job_id]
        )
        row = cursor.fetchone()
        assert row is not None
        if row["ok"]:
            locked.append(job_id)
        return bool(row["ok"])

    def _claim_open_job(
        self, cursor: psycopg.Cursor[Any], max_attempts: int, locked: list[int]
    ) -> Job | None:
        # Candidates are read without row locks: a live worker's job row must stay free for its
        # next sub-batch. Each candidate's advisory lock decides; then its row is read again, locked.
        # A 'running' job whose lock is free is an orphan: its worker or its connection was lost.
        open_jobs = sql.SQL(
            """
SELECT id, start_key, end_key, planned_rows, resume_key, attempts, rows_affected, status
FROM {} WHERE migration_name = %(name)s
  AND (status IN ('pending', 'running', 'paused') OR (status = 'failed' AND attempts < %(max_attempts)s))"""
        ).format(queries.JOBS)
        cursor.execute(
            sql.SQL("{} ORDER BY id").format(open_jobs),
            {"name": self.definition.name, "max_attempts": max_attempts},
        )
        for candidate in cursor.fetchall():
            if not self._try_lock(cursor, candidate["id"], locked):
                continue  # a live worker holds it
            cursor.execute(
                sql.SQL("{} AND id = %(id)s FOR UPDATE").format(open_jobs),
                {"name": self.definition.name, "max_attempts": max_attempts, "id": candidate["id"]},
            )
            row = cursor.fetchone()
            if row is None:  # finished or failed for good since it was read
                locked.remove(candidate["id"])
                self._unlock_in(cursor, candidate["id"])
                continue
            # only a failed batch_sql starts a new attempt: a paused job, or an orphan whose worker
            # or connection was lost, resumes where it stopped on the attempt it was on
            attempts = row["attempts"] + 1 if row["status"] == "failed" else max(row["attempts"], 1)
            if attempts != row["attempts"]:
                cursor.execute(
                    sql.SQL("UPDATE {} SET attempts = %s WHERE id = %s").format(queries.JOBS),
                    [attempts, row["id"]],
                )
            row.pop("status")
            return Job(**{**row, "attempts": attempts})
        return None

    def _unlock_in(self, cursor: psycopg.Cursor[Any], job_id: int) -> None:
        cursor.execute("SELECT pg_advisory_unlock(%s::int, %s::int)", [queries.LOCK_NAMESPACE, job_id])

    def _plan_job(
        self, cursor: psycopg.Cursor[Any], migration: Migration, batch_size: int, locked: list[int]
    ) -> Job | None:
        if migration.min_key is None or migration.max_key is None:
            return None
        convert = KEY_TYPES[migration.key_type]
        after = migration.min_key if migration.cursor_key is None else migration.cursor_key
        with self._reading_the_table():
            cursor.execute(
                queries.next_range(
                    self.table,
                    self.column,
                    self.definition.scope,
                    inclusive=migration.cursor_key is None,
                    key_type=migration.key_type,
                ),
                {
                    "after": convert(after),
                    "last": convert(migration.max_key),
                    "rows": batch_size,
                },
            )
        row = cursor.fetchone()
        assert row is not None
        start_key, end_key, keys = row["first"], row["last"], row["keys"]
        if keys == 0:
            return None
        if not row["in_range"]:
            bounds = (
                f"{'from' if migration.cursor_key is None else 'after'} {after} up to {migration.max_key}"
            )
            raise self._escaped(f"planning a new job found keys {start_key}..{end_key}, not all {bounds}")
        cursor.execute(
            sql.SQL(
                """
INSERT INTO {} (migration_name, start_key, end_key, planned_rows, status, attempts)
VALUES (%s, %s, %s, %s, 'pending', 1) RETURNING id"""
            ).format(queries.JOBS),
            [self.definition.name, start_key, end_key, keys],
        )
        created = cursor.fetchone()
        assert created is not None
        self._try_lock(cursor, created["id"], locked)
        cursor.execute(
            sql.SQL("UPDATE {} SET cursor_key = %s, updated_at = now() WHERE name = %s").format(
                queries.MIGRATIONS
            ),
            [end_key, self.definition.name],
        )
        return Job(
            id=created["id"],
            start_key=start_key,
            end_key=end_key,
            planned_rows=keys,
            resume_key=None,
            attempts=1,
            rows_affected=0,
        )

    def _settle(self, cursor: psycopg.Cursor[Any], migration: Migration, max_attempts: int) -> Migration:
        """Nothing to claim: finish the migration if all is done, fail it if a job used up its attempts."""
        cursor.execute(
            sql.SQL(
                """
WITH exhausted AS (
    -- its batch_sql failed on each of its attempts (a lost worker or connection uses none)
    SELECT j.id, j.start_key, j.end_key, j.attempts, j.last_error FROM {jobs} AS j
    WHERE j.migration_name = %(name)s AND j.status = 'failed' AND j.attempts >= %(max_attempts)s
    ORDER BY j.id LIMIT 1
)
SELECT (SELECT count(*) FROM {jobs} WHERE migration_name = %(name)s
          AND status NOT IN ('succeeded', 'split')) AS open,
       exhausted.*
FROM (SELECT 1) AS one LEFT JOIN exhausted ON true"""
            ).format(jobs=queries.JOBS),
            {"name": self.definition.name, "max_attempts": max_attempts},
        )
        row = cursor.fetchone()
        assert row is not None
        if row["id"] is not None:
            job = f"job {row['id']} (keys {row['start_key']}..{row['end_key']})"
            self._fail_migration_in(cursor, attempts_used_up(job, row["attempts"], row["last_error"]))
            return self.load(for_update=True)
        if row["open"] == 0:
            status, error = "finished", None
        else:
            return migration  # other workers hold the remaining jobs
        cursor.execute(
            sql.SQL(
                """
UPDATE {} SET status = %s, last_error = %s, updated_at = now(),
              finished_at = CASE WHEN %s = 'finished' THEN now() END
WHERE name = %s"""
            ).format(queries.MIGRATIONS),
            [status, error, status, self.definition.name],
        )
        return self.load(for_update=True)

    # --------------------------------------------------------------------------------- working

    def run_sub_batch(
        self, job: Job, sub_batch_size: int, statement_timeout_ms: int | None
    ) -> SubBatchResult:
        """Run ``batch_sql`` over the next keys of the job, and record it, in one transaction.

        :param job: a job this session holds.
        :param sub_batch_size: keys per statement.
        :param statement_timeout_ms: ``statement_timeout`` for the statement, if any.
        """
        migration_key = self._key
        with self.conn.transaction(), self.conn.cursor() as cursor:
            cursor.execute(
                sql.SQL("SELECT resume_key FROM {} WHERE id = %s AND status = 'running' FOR UPDATE").format(
                    queries.JOBS
                ),
                [job.id],
            )
            resume = cursor.fetchone()
            if resume is None:
                raise MigrationStateError(self._why_not_running(cursor, job))
            resume_key = resume[0]
            with self._reading_the_table():
                cursor.execute(
                    queries.next_range(
                        self.table,
                        self.column,
                        self.definition.scope,
                        inclusive=resume_key is None,
                        key_type=self.key_type,
                        wal_position=True,
                    ),
                    {
                        "after": migration_key(job.start_key if resume_key is None else resume_key),
                        "last": migration_key(job.end_key),
                        "rows": sub_batch_size,
                    },
                )
            planned = cursor.fetchone()
            assert planned is not None
            first_key, last_key, keys, in_range, wal_before = planned
            if not in_range:  # before batch_sql: nothing is applied twice
                bounds = f"after {resume_key}" if resume_key is not None else f"from {job.start_key}"
                raise self._escaped(
                    f"job {job.id} (keys {job.start_key}..{job.end_key}): its next sub-batch found keys "
                    f"{first_key}..{last_key}, not all {bounds} up to {job.end_key}"
                )
            started = datetime.datetime.now(datetime.timezone.utc)
            rows_affected = 0
            if keys:
                if statement_timeout_ms:  # for the DAG author's statement only, not the bookkeeping
                    cursor.execute(
                        sql.SQL("SET LOCAL statement_timeout = {}").format(
                            sql.Literal(f"{statement_timeout_ms}ms")
                        )
                    )
                cursor.execute(
                    sql.SQL(self.definition.batch_sql),
                    {"start": migration_key(first_key), "end": migration_key(last_key)},
                )
                rows_affected = max(cursor.rowcount, 0)
                if statement_timeout_ms:
                    cursor.execute("SET LOCAL statement_timeout TO DEFAULT")
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
            wal_bytes = int(recorded[0])
        return SubBatchResult(
            first_key=first_key,
            last_key=last_key,
            keys=keys,
            rows_affected=rows_affected,
            seconds=seconds,
            wal_bytes=wal_bytes,
            job_finished=finished,
        )

    def _escaped(self, what: str) -> RangeEscapedError:
        """Return the error of a range query that found keys outside its bounds."""
        return RangeEscapedError(
            f"migration {self.definition.name!r}: {what}, so its scope "
            f"{self.definition.scope!r} does not stay inside AND (...); nothing of that range was run; "
            "fix the scope and start the migration again under a new migration_name"
        )

    @contextlib.contextmanager
    def _reading_the_table(self) -> Iterator[None]:
        """Turn the error of a query on a table renamed or dropped since the migration began into one line."""
        try:
            yield
        except TABLE_GONE_ERRORS as error:
            where = f"{self.definition.schema_name}.{self.definition.table_name}"
            raise MigrationDefinitionError(
                f"migration {self.definition.name!r} cannot read table {where}: "
                f"{error.diag.message_primary or error.sqlstate}; if the table or its column "
                f"{self.definition.column} was renamed or dropped since the migration began, restore "
                "it (the job resumes where it stopped), or run a new migration under a new migration_name"
            ) from None

    def _why_not_running(self, cursor: psycopg.Cursor[Any], job: Job) -> str:
        """Say why a job this worker claimed is no longer ``running``."""
        cursor.execute(queries.JOB_AND_MIGRATION_STATUS, [job.id])
        row = cursor.fetchone()
        if row is None:
            return f"job {job.id} of migration {self.definition.name!r} no longer exists"
        job_status, job_error, migration_status, migration_error = row
        if migration_status == "failed":
            return f"migration {self.definition.name!r} failed: {migration_error}; job {job.id} stopped"
        because = f" ({job_error})" if job_error else ""
        return f"job {job.id} of migration {self.definition.name!r} is {job_status} now, not running{because}"

    def _key(self, text: str) -> Any:
        """Read a key back from its text form, by the key column's type (known once registered)."""
        if self.key_type is None:
            raise MigrationStateError("register() the migration before working on it")
        return KEY_TYPES[self.key_type](text)

    def release(self, job: Job, *, status: str | None = None, error: str | None = None) -> None:
        """Set a job's status (``paused`` or ``failed``) if given, then release its advisory lock.

        :param job: a job this session holds.
        :param status: the new status, for a job that did not finish.
        :param error: the error that stopped it.
        """
        try:
            if status is not None:
                with self.conn.transaction(), self.conn.cursor() as cursor:
                    cursor.execute(
                        sql.SQL(
                            "UPDATE {} SET status = %s, last_error = %s WHERE id = %s AND status = 'running'"
                        ).format(queries.JOBS),
                        [status, error, job.id],
                    )
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
        convert = self._key
        scope = self.definition.scope
        with self.conn.transaction(), self.conn.cursor() as cursor:
            cursor.execute(
                sql.SQL("SELECT resume_key FROM {} WHERE id = %s FOR UPDATE").format(queries.JOBS), [job.id]
            )
            row = cursor.fetchone()
            assert row is not None
            resume_key = row[0]
            after = convert(job.start_key if resume_key is None else resume_key)
            inclusive = resume_key is None
            rest = {"after": after, "last": convert(job.end_key), "rows": None}
            with self._reading_the_table():
                cursor.execute(queries.next_range(self.table, self.column, scope, inclusive=inclusive), rest)
            counted = cursor.fetchone()
            assert counted is not None
            if not counted[3]:
                raise self._escaped(
                    f"job {job.id} (keys {job.start_key}..{job.end_key}): splitting it found keys "
                    f"{counted[0]}..{counted[1]} outside its range"
                )
            remaining = counted[2]
            if remaining < 2:
                return False
            cursor.execute(
                queries.next_range(self.table, self.column, scope, inclusive=inclusive),
                {**rest, "rows": remaining // 2},
            )
            first_half = cursor.fetchone()
            assert first_half is not None
            cursor.execute(
                queries.next_range(self.table, self.column, scope, inclusive=False),
                {**rest, "after": convert(first_half[1])},
            )
            second_half = cursor.fetchone()
            assert second_half is not None
            for start_key, end_key, keys in (first_half[:3], (second_half[0], job.end_key, second_half[2])):
                cursor.execute(
                    sql.SQL(
                        """
INSERT INTO {} (migration_name, start_key, end_key, planned_rows, status, attempts)
VALUES (%s, %s, %s, %s, 'pending', 0)"""
                    ).format(queries.JOBS),
                    [self.definition.name, start_key, end_key, keys],
                )
            cursor.execute(
                sql.SQL(
                    "UPDATE {} SET status = 'split', last_error = %s, finished_at = now() WHERE id = %s"
                ).format(queries.JOBS),
                [error, job.id],
            )
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
                    self.load(for_update=True)  # the migration's row before jobs' rows, as claims do
                cursor.execute(queries.FAIL_JOB, [error, job.id])
                if migration_error is not None:
                    self._fail_migration_in(cursor, migration_error)
        finally:
            self._unlock(job.id)

    def _fail_migration_in(self, cursor: psycopg.Cursor[Any], error: str) -> None:
        """Fail the migration and stop its running jobs, in the caller's transaction."""
        cursor.execute(queries.FAIL_MIGRATION, [error, self.definition.name])
        cursor.execute(
            queries.STOP_RUNNING_JOBS,
            [f"stopped where it was: the migration failed: {error}", self.definition.name],
        )

    def _unlock(self, job_id: int) -> None:
        if self.conn.closed:
            return
        with self.conn.transaction(), self.conn.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s::int, %s::int)", [queries.LOCK_NAMESPACE, job_id])

    # ------------------------------------------------------------------------------- reporting

    def record_batch(
        self, *, batch_size: int, rows_per_second: float | None, wal_bytes_per_row: float | None
    ) -> None:
        """Store the next batch size and the throughput estimate between tasks."""
        with self.conn.transaction(), self.conn.cursor() as cursor:
            cursor.execute(
                sql.SQL(
                    """
UPDATE {} SET batch_size = %s, rows_per_second = %s, wal_bytes_per_row = %s, updated_at = now()
WHERE name = %s"""
                ).format(queries.MIGRATIONS),
                [batch_size, rows_per_second, wal_bytes_per_row, self.definition.name],
            )

    def set_paused(self, paused: bool) -> None:
        """Pause an active migration, or resume a paused one; its tasks wait or skip meanwhile.

        :param paused: ``True`` to pause, ``False`` to resume.
        """
        new, old = ("paused", "active") if paused else ("active", "paused")
        with self.conn.transaction(), self.conn.cursor() as cursor:
            cursor.execute(queries.SET_STATUS, [new, self.definition.name, old])

    def note_backlog(self, job_id: int, pending_segments: int) -> None:
        """Keep the WAL backlog a job's last health check saw, for the migrations page's chart.

        :param job_id: the job.
        :param pending_segments: the segments that waited for ``archive_command``.
        """
        with self.conn.transaction(), self.conn.cursor() as cursor:
            cursor.execute(queries.NOTE_JOB_BACKLOG, [pending_segments, job_id])

    def begin_throttle(self) -> None:
        """Note that the migration waits on the WAL backlog, unless a wait is already open."""
        with self.conn.transaction(), self.conn.cursor() as cursor:
            cursor.execute(
                sql.SQL(
                    "UPDATE {} SET throttled_since = coalesce(throttled_since, now()) WHERE name = %s"
                ).format(queries.MIGRATIONS),
                [self.definition.name],
            )

    def end_throttle(self) -> None:
        """Close an open wait: add its duration to the time the migration spent throttled."""
        with self.conn.transaction(), self.conn.cursor() as cursor:
            cursor.execute(
                sql.SQL(
                    """
UPDATE {} SET throttled_seconds = throttled_seconds + extract(epoch FROM now() - throttled_since),
              throttled_since = NULL, updated_at = now()
WHERE name = %s AND throttled_since IS NOT NULL"""
                ).format(queries.MIGRATIONS),
                [self.definition.name],
            )

    def progress(self) -> Progress:
        """Sum the jobs into the migration's progress."""
        with self.conn.transaction(), self.conn.cursor(row_factory=dict_row) as cursor:
            cursor.execute(
                sql.SQL(
                    """
SELECT m.total_rows, m.throttled_seconds, m.cursor_key, m.status, {totals}
FROM {migrations} AS m LEFT JOIN {jobs} AS j ON j.migration_name = m.name
WHERE m.name = %s
GROUP BY m.name"""
                ).format(totals=queries.JOB_TOTALS, migrations=queries.MIGRATIONS, jobs=queries.JOBS),
                [self.definition.name],
            )
            row = cursor.fetchone()
        if row is None:
            raise MigrationStateError(f"migration {self.definition.name!r} is not registered")
        return Progress(**row)

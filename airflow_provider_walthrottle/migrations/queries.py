"""The SQL of batched migrations over the provider's state tables (schema ``walthrottle``).

Every statement is a constant here, with a comment saying what it takes, what it returns and
which lock it takes; the classes that run them read as a sequence of named steps. Identifiers are
composed with :class:`psycopg.sql.Identifier`, statuses with :class:`psycopg.sql.Literal` of their
enum, values are bound parameters. The queries over the migration's own table (its key column,
its ranges and the DAG author's ``batch_sql``) are in
:mod:`~airflow_provider_walthrottle.migrations.table_queries`.

The state tables keep their first names ``total_rows`` and ``planned_rows``, although both count
keys: renaming them would need a migration of every existing state table. The queries read them
``AS total_keys`` and ``AS planned_keys``.
"""

from __future__ import annotations

from psycopg import sql

from airflow_provider_walthrottle.migrations.state import (
    SETTLED_JOB_STATUSES,
    JobStatus,
    MigrationStatus,
)

#: The schema that holds the provider's state tables in the target database.
STATE_SCHEMA = "walthrottle"

#: First key of every advisory lock the provider takes ('WALT'); the second key is a job id, or 0
#: for the creation of the state tables.
LOCK_NAMESPACE = 0x57414C54

MIGRATIONS = sql.Identifier(STATE_SCHEMA, "batched_migrations")
JOBS = sql.Identifier(STATE_SCHEMA, "batched_migration_jobs")


def _one_of(statuses: type[MigrationStatus] | type[JobStatus] | tuple[JobStatus, ...]) -> sql.Composed:
    """Return ``('a', 'b', ...)``: the statuses as an SQL list of literals."""
    return sql.SQL("({})").format(sql.SQL(", ").join(sql.Literal(status) for status in statuses))


_SETTLED = _one_of(SETTLED_JOB_STATUSES)

# ------------------------------------------------------------------------------------ state tables

#: Statements that create the state tables; run under :data:`LOCK_STATE_CREATION` so that
#: concurrent first runs do not race on the catalog. Needs CREATE on the database.
CREATE_STATE = (
    sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(STATE_SCHEMA)),
    sql.SQL(
        """
CREATE TABLE IF NOT EXISTS {migrations} (
    name text PRIMARY KEY,
    table_schema text NOT NULL,
    table_name text NOT NULL,
    column_name text NOT NULL,
    key_type text NOT NULL,
    batch_sql text NOT NULL,
    scope text,
    fingerprint text NOT NULL,
    min_key text,
    max_key text,
    total_rows bigint NOT NULL,
    cursor_key text,
    status text NOT NULL DEFAULT {active} CHECK (status IN {migration_statuses}),
    batch_size integer NOT NULL CHECK (batch_size > 0),
    rows_per_second double precision,
    wal_bytes_per_row double precision,
    throttled_seconds double precision NOT NULL DEFAULT 0,
    throttled_since timestamptz,
    last_error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
)"""
    ).format(
        migrations=MIGRATIONS,
        active=sql.Literal(MigrationStatus.ACTIVE),
        migration_statuses=_one_of(MigrationStatus),
    ),
    sql.SQL(
        """
CREATE TABLE IF NOT EXISTS {jobs} (
    id bigserial PRIMARY KEY,
    migration_name text NOT NULL REFERENCES {migrations} (name) ON DELETE CASCADE,
    start_key text NOT NULL,
    end_key text NOT NULL,
    planned_rows integer NOT NULL,
    resume_key text,
    status text NOT NULL CHECK (status IN {job_statuses}),
    attempts integer NOT NULL DEFAULT 0,
    rows_affected bigint NOT NULL DEFAULT 0,
    keys_done integer NOT NULL DEFAULT 0,
    sub_batches integer NOT NULL DEFAULT 0,
    duration_seconds double precision NOT NULL DEFAULT 0,
    wal_bytes bigint NOT NULL DEFAULT 0,
    pending_segments integer,
    dag_id text,
    run_id text,
    try_number integer,
    last_error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz,
    finished_at timestamptz
)"""
    ).format(jobs=JOBS, migrations=MIGRATIONS, job_statuses=_one_of(JobStatus)),
    sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (migration_name, status)").format(
        sql.Identifier("batched_migration_jobs_migration_status_idx"), JOBS
    ),
)

#: Serializes the creation of the state tables: a transaction-scoped advisory lock.
LOCK_STATE_CREATION = sql.SQL("SELECT pg_advisory_xact_lock({}, 0)").format(sql.Literal(LOCK_NAMESPACE))

#: One boolean: whether both state tables exist. No lock; readable by any role.
STATE_TABLES_EXIST = sql.SQL("SELECT to_regclass({}) IS NOT NULL AND to_regclass({}) IS NOT NULL").format(
    sql.Literal(f"{STATE_SCHEMA}.batched_migrations"), sql.Literal(f"{STATE_SCHEMA}.batched_migration_jobs")
)

# -------------------------------------------------------------------------------------- migrations

#: One row if the migration is registered: ``[name]``. No lock.
MIGRATION_EXISTS = sql.SQL("SELECT 1 FROM {} WHERE name = %s").format(MIGRATIONS)

#: Register a migration, ``active`` (``finished`` if its scope holds no key); a name registered
#: meanwhile by a concurrent first run is left as it is. Named parameters; returns nothing. Takes
#: the new row's lock.
INSERT_MIGRATION = sql.SQL(
    """
INSERT INTO {} (name, table_schema, table_name, column_name, key_type, batch_sql, scope, fingerprint,
                min_key, max_key, total_rows, batch_size, status)
VALUES (%(name)s, %(schema)s, %(table)s, %(column)s, %(key_type)s, %(batch_sql)s, %(scope)s,
        %(fingerprint)s, %(min_key)s, %(max_key)s, %(total)s, %(batch_size)s,
        CASE WHEN %(total)s = 0 THEN {finished} ELSE {active} END)
ON CONFLICT (name) DO NOTHING"""
).format(
    MIGRATIONS, finished=sql.Literal(MigrationStatus.FINISHED), active=sql.Literal(MigrationStatus.ACTIVE)
)

_MIGRATION_ROW = sql.SQL(
    """
SELECT name, key_type, min_key, max_key, total_rows AS total_keys, cursor_key, status, batch_size,
       rows_per_second, wal_bytes_per_row, throttled_seconds, created_at, fingerprint, last_error
FROM {} WHERE name = %s"""
).format(MIGRATIONS)

#: The migration's row, in the columns of :class:`~.state.Migration`: ``[name]``. No lock.
LOAD_MIGRATION = _MIGRATION_ROW

#: The same, locking the row until the caller's transaction ends (claims take it first).
LOAD_MIGRATION_FOR_UPDATE = sql.SQL("{} FOR UPDATE").format(_MIGRATION_ROW)

#: A migration's status: ``[name]``; one row, or none if there is no such migration. No lock.
MIGRATION_STATUS = sql.SQL("SELECT status FROM {} WHERE name = %s").format(MIGRATIONS)

#: Pause an active migration or resume a paused one: ``[new status, name, old status]``; returns
#: the name when the row changed. Takes the migration's row lock.
SET_STATUS = sql.SQL(
    "UPDATE {} SET status = %s, updated_at = now() WHERE name = %s AND status = %s RETURNING name"
).format(MIGRATIONS)

#: Fail a migration with its reason: ``[error, name]``. Takes the migration's row lock.
FAIL_MIGRATION = sql.SQL(
    "UPDATE {} SET status = {}, last_error = %s, updated_at = now() WHERE name = %s"
).format(MIGRATIONS, sql.Literal(MigrationStatus.FAILED))

#: Mark a migration finished: ``[name]``. Takes the migration's row lock.
FINISH_MIGRATION = sql.SQL(
    "UPDATE {} SET status = {}, last_error = NULL, updated_at = now(), finished_at = now() WHERE name = %s"
).format(MIGRATIONS, sql.Literal(MigrationStatus.FINISHED))

#: Move the migration's cursor past a newly planned range: ``[end key, name]``. Takes the
#: migration's row lock (the claim holds it already).
ADVANCE_CURSOR = sql.SQL("UPDATE {} SET cursor_key = %s, updated_at = now() WHERE name = %s").format(
    MIGRATIONS
)

#: Keep the next batch size and the throughput estimate between tasks: ``[batch size, rows per
#: second, WAL bytes per row, name]``. Takes the migration's row lock.
RECORD_THROUGHPUT = sql.SQL(
    """
UPDATE {} SET batch_size = %s, rows_per_second = %s, wal_bytes_per_row = %s, updated_at = now()
WHERE name = %s"""
).format(MIGRATIONS)

#: Open a wait on the WAL backlog, unless one is open: ``[name]``. Takes the migration's row lock.
BEGIN_THROTTLE = sql.SQL(
    "UPDATE {} SET throttled_since = coalesce(throttled_since, now()) WHERE name = %s"
).format(MIGRATIONS)

#: Close an open wait, adding its duration to ``throttled_seconds``: ``[name]``. Takes the
#: migration's row lock when a wait is open.
END_THROTTLE = sql.SQL(
    """
UPDATE {} SET throttled_seconds = throttled_seconds + extract(epoch FROM now() - throttled_since),
              throttled_since = NULL, updated_at = now()
WHERE name = %s AND throttled_since IS NOT NULL"""
).format(MIGRATIONS)

#: A migration's jobs summed into its progress: select-list items over ``{migrations} AS m LEFT JOIN
#: {jobs} AS j ON j.migration_name = m.name ... GROUP BY m.name``.
JOB_TOTALS = sql.SQL(
    """coalesce(sum(j.rows_affected), 0)::bigint AS rows_affected,
       coalesce(sum(j.keys_done), 0)::bigint AS keys_done,
       coalesce(sum(j.duration_seconds), 0)::float8 AS active_seconds,
       count(j.id) FILTER (WHERE j.status = {succeeded}) AS jobs_succeeded,
       count(j.id) FILTER (WHERE j.status NOT IN {settled}) AS jobs_open"""
).format(succeeded=sql.Literal(JobStatus.SUCCEEDED), settled=_SETTLED)

#: The migration's progress, in the fields of :class:`~.state.Progress`: ``[name]``; one row, or
#: none if it is not registered. No lock.
PROGRESS = sql.SQL(
    """
SELECT m.total_rows AS total_keys, m.throttled_seconds, m.cursor_key, m.status, {totals}
FROM {migrations} AS m LEFT JOIN {jobs} AS j ON j.migration_name = m.name
WHERE m.name = %s
GROUP BY m.name"""
).format(totals=JOB_TOTALS, migrations=MIGRATIONS, jobs=JOBS)

# -------------------------------------------------------------------------------------------- jobs

#: Take a job's session-level advisory lock if it is free: ``[namespace, job id]``; one row, ``ok``.
TRY_LOCK_JOB = sql.SQL("SELECT pg_try_advisory_lock(%s::int, %s::int) AS ok")

#: Release a job's session-level advisory lock: ``[namespace, job id]``.
UNLOCK_JOB = sql.SQL("SELECT pg_advisory_unlock(%s::int, %s::int)")

_OPEN_JOBS = sql.SQL(
    """
SELECT id, start_key, end_key, planned_rows AS planned_keys, resume_key, attempts, rows_affected, status
FROM {} WHERE migration_name = %(name)s
  AND (status IN {open} OR (status = {failed} AND attempts < %(max_attempts)s))"""
).format(
    JOBS,
    open=_one_of((JobStatus.PENDING, JobStatus.RUNNING, JobStatus.PAUSED)),
    failed=sql.Literal(JobStatus.FAILED),
)

#: A migration's jobs that a claim may take (pending, running, paused, or failed with attempts
#: left), oldest first: ``name``, ``max_attempts``. No row lock: a live worker's job row must stay
#: free for its next sub-batch; each candidate's advisory lock decides.
OPEN_JOBS = sql.SQL("{} ORDER BY id").format(_OPEN_JOBS)

#: One open job, locked until the claim's transaction ends: ``name``, ``max_attempts``, ``id``;
#: no row if it finished or failed for good since it was read.
OPEN_JOB_FOR_UPDATE = sql.SQL("{} AND id = %(id)s FOR UPDATE").format(_OPEN_JOBS)

#: Set a job's attempts: ``[attempts, id]``. Takes the job's row lock.
SET_JOB_ATTEMPTS = sql.SQL("UPDATE {} SET attempts = %s WHERE id = %s").format(JOBS)

#: Plan a pending job: ``[migration name, start key, end key, planned keys, attempts]``; returns its
#: ``id``.
INSERT_JOB = sql.SQL(
    """
INSERT INTO {} (migration_name, start_key, end_key, planned_rows, status, attempts)
VALUES (%s, %s, %s, %s, {}, %s) RETURNING id"""
).format(JOBS, sql.Literal(JobStatus.PENDING))

#: Mark a claimed job ``running`` for this worker: ``id``, ``dag_id``, ``run_id``, ``try_number``.
#: Takes the job's row lock (the claim holds it already).
START_JOB = sql.SQL(
    """
UPDATE {} SET status = {}, started_at = coalesce(started_at, now()), dag_id = %(dag_id)s,
              run_id = %(run_id)s, try_number = %(try_number)s, last_error = NULL
WHERE id = %(id)s"""
).format(JOBS, sql.Literal(JobStatus.RUNNING))

#: Nothing left to claim: how many jobs are ``open`` (not succeeded or split), and the first job
#: that used up its attempts (``id``, ``start_key``, ``end_key``, ``attempts``, ``last_error``, all
#: NULL if none): ``name``, ``max_attempts``. One row; no lock.
JOBS_LEFT = sql.SQL(
    """
WITH exhausted AS (
    -- its batch_sql failed on each of its attempts (a lost worker or connection uses none)
    SELECT j.id, j.start_key, j.end_key, j.attempts, j.last_error FROM {jobs} AS j
    WHERE j.migration_name = %(name)s AND j.status = {failed} AND j.attempts >= %(max_attempts)s
    ORDER BY j.id LIMIT 1
)
SELECT (SELECT count(*) FROM {jobs} WHERE migration_name = %(name)s AND status NOT IN {settled}) AS open,
       exhausted.*
FROM (SELECT 1) AS one LEFT JOIN exhausted ON true"""
).format(jobs=JOBS, failed=sql.Literal(JobStatus.FAILED), settled=_SETTLED)

#: Open a sub-batch's transaction, in a pipeline (where ``Connection.transaction()`` would add two
#: syncs). No lock.
BEGIN = sql.SQL("BEGIN")

#: Where a job this session runs resumes: ``[id]``; one row (``resume_key``, NULL before its first
#: sub-batch), or none if the job is no longer ``running``. Takes the job's row lock.
RUNNING_JOB_RESUME_KEY = sql.SQL("SELECT resume_key FROM {} WHERE id = %s AND status = {} FOR UPDATE").format(
    JOBS, sql.Literal(JobStatus.RUNNING)
)

#: Where a job resumes, whatever its status: ``[id]``; one row (``resume_key``). Takes its row lock.
JOB_RESUME_KEY = sql.SQL("SELECT resume_key FROM {} WHERE id = %s FOR UPDATE").format(JOBS)

#: Set the status and error of a job that is still ``running``: ``[status, error, id]``; a job a
#: peer stopped meanwhile keeps its status. Takes the job's row lock.
STOP_JOB = sql.SQL("UPDATE {} SET status = %s, last_error = %s WHERE id = %s AND status = {}").format(
    JOBS, sql.Literal(JobStatus.RUNNING)
)

#: Mark a job replaced by its two halves: ``[error, id]``. Takes the job's row lock.
MARK_JOB_SPLIT = sql.SQL(
    "UPDATE {} SET status = {}, last_error = %s, finished_at = now() WHERE id = %s"
).format(JOBS, sql.Literal(JobStatus.SPLIT))

#: Stop the jobs still ``running`` under a migration that failed: ``[reason, name]``; they become
#: ``paused`` (they resume where they stopped, without an attempt used, once the migration is
#: active again) and a live worker stops at its next sub-batch. Takes the jobs' row locks.
STOP_RUNNING_JOBS = sql.SQL(
    "UPDATE {} SET status = {}, last_error = %s WHERE migration_name = %s AND status = {}"
).format(JOBS, sql.Literal(JobStatus.PAUSED), sql.Literal(JobStatus.RUNNING))

#: A job's status and error with its migration's: ``[id]``; one row (``job_status``,
#: ``job_error``, ``migration_status``, ``migration_error``), or none if the job is gone. No lock.
JOB_AND_MIGRATION_STATUS = sql.SQL(
    """
SELECT j.status AS job_status, j.last_error AS job_error, m.status AS migration_status,
       m.last_error AS migration_error
FROM {jobs} AS j JOIN {migrations} AS m ON m.name = j.migration_name
WHERE j.id = %s"""
).format(jobs=JOBS, migrations=MIGRATIONS)

#: Record a sub-batch on its job, in the sub-batch's transaction, and return the WAL bytes written
#: since ``%(wal_before)s`` (0 when NULL): the WAL position is read before this row's own change.
#: Takes the job's row lock (the sub-batch holds it already).
RECORD_SUB_BATCH = sql.SQL(
    """
WITH written AS (
    SELECT coalesce((pg_current_wal_insert_lsn() - %(wal_before)s::pg_lsn)::bigint, 0) AS wal_bytes
)
UPDATE {jobs} SET resume_key = coalesce(%(last)s, resume_key), rows_affected = rows_affected + %(rows)s,
       keys_done = keys_done + %(keys)s, sub_batches = sub_batches + %(one)s,
       duration_seconds = duration_seconds + %(seconds)s,
       wal_bytes = {jobs}.wal_bytes + written.wal_bytes,
       status = CASE WHEN %(finished)s THEN {succeeded} ELSE status END,
       finished_at = CASE WHEN %(finished)s THEN now() END
FROM written
WHERE id = %(id)s
RETURNING written.wal_bytes"""
).format(jobs=JOBS, succeeded=sql.Literal(JobStatus.SUCCEEDED))

#: Keep the WAL backlog a job's last health check saw: ``[pending segments, job id]``. Takes the
#: job's row lock.
NOTE_JOB_BACKLOG = sql.SQL("UPDATE {} SET pending_segments = %s WHERE id = %s").format(JOBS)

# ------------------------------------------------------------------------- the migrations page

#: The migrations with their totals, unfinished first, most recently updated first: ``name``,
#: ``dag_id``, ``run_id`` (each NULL for all). No lock; readable with SELECT on the state tables.
MIGRATION_SUMMARIES = sql.SQL(
    """
SELECT m.name, m.table_schema, m.table_name, m.column_name, m.status, m.total_rows AS total_keys,
       m.cursor_key, m.batch_size, m.rows_per_second, m.throttled_seconds, m.throttled_since,
       m.last_error, m.created_at, m.updated_at, m.finished_at, {totals}, now() AS read_at
FROM {migrations} AS m LEFT JOIN {jobs} AS j ON j.migration_name = m.name
WHERE (%(dag_id)s::text IS NULL OR EXISTS (
    SELECT 1 FROM {jobs} AS f
    WHERE f.migration_name = m.name AND f.dag_id = %(dag_id)s
      AND (%(run_id)s::text IS NULL OR f.run_id = %(run_id)s)))
  AND (%(name)s::text IS NULL OR m.name = %(name)s)
GROUP BY m.name
ORDER BY m.status = {finished}, m.updated_at DESC, m.name
"""
).format(totals=JOB_TOTALS, migrations=MIGRATIONS, jobs=JOBS, finished=sql.Literal(MigrationStatus.FINISHED))

#: Each named migration's last ``limit`` jobs, newest first: ``names``, ``limit``. No lock.
RECENT_JOBS = sql.SQL(
    """
SELECT * FROM (
    SELECT j.*, j.planned_rows AS planned_keys,
           row_number() OVER (PARTITION BY j.migration_name ORDER BY j.id DESC) AS recency
    FROM {jobs} AS j WHERE j.migration_name = ANY(%(names)s)
) AS ranked
WHERE recency <= %(limit)s
ORDER BY migration_name, id DESC
"""
).format(jobs=JOBS)

#: Each named migration's last ``limit`` finished jobs, oldest first, as points of its chart (the
#: batch size and the backlog its last check saw): ``names``, ``limit``. No lock.
JOB_HISTORY = sql.SQL(
    """
SELECT * FROM (
    SELECT j.migration_name, j.finished_at AS at, j.planned_rows AS batch_size, j.pending_segments,
           j.rows_affected, j.duration_seconds,
           row_number() OVER (PARTITION BY j.migration_name ORDER BY j.finished_at DESC) AS recency
    FROM {jobs} AS j
    WHERE j.migration_name = ANY(%(names)s) AND j.finished_at IS NOT NULL
) AS ranked
WHERE recency <= %(limit)s
ORDER BY migration_name, at
"""
).format(jobs=JOBS)

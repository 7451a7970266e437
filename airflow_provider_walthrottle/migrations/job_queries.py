"""The SQL of a migration's job queue, over the provider's state tables (schema ``walthrottle``).

Claiming, locking, running, splitting and stopping jobs (ranges of keys), and what a sub-batch
records on its job. Each statement is a constant, with a comment saying what it takes, what it
returns and which lock it takes. The tables are created in
:mod:`~airflow_provider_walthrottle.migrations.schema_queries`; the migrations' own rows are
queried in :mod:`~airflow_provider_walthrottle.migrations.queries`.
"""

from __future__ import annotations

from psycopg import sql

from airflow_provider_walthrottle.migrations.schema_queries import (
    JOBS,
    MIGRATIONS,
    SETTLED,
    STATUS_LITERALS,
    one_of,
)
from airflow_provider_walthrottle.migrations.state import JobStatus

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
    open=one_of((JobStatus.PENDING, JobStatus.RUNNING, JobStatus.PAUSED)),
    **STATUS_LITERALS,
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
).format(jobs=JOBS, settled=SETTLED, **STATUS_LITERALS)

#: Open a sub-batch's transaction, in a pipeline (where ``Connection.transaction()`` would add two
#: syncs). No lock.
BEGIN = sql.SQL("BEGIN")

#: Commit a sub-batch's transaction, in the round trip of its progress update (where
#: ``Connection.commit()`` would add a sync of its own). Releases its locks.
COMMIT = sql.SQL("COMMIT")

#: Roll back a sub-batch whose planned range turned out to be out of date: nothing of it stays.
#: Releases its locks.
ROLLBACK = sql.SQL("ROLLBACK")

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
).format(jobs=JOBS, **STATUS_LITERALS)

#: Keep the WAL backlog a job's last health check saw: ``[pending segments, job id]``. Takes the
#: job's row lock.
NOTE_JOB_BACKLOG = sql.SQL("UPDATE {} SET pending_segments = %s WHERE id = %s").format(JOBS)

#: Keep the numbers a job's last health check saw, by indicator (``indicator_values``, replaced),
#: and its WAL backlog (``pending_segments``, kept as it was when this check did not count it):
#: ``values`` (a :class:`psycopg.types.json.Jsonb`), ``pending_segments``, ``id``. Takes the job's
#: row lock.
NOTE_JOB_READINGS = sql.SQL(
    """
UPDATE {} SET indicator_values = %(values)s,
              pending_segments = coalesce(%(pending_segments)s::int, pending_segments)
WHERE id = %(id)s"""
).format(JOBS)

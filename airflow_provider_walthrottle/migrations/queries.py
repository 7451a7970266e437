"""The SQL of batched migrations over the provider's state tables (schema ``walthrottle``).

Every statement is a constant here, with a comment saying what it takes, what it returns and
which lock it takes; the classes that run them read as a sequence of named steps. Identifiers are
composed with :class:`psycopg.sql.Identifier`, statuses with :class:`psycopg.sql.Literal` of their
enum, values are bound parameters. This module holds the migrations' rows, their time accounts'
clock, their progress and the page's summaries. The state tables are created and upgraded in
:mod:`~airflow_provider_walthrottle.migrations.schema_queries`, the job queue's statements are in
:mod:`~airflow_provider_walthrottle.migrations.job_queries`, and the queries over the migration's
own table (its key column, its ranges and the DAG author's ``batch_sql``) are in
:mod:`~airflow_provider_walthrottle.migrations.table_queries`.

The page reads a database whose tables were not upgraded yet (no task ran since) with
:data:`MIGRATION_SUMMARIES_BEFORE_0_2` and :data:`JOB_HISTORY_WITHOUT_INDICATOR_VALUES`.
"""

from __future__ import annotations

from psycopg import sql

from airflow_provider_walthrottle.migrations.schema_queries import (
    JOBS,
    MIGRATIONS,
    SETTLED,
    STATUS_LITERALS,
    TIME_ACCOUNTS,
    TIME_ACCOUNTS_BEFORE_0_2,
)
from airflow_provider_walthrottle.migrations.state import (
    DEFAULT_THROTTLE_REASON,
    Activity,
    JobStatus,
    MigrationStatus,
)

# -------------------------------------------------------------------------------------- migrations

#: One row if the migration is registered: ``[name]``. No lock.
MIGRATION_EXISTS = sql.SQL("SELECT 1 FROM {} WHERE name = %s").format(MIGRATIONS)

#: Register a migration, ``active`` (``finished`` if its scope holds no key), its clock started
#: (``waiting`` for its first batch, which follows at once); a name registered
#: meanwhile by a concurrent first run is left as it is. Named parameters; returns nothing. Takes
#: the new row's lock.
INSERT_MIGRATION = sql.SQL(
    """
INSERT INTO {} (name, table_schema, table_name, column_name, key_type, batch_sql, scope, fingerprint,
                min_key, max_key, total_rows, batch_size, status, activity, activity_since)
VALUES (%(name)s, %(schema)s, %(table)s, %(column)s, %(key_type)s, %(batch_sql)s, %(scope)s,
        %(fingerprint)s, %(min_key)s, %(max_key)s, %(total)s, %(batch_size)s,
        CASE WHEN %(total)s = 0 THEN {finished} ELSE {active} END,
        CASE WHEN %(total)s = 0 THEN {a_finished} ELSE {a_waiting} END, now())
ON CONFLICT (name) DO NOTHING"""
).format(
    MIGRATIONS,
    **STATUS_LITERALS,
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

#: Pause an active migration or resume a paused one, on tables before 0.2 (no time accounts):
#: ``[new status, name, old status]``; returns the name when the row changed. Takes the migration's
#: row lock.
SET_STATUS_BEFORE_0_2 = sql.SQL(
    "UPDATE {} SET status = %s, updated_at = now() WHERE name = %s AND status = %s RETURNING name"
).format(MIGRATIONS)

# ------------------------------------------------------------------------------- the time accounts

#: Seconds of a migration's open entry: since ``activity_since`` (0 without one).
_OPEN_SECONDS = sql.SQL("greatest(coalesce(extract(epoch FROM now() - m.activity_since), 0), 0)::float8")

#: Some job of the migration is being run now (by another worker, when the caller's is released).
_A_JOB_RUNS = sql.SQL(
    "EXISTS (SELECT 1 FROM {jobs} AS r WHERE r.migration_name = m.name AND r.status = {running})"
).format(jobs=JOBS, running=sql.Literal(JobStatus.RUNNING))


def _close_open_entry(account: sql.Composable) -> sql.Composed:
    """Return the SET items of an UPDATE of ``{migrations} AS m`` that close the open entry.

    Its seconds go to ``account`` (an expression: the open activity, or the one a failure says it
    was), and ``activity_since`` starts again now.
    """
    items: list[sql.Composable] = [
        sql.SQL("{column} = m.{column} + CASE WHEN {account} = {activity} THEN {seconds} ELSE 0 END").format(
            column=sql.Identifier(column),
            account=account,
            activity=sql.Literal(activity),
            seconds=_OPEN_SECONDS,
        )
        for column, activity in (
            ("running_seconds", Activity.RUNNING),
            ("waiting_seconds", Activity.WAITING),
            ("paused_seconds", Activity.PAUSED),
            ("failed_seconds", Activity.FAILED),
            ("throttled_seconds", Activity.THROTTLED),
        )
    ]
    reason = sql.SQL("coalesce(m.activity_reason, {})").format(sql.Literal(DEFAULT_THROTTLE_REASON))
    items.append(
        sql.SQL(
            "throttled_by = CASE WHEN {account} = {throttled} "
            "THEN jsonb_set(m.throttled_by, ARRAY[{reason}], "
            "to_jsonb(coalesce((m.throttled_by ->> {reason})::float8, 0) + {seconds})) "
            "ELSE m.throttled_by END"
        ).format(
            account=account, throttled=sql.Literal(Activity.THROTTLED), reason=reason, seconds=_OPEN_SECONDS
        )
    )
    items.append(sql.SQL("activity_since = now()"))
    return sql.SQL(",\n    ").join(items)


#: Close the open entry of a migration's time accounts and open the next: ``name``; ``activity``
#: (NULL: ``running`` while some job of it runs, else ``waiting``); ``reason`` (the signal of a
#: ``throttled`` entry); ``closing_as`` (the account the open entry goes to, NULL for its own: a
#: failed batch's time goes to ``failed``); ``hold`` (the migration makes no progress from now:
#: ``held_since`` starts, if it has not); ``release`` (a batch completed: ``held_since`` ends);
#: ``only_from`` (only if the open activity is this one; NULL for any).
#:
#: The migration's status wins over ``activity``: a paused migration's next entry is ``paused``, a
#: failed one's ``failed``, and a finished one's ``finished``, which stops the clock (no later
#: change of a finished migration's accounts). ``throttled_since`` (0.1's open wait) follows a
#: ``throttled`` entry. Takes the migration's row lock.
CLOCK_CHANGE = sql.SQL(
    """
UPDATE {migrations} AS m SET {close},
    activity = CASE m.status WHEN {paused} THEN {a_paused} WHEN {failed} THEN {a_failed}
                             WHEN {finished} THEN {a_finished}
                             ELSE coalesce(%(activity)s::text,
                                           CASE WHEN {a_job_runs} THEN {a_running} ELSE {a_waiting} END)
               END,
    activity_reason = CASE WHEN m.status = {active} AND %(activity)s::text = {a_throttled}
                           THEN %(reason)s::text END,
    held_since = CASE WHEN m.status = {paused} OR (m.status = {active} AND %(hold)s::boolean)
                      THEN coalesce(m.held_since, now())
                      WHEN %(release)s::boolean THEN NULL ELSE m.held_since END,
    throttled_since = CASE WHEN m.status = {active} AND %(activity)s::text = {a_throttled}
                           THEN coalesce(m.throttled_since, now()) END
WHERE m.name = %(name)s AND m.activity IS DISTINCT FROM {a_finished}
  AND (%(only_from)s::text IS NULL OR m.activity = %(only_from)s::text)"""
).format(
    migrations=MIGRATIONS,
    close=_close_open_entry(sql.SQL("coalesce(%(closing_as)s::text, m.activity)")),
    **STATUS_LITERALS,
    a_job_runs=_A_JOB_RUNS,
)

#: Pause an active migration or resume a paused one, closing the open entry of its time accounts:
#: ``new``, ``name``, ``old`` (the status it must have); returns the name when the row changed.
#: Pausing opens a ``paused`` entry (and ``held_since``); resuming a ``waiting`` one, or ``running``
#: while a job of it still runs. Takes the migration's row lock.
SET_STATUS = sql.SQL(
    """
UPDATE {migrations} AS m SET status = %(new)s::text, updated_at = now(), {close},
    activity = CASE WHEN %(new)s::text = {paused} THEN {a_paused}
                    WHEN {a_job_runs} THEN {a_running} ELSE {a_waiting} END,
    activity_reason = NULL,
    held_since = CASE WHEN %(new)s::text = {paused} THEN coalesce(m.held_since, now()) ELSE m.held_since END,
    throttled_since = NULL
WHERE m.name = %(name)s AND m.status = %(old)s::text
RETURNING m.name"""
).format(
    migrations=MIGRATIONS,
    close=_close_open_entry(sql.SQL("m.activity")),
    **STATUS_LITERALS,
    a_job_runs=_A_JOB_RUNS,
)

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

#: A migration's jobs summed into its progress: select-list items over ``{jobs} AS j`` (the
#: migration's jobs, in a ``LATERAL`` subquery, or ``LEFT JOIN``-ed and grouped).
JOB_TOTALS = sql.SQL(
    """coalesce(sum(j.rows_affected), 0)::bigint AS rows_affected,
       coalesce(sum(j.keys_done), 0)::bigint AS keys_done,
       coalesce(sum(j.duration_seconds), 0)::float8 AS active_seconds,
       count(j.id) FILTER (WHERE j.status = {succeeded}) AS jobs_succeeded,
       count(j.id) FILTER (WHERE j.status NOT IN {settled}) AS jobs_open"""
).format(**STATUS_LITERALS, settled=SETTLED)

#: What the recent pace (:class:`~.progress.RecentPace`) is chosen from, as ``LATERAL`` subqueries
#: after ``{migrations} AS m``: the batches (jobs) that finished in the last ``recent_minutes``
#: minutes and their keys (``recent_minutes_batches``, ``recent_minutes_keys``); the last
#: ``recent_batches`` finished ones and their keys (``last_batches``, ``last_batches_keys``); when the
#: one before them finished (``last_batches_since``, NULL if none did); when the first one finished
#: and its keys (``first_batch_at``, ``first_batch_keys``, NULL if none did). Reads the jobs by
#: ``(migration_name, finished_at)``.
_RECENT_PACE = sql.SQL(
    """
CROSS JOIN LATERAL (
    SELECT count(*) AS recent_minutes_batches, coalesce(sum(r.keys_done), 0)::bigint AS recent_minutes_keys
    FROM {jobs} AS r
    WHERE r.migration_name = m.name AND r.finished_at > now() - make_interval(mins => %(recent_minutes)s::int)
) AS recent
CROSS JOIN LATERAL (
    SELECT count(*) AS last_batches, coalesce(sum(l.keys_done), 0)::bigint AS last_batches_keys
    FROM (SELECT r.keys_done FROM {jobs} AS r
          WHERE r.migration_name = m.name AND r.finished_at IS NOT NULL
          ORDER BY r.finished_at DESC LIMIT %(recent_batches)s::int) AS l
) AS last
CROSS JOIN LATERAL (
    SELECT (SELECT r.finished_at FROM {jobs} AS r
            WHERE r.migration_name = m.name AND r.finished_at IS NOT NULL
            ORDER BY r.finished_at DESC OFFSET %(recent_batches)s::int LIMIT 1) AS last_batches_since
) AS before
LEFT JOIN LATERAL (
    SELECT r.finished_at AS first_batch_at, r.keys_done AS first_batch_keys FROM {jobs} AS r
    WHERE r.migration_name = m.name AND r.finished_at IS NOT NULL
    ORDER BY r.finished_at LIMIT 1
) AS first ON true"""
).format(jobs=JOBS)

#: The columns :meth:`Progress.from_row <.progress.Progress.from_row>` reads, over ``{migrations} AS
#: m``, the job totals ``t`` and :data:`_RECENT_PACE`; ``{time_accounts}`` is
#: :data:`~.schema_queries.TIME_ACCOUNTS` or, on tables before 0.2,
#: :data:`~.schema_queries.TIME_ACCOUNTS_BEFORE_0_2`.
_PROGRESS_COLUMNS = sql.SQL(
    """m.total_rows AS total_keys, m.throttled_seconds, m.cursor_key, m.status,
       m.created_at AS started_at, now() AS read_at,
       {time_accounts}, t.*, recent.*, last.*, before.*, first.*"""
)

#: The migration's progress, in the columns :meth:`Progress.from_row <.progress.Progress.from_row>`
#: reads: ``name``, ``recent_minutes``, ``recent_batches``; one row, or none if it is not
#: registered. No lock.
PROGRESS = sql.SQL(
    """
SELECT {columns}
FROM {migrations} AS m
CROSS JOIN LATERAL (SELECT {totals} FROM {jobs} AS j WHERE j.migration_name = m.name) AS t
{recent_pace}
WHERE m.name = %(name)s"""
).format(
    columns=_PROGRESS_COLUMNS.format(time_accounts=TIME_ACCOUNTS),
    totals=JOB_TOTALS,
    migrations=MIGRATIONS,
    jobs=JOBS,
    recent_pace=_RECENT_PACE,
)

# ------------------------------------------------------------------------- the migrations page

_MIGRATION_SUMMARIES = sql.SQL(
    """
SELECT m.name, m.table_schema, m.table_name, m.column_name, m.batch_size, m.rows_per_second,
       m.throttled_since, m.last_error, m.created_at, m.updated_at, m.finished_at, {columns}
FROM {migrations} AS m
CROSS JOIN LATERAL (SELECT {totals} FROM {jobs} AS j WHERE j.migration_name = m.name) AS t
{recent_pace}
WHERE (%(dag_id)s::text IS NULL OR EXISTS (
    SELECT 1 FROM {jobs} AS f
    WHERE f.migration_name = m.name AND f.dag_id = %(dag_id)s
      AND (%(run_id)s::text IS NULL OR f.run_id = %(run_id)s)))
  AND (%(name)s::text IS NULL OR m.name = %(name)s)
ORDER BY m.status = {finished}, m.updated_at DESC, m.name
"""
)

#: The migrations with their progress (the columns of :data:`PROGRESS`) and more, unfinished first,
#: most recently updated first: ``name``, ``dag_id``, ``run_id`` (each NULL for all),
#: ``recent_minutes``, ``recent_batches``. No lock; readable with SELECT on the state tables.
MIGRATION_SUMMARIES = _MIGRATION_SUMMARIES.format(
    columns=_PROGRESS_COLUMNS.format(time_accounts=TIME_ACCOUNTS),
    totals=JOB_TOTALS,
    migrations=MIGRATIONS,
    jobs=JOBS,
    recent_pace=_RECENT_PACE,
    **STATUS_LITERALS,
)

#: The same from tables before 0.2, which no task upgraded yet: their time accounts as the upgrade
#: would seed them.
MIGRATION_SUMMARIES_BEFORE_0_2 = _MIGRATION_SUMMARIES.format(
    columns=_PROGRESS_COLUMNS.format(time_accounts=TIME_ACCOUNTS_BEFORE_0_2),
    totals=JOB_TOTALS,
    migrations=MIGRATIONS,
    jobs=JOBS,
    recent_pace=_RECENT_PACE,
    **STATUS_LITERALS,
)

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

_JOB_HISTORY = sql.SQL(
    """
SELECT * FROM (
    SELECT j.migration_name, j.finished_at AS at, j.planned_rows AS batch_size, j.pending_segments,
           j.rows_affected, j.duration_seconds, j.keys_done,
           CASE WHEN lag(j.finished_at, %(recent_batches)s::int) OVER by_finish IS NULL
                THEN sum(j.keys_done) OVER by_finish - first_value(j.keys_done) OVER by_finish
                ELSE sum(j.keys_done) OVER (by_finish ROWS BETWEEN %(recent_batches)s::int - 1 PRECEDING
                                                                AND CURRENT ROW)
           END AS recent_keys,
           extract(epoch FROM j.finished_at - coalesce(
               lag(j.finished_at, %(recent_batches)s::int) OVER by_finish,
               first_value(j.finished_at) OVER by_finish))::float8 AS recent_seconds,
           {indicator_values} AS indicator_values,
           row_number() OVER (PARTITION BY j.migration_name ORDER BY j.finished_at DESC) AS recency
    FROM {jobs} AS j
    WHERE j.migration_name = ANY(%(names)s) AND j.finished_at IS NOT NULL
    WINDOW by_finish AS (PARTITION BY j.migration_name ORDER BY j.finished_at, j.id)
) AS ranked
WHERE recency <= %(limit)s
ORDER BY migration_name, at
"""
)

#: Each named migration's last ``limit`` finished jobs, oldest first, as points of its chart (the
#: batch size, the backlog its last check saw and the numbers of every indicator that check read,
#: and the effective rate over the ``recent_batches`` batches up to it: their keys,
#: ``recent_keys``, over the wall-clock seconds since the batch before them finished,
#: ``recent_seconds``; for the first ``recent_batches`` jobs, the keys since the first job over the
#: seconds since it finished, as :class:`~.progress.RecentPace` counts them): ``names``, ``limit``,
#: ``recent_batches``. No lock.
JOB_HISTORY = _JOB_HISTORY.format(indicator_values=sql.SQL("j.indicator_values"), jobs=JOBS)

#: The same from job tables that do not keep ``indicator_values`` yet (no task upgraded them):
#: ``indicator_values`` is ``NULL``.
JOB_HISTORY_WITHOUT_INDICATOR_VALUES = _JOB_HISTORY.format(indicator_values=sql.SQL("NULL::jsonb"), jobs=JOBS)

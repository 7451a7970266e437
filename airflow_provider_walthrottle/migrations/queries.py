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

Changes of the state tables are additive and made in place: :data:`CREATE_STATE` creates the
tables as 0.1 had them, then :data:`UPGRADE_STATE` adds what came later (0.2: the time accounts,
and the numbers each job's last health check saw, by indicator) once, seeding the rows that were
there. The page reads a database whose tables were not upgraded yet (no task ran since) with
:data:`MIGRATION_SUMMARIES_BEFORE_0_2` and :data:`JOB_HISTORY_WITHOUT_INDICATOR_VALUES`.
"""

from __future__ import annotations

from psycopg import sql

from airflow_provider_walthrottle.migrations.state import (
    DEFAULT_THROTTLE_REASON,
    SETTLED_JOB_STATUSES,
    Activity,
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


def _one_of(
    statuses: type[MigrationStatus] | type[JobStatus] | type[Activity] | tuple[JobStatus, ...],
) -> sql.Composed:
    """Return ``('a', 'b', ...)``: the statuses as an SQL list of literals."""
    return sql.SQL("({})").format(sql.SQL(", ").join(sql.Literal(status) for status in statuses))


_SETTLED = _one_of(SETTLED_JOB_STATUSES)

# ------------------------------------------------------------------------------------ state tables

#: Statements that create the state tables as 0.1 had them; :data:`CREATE_STATE` runs them.
_CREATE_TABLES = (
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

#: The time accounts of a migration written before 0.2, as the upgrade seeds them: the activity its
#: status and open wait say, the closed waits as throttled by the WAL archival backlog (the only
#: signal then), the rest not recorded. Column name to expression over ``{migrations} AS m``.
_SEED_TIME_ACCOUNTS = {
    "activity": sql.SQL(
        "CASE m.status WHEN {finished} THEN {a_finished} WHEN {paused} THEN {a_paused} "
        "WHEN {failed} THEN {a_failed} ELSE CASE WHEN m.throttled_since IS NULL THEN {a_waiting} "
        "ELSE {a_throttled} END END"
    ).format(
        finished=sql.Literal(MigrationStatus.FINISHED),
        paused=sql.Literal(MigrationStatus.PAUSED),
        failed=sql.Literal(MigrationStatus.FAILED),
        a_finished=sql.Literal(Activity.FINISHED),
        a_paused=sql.Literal(Activity.PAUSED),
        a_failed=sql.Literal(Activity.FAILED),
        a_waiting=sql.Literal(Activity.WAITING),
        a_throttled=sql.Literal(Activity.THROTTLED),
    ),
    "activity_reason": sql.SQL(
        "CASE WHEN m.status = {active} AND m.throttled_since IS NOT NULL THEN {reason} END"
    ).format(active=sql.Literal(MigrationStatus.ACTIVE), reason=sql.Literal(DEFAULT_THROTTLE_REASON)),
    # paused and failed since their status last changed; an open wait since it opened
    "activity_since": sql.SQL(
        "CASE WHEN m.status = {finished} THEN coalesce(m.finished_at, m.updated_at) "
        "WHEN m.status IN ({paused}, {failed}) THEN m.updated_at "
        "ELSE coalesce(m.throttled_since, now()) END"
    ).format(
        finished=sql.Literal(MigrationStatus.FINISHED),
        paused=sql.Literal(MigrationStatus.PAUSED),
        failed=sql.Literal(MigrationStatus.FAILED),
    ),
    "held_since": sql.SQL(
        "CASE WHEN m.status = {paused} THEN m.updated_at WHEN m.status = {active} THEN m.throttled_since END"
    ).format(paused=sql.Literal(MigrationStatus.PAUSED), active=sql.Literal(MigrationStatus.ACTIVE)),
    "running_seconds": sql.SQL("0::float8"),
    "waiting_seconds": sql.SQL("0::float8"),
    "paused_seconds": sql.SQL("0::float8"),
    "failed_seconds": sql.SQL("0::float8"),
    "throttled_by": sql.SQL(
        "CASE WHEN m.throttled_seconds > 0 THEN jsonb_build_object({reason}, m.throttled_seconds) "
        "ELSE '{{}}'::jsonb END"
    ).format(reason=sql.Literal(DEFAULT_THROTTLE_REASON)),
}

#: The time accounts' columns, as the page selects them from upgraded tables.
_TIME_ACCOUNTS = sql.SQL(", ").join(
    sql.SQL("m.{}").format(sql.Identifier(name)) for name in _SEED_TIME_ACCOUNTS
)

#: The same from tables not upgraded yet: what the upgrade would seed.
_TIME_ACCOUNTS_BEFORE_0_2 = sql.SQL(", ").join(
    sql.SQL("{} AS {}").format(expression, sql.Identifier(name))
    for name, expression in _SEED_TIME_ACCOUNTS.items()
)

#: Bring state tables of 0.1 up to date, in place, one step at a time; each step runs once, and
#: later runs only read the catalog for it, so they take no lock:
#:
#: - the time accounts (0.2): add them to ``batched_migrations``, seed its rows, and index the jobs
#:   by their finish (the recent pace reads the last ones);
#: - the numbers each job's last health check saw, by indicator (0.2): ``indicator_values``, a
#:   ``jsonb`` column of the jobs, ``{"replication_lag": {"max_replay_lag_bytes": 1024, ...}, ...}``
#:   (see :data:`NOTE_JOB_READINGS`); ``NULL`` on the jobs before it.
#:
#: Run after the tables are created, in the same transaction (:data:`CREATE_STATE`). Needs
#: ownership of the state tables.
UPGRADE_STATE = sql.SQL(
    """
DO $upgrade$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute
                   WHERE attrelid = {migrations_name}::regclass AND attname = 'activity'
                     AND NOT attisdropped) THEN
        ALTER TABLE {migrations}
            ADD COLUMN activity text CHECK (activity IN {activities}),
            ADD COLUMN activity_reason text,
            ADD COLUMN activity_since timestamptz,
            ADD COLUMN held_since timestamptz,
            ADD COLUMN running_seconds double precision NOT NULL DEFAULT 0,
            ADD COLUMN waiting_seconds double precision NOT NULL DEFAULT 0,
            ADD COLUMN paused_seconds double precision NOT NULL DEFAULT 0,
            ADD COLUMN failed_seconds double precision NOT NULL DEFAULT 0,
            ADD COLUMN throttled_by jsonb NOT NULL DEFAULT '{{}}';
        UPDATE {migrations} AS m SET {seed};
        -- rows a worker of 0.1 inserts from now on: waiting, from their start
        ALTER TABLE {migrations}
            ALTER COLUMN activity SET DEFAULT {waiting},
            ALTER COLUMN activity_since SET DEFAULT now();
        CREATE INDEX IF NOT EXISTS {finished_index} ON {jobs} (migration_name, finished_at);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute
                   WHERE attrelid = {jobs_name}::regclass AND attname = 'indicator_values'
                     AND NOT attisdropped) THEN
        ALTER TABLE {jobs} ADD COLUMN indicator_values jsonb;
    END IF;
END
$upgrade$"""
).format(
    migrations_name=sql.Literal(f"{STATE_SCHEMA}.batched_migrations"),
    jobs_name=sql.Literal(f"{STATE_SCHEMA}.batched_migration_jobs"),
    migrations=MIGRATIONS,
    jobs=JOBS,
    activities=_one_of(Activity),
    seed=sql.SQL(", ").join(
        sql.SQL("{} = {}").format(sql.Identifier(name), expression)
        for name, expression in _SEED_TIME_ACCOUNTS.items()
    ),
    waiting=sql.Literal(Activity.WAITING),
    finished_index=sql.Identifier("batched_migration_jobs_migration_finished_idx"),
)

#: Serializes the creation of the state tables: a transaction-scoped advisory lock.
LOCK_STATE_CREATION = sql.SQL("SELECT pg_advisory_xact_lock({}, 0)").format(sql.Literal(LOCK_NAMESPACE))

#: Statements that create the state tables, or bring them up to date; run under
#: :data:`LOCK_STATE_CREATION` so that concurrent first runs do not race on the catalog. Needs
#: CREATE on the database (and, to upgrade tables of 0.1, their ownership).
CREATE_STATE = (*_CREATE_TABLES, UPGRADE_STATE)

#: One row: whether both state tables exist (``exist``), whether they keep time accounts
#: (``upgraded``: 0.2 or later), and whether the jobs keep their last check's numbers by indicator
#: (``indicator_values``). No lock; readable by any role.
STATE_TABLES_EXIST = sql.SQL(
    """
SELECT to_regclass({migrations}) IS NOT NULL AND to_regclass({jobs}) IS NOT NULL AS exist,
       EXISTS (SELECT 1 FROM pg_catalog.pg_attribute
               WHERE attrelid = to_regclass({migrations}) AND attname = 'activity' AND NOT attisdropped)
       AS upgraded,
       EXISTS (SELECT 1 FROM pg_catalog.pg_attribute
               WHERE attrelid = to_regclass({jobs}) AND attname = 'indicator_values' AND NOT attisdropped)
       AS indicator_values"""
).format(
    migrations=sql.Literal(f"{STATE_SCHEMA}.batched_migrations"),
    jobs=sql.Literal(f"{STATE_SCHEMA}.batched_migration_jobs"),
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
    finished=sql.Literal(MigrationStatus.FINISHED),
    active=sql.Literal(MigrationStatus.ACTIVE),
    a_finished=sql.Literal(Activity.FINISHED),
    a_waiting=sql.Literal(Activity.WAITING),
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
    active=sql.Literal(MigrationStatus.ACTIVE),
    paused=sql.Literal(MigrationStatus.PAUSED),
    failed=sql.Literal(MigrationStatus.FAILED),
    finished=sql.Literal(MigrationStatus.FINISHED),
    a_paused=sql.Literal(Activity.PAUSED),
    a_failed=sql.Literal(Activity.FAILED),
    a_finished=sql.Literal(Activity.FINISHED),
    a_running=sql.Literal(Activity.RUNNING),
    a_waiting=sql.Literal(Activity.WAITING),
    a_throttled=sql.Literal(Activity.THROTTLED),
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
    paused=sql.Literal(MigrationStatus.PAUSED),
    a_paused=sql.Literal(Activity.PAUSED),
    a_running=sql.Literal(Activity.RUNNING),
    a_waiting=sql.Literal(Activity.WAITING),
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
).format(succeeded=sql.Literal(JobStatus.SUCCEEDED), settled=_SETTLED)

#: What the recent pace (:class:`~.state.RecentPace`) is chosen from, as ``LATERAL`` subqueries
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

#: The columns :meth:`Progress.from_row <.state.Progress.from_row>` reads, over ``{migrations} AS
#: m``, the job totals ``t`` and :data:`_RECENT_PACE`; ``{time_accounts}`` is :data:`_TIME_ACCOUNTS`
#: or, on tables before 0.2, :data:`_TIME_ACCOUNTS_BEFORE_0_2`.
_PROGRESS_COLUMNS = sql.SQL(
    """m.total_rows AS total_keys, m.throttled_seconds, m.cursor_key, m.status,
       m.created_at AS started_at, now() AS read_at,
       {time_accounts}, t.*, recent.*, last.*, before.*, first.*"""
)

#: The migration's progress, in the columns :meth:`Progress.from_row <.state.Progress.from_row>`
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
    columns=_PROGRESS_COLUMNS.format(time_accounts=_TIME_ACCOUNTS),
    totals=JOB_TOTALS,
    migrations=MIGRATIONS,
    jobs=JOBS,
    recent_pace=_RECENT_PACE,
)

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
    columns=_PROGRESS_COLUMNS.format(time_accounts=_TIME_ACCOUNTS),
    totals=JOB_TOTALS,
    migrations=MIGRATIONS,
    jobs=JOBS,
    recent_pace=_RECENT_PACE,
    finished=sql.Literal(MigrationStatus.FINISHED),
)

#: The same from tables before 0.2, which no task upgraded yet: their time accounts as the upgrade
#: would seed them.
MIGRATION_SUMMARIES_BEFORE_0_2 = _MIGRATION_SUMMARIES.format(
    columns=_PROGRESS_COLUMNS.format(time_accounts=_TIME_ACCOUNTS_BEFORE_0_2),
    totals=JOB_TOTALS,
    migrations=MIGRATIONS,
    jobs=JOBS,
    recent_pace=_RECENT_PACE,
    finished=sql.Literal(MigrationStatus.FINISHED),
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
#: seconds since it finished, as :class:`~.state.RecentPace` counts them): ``names``, ``limit``,
#: ``recent_batches``. No lock.
JOB_HISTORY = _JOB_HISTORY.format(indicator_values=sql.SQL("j.indicator_values"), jobs=JOBS)

#: The same from job tables that do not keep ``indicator_values`` yet (no task upgraded them):
#: ``indicator_values`` is ``NULL``.
JOB_HISTORY_WITHOUT_INDICATOR_VALUES = _JOB_HISTORY.format(indicator_values=sql.SQL("NULL::jsonb"), jobs=JOBS)

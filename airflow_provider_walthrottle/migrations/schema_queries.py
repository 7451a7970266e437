"""The SQL that creates the provider's state tables (schema ``walthrottle``) and upgrades them.

The identifiers every query over the state tables composes (:data:`STATE_SCHEMA`, ``MIGRATIONS``,
``JOBS``, the advisory locks' :data:`LOCK_NAMESPACE`) are here too. The queries that run on the
tables are in :mod:`~airflow_provider_walthrottle.migrations.queries` (the migrations, their time
accounts and progress, the page's summaries) and
:mod:`~airflow_provider_walthrottle.migrations.job_queries` (the job queue).

Changes of the state tables are additive and made in place: :data:`CREATE_STATE` creates the
tables as 0.1 had them, then :data:`UPGRADE_STATE` adds what came later (0.2: the time accounts,
and the numbers each job's last health check saw, by indicator) once, seeding the rows that were
there. The page reads a database whose tables were not upgraded yet (no task ran since) with
:data:`TIME_ACCOUNTS_BEFORE_0_2` (in
:data:`~airflow_provider_walthrottle.migrations.queries.MIGRATION_SUMMARIES_BEFORE_0_2`) and
:data:`~airflow_provider_walthrottle.migrations.queries.JOB_HISTORY_WITHOUT_INDICATOR_VALUES`.

The state tables keep their first names ``total_rows`` and ``planned_rows``, although both count
keys: renaming them would need a migration of every existing state table. The queries read them
``AS total_keys`` and ``AS planned_keys``.
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

#: First key of every advisory lock the provider takes ('WALT'); the second key is a job id, 0 for
#: the creation of the state tables, or -1 for a grant of the shared WAL budget.
LOCK_NAMESPACE = 0x57414C54

MIGRATIONS = sql.Identifier(STATE_SCHEMA, "batched_migrations")
JOBS = sql.Identifier(STATE_SCHEMA, "batched_migration_jobs")
PLANS = sql.Identifier(STATE_SCHEMA, "batched_migration_plans")
WAL_RESERVATIONS = sql.Identifier(STATE_SCHEMA, "wal_reservations")


def one_of(
    statuses: type[MigrationStatus] | type[JobStatus] | type[Activity] | tuple[JobStatus, ...],
) -> sql.Composed:
    """Return ``('a', 'b', ...)``: the statuses as an SQL list of literals."""
    return sql.SQL("({})").format(sql.SQL(", ").join(sql.Literal(status) for status in statuses))


#: The statuses of :data:`~.state.SETTLED_JOB_STATUSES`, as an SQL list of literals.
SETTLED = one_of(SETTLED_JOB_STATUSES)

#: The statuses and activities by the names the statements' placeholders give them: ``{active}``,
#: ``{paused}``, ``{finished}``, ``{failed}`` (a migration's status; a job's ``failed`` is the same
#: text), ``{succeeded}`` (a job's), and ``{a_running}``, ``{a_waiting}``… (a migration's
#: activity). A statement takes them with ``.format(**STATUS_LITERALS, …)``; those it does not
#: name are ignored.
STATUS_LITERALS = {
    **{status.value: sql.Literal(status) for status in MigrationStatus},
    **{f"a_{activity.value}": sql.Literal(activity) for activity in Activity},
    "succeeded": sql.Literal(JobStatus.SUCCEEDED),
}

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
        **STATUS_LITERALS,
        migration_statuses=one_of(MigrationStatus),
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
    ).format(jobs=JOBS, migrations=MIGRATIONS, job_statuses=one_of(JobStatus)),
    sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (migration_name, status)").format(
        sql.Identifier("batched_migration_jobs_migration_status_idx"), JOBS
    ),
    # the plans of migrations, by name (0.2); no foreign key: a plan may be saved before its migration
    sql.SQL(
        """
CREATE TABLE IF NOT EXISTS {} (
    migration_name text PRIMARY KEY,
    fingerprint text NOT NULL,
    plan jsonb NOT NULL,
    planned_at timestamptz NOT NULL DEFAULT now()
)"""
    ).format(PLANS),
    # the WAL each running batch may still write (0.2; see wal_budget): unlogged, so that keeping
    # the budget writes no WAL of its own; a crash ends every holder, and empties it
    sql.SQL(
        """
CREATE UNLOGGED TABLE IF NOT EXISTS {} (
    job_id bigint PRIMARY KEY,
    migration_name text NOT NULL,
    backend_pid integer NOT NULL,
    bytes bigint NOT NULL CHECK (bytes >= 0),
    reserved_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
)"""
    ).format(WAL_RESERVATIONS),
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
        **STATUS_LITERALS,
    ),
    "activity_reason": sql.SQL(
        "CASE WHEN m.status = {active} AND m.throttled_since IS NOT NULL THEN {reason} END"
    ).format(**STATUS_LITERALS, reason=sql.Literal(DEFAULT_THROTTLE_REASON)),
    # paused and failed since their status last changed; an open wait since it opened
    "activity_since": sql.SQL(
        "CASE WHEN m.status = {finished} THEN coalesce(m.finished_at, m.updated_at) "
        "WHEN m.status IN ({paused}, {failed}) THEN m.updated_at "
        "ELSE coalesce(m.throttled_since, now()) END"
    ).format(
        **STATUS_LITERALS,
    ),
    "held_since": sql.SQL(
        "CASE WHEN m.status = {paused} THEN m.updated_at WHEN m.status = {active} THEN m.throttled_since END"
    ).format(**STATUS_LITERALS),
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
TIME_ACCOUNTS = sql.SQL(", ").join(
    sql.SQL("m.{}").format(sql.Identifier(name)) for name in _SEED_TIME_ACCOUNTS
)

#: The same from tables not upgraded yet: what the upgrade would seed.
TIME_ACCOUNTS_BEFORE_0_2 = sql.SQL(", ").join(
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
#:   (see :data:`~.job_queries.NOTE_JOB_READINGS`); ``NULL`` on the jobs before it.
#:
#: A table added later needs no step here: :data:`CREATE_STATE` creates each table ``IF NOT
#: EXISTS`` every time it runs (at every task's start), so existing installs get it then.
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
            ALTER COLUMN activity SET DEFAULT {a_waiting},
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
    activities=one_of(Activity),
    seed=sql.SQL(", ").join(
        sql.SQL("{} = {}").format(sql.Identifier(name), expression)
        for name, expression in _SEED_TIME_ACCOUNTS.items()
    ),
    **STATUS_LITERALS,
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

"""The SQL of batched migrations: the provider's state tables and the queries over them.

Identifiers are composed with :class:`psycopg.sql.Identifier`, values are bound parameters. The
DAG author's own SQL (``batch_sql`` and ``scope``) is trusted code, like the ``sql`` of
``SQLExecuteQueryOperator``; it is composed as :class:`psycopg.sql.SQL`.
"""

from __future__ import annotations

from psycopg import sql

#: The schema that holds the provider's state tables in the target database.
STATE_SCHEMA = "walthrottle"

#: First key of every advisory lock the provider takes ('WALT'); the second key is a job id, or 0
#: for the creation of the state tables.
LOCK_NAMESPACE = 0x57414C54

MIGRATIONS = sql.Identifier(STATE_SCHEMA, "batched_migrations")
JOBS = sql.Identifier(STATE_SCHEMA, "batched_migration_jobs")

#: Statements that create the state tables; run under ``pg_advisory_xact_lock(LOCK_NAMESPACE, 0)``
#: so that concurrent first runs do not race on the catalog. Needs CREATE on the database.
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
    status text NOT NULL DEFAULT 'active'
        CHECK (status IN ('active', 'paused', 'finished', 'failed')),
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
    ).format(migrations=MIGRATIONS),
    sql.SQL(
        """
CREATE TABLE IF NOT EXISTS {jobs} (
    id bigserial PRIMARY KEY,
    migration_name text NOT NULL REFERENCES {migrations} (name) ON DELETE CASCADE,
    start_key text NOT NULL,
    end_key text NOT NULL,
    planned_rows integer NOT NULL,
    resume_key text,
    status text NOT NULL
        CHECK (status IN ('pending', 'running', 'paused', 'succeeded', 'failed', 'split')),
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
    ).format(jobs=JOBS, migrations=MIGRATIONS),
    sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (migration_name, status)").format(
        sql.Identifier("batched_migration_jobs_migration_status_idx"), JOBS
    ),
)

#: Pause an active migration or resume a paused one: ``[new status, name, old status]``; returns
#: the name when the row changed.
SET_STATUS = sql.SQL(
    "UPDATE {} SET status = %s, updated_at = now() WHERE name = %s AND status = %s RETURNING name"
).format(MIGRATIONS)

#: Note the WAL backlog a job's last health check saw: ``[pending segments, job id]``.
NOTE_JOB_BACKLOG = sql.SQL("UPDATE {} SET pending_segments = %s WHERE id = %s").format(JOBS)

#: A migration's jobs summed into its progress: select-list items over ``{migrations} AS m LEFT JOIN
#: {jobs} AS j ON j.migration_name = m.name ... GROUP BY m.name``.
JOB_TOTALS = sql.SQL(
    """coalesce(sum(j.rows_affected), 0)::bigint AS rows_affected,
       coalesce(sum(j.keys_done), 0)::bigint AS keys_done,
       coalesce(sum(j.duration_seconds), 0)::float8 AS active_seconds,
       count(j.id) FILTER (WHERE j.status = 'succeeded') AS jobs_succeeded,
       count(j.id) FILTER (WHERE j.status NOT IN ('succeeded', 'split')) AS jobs_open"""
)

#: Record a sub-batch on its job, in the sub-batch's transaction, and return the WAL bytes written
#: since ``%(wal_before)s`` (0 when NULL): the WAL position is read before this row's own change.
RECORD_SUB_BATCH = sql.SQL(
    """
WITH written AS (
    SELECT coalesce((pg_current_wal_insert_lsn() - %(wal_before)s::pg_lsn)::bigint, 0) AS wal_bytes
)
UPDATE {jobs} SET resume_key = coalesce(%(last)s, resume_key), rows_affected = rows_affected + %(rows)s,
       keys_done = keys_done + %(keys)s, sub_batches = sub_batches + %(one)s,
       duration_seconds = duration_seconds + %(seconds)s,
       wal_bytes = {jobs}.wal_bytes + written.wal_bytes,
       status = CASE WHEN %(finished)s THEN 'succeeded' ELSE status END,
       finished_at = CASE WHEN %(finished)s THEN now() END
FROM written
WHERE id = %(id)s
RETURNING written.wal_bytes"""
).format(jobs=JOBS)

#: One row if the migration is registered: ``[name]``.
MIGRATION_EXISTS = sql.SQL("SELECT 1 FROM {} WHERE name = %s").format(MIGRATIONS)

#: Fail a migration with its reason: ``[error, name]``. Takes the migration's row lock.
FAIL_MIGRATION = sql.SQL(
    "UPDATE {} SET status = 'failed', last_error = %s, updated_at = now() WHERE name = %s"
).format(MIGRATIONS)

#: Stop the jobs still ``running`` under a migration that failed: ``[reason, name]``; they become
#: ``paused`` (they resume where they stopped, without an attempt used, once the migration is
#: active again) and a live worker stops at its next sub-batch. Takes the jobs' row locks.
STOP_RUNNING_JOBS = sql.SQL(
    "UPDATE {} SET status = 'paused', last_error = %s WHERE migration_name = %s AND status = 'running'"
).format(JOBS)

#: Mark a job this session holds ``failed`` with its reason: ``[error, id]``. Returns nothing.
FAIL_JOB = sql.SQL(
    "UPDATE {} SET status = 'failed', last_error = %s WHERE id = %s AND status = 'running'"
).format(JOBS)

#: A job's status and error with its migration's: ``[id]``; one row (``job_status``,
#: ``job_error``, ``migration_status``, ``migration_error``), or none if the job is gone.
JOB_AND_MIGRATION_STATUS = sql.SQL(
    """
SELECT j.status AS job_status, j.last_error AS job_error, m.status AS migration_status,
       m.last_error AS migration_error
FROM {jobs} AS j JOIN {migrations} AS m ON m.name = j.migration_name
WHERE j.id = %s"""
).format(jobs=JOBS, migrations=MIGRATIONS)

#: Serializes the creation of the state tables (transaction-scoped).
LOCK_STATE_CREATION = sql.SQL("SELECT pg_advisory_xact_lock({}, 0)").format(sql.Literal(LOCK_NAMESPACE))

#: One row describing the key column, or no row if the table does not exist (its column fields are
#: NULL when the column does not). Readable by any role.
KEY_COLUMN = sql.SQL(
    """
SELECT a.attname AS column_name,
       t.typname AS type_name,
       a.attnotnull AS not_null,
       EXISTS (
           SELECT 1 FROM pg_catalog.pg_index AS i
           WHERE i.indrelid = c.oid AND i.indisvalid AND i.indpred IS NULL AND i.indkey[0] = a.attnum
       ) AS indexed,
       EXISTS (
           SELECT 1 FROM pg_catalog.pg_index AS i
           WHERE i.indrelid = c.oid AND i.indisvalid AND i.indisunique AND i.indpred IS NULL
             AND i.indnkeyatts = 1 AND i.indkey[0] = a.attnum
       ) AS unique_indexed,
       coalesce(coll.collisdeterministic, true) AS deterministic_collation
FROM pg_catalog.pg_class AS c
JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
LEFT JOIN pg_catalog.pg_attribute AS a
       ON a.attrelid = c.oid AND a.attname = %(column)s AND a.attnum > 0 AND NOT a.attisdropped
LEFT JOIN pg_catalog.pg_type AS t ON t.oid = a.atttypid
LEFT JOIN pg_catalog.pg_collation AS coll ON coll.oid = a.attcollation
WHERE n.nspname = %(schema)s AND c.relname = %(table)s AND c.relkind IN ('r', 'p')
"""
)


def scope_condition(scope: str | None) -> sql.Composable:
    """Return ``AND (<scope>)``, or nothing.

    :param scope: the DAG author's SQL condition.
    """
    return sql.SQL(" AND ({})").format(sql.SQL(scope)) if scope else sql.SQL("")


def key_bounds(table: sql.Identifier, column: sql.Identifier, scope: str | None) -> sql.Composed:
    """Return a query for the first and last key (as text) and the row count, within the scope.

    :param table: the table.
    :param column: the key column.
    :param scope: the DAG author's SQL condition.
    """
    return sql.SQL(
        """
SELECT (SELECT {col} FROM {table} WHERE true{scope} ORDER BY {col} LIMIT 1)::text,
       (SELECT {col} FROM {table} WHERE true{scope} ORDER BY {col} DESC LIMIT 1)::text,
       (SELECT count(*) FROM {table} WHERE true{scope})
"""
    ).format(col=column, table=table, scope=scope_condition(scope))


#: Key types whose range ends ``min``/``max`` find in one pass; uuid has no ``min``/``max``.
MIN_MAX_KEY_TYPES = frozenset({"int2", "int4", "int8", "text", "varchar"})


def next_range(
    table: sql.Identifier,
    column: sql.Identifier,
    scope: str | None,
    *,
    inclusive: bool,
    key_type: str | None = None,
    wal_position: bool = False,
) -> sql.Composed:
    """Return a query for the next range of at most ``%(rows)s`` keys after ``%(after)s``, up to ``%(last)s``.

    It returns the range's ``first`` and ``last`` key (as text), its number of ``keys`` and
    ``in_range``, walking the key's unique index; ``inclusive`` makes the range start at
    ``%(after)s`` itself. ``in_range`` is false when a key it found lies outside the bounds (by the
    key's own type and collation): a scope that escapes its ``AND (...)`` did that, and the range
    must not be used.
    ``%(rows)s`` NULL means no limit. The ends come from ``min``/``max`` for the key types in
    :data:`MIN_MAX_KEY_TYPES` (one pass, no sort), else from sorted ``array_agg`` (uuid).

    :param table: the table.
    :param column: the key column.
    :param scope: the DAG author's SQL condition.
    :param inclusive: whether ``%(after)s`` itself belongs to the range.
    :param key_type: the key column's type name, e.g. ``int8``.
    :param wal_position: also return ``wal_position``, the WAL insert position (as text), read with
        the range, so that a sub-batch needs no round trip of its own for it.
    """
    if key_type in MIN_MAX_KEY_TYPES:
        ends = sql.SQL("min(k)::text AS first, max(k)::text AS last")
    else:
        ends = sql.SQL(
            "((array_agg(k ORDER BY k))[1])::text AS first, ((array_agg(k ORDER BY k DESC))[1])::text AS last"
        )
    position = sql.SQL(", pg_current_wal_insert_lsn()::text AS wal_position") if wal_position else sql.SQL("")
    return sql.SQL(
        """
SELECT {ends}, count(*) AS keys,
       coalesce(bool_and(k {op} %(after)s AND k <= %(last)s), true) AS in_range{position}
FROM (
    SELECT {col} AS k FROM {table}
    WHERE {col} {op} %(after)s AND {col} <= %(last)s{scope}
    ORDER BY {col}
    LIMIT %(rows)s
) AS planned
"""
    ).format(
        ends=ends,
        position=position,
        col=column,
        table=table,
        op=sql.SQL(">=" if inclusive else ">"),
        scope=scope_condition(scope),
    )

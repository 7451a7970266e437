"""The SQL of a migration's plan: its table's size, its sample keys, its archiver, its warnings.

Identifiers are composed with :class:`psycopg.sql.Identifier`, values are bound parameters, and the
DAG author's ``scope`` is trusted code composed as :class:`psycopg.sql.SQL`, as in
:mod:`~airflow_provider_walthrottle.migrations.table_queries`, whose key column, key bounds, range
and statement queries the plan reuses. Every query here reads; none takes a lock beyond
``AccessShareLock`` on the tables it names. The plan's sample runs ``batch_sql`` itself, in a
transaction it rolls back (see :func:`~airflow_provider_walthrottle.migrations.plan.compute_plan`).
"""

from __future__ import annotations

from psycopg import sql

from airflow_provider_walthrottle.migrations.table_queries import scope_condition

#: One row: the planner's row count of the table (``reltuples``; -1 before its first ``ANALYZE`` or
#: ``VACUUM``) and its size in bytes, or no row if the table does not exist. Readable by any role.
TABLE_SIZE = sql.SQL(
    """
SELECT c.reltuples::float8 AS reltuples, pg_catalog.pg_table_size(c.oid) AS table_bytes
FROM pg_catalog.pg_class AS c
JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s AND c.relname = %(table)s
"""
)

#: One row: the server's ``wal_segment_size`` in bytes, and whether it is a standby. Readable by any role.
WAL_SETTINGS = sql.SQL(
    """
SELECT pg_size_bytes(current_setting('wal_segment_size')) AS wal_segment_size,
       pg_is_in_recovery() AS in_recovery
"""
)

#: One row of the archiver's counters, with the server's clock: sampled twice, they give its pace.
#: ``pg_stat_archiver`` is readable by any role.
ARCHIVER_COUNTERS = sql.SQL(
    """
SELECT archived_count, failed_count, last_archived_time, clock_timestamp() AS now,
       current_setting('archive_mode') AS archive_mode
FROM pg_catalog.pg_stat_archiver
"""
)

#: One row: the WAL insert position, as text. Readable by any role.
WAL_INSERT_POSITION = sql.SQL("SELECT pg_current_wal_insert_lsn()::text")

#: One row: the bytes of WAL between two positions (``%(after)s`` minus ``%(before)s``).
WAL_BYTES_BETWEEN = sql.SQL("SELECT pg_wal_lsn_diff(%(after)s::pg_lsn, %(before)s::pg_lsn)::bigint")

#: A row per user trigger on the table (``%(schema)s``, ``%(table)s``): its name and whether it is
#: enabled. Foreign keys' internal triggers are left out: :data:`FOREIGN_KEYS` reports them.
TRIGGERS = sql.SQL(
    """
SELECT t.tgname AS name, t.tgenabled <> 'D' AS enabled
FROM pg_catalog.pg_trigger AS t
JOIN pg_catalog.pg_class AS c ON c.oid = t.tgrelid
JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s AND c.relname = %(table)s AND NOT t.tgisinternal
ORDER BY t.tgname
"""
)

#: A row per foreign key that touches the table (``%(schema)s``, ``%(table)s``): its name, whether
#: the table is the ``referencing`` side (each inserted row, and each row whose key columns change, is
#: checked against the other table) or the referenced one (each deleted row, and each changed
#: referenced key, is looked up in the other table), the other table, and whether the referencing
#: columns lead an index there (without one, each lookup scans it).
FOREIGN_KEYS = sql.SQL(
    """
SELECT con.conname AS name,
       con.conrelid = c.oid AS referencing,
       CASE WHEN con.conrelid = c.oid THEN con.confrelid ELSE con.conrelid END::regclass::text AS other,
       EXISTS (
           SELECT 1 FROM pg_catalog.pg_index AS i
           WHERE i.indrelid = con.conrelid AND i.indisvalid
             AND (i.indkey::int2[])[0:cardinality(con.conkey) - 1] @> con.conkey
       ) AS referencing_indexed
FROM pg_catalog.pg_class AS c
JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_constraint AS con ON con.contype = 'f' AND c.oid IN (con.conrelid, con.confrelid)
WHERE n.nspname = %(schema)s AND c.relname = %(table)s
ORDER BY con.conname
"""
)

#: The names of the table's partial indexes (``%(schema)s``, ``%(table)s``), which can serve a scope
#: without an index condition.
PARTIAL_INDEXES = sql.SQL(
    """
SELECT ic.relname
FROM pg_catalog.pg_index AS i
JOIN pg_catalog.pg_class AS ic ON ic.oid = i.indexrelid
JOIN pg_catalog.pg_class AS c ON c.oid = i.indrelid
JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s AND c.relname = %(table)s AND i.indisvalid AND i.indpred IS NOT NULL
"""
)

#: Make the planner avoid sequential scans for the rest of the transaction, so that the plan of the
#: scope shows whether an index can serve it.
AVOID_SEQUENTIAL_SCANS = sql.SQL("SET LOCAL enable_seqscan = off")


def scope_plan(table: sql.Identifier, column: sql.Identifier, scope: str) -> sql.Composed:
    """Return ``EXPLAIN (FORMAT JSON)`` of the rows in scope: it runs nothing.

    :param table: the table.
    :param column: the key column.
    :param scope: the DAG author's SQL condition.
    """
    return sql.SQL("EXPLAIN (FORMAT JSON) SELECT {col} FROM {table} WHERE true{scope}").format(
        col=column, table=table, scope=scope_condition(scope)
    )


def scope_share(table: sql.Identifier, scope: str | None) -> sql.Composed:
    """Return a query for the rows of a page sample of the table (``TABLESAMPLE SYSTEM
    (%(percent)s)``), and how many of them are in scope: their ratio, times ``reltuples``, estimates
    the rows in scope where the planner cannot (it guesses 0.5 %% for a condition on an expression).

    :param table: the table.
    :param scope: the DAG author's SQL condition.
    """
    return sql.SQL(
        "SELECT count(*) AS sampled, count(*) FILTER (WHERE true{scope}) AS in_scope "
        "FROM {table} TABLESAMPLE SYSTEM (%(percent)s)"
    ).format(table=table, scope=scope_condition(scope))


def estimated_rows(table: sql.Identifier, scope: str | None) -> sql.Composed:
    """Return ``EXPLAIN (FORMAT JSON)`` of the rows in scope: the planner's estimate (its top node's
    ``Plan Rows``), without running it.

    :param table: the table.
    :param scope: the DAG author's SQL condition.
    """
    return sql.SQL("EXPLAIN (FORMAT JSON) SELECT 1 FROM {table} WHERE true{scope}").format(
        table=table, scope=scope_condition(scope)
    )


def key_ends(table: sql.Identifier, column: sql.Identifier, scope: str | None) -> sql.Composed:
    """Return a query for the first and last key in scope (as text), two probes of the key's index.

    :param table: the table.
    :param column: the key column.
    :param scope: the DAG author's SQL condition.
    """
    return sql.SQL(
        """
SELECT (SELECT {col} FROM {table} WHERE true{scope} ORDER BY {col} LIMIT 1)::text,
       (SELECT {col} FROM {table} WHERE true{scope} ORDER BY {col} DESC LIMIT 1)::text
"""
    ).format(col=column, table=table, scope=scope_condition(scope))


def sample_starts(
    table: sql.Identifier, column: sql.Identifier, scope: str | None, *, sampled: bool
) -> sql.Composed:
    """Return a query for the keys (as text) at the fractions ``%(fractions)s`` of the keys in scope.

    ``percentile_disc`` over the key, in the key's own order; ``sampled`` reads
    ``TABLESAMPLE SYSTEM (%(percent)s)`` (a share of the table's pages) instead of every row, for a
    table too large to read whole.

    :param table: the table.
    :param column: the key column.
    :param scope: the DAG author's SQL condition.
    :param sampled: read a sample of the table's pages.
    """
    sample = sql.SQL(" TABLESAMPLE SYSTEM (%(percent)s)") if sampled else sql.SQL("")
    return sql.SQL(
        """
SELECT unnest(percentile_disc(%(fractions)s::float8[]) WITHIN GROUP (ORDER BY {col}))::text
FROM {table}{sample} WHERE true{scope}
"""
    ).format(col=column, table=table, sample=sample, scope=scope_condition(scope))


def set_lock_timeout(milliseconds: int) -> sql.Composed:
    """Return ``SET LOCAL lock_timeout``: for the rest of the transaction.

    :param milliseconds: the timeout, above 0.
    """
    return sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(f"{milliseconds}ms"))

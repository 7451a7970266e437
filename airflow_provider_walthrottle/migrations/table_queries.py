"""The SQL over the migration's own table: its key column, its key bounds, its ranges, its statement.

Identifiers are composed with :class:`psycopg.sql.Identifier`, values are bound parameters. The
DAG author's own SQL (``batch_sql`` and ``scope``) is trusted code, like the ``sql`` of
``SQLExecuteQueryOperator``; it is composed as :class:`psycopg.sql.SQL`. The statements over the
provider's state tables are in :mod:`~airflow_provider_walthrottle.migrations.queries`.
"""

from __future__ import annotations

from psycopg import sql

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


def next_range(
    table: sql.Identifier,
    column: sql.Identifier,
    scope: str | None,
    *,
    inclusive: bool,
    wal_position: bool = False,
) -> sql.Composed:
    """Return a query for the next range of at most ``%(rows)s`` keys after ``%(after)s``, up to ``%(last)s``.

    It returns the range's ``first`` and ``last`` key (as text), its number of ``keys`` and
    ``in_range``; ``inclusive`` makes the range start at ``%(after)s`` itself. ``in_range`` is
    false when a key it found lies outside the bounds (by the key's own type and collation): a
    scope that escapes its ``AND (...)`` did that, and the range must not be used. ``%(rows)s``
    NULL means no limit.

    It walks the key's unique index without aggregating the keys it passes: ``first`` is the first
    key, and ``last`` the ``%(rows)s``-th, found by ``OFFSET``, so a full range costs one index
    probe and one walk of its keys, and ``keys`` is ``%(rows)s``. Only a range cut short by
    ``%(last)s`` (a job's last) counts its keys and takes its last key from the end of the index.
    Keys come in the index's order, which is the key type's and collation's, so the range's keys
    all lie in the bounds exactly when its two ends do. All of it reads one snapshot. No lock
    beyond ``AccessShareLock`` on the table.

    :param table: the table.
    :param column: the key column.
    :param scope: the DAG author's SQL condition.
    :param inclusive: whether ``%(after)s`` itself belongs to the range.
    :param wal_position: also return ``wal_position``, the WAL insert position (as text), read with
        the range, so that a sub-batch needs no round trip of its own for it.
    """
    position = sql.SQL(", pg_current_wal_insert_lsn()::text AS wal_position") if wal_position else sql.SQL("")
    keys = sql.SQL("FROM {table} WHERE {col} {op} %(after)s AND {col} <= %(last)s{scope}").format(
        table=table, col=column, op=sql.SQL(">=" if inclusive else ">"), scope=scope_condition(scope)
    )
    # MATERIALIZED: each probe runs once, and the tail's count only when there is no nth key
    return sql.SQL(
        """
WITH probes AS MATERIALIZED (
    SELECT (SELECT {col} {keys} ORDER BY {col} LIMIT 1) AS first,
           (SELECT {col} {keys} ORDER BY {col}
            OFFSET coalesce(%(rows)s::bigint - 1, 0)
            LIMIT CASE WHEN %(rows)s::bigint IS NULL THEN 0 ELSE 1 END) AS nth
), ends AS MATERIALIZED (
    SELECT first,
           coalesce(nth, (SELECT {col} {keys} ORDER BY {col} DESC LIMIT 1)) AS last,
           CASE WHEN nth IS NULL THEN (SELECT count(*) {keys}) ELSE %(rows)s::bigint END AS keys
    FROM probes
)
SELECT first::text AS first, last::text AS last, keys,
       coalesce(first {op} %(after)s AND last <= %(last)s, true) AS in_range{position}
FROM ends
"""
    ).format(col=column, keys=keys, op=sql.SQL(">=" if inclusive else ">"), position=position)


def explain(batch_sql: str) -> sql.Composed:
    """Return ``EXPLAIN <batch_sql>``: it plans the statement, to catch its errors, and runs nothing.

    Bind ``start`` and ``end`` as for the statement itself. Takes no lock beyond the statement's
    planning (``AccessShareLock`` on the tables it names).

    :param batch_sql: the DAG author's statement.
    """
    return sql.SQL("EXPLAIN {}").format(sql.SQL(batch_sql))


def batch_statement(batch_sql: str) -> sql.SQL:
    """Return the DAG author's statement, to run over one sub-batch (``start``, ``end``).

    It returns what the author wrote it to; its row count is the sub-batch's ``rows_affected``. It
    takes whatever locks it takes, until the sub-batch's transaction ends.

    :param batch_sql: the DAG author's statement.
    """
    return sql.SQL(batch_sql)


def set_statement_timeout(milliseconds: int) -> sql.Composed:
    """Return ``SET LOCAL statement_timeout``: for the rest of the transaction, or until reset.

    :param milliseconds: the timeout, above 0.
    """
    return sql.SQL("SET LOCAL statement_timeout = {}").format(sql.Literal(f"{milliseconds}ms"))


#: Reset ``statement_timeout`` to the session's, after the author's statement (the bookkeeping
#: that follows in the same transaction must not time out).
RESET_STATEMENT_TIMEOUT = sql.SQL("SET LOCAL statement_timeout TO DEFAULT")

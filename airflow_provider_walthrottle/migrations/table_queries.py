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


def range_plan(
    table: sql.Identifier, column: sql.Identifier, scope: str | None, *, inclusive: bool
) -> sql.Composed:
    """Return a query for the next ``%(total)s`` keys after ``%(after)s``, in ranges of ``%(rows)s``.

    It plans many sub-batches, up to ``%(last)s``, in one query: one row per range, in key order,
    with the columns of :func:`next_range` (``first``, ``last``, ``keys``, ``in_range``; no WAL
    position). The first range starts right after ``%(after)s`` (at it, with ``inclusive``), each
    next one right after the last key of the one before; each has ``%(rows)s`` keys but the last,
    which has what is left of ``%(total)s``. The ranges end there, or at the first one cut short by
    ``%(last)s``, which counts its keys as :func:`next_range` does; with no key left, the one row
    is the empty range (``NULL``, ``NULL``, 0, true). ``in_range`` is checked for each range
    against the key it starts after. ``%(rows)s`` and ``%(total)s`` are at least 1.

    Each range costs what :func:`next_range` costs (an index probe for its first key, a walk of its
    keys to the last by ``OFFSET``), without a query, a round trip and a plan of its own: a claim
    plans a job and its sub-batches in one walk. All of it reads one snapshot; the keys may change
    after it, so a sub-batch checks its range's first key again in its own transaction
    (:func:`first_key_after`). No lock beyond ``AccessShareLock`` on the table.

    :param table: the table.
    :param column: the key column.
    :param scope: the DAG author's SQL condition.
    :param inclusive: whether ``%(after)s`` itself belongs to the first range.
    """
    first_op = sql.SQL(">=" if inclusive else ">")
    return sql.SQL(
        """
WITH RECURSIVE ranges AS (
    SELECT 1 AS n, s.* FROM ({first_range}) AS s
    UNION ALL
    SELECT r.n + 1, s.* FROM ranges AS r CROSS JOIN LATERAL ({next_range}) AS s
    WHERE r.nth IS NOT NULL AND r.nth < %(last)s AND r.n * %(rows)s::bigint < %(total)s::bigint
)
SELECT first::text AS first, coalesce(nth, tail)::text AS last,
       CASE WHEN nth IS NULL THEN tail_keys ELSE size END AS keys,
       coalesce(first_in_range AND coalesce(nth, tail) <= %(last)s, true) AS in_range
FROM ranges ORDER BY n
"""
    ).format(
        first_range=_planned_range(
            table,
            column,
            scope,
            sql.SQL("%(after)s"),
            first_op,
            sql.SQL("least(%(rows)s::bigint, %(total)s::bigint)"),
        ),
        next_range=_planned_range(
            table,
            column,
            scope,
            sql.SQL("r.nth"),
            sql.SQL(">"),
            sql.SQL("least(%(rows)s::bigint, %(total)s::bigint - r.n * %(rows)s::bigint)"),
        ),
    )


def _planned_range(
    table: sql.Identifier,
    column: sql.Identifier,
    scope: str | None,
    after: sql.Composable,
    op: sql.SQL,
    size: sql.Composable,
) -> sql.Composed:
    """Return the subquery of one range of :func:`range_plan`: ``size`` keys after ``after``.

    Its columns: the first key, the ``size``-th (``nth``), and only without one, the last key and
    the count (``tail``, ``tail_keys``); ``size``. ``OFFSET 0`` keeps each probe from being run once
    per reference to it.
    """
    keys = sql.SQL("FROM {table} WHERE {col} {op} {after} AND {col} <= %(last)s{scope}").format(
        table=table, col=column, op=op, after=after, scope=scope_condition(scope)
    )
    return sql.SQL(
        """
SELECT first, nth,
       CASE WHEN nth IS NULL THEN (SELECT {col} {keys} ORDER BY {col} DESC LIMIT 1) END AS tail,
       CASE WHEN nth IS NULL THEN (SELECT count(*) {keys}) END AS tail_keys,
       coalesce(first {op} {after}, true) AS first_in_range, size
FROM (SELECT (SELECT {col} {keys} ORDER BY {col} LIMIT 1) AS first,
             (SELECT {col} {keys} ORDER BY {col} OFFSET {size} - 1 LIMIT 1) AS nth,
             {size} AS size
      OFFSET 0) AS probes"""
    ).format(col=column, keys=keys, op=op, after=after, size=size)


def first_key_after(
    table: sql.Identifier, column: sql.Identifier, scope: str | None, *, inclusive: bool
) -> sql.Composed:
    """Return a query for the first key after ``%(after)s`` up to ``%(last)s``, and the WAL insert position.

    One row: ``first`` (as text; NULL when there is none) and ``wal_position`` (as text). A
    sub-batch runs it in its own transaction, before its statement, to check the range planned for
    it by :func:`range_plan`: the range still starts at the first key after where the job resumes
    exactly when ``first`` is the range's first key. One index probe; no lock beyond
    ``AccessShareLock`` on the table.

    :param table: the table.
    :param column: the key column.
    :param scope: the DAG author's SQL condition.
    :param inclusive: whether ``%(after)s`` itself counts.
    """
    return sql.SQL(
        """
SELECT (SELECT {col} FROM {table} WHERE {col} {op} %(after)s AND {col} <= %(last)s{scope}
        ORDER BY {col} LIMIT 1)::text AS first,
       pg_current_wal_insert_lsn()::text AS wal_position"""
    ).format(col=column, table=table, op=sql.SQL(">=" if inclusive else ">"), scope=scope_condition(scope))


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

"""Tables for test migrations: keys with gaps, a scope, a counter per row (the truth of exactly-once)."""

from __future__ import annotations

from typing import Any

from psycopg import sql

from airflow_provider_walthrottle.migrations.definition import MigrationDefinition

#: The statement every test migration runs: count how often each row was touched.
INCREMENT = "UPDATE {table} SET counter = counter + 1 WHERE id BETWEEN %(start)s AND %(end)s AND {scope}"
#: The rows in scope: a third of them.
SCOPE = "tenant %% 3 = 0"
#: The rows in scope, for SQL run without parameters (``SCOPE`` doubles its ``%`` for bound queries).
IN_SCOPE = "tenant % 3 = 0"


def make_table(cluster, name: str, rows: int) -> None:
    """Create ``name`` with ``rows`` rows whose ids have gaps (every 7th id is missing)."""
    table = sql.Identifier(name)
    cluster.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))
    cluster.execute(
        sql.SQL(
            "CREATE TABLE {} (id bigint PRIMARY KEY, tenant int NOT NULL, counter int NOT NULL DEFAULT 0)"
        ).format(table)
    )
    cluster.execute(
        sql.SQL(
            "INSERT INTO {} (id, tenant) SELECT i, i %% 10 FROM generate_series(1, %s) AS i WHERE i %% 7 <> 0"
        ).format(table),
        [rows * 7 // 6],
    )


def counter_histogram(cluster, name: str) -> dict[tuple[bool, int], int]:
    """Return ``{(in_scope, counter): rows}``: the ground truth of exactly-once."""
    rows = cluster.execute(
        sql.SQL("SELECT tenant % 3 = 0, counter, count(*) FROM {} GROUP BY 1, 2").format(sql.Identifier(name))
    )
    return {(in_scope, counter): count for in_scope, counter, count in rows}


def increment_migration(name: str, table: str) -> MigrationDefinition:
    return MigrationDefinition(
        name=name,
        table=table,
        column="id",
        batch_sql=INCREMENT.format(table=table, scope=SCOPE),
        scope=SCOPE,
    )


def increment_operator_kwargs(table: str, **overrides: Any) -> dict[str, Any]:
    """Return ``BatchedMigrationOperator`` arguments for the increment migration of ``table``.

    Small fixed batches (2,000 keys, statements of 500, no pause) and a short wait, so that a test's
    migration takes a few batches and a few seconds; ``overrides`` replace or add arguments.
    """
    return {
        "postgres_conn_id": "migration_db",
        "migration_name": table,
        "table": table,
        "column": "id",
        "batch_sql": INCREMENT.format(table=table, scope=SCOPE),
        "scope": SCOPE,
        "batch_size": 2000,
        "sub_batch_size": 500,
        "pause_ms": 0,
        "wait_interval": 0.5,
        **overrides,
    }


def poisoned_migration(name: str, table: str, poison: int) -> MigrationDefinition:
    """Return the increment migration, except that its statement fails (division by zero) on one key.

    :param poison: the key whose sub-batch raises, every time it runs.
    """
    return MigrationDefinition(
        name=name,
        table=table,
        column="id",
        batch_sql=(
            f"UPDATE {table} SET counter = counter + 1 + 0 / CASE WHEN id = {poison} THEN 0 ELSE 1 END "
            f"WHERE id BETWEEN %(start)s AND %(end)s AND {SCOPE}"
        ),
        scope=SCOPE,
    )


def in_scope_keys(cluster, table: str) -> list[int]:
    """Return the ids of the rows in scope, in order."""
    query = sql.SQL("SELECT id FROM {} WHERE " + IN_SCOPE + " ORDER BY id").format(sql.Identifier(table))
    return [key for (key,) in cluster.execute(query)]

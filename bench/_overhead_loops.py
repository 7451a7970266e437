"""The loops ``bench/overhead.py`` compares, each over a fresh copy of its table.

``run_plain`` is the plain psycopg loop, ``run_exactly_once`` the same with a progress row in each
statement's transaction, and ``run_operator`` the operator's batch loop in-process (see that
script's docstring). Each returns the statements it ran.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import psycopg
from _cluster import copy_items_table, update_sql
from _core import operator_settings, operator_task
from psycopg import sql

from airflow_provider_walthrottle.migrations import schema_queries
from airflow_provider_walthrottle.migrations.batch import BatchDone, Finished
from airflow_provider_walthrottle.migrations.definition import MigrationDefinition
from airflow_provider_walthrottle.migrations.runner import prepare

if TYPE_CHECKING:
    import argparse

    from tests.support.postgres_cluster import PostgresCluster

#: The Airflow connection the operator's metrics name.
CONN_ID = "bench_overhead"
#: The operator's ``max_pending_segments``.
THRESHOLD = 42
#: The operator's first ``batch_size``; the optimizer grows it from there.
BATCH_SIZE = 10_000
#: The progress row of the ``exactly_once`` loop.
PROGRESS_TABLE = "overhead_progress"


def run_plain(dsn: str, table: str, rows: int, sub_batch_size: int) -> int:
    """Run ``batch_sql`` over consecutive ranges of ``sub_batch_size`` ids; return the statements."""
    statement = sql.SQL(update_sql(table))
    statements = 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        for start in range(1, rows + 1, sub_batch_size):
            conn.execute(statement, {"start": start, "end": min(start + sub_batch_size - 1, rows)})
            statements += 1
    return statements


def run_exactly_once(dsn: str, table: str, rows: int, sub_batch_size: int) -> int:
    """Run the plain loop's statements, each with its progress row in the same transaction; return them."""
    statement = sql.SQL(update_sql(table))
    progress = sql.SQL(
        "UPDATE {} SET resume_key = %s, rows_affected = rows_affected + %s, sub_batches = sub_batches + 1 "
        "WHERE id = 1"
    ).format(sql.Identifier(PROGRESS_TABLE))
    statements = 0
    with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor() as cursor:
        for start in range(1, rows + 1, sub_batch_size):
            end = min(start + sub_batch_size - 1, rows)
            with conn.pipeline() as pipeline:
                cursor.execute("BEGIN")
                cursor.execute(statement, {"start": start, "end": end})
                pipeline.sync()  # the row count, before the progress is sent
                cursor.execute(progress, [end, max(cursor.rowcount, 0)])
                cursor.execute("COMMIT")
            statements += 1
    return statements


def run_operator(dsn: str, table: str, sub_batch_size: int, batch_size: int = BATCH_SIZE) -> int:
    """Run the operator's batch loop until the migration is finished; return its sub-batches."""
    definition = MigrationDefinition(
        name=f"overhead_{table}", table=table, column="id", batch_sql=update_sql(table)
    )
    settings = operator_settings(batch_size=batch_size, sub_batch_size=sub_batch_size, threshold=THRESHOLD)
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            step = operator_task(prepare(conn, definition, batch_size), settings, conn_id=CONN_ID)
            if isinstance(step, Finished):
                break
            assert isinstance(step, BatchDone), step
        row = conn.execute(
            sql.SQL("SELECT sum(sub_batches) FROM {} WHERE migration_name = %s").format(schema_queries.JOBS),
            [definition.name],
        ).fetchone()
    return int(row[0]) if row and row[0] is not None else -1


def fresh_copy(cluster: PostgresCluster, name: str) -> None:
    """Copy the template table to ``name``, then ``CHECKPOINT``: each run starts alike."""
    copy_items_table(cluster, "items_template", name)
    cluster.execute("CHECKPOINT")


def run_variant(cluster: PostgresCluster, variant: str, table: str, args: argparse.Namespace) -> int:
    """Migrate ``table`` with ``variant``; return the statements it ran."""
    if variant == "plain":
        return run_plain(cluster.dsn(), table, args.rows, args.sub_batch_size)
    if variant == "exactly_once":
        return run_exactly_once(cluster.dsn(), table, args.rows, args.sub_batch_size)
    return run_operator(cluster.dsn(), table, args.sub_batch_size, args.batch_size)


def make_progress_table(cluster: PostgresCluster) -> None:
    """Create the one-row progress table of the ``exactly_once`` loop."""
    cluster.execute(
        sql.SQL(
            "CREATE TABLE {} (id int PRIMARY KEY, resume_key bigint, rows_affected bigint NOT NULL, "
            "sub_batches int NOT NULL)"
        ).format(sql.Identifier(PROGRESS_TABLE))
    )
    cluster.execute(sql.SQL("INSERT INTO {} VALUES (1, NULL, 0, 0)").format(sql.Identifier(PROGRESS_TABLE)))

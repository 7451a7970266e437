"""Backfill a new column in batches, throttled on the WAL archival backlog.

Each run of this DAG applies one batch of the migration ``backfill_orders_total_cents``: the
sensor holds the run while more than 42 WAL segments wait for ``archive_command`` (when the flag
``batched_migrations_health_status_wal`` is on), and the operator re-checks between sub-batches.
Once every range is done, the task ends as skipped.
"""

from __future__ import annotations

import datetime

import pendulum
from airflow.sdk import DAG

from airflow_provider_walthrottle import BatchedMigrationOperator, WalArchivalSensor

# [START howto_operator_batched_migration]
with DAG(
    dag_id="example_batched_migration",
    schedule=datetime.timedelta(minutes=5),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["walthrottle", "example"],
) as dag:
    wait_for_wal_archival = WalArchivalSensor(
        task_id="wait_for_wal_archival",
        postgres_conn_id="warehouse",
        poke_interval=60,
    )
    backfill = BatchedMigrationOperator(
        task_id="backfill_orders_total_cents",
        postgres_conn_id="warehouse",
        migration_name="backfill_orders_total_cents",
        table="sales.orders",
        column="id",
        scope="total_cents IS NULL",
        batch_sql=(
            "UPDATE sales.orders SET total_cents = round(total * 100) "
            "WHERE id BETWEEN %(start)s AND %(end)s AND total_cents IS NULL"
        ),
        batch_size=10_000,  # the first batch; later ones aim at 30 s each, statements at 0.2 s
        retries=3,
        retry_delay=datetime.timedelta(minutes=1),
    )
    wait_for_wal_archival >> backfill
# [END howto_operator_batched_migration]

"""Gate a heavy maintenance job on the WAL archival backlog with the sensor alone.

A ``VACUUM (FULL)`` or an index build writes WAL as fast as the disk allows. The sensor holds the run
while more than 42 segments wait for ``archive_command`` (and the flag
``batched_migrations_health_status_wal`` is on), then lets the job start.
"""

from __future__ import annotations

import pendulum
from airflow.providers.common.sql.operators.sql import SQLExecuteQueryOperator
from airflow.sdk import DAG

from airflow_provider_walthrottle import WalArchivalSensor

# [START howto_sensor_wal_archival]
with DAG(
    dag_id="example_wal_archival_sensor",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["walthrottle", "example"],
) as dag:
    wait_for_wal_archival = WalArchivalSensor(
        task_id="wait_for_wal_archival",
        postgres_conn_id="warehouse",
        max_pending_segments=42,
        poke_interval=60,
        timeout=6 * 60 * 60,
    )
    rebuild_index = SQLExecuteQueryOperator(
        task_id="rebuild_index",
        conn_id="warehouse",
        sql="REINDEX INDEX CONCURRENTLY orders_created_at_idx",
        autocommit=True,
    )
    wait_for_wal_archival >> rebuild_index
# [END howto_sensor_wal_archival]

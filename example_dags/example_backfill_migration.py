"""A migration meant to be driven by ``airflow backfill create``: one batch per logical date.

Built with :func:`batched_migration_dag`. Backfill as many logical dates as you like, with several
runs at once: every range is applied exactly once, and runs past the end are skipped::

    airflow dags reserialize
    airflow backfill create --dag-id example_backfill_migration \\
        --from-date 2026-01-01 --to-date 2026-01-10 --max-active-runs 4
"""

from __future__ import annotations

import pendulum

from airflow_provider_walthrottle import batched_migration_dag

# [START howto_migration_dag]
dag = batched_migration_dag(
    dag_id="example_backfill_migration",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    schedule="@daily",
    max_active_runs=4,
    postgres_conn_id="warehouse",
    migration_name="normalize_customer_emails",
    table="crm.customers",
    column="id",
    scope="email <> lower(email)",
    batch_sql=(
        "UPDATE crm.customers SET email = lower(email) "
        "WHERE id BETWEEN %(start)s AND %(end)s AND email <> lower(email)"
    ),
    concurrency=4,
)
# [END howto_migration_dag]

"""The composition helper: the DAG it builds, and that DAG run under ``dag.test()``."""

from __future__ import annotations

import datetime
import uuid

from airflow_provider_walthrottle import BatchedMigrationOperator, WalArchivalSensor, batched_migration_dag
from tests.support.dag_testing import run_dag, task_states, xcom_of
from tests.support.migration_tables import INCREMENT, SCOPE, counter_histogram, make_table

START = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)


def make_dag(table, **overrides):
    kwargs = dict(
        dag_id=f"helper_{uuid.uuid4().hex[:8]}",
        start_date=START,
        postgres_conn_id="helper_db",
        migration_name=table,
        table=table,
        column="id",
        batch_sql=INCREMENT.format(table=table, scope=SCOPE),
        scope=SCOPE,
        poke_interval=1,
        operator_kwargs={"batch_size": 5000, "sub_batch_size": 1000, "pause_ms": 0},
    )
    kwargs.update(overrides)
    return batched_migration_dag(**kwargs)


def test_the_dag_wires_flag_sensor_and_operator_with_safe_defaults():
    dag = make_dag("whatever", max_pending_segments=30)

    sensor = dag.get_task("whatever.wait_for_wal_archival")
    batch = dag.get_task("whatever.apply_batch")
    assert isinstance(sensor, WalArchivalSensor) and isinstance(batch, BatchedMigrationOperator)
    assert sensor.downstream_task_ids == {batch.task_id}
    assert sensor.deferrable and batch.deferrable
    assert sensor.max_pending_segments == batch.max_pending_segments == 30
    assert sensor.flag_variable == batch.flag_variable == "batched_migrations_health_status_wal"
    assert batch.max_active_tis_per_dag == 1
    assert batch.retries == 3 and batch.retry_exponential_backoff
    assert dag.max_active_runs == 1
    assert dag.schedule is not None
    assert "walthrottle" in dag.tags


def test_the_dag_applies_batches_then_skips(monkeypatch, migration_db):
    monkeypatch.setenv("AIRFLOW_CONN_HELPER_DB", migration_db.uri())
    monkeypatch.setenv("AIRFLOW_VAR_BATCHED_MIGRATIONS_HEALTH_STATUS_WAL", "true")
    make_table(migration_db, "helper_table", 12_000)
    dag = make_dag("helper_table")

    first, second = run_dag(dag), run_dag(dag)

    assert task_states(first) == {
        "helper_table.wait_for_wal_archival": "success",
        "helper_table.apply_batch": "success",
    }
    assert task_states(second)["helper_table.apply_batch"] == "skipped"
    assert set(counter_histogram(migration_db, "helper_table")) == {(True, 1), (False, 0)}


def test_sensor_and_operator_ask_the_flag_as_the_same_actor(monkeypatch, migration_db):
    # an actors list names migrations: both the sensor and the operator must see themselves in it
    monkeypatch.setenv("AIRFLOW_CONN_HELPER_DB", migration_db.uri())
    monkeypatch.setenv("AIRFLOW_VAR_BATCHED_MIGRATIONS_HEALTH_STATUS_WAL", '{"actors": ["actor_table"]}')
    make_table(migration_db, "actor_table", 1000)
    dag = make_dag("actor_table")

    sensor = dag.get_task("actor_table.wait_for_wal_archival")
    assert sensor.gate.actor == dag.get_task("actor_table.apply_batch").migration_name == "actor_table"
    dag_run = run_dag(dag)

    assert task_states(dag_run)["actor_table.apply_batch"] == "success"
    assert xcom_of(dag_run, "actor_table.wait_for_wal_archival")["checked"] is True

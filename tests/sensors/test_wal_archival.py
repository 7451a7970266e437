"""WalArchivalSensor under ``dag.test()``, against real PostgreSQL clusters."""

from __future__ import annotations

import datetime
import uuid

import pytest
from airflow.sdk import DAG
from airflow.sdk.exceptions import AirflowSensorTimeout

from airflow_provider_walthrottle import WalArchivalSensor
from tests.support.archive_gate import GateOpener, Watchdog
from tests.support.dag_testing import run_dag, task_states, xcom_of

FLAG_ENV = "AIRFLOW_VAR_BATCHED_MIGRATIONS_HEALTH_STATUS_WAL"
START = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)


def sensor_dag(**sensor_kwargs):
    failures: list[BaseException] = []
    with DAG(f"wal_sensor_{uuid.uuid4().hex[:8]}", schedule=None, start_date=START, catchup=False) as dag:
        WalArchivalSensor(
            task_id="wait_for_wal",
            on_failure_callback=lambda context: failures.append(context.get("exception")),
            **{"poke_interval": 0.5, "timeout": 120, **sensor_kwargs},
        )
    return dag, failures


@pytest.fixture
def connection(monkeypatch, pg_drained):
    monkeypatch.setenv("AIRFLOW_CONN_WAL_PRIMARY", pg_drained.uri())
    return "wal_primary"


def test_flag_off_passes_at_once_without_any_database(monkeypatch):
    monkeypatch.delenv(FLAG_ENV, raising=False)
    dag, _ = sensor_dag(postgres_conn_id="no_such_connection")

    dag_run = run_dag(dag)

    assert task_states(dag_run) == {"wait_for_wal": "success"}
    assert xcom_of(dag_run, "wait_for_wal") == {
        "checked": False,
        "proceed": True,
        "flag_variable": "batched_migrations_health_status_wal",
        "signal": None,
        "indicators": {},
        "stopped_by": [],
        "flags_off": [
            "batched_migrations_health_status_wal",
            "batched_migrations_health_status_replication_lag",
            "batched_migrations_health_status_replication_slots",
        ],
    }


@pytest.fixture
def backlog_above_3(pg_drained):
    """The shared cluster with 5 segments waiting behind a closed gate: above a threshold of 3."""
    pg_drained.archive_one_segment()
    pg_drained.make_backlog(5)
    return pg_drained


def test_invalid_flag_value_reads_as_on_and_checks(monkeypatch, backlog_above_3, connection):
    # a typo of "false" during an incident must not turn the throttle off
    monkeypatch.setenv(FLAG_ENV, "flase")
    dag, failures = sensor_dag(postgres_conn_id=connection, max_pending_segments=3, timeout=3)

    with Watchdog(backlog_above_3) as watchdog:
        states = task_states(run_dag(dag))

    assert not watchdog.fired, "the sensor waited past its timeout"
    assert states == {"wait_for_wal": "failed"}
    assert isinstance(failures[0], AirflowSensorTimeout)
    assert "5 WAL segments pending archival > threshold 3" in str(failures[0])


@pytest.mark.parametrize(
    ("soft_fail", "state"), [(False, "failed"), (True, "skipped")], ids=["timeout", "soft_fail"]
)
def test_a_deferred_wait_ends_at_the_sensors_timeout(
    monkeypatch, backlog_above_3, connection, soft_fail, state
):
    # dag.test() runs the trigger inline and ignores the deferral's timeout: the trigger's own
    # deadline must end the wait
    monkeypatch.setenv(FLAG_ENV, "true")
    dag, failures = sensor_dag(
        postgres_conn_id=connection, max_pending_segments=3, timeout=3, soft_fail=soft_fail
    )

    with Watchdog(backlog_above_3) as watchdog:
        states = task_states(run_dag(dag))

    assert not watchdog.fired, "the deferred sensor waited past its timeout"
    assert states == {"wait_for_wal": state}
    if state == "failed":
        assert isinstance(failures[0], AirflowSensorTimeout)
        assert "Sensor timed out after 3s" in str(failures[0])


def test_flag_actor_decides_who_asks_the_flag(monkeypatch, pg_drained, connection):
    monkeypatch.setenv(FLAG_ENV, '{"actors": ["orders_backfill"]}')
    for actor, checked in (("orders_backfill", True), ("another_migration", False), (None, False)):
        dag, _ = sensor_dag(postgres_conn_id=connection, flag_actor=actor)
        assert xcom_of(run_dag(dag), "wait_for_wal")["checked"] is checked, actor


@pytest.mark.parametrize("deferrable", [True, False], ids=["deferred", "rescheduled"])
def test_waits_while_above_threshold_and_passes_once_drained(monkeypatch, pg_drained, deferrable):
    monkeypatch.setenv(FLAG_ENV, "true")
    if not pg_drained.execute("SELECT 1 FROM pg_database WHERE datname = 'sensor_checks'"):
        pg_drained.execute("CREATE DATABASE sensor_checks")
    monkeypatch.setenv("AIRFLOW_CONN_COUNTED_PRIMARY", pg_drained.uri(dbname="sensor_checks"))
    pg_drained.archive_one_segment()
    pg_drained.make_backlog(5)
    dag, _ = sensor_dag(postgres_conn_id="counted_primary", max_pending_segments=3, deferrable=deferrable)
    opener = GateOpener(pg_drained, "sensor_checks", checks=3)

    opener.start()
    try:
        dag_run = run_dag(dag)
    finally:
        opener.stop.set()

    assert opener.opened.is_set(), "the sensor must have checked 3 times before the backlog drained"
    assert task_states(dag_run) == {"wait_for_wal": "success"}
    result = xcom_of(dag_run, "wait_for_wal")
    assert result["checked"] is True
    assert result["signal"] == "normal"
    assert result["max_pending_segments"] == 3
    assert result["status"]["pending_segments"] <= 3
    assert result["status"]["method"] == "exact"


def test_at_the_threshold_passes_at_once(monkeypatch, pg_drained, connection):
    monkeypatch.setenv(FLAG_ENV, "on")
    pg_drained.archive_one_segment()
    pg_drained.make_backlog(3)
    dag, _ = sensor_dag(postgres_conn_id=connection, max_pending_segments="{{ 1 + 2 }}")

    dag_run = run_dag(dag)

    assert task_states(dag_run) == {"wait_for_wal": "success"}
    assert xcom_of(dag_run, "wait_for_wal")["status"]["pending_segments"] == 3


def test_templated_connection_and_threshold(monkeypatch, pg_drained):
    monkeypatch.setenv(FLAG_ENV, "yes")
    monkeypatch.setenv("AIRFLOW_CONN_TEMPLATED_PRIMARY", pg_drained.uri())
    monkeypatch.setenv("AIRFLOW_VAR_WAL_CONN", "templated_primary")
    monkeypatch.setenv("AIRFLOW_VAR_WAL_THRESHOLD", "10")
    dag, _ = sensor_dag(
        postgres_conn_id="{{ var.value.wal_conn }}", max_pending_segments="{{ var.value.wal_threshold }}"
    )

    result = xcom_of(run_dag(dag), "wait_for_wal")

    assert result["max_pending_segments"] == 10


def test_threshold_that_is_not_a_number_fails_with_one_clear_line(monkeypatch, pg_drained, connection):
    monkeypatch.setenv(FLAG_ENV, "true")
    monkeypatch.setenv("AIRFLOW_VAR_WAL_THRESHOLD", "forty-two")
    dag, failures = sensor_dag(
        postgres_conn_id=connection, max_pending_segments="{{ var.value.wal_threshold }}"
    )

    assert task_states(run_dag(dag)) == {"wait_for_wal": "failed"}
    (error,) = failures
    assert str(error) == (
        "max_pending_segments must be a whole number of segments, 0 or more (default 42), got 'forty-two'"
    )


def test_threshold_that_is_not_a_number_is_refused_when_the_dag_is_written():
    with pytest.raises(ValueError, match="max_pending_segments must be a whole number"):
        WalArchivalSensor(task_id="s", max_pending_segments=-1)
    with pytest.raises(ValueError, match="on_unavailable must be one of"):
        WalArchivalSensor(task_id="s", on_unavailable="skip")


@pytest.mark.parametrize(
    ("on_unavailable", "state"),
    [("proceed", "success"), ("fail", "failed")],
)
def test_on_unavailable_decides_for_archive_mode_off(monkeypatch, pg_cluster_factory, on_unavailable, state):
    cluster = pg_cluster_factory(name="sensor-archive-off", archive_mode="off")
    monkeypatch.setenv(FLAG_ENV, "true")
    monkeypatch.setenv("AIRFLOW_CONN_ARCHIVE_OFF", cluster.uri())
    dag, failures = sensor_dag(postgres_conn_id="archive_off", on_unavailable=on_unavailable)

    dag_run = run_dag(dag)

    assert task_states(dag_run) == {"wait_for_wal": state}
    if state == "failed":
        assert "archive_mode is off" in str(failures[0])
    else:
        assert xcom_of(dag_run, "wait_for_wal")["signal"] == "not_available"


def test_missing_connection_with_the_flag_on_fails_with_the_fix(monkeypatch):
    monkeypatch.setenv(FLAG_ENV, "true")
    dag, failures = sensor_dag(postgres_conn_id="no_such_connection")

    assert task_states(run_dag(dag)) == {"wait_for_wal": "failed"}
    assert "Airflow connection 'no_such_connection' is not defined" in str(failures[0])


def test_released_flag_defaults_on_when_the_variable_is_gone(monkeypatch, pg_drained, connection):
    monkeypatch.delenv(FLAG_ENV, raising=False)
    pg_drained.archive_one_segment()
    dag, _ = sensor_dag(postgres_conn_id=connection, flag_default=True)

    result = xcom_of(run_dag(dag), "wait_for_wal")

    assert result["checked"] is True
    assert result["status"]["pending_segments"] == 0

"""BatchedMigrationOperator under ``dag.test()``, against real PostgreSQL."""

from __future__ import annotations

import datetime
import uuid

import psycopg
import pytest
from airflow.sdk import DAG

from airflow_provider_walthrottle import BatchedMigrationOperator
from airflow_provider_walthrottle.migrations.catalog import set_migration_paused
from airflow_provider_walthrottle.migrations.runner import prepare
from tests.support.dag_testing import run_dag, task_states, xcom_of
from tests.support.migration_tables import (
    INCREMENT,
    SCOPE,
    counter_histogram,
    increment_migration,
    increment_operator_kwargs,
    make_table,
)

FLAG_ENV = "AIRFLOW_VAR_BATCHED_MIGRATIONS_HEALTH_STATUS_WAL"
KILL_SWITCH_ENV = "AIRFLOW_VAR_EXECUTE_BATCHED_MIGRATIONS_ON_SCHEDULE"
START = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)


def migration_dag(table, **operator_kwargs):
    failures: list[BaseException] = []
    kwargs = increment_operator_kwargs(table, **operator_kwargs)
    with DAG(f"migration_{uuid.uuid4().hex[:8]}", schedule=None, start_date=START) as dag:
        BatchedMigrationOperator(
            task_id="batch",
            on_failure_callback=lambda context: failures.append(context.get("exception")),
            **kwargs,
        )
    return dag, failures


@pytest.fixture
def connection(monkeypatch, migration_db):
    monkeypatch.setenv("AIRFLOW_CONN_MIGRATION_DB", migration_db.uri())
    monkeypatch.delenv(FLAG_ENV, raising=False)
    monkeypatch.delenv(KILL_SWITCH_ENV, raising=False)
    return migration_db


@pytest.mark.slow
def test_repeated_runs_finish_the_migration_then_skip(connection):
    make_table(connection, "op_repeat", 12_000)  # about 3,430 keys in scope: two batches of 2,000
    dag, _ = migration_dag("op_repeat")

    states, results = [], []
    for _ in range(4):
        dag_run = run_dag(dag)
        states.append(task_states(dag_run)["batch"])
        results.append(xcom_of(dag_run, "batch"))

    assert states == ["success", "success", "skipped", "skipped"]
    assert set(counter_histogram(connection, "op_repeat")) == {(True, 1), (False, 0)}
    first, second = results[0], results[1]
    assert first["outcome"] == "completed" and first["keys"] == 2000
    assert 0 < first["percentage"] < 100 and second["percentage"] == 100
    assert second["keys_done"] == second["total_keys"]
    assert first["rows_per_second"] > 0
    assert first["eta_seconds"] is not None


def test_kill_switch_off_skips_with_a_clear_message(connection, monkeypatch):
    make_table(connection, "op_kill_switch", 1000)
    monkeypatch.setenv(KILL_SWITCH_ENV, "false")
    dag, _ = migration_dag("op_kill_switch", on_paused="skip")

    assert task_states(run_dag(dag)) == {"batch": "skipped"}
    assert set(counter_histogram(connection, "op_kill_switch")) == {(True, 0), (False, 0)}
    # checked before connecting: nothing was registered, not even the state tables
    assert connection.execute("SELECT to_regnamespace('walthrottle')") == [(None,)]


def test_kill_switch_with_an_invalid_value_reads_as_off(connection, monkeypatch, caplog):
    # a typo of "false" during an incident must stop migrations, not leave them running
    make_table(connection, "op_kill_typo", 1000)
    monkeypatch.setenv(KILL_SWITCH_ENV, "flase")
    dag, _ = migration_dag("op_kill_typo", on_paused="skip")

    assert task_states(run_dag(dag)) == {"batch": "skipped"}
    assert set(counter_histogram(connection, "op_kill_typo")) == {(True, 0), (False, 0)}
    assert any(
        "execute_batched_migrations_on_schedule has an invalid value 'flase'" in record.getMessage()
        and "treating it as off, the safe side" in record.getMessage()
        for record in caplog.records
    )


def test_bad_table_fails_before_any_row_is_touched(connection):
    make_table(connection, "op_bad", 1000)
    dag, failures = migration_dag("op_bad", column="tenant")

    assert task_states(run_dag(dag)) == {"batch": "failed"}
    assert "column public.op_bad.tenant is not indexed" in str(failures[0])
    assert set(counter_histogram(connection, "op_bad")) == {(True, 0), (False, 0)}


def run_opening_the_gate(connection, dag):
    """Run the DAG while the gate is closed; open it after the operator's own connection and two
    checks of its trigger (each check of the deferred wait opens a session). Return the run."""
    from tests.support.archive_gate import GateOpener

    opener = GateOpener(connection, "postgres", checks=3)
    opener.start()
    try:
        dag_run = run_dag(dag)
    finally:
        opener.stop.set()
    assert opener.opened.is_set()
    return dag_run


# a typo of "false" in the flag reads as on, the safe side: the migration still throttles
@pytest.mark.parametrize("flag", ["true", "flase"], ids=["flag-on", "flag-typo-reads-as-on"])
def test_throttled_by_the_backlog_waits_then_continues(connection, monkeypatch, flag):
    table = f"op_throttled_{'on' if flag == 'true' else 'typo'}"
    make_table(connection, table, 3000)
    monkeypatch.setenv(FLAG_ENV, flag)
    connection.archive_one_segment()
    connection.make_backlog(5)
    dag, _ = migration_dag(table, max_pending_segments=3)

    dag_run = run_opening_the_gate(connection, dag)

    assert task_states(dag_run) == {"batch": "success"}
    result = xcom_of(dag_run, "batch")
    assert result["outcome"] == "completed"
    assert result["throttled_seconds"] > 0
    assert set(counter_histogram(connection, table)) == {(True, 1), (False, 0)}


def test_paused_migration_skips_then_resumes(connection):
    make_table(connection, "op_paused", 3000)
    dag, _ = migration_dag("op_paused", on_paused="skip")
    with psycopg.connect(connection.dsn(), autocommit=True) as conn:
        prepare(conn, increment_migration("op_paused", "op_paused"), 2000)
        set_migration_paused(conn, "op_paused", True)
        assert task_states(run_dag(dag)) == {"batch": "skipped"}
        assert set(counter_histogram(connection, "op_paused")) == {(True, 0), (False, 0)}
        set_migration_paused(conn, "op_paused", False)
    assert task_states(run_dag(dag)) == {"batch": "success"}


def test_too_little_headroom_waits_for_room_for_the_smallest_batch_then_runs(connection, monkeypatch):
    make_table(connection, "op_headroom", 3000)
    monkeypatch.setenv(FLAG_ENV, "true")
    connection.archive_one_segment()
    connection.make_backlog(3)  # at the threshold: "normal", but no room for any WAL
    dag, _ = migration_dag("op_headroom", max_pending_segments=3)

    dag_run = run_opening_the_gate(connection, dag)

    assert task_states(dag_run) == {"batch": "success"}
    assert xcom_of(dag_run, "batch")["outcome"] == "completed"
    assert set(counter_histogram(connection, "op_headroom")) == {(True, 1), (False, 0)}


def test_a_task_deferred_under_the_old_callback_name_resumes_through_execute_complete():
    # tasks deferred before the rename were serialized with method_name="resume_after_wait"
    assert BatchedMigrationOperator.resume_after_wait is BatchedMigrationOperator.execute_complete


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        pytest.param(
            {"statement_timeout_ms": -1}, "statement_timeout_ms must be a whole number", id="timeout"
        ),
        pytest.param({"pause_ms": -1}, "pause_ms must be a whole number", id="pause"),
        pytest.param({"batch_size": 2**31}, "batch_size must be at most 2147483647 rows", id="batch-size"),
        pytest.param({"sub_batch_size": 2**31}, "sub_batch_size must be at most 2147483647", id="sub-batch"),
        pytest.param({"min_batch_size": 0}, "min_batch_size must be a whole number", id="min-batch"),
        pytest.param({"max_batch_size": 2**31}, "max_batch_size must be at most 2147483647", id="max-batch"),
        pytest.param({"target_batch_seconds": 0}, "target_batch_seconds must be a number", id="target"),
        pytest.param({"max_attempts": 0}, "max_attempts must be a whole number", id="attempts"),
        pytest.param({"wait_interval": 0}, "wait_interval must be a number of seconds", id="wait"),
        pytest.param(
            {"migration_name": "a\x00b"}, "migration_name must not contain a NUL byte", id="nul-name"
        ),
        pytest.param({"table": "t\x00"}, "table must not contain a NUL byte", id="nul-table"),
        pytest.param({"column": "i\x00d"}, "column must not contain a NUL byte", id="nul-column"),
    ],
)
def test_the_constructor_refuses_values_that_would_only_fail_later(changes, words):
    from airflow_provider_walthrottle.migrations.definition import MigrationDefinitionError

    batch_sql = INCREMENT.format(table="t", scope=SCOPE)
    kwargs = {"migration_name": "m", "table": "t", "column": "id", "batch_sql": batch_sql, **changes}
    with pytest.raises(MigrationDefinitionError) as raised:
        BatchedMigrationOperator(task_id="batch", **kwargs)
    assert str(raised.value).startswith(words)
    assert "\n" not in str(raised.value)


def test_a_table_renamed_since_the_migration_began_fails_with_one_line_saying_what_to_do(connection):
    make_table(connection, "op_renamed", 3000)
    dag, failures = migration_dag("op_renamed")
    assert task_states(run_dag(dag)) == {"batch": "success"}
    connection.execute("ALTER TABLE op_renamed RENAME TO op_renamed_v2")

    assert task_states(run_dag(dag)) == {"batch": "failed"}
    message = str(failures[-1])
    assert message.startswith(
        "migration 'op_renamed' was registered on table public.op_renamed, but table public.op_renamed "
        "does not exist"
    )
    assert "restore it and the migration resumes where it stopped" in message and "\n" not in message

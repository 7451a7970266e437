"""The plan of an operator's migration: its arguments, ``operator.plan()``, its first run; on PostgreSQL."""

from __future__ import annotations

import datetime
import json
import re
import uuid
from dataclasses import dataclass

import psycopg
import pytest
from airflow.sdk import DAG, Asset
from dateutil.relativedelta import relativedelta

from airflow_provider_walthrottle import BatchedMigrationOperator
from airflow_provider_walthrottle.migration_dag import BACK_TO_BACK
from airflow_provider_walthrottle.migration_plan import PLAN_XCOM_KEY, plan_options, schedule_interval_seconds
from airflow_provider_walthrottle.migrations.plan import compute_plan
from airflow_provider_walthrottle.migrations.plan_options import PlanOptions
from airflow_provider_walthrottle.migrations.plan_store import load_plan
from airflow_provider_walthrottle.migrations.runner import prepare
from tests.support.dag_testing import run_dag, task_states
from tests.support.migration_tables import (
    counter_histogram,
    in_scope_keys,
    increment_migration,
    increment_operator_kwargs,
    make_table,
)

START = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
FIRST_RUN_PLAN_ENV = "AIRFLOW__WALTHROTTLE__FIRST_RUN_PLAN"
WINDOW_ENV = "AIRFLOW__WALTHROTTLE__PLAN_ARCHIVER_WINDOW_SECONDS"
PLANNED = "planned at its first run:"
NOT_PLANNED = "not planned at its first run"
#: The first line of a log event in ``dag.test()``'s output: ``2026-12-02T04:34:35.617818Z [info     ] text``.
EVENT_START = re.compile(r"^\d{4}-\d\d-\d\dT[\d:.]+Z \[(?P<level>\w+)\s*\] (?P<text>.*)$")


def migration_dag(table: str, *, schedule=None, **operator_kwargs):
    """Return a DAG of one batch task migrating ``table`` (a third of its rows in scope), and the task."""
    kwargs = increment_operator_kwargs(table, **operator_kwargs)
    with DAG(f"plan_{uuid.uuid4().hex[:8]}", schedule=schedule, start_date=START, max_active_runs=1) as dag:
        task = BatchedMigrationOperator(task_id="batch", **kwargs)
    return dag, task


@pytest.fixture
def connection(monkeypatch, migration_db):
    monkeypatch.setenv("AIRFLOW_CONN_MIGRATION_DB", migration_db.uri())
    monkeypatch.setenv(FIRST_RUN_PLAN_ENV, "True")
    monkeypatch.setenv(WINDOW_ENV, "0")  # the suite's, said here: these tests depend on it
    return migration_db


def plan_xcom(dag_run):
    (ti,) = dag_run.get_task_instances()
    return ti.xcom_pull(task_ids="batch", key=PLAN_XCOM_KEY)


@dataclass(frozen=True)
class LogEvent:
    """One call of a task's logger, as ``dag.test()`` prints it: its level, and its text (lines)."""

    level: str
    text: str


def task_log_events(capsys) -> list[LogEvent]:
    """Return the log events printed so far (the task's logger is structlog's, which ``dag.test()``
    prints to stdout rather than to the ``logging`` records that ``caplog`` sees)."""
    events: list[LogEvent] = []
    for line in capsys.readouterr().out.splitlines():
        start = EVENT_START.match(line)
        if start:
            events.append(LogEvent(start["level"], start["text"]))
        elif events:  # a line of a multi-line message, or of its traceback
            events[-1] = LogEvent(events[-1].level, f"{events[-1].text}\n{line}")
    return events


def planned(events: list[LogEvent]) -> list[LogEvent]:
    return [event for event in events if PLANNED in event.text]


def not_planned(events: list[LogEvent]) -> list[LogEvent]:
    return [event for event in events if event.level == "warning" and NOT_PLANNED in event.text]


# ----------------------------------------------------------------------------- the DAG's interval


@pytest.mark.parametrize(
    ("schedule", "seconds"),
    [
        pytest.param(datetime.timedelta(minutes=5), 300.0, id="timedelta"),
        pytest.param(relativedelta(months=1), 31 * 86400.0, id="relativedelta-january"),
        pytest.param("*/10 * * * *", 600.0, id="cron"),
        pytest.param("@daily", 86400.0, id="cron-preset"),
        # from Monday 2026-01-05: ten gaps over two weeks of weekdays, weekends included
        pytest.param("0 9 * * 1-5", 14 * 86400 / 10, id="cron-weekdays"),
        pytest.param("@continuous", None, id="continuous"),
        pytest.param([Asset("walthrottle_test_asset")], None, id="asset"),
        pytest.param(None, None, id="none"),
        pytest.param("@once", None, id="once"),
    ],
)
def test_the_interval_is_the_dags_schedule(schedule, seconds):
    dag = DAG("interval", schedule=schedule, start_date=START, max_active_runs=1)
    now = datetime.datetime(2026, 1, 5, tzinfo=datetime.timezone.utc)

    assert schedule_interval_seconds(dag.timetable, now=now) == seconds


def test_the_helpers_back_to_back_schedule_plans_back_to_back():
    timetable = BACK_TO_BACK.schedule(dag_id="interval", start_date=START)

    assert schedule_interval_seconds(timetable) is None
    assert schedule_interval_seconds(None) is None  # a task without a DAG


# ----------------------------------------------------------------------------- the operator's arguments


def test_the_options_are_the_operators_own_arguments():
    _, task = migration_dag(
        "plan_args",
        schedule=datetime.timedelta(minutes=5),
        max_pending_segments="7",  # as a rendered template gives it
        min_batch_size=300,
        max_batch_size=5000,
        target_batch_seconds=12.0,
    )
    _, defaults = migration_dag("plan_args", sub_batch_size=None)

    options = plan_options(task)

    assert options == PlanOptions(
        max_pending_segments=7,
        first_batch_size=2000,
        min_batch_size=300,
        max_batch_size=5000,
        target_batch_seconds=12.0,
        sub_batch_size=500,
        interval_seconds=300.0,
    )
    assert options.arguments()["sample_keys"] == 500
    assert "sample_keys" not in plan_options(defaults).arguments()  # the plan's own default
    assert plan_options(defaults).interval_seconds is None


def test_operator_plan_gives_the_figures_of_compute_plan_with_the_same_arguments(connection):
    make_table(connection, "plan_operator", 30_000)
    keys = in_scope_keys(connection, "plan_operator")
    _, task = migration_dag(
        "plan_operator",
        schedule=datetime.timedelta(minutes=5),
        max_pending_segments="7",
        min_batch_size=300,
        max_batch_size=5000,
        target_batch_seconds=12.0,
    )

    planned = task.plan(archiver_window_seconds=0)
    with psycopg.connect(connection.dsn(), autocommit=True) as conn:
        direct = compute_plan(
            conn,
            increment_migration("plan_operator", "plan_operator"),
            max_pending_segments=7,
            first_batch_size=2000,
            min_batch_size=300,
            max_batch_size=5000,
            target_batch_seconds=12.0,
            sample_keys=500,
            interval_seconds=300.0,
            archiver_window_seconds=0,
        )

    def figures(plan):
        samples = [(s.first_key, s.last_key, s.keys, s.rows_affected) for s in plan.samples]
        return (
            plan.table,
            plan.column,
            plan.scope,
            plan.key_type,
            plan.rows,
            plan.rows_method,
            samples,
            plan.max_pending_segments,
            plan.interval_seconds,
            plan.first_batch_size,
            plan.wal_segment_size,
            plan.warnings,
        )

    assert figures(planned) == figures(direct)
    assert planned.rows == len(keys)
    assert [sample.keys for sample in planned.samples] == [500] * 5  # sub_batch_size
    assert (planned.max_pending_segments, planned.interval_seconds) == (7, 300.0)
    assert planned.first_batch_size == 2000
    assert planned.largest_batch_size <= 5000  # max_batch_size
    assert planned.bounds["schedule"] == planned.batches * 300.0
    assert planned.archiver.source == "none"  # the override: not watched
    # nothing planned is kept unless asked
    with psycopg.connect(connection.dsn(), autocommit=True) as conn:
        assert load_plan(conn, "plan_operator") is None


def test_operator_plan_can_save_the_plan_for_the_page(connection):
    make_table(connection, "plan_saved", 3000)
    _, task = migration_dag("plan_saved")

    planned = task.plan(archiver_window_seconds=0, save=True)

    with psycopg.connect(connection.dsn(), autocommit=True) as conn:
        stored = load_plan(conn, "plan_saved")
    assert stored is not None
    assert stored.fingerprint == task.definition.fingerprint
    assert stored.plan == json.loads(json.dumps(planned.to_dict()))


# ----------------------------------------------------------------------------- the first run


def test_only_the_call_that_registers_a_migration_sees_it_new(connection):
    make_table(connection, "plan_new", 1000)
    definition = increment_migration("plan_new", "plan_new")
    with psycopg.connect(connection.dsn(), autocommit=True) as conn:
        first = prepare(conn, definition, 1000)
        second = prepare(conn, definition, 1000)

    assert (first.registry.registered_now, second.registry.registered_now) == (True, False)


def test_the_first_run_logs_one_block_pushes_the_xcom_and_keeps_the_plan(connection, capsys):
    make_table(connection, "plan_first", 12_000)
    rows = len(in_scope_keys(connection, "plan_first"))
    dag, _ = migration_dag("plan_first")

    dag_run = run_dag(dag)

    assert task_states(dag_run) == {"batch": "success"}
    events = task_log_events(capsys)
    (event,) = planned(events)  # one call of the logger, the whole plan in it
    assert event.level == "info"
    lines = event.text.splitlines()
    assert lines[0] == "Migration plan_first, planned at its first run:"
    assert lines[1] == "Plan of a migration of public.plan_first (key id, scope tenant % 3 = 0)"
    assert f"  rows in scope    : {rows:,} (counted)" in lines
    assert "rolled back: no row changed" in lines[-1]
    assert not not_planned(events)
    pushed = plan_xcom(dag_run)
    assert pushed["rows"] == rows
    assert pushed["first_batch_size"] == 2000 and pushed["archiver"]["source"] == "none"
    assert pushed == json.loads(json.dumps(pushed))  # JSON through and through, as XCom stores it
    with psycopg.connect(connection.dsn(), autocommit=True) as conn:
        stored = load_plan(conn, "plan_first")
    assert stored is not None
    assert stored.plan == pushed
    assert stored.fingerprint == increment_migration("plan_first", "plan_first").fingerprint
    # the plan changed nothing; the batch did its 2,000 keys once
    assert counter_histogram(connection, "plan_first")[(True, 1)] == 2000


def test_a_later_run_does_not_plan_again(connection, capsys):
    make_table(connection, "plan_twice", 12_000)
    dag, _ = migration_dag("plan_twice")
    first = run_dag(dag)
    assert len(planned(task_log_events(capsys))) == 1
    with psycopg.connect(connection.dsn(), autocommit=True) as conn:
        stored = load_plan(conn, "plan_twice")

    second = run_dag(dag)

    assert task_states(first) == task_states(second) == {"batch": "success"}
    assert not planned(task_log_events(capsys))
    assert plan_xcom(first) is not None
    assert plan_xcom(second) is None
    with psycopg.connect(connection.dsn(), autocommit=True) as conn:
        assert load_plan(conn, "plan_twice") == stored  # not planned, not saved again
    assert set(counter_histogram(connection, "plan_twice")) == {(True, 1), (False, 0)}  # every key, once


def test_a_plan_that_cannot_take_its_lock_warns_and_the_batch_runs(connection, capsys):
    make_table(connection, "plan_locked_run", 30_000)
    keys = in_scope_keys(connection, "plan_locked_run")
    dag, _ = migration_dag("plan_locked_run")
    locked = keys[len(keys) * 3 // 5]  # the fourth sample range's first key; the first batch is far before
    with psycopg.connect(connection.dsn()) as holder:
        holder.execute("SELECT 1 FROM plan_locked_run WHERE id = %s FOR UPDATE", [locked])

        dag_run = run_dag(dag)

        holder.rollback()
    assert task_states(dag_run) == {"batch": "success"}
    events = task_log_events(capsys)
    (warning,) = not_planned(events)
    assert warning.text.startswith(
        "Migration plan_locked_run: not planned at its first run, the batch goes on: "
    )
    assert "lock_timeout of 1000 ms" in warning.text
    assert "\n" not in warning.text  # one line
    assert not planned(events)
    assert plan_xcom(dag_run) is None
    with psycopg.connect(connection.dsn(), autocommit=True) as conn:
        assert load_plan(conn, "plan_locked_run") is None
    assert counter_histogram(connection, "plan_locked_run")[(True, 1)] == 2000


def test_a_failing_batch_sql_warns_then_fails_the_batch_with_its_own_error(connection, capsys):
    make_table(connection, "plan_poisoned", 3000)
    poisoned = "UPDATE plan_poisoned SET counter = 1 / (id - id) WHERE id BETWEEN %(start)s AND %(end)s"
    failures: list[BaseException] = []
    dag, _ = migration_dag(
        "plan_poisoned",
        batch_sql=poisoned,
        scope=None,
        max_attempts=1,
        on_failure_callback=lambda context: failures.append(context.get("exception")),
    )

    dag_run = run_dag(dag)

    assert task_states(dag_run) == {"batch": "failed"}
    (warning,) = not_planned(task_log_events(capsys))
    assert "batch_sql failed in the plan's sample of public.plan_poisoned (rolled back)" in warning.text
    assert "division by zero" in warning.text
    # the batch went on, and failed with its own error
    assert "attempt 1/1: division by zero" in str(failures[0])


def test_first_run_plan_off_plans_nothing(connection, monkeypatch, capsys):
    monkeypatch.setenv(FIRST_RUN_PLAN_ENV, "False")
    make_table(connection, "plan_off", 3000)
    dag, _ = migration_dag("plan_off")

    dag_run = run_dag(dag)

    assert task_states(dag_run) == {"batch": "success"}
    events = task_log_events(capsys)
    assert any("Migration plan_off: job 1" in event.text for event in events)  # the log was read
    assert not planned(events)
    assert not not_planned(events)
    assert plan_xcom(dag_run) is None
    with psycopg.connect(connection.dsn(), autocommit=True) as conn:
        assert load_plan(conn, "plan_off") is None


def test_an_invalid_option_warns_and_the_batch_runs(connection, monkeypatch, capsys):
    monkeypatch.setenv(WINDOW_ENV, "ten")
    make_table(connection, "plan_bad_option", 3000)
    dag, _ = migration_dag("plan_bad_option")

    dag_run = run_dag(dag)

    assert task_states(dag_run) == {"batch": "success"}
    (warning,) = not_planned(task_log_events(capsys))
    fix = "got 'ten'; fix it in airflow.cfg or AIRFLOW__WALTHROTTLE__PLAN_ARCHIVER_WINDOW_SECONDS"
    assert (
        "[walthrottle] plan_archiver_window_seconds must be a whole number of seconds (0 to 600)"
        in warning.text
    )
    assert fix in warning.text


def test_the_archiver_window_is_the_configured_one(connection, monkeypatch):
    monkeypatch.setenv(WINDOW_ENV, "1")
    make_table(connection, "plan_window", 3000)
    dag, _ = migration_dag("plan_window")

    pushed = plan_xcom(run_dag(dag))

    # watched for about a second (the clock is the server's): not skipped as with 0
    assert pushed["archiver"]["window_seconds"] >= 0.9


def test_a_first_run_that_waits_keeps_its_plan_and_does_not_plan_again_when_it_resumes(
    connection, monkeypatch, capsys
):
    from tests.support.archive_gate import GateOpener

    make_table(connection, "plan_waits", 3000)
    monkeypatch.setenv("AIRFLOW_VAR_BATCHED_MIGRATIONS_HEALTH_STATUS_WAL", "true")
    connection.archive_one_segment()
    connection.make_backlog(5)
    dag, _ = migration_dag("plan_waits", max_pending_segments=3)

    opener = GateOpener(connection, "postgres", checks=3)
    opener.start()
    try:
        dag_run = run_dag(dag)
    finally:
        opener.stop.set()

    assert opener.opened.is_set()
    assert task_states(dag_run) == {"batch": "success"}
    events = task_log_events(capsys)
    assert any("waits until the health gate clears" in event.text for event in events)
    assert len(planned(events)) == 1  # before the wait, not again after it
    assert plan_xcom(dag_run)["rows"] == len(in_scope_keys(connection, "plan_waits"))

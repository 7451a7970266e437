"""The composition helper: the DAG it builds, and that DAG run under ``dag.test()``."""

from __future__ import annotations

import datetime
import subprocess
import sys
import tempfile
import textwrap
import uuid

import pendulum
import pytest
from airflow.sdk import Asset, AssetOrTimeSchedule, CronTriggerTimetable, DeltaTriggerTimetable

from airflow_provider_walthrottle import BatchedMigrationOperator, WalArchivalSensor, batched_migration_dag
from airflow_provider_walthrottle.migration_dag import BackToBack, batch_asset
from tests.support.dag_testing import migrate_metadata_db, run_dag, task_states, xcom_of
from tests.support.migration_tables import INCREMENT, SCOPE, counter_histogram, make_table

START = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
UTC, PARIS = pendulum.timezone("UTC"), pendulum.timezone("Europe/Paris")


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


# --------------------------------------------------------------------------------------------------
# the schedule: back to back by default, and a chain that stops by itself
# --------------------------------------------------------------------------------------------------


def test_by_default_each_applied_batch_schedules_the_next_run():
    dag = make_dag("chained")

    asset = batch_asset(dag.dag_id)
    assert isinstance(dag.timetable, AssetOrTimeSchedule)
    assert dag.timetable.asset_condition == asset
    assert dag.timetable.timetable == DeltaTriggerTimetable(datetime.timedelta(minutes=5))
    assert dag.get_task("chained.apply_batch").outlets == [asset]
    assert dag.get_task("chained.wait_for_wal_archival").outlets == []
    assert dag.max_active_runs == 1


@pytest.mark.parametrize(
    ("schedule", "timetable"),
    [
        ("@daily", CronTriggerTimetable("@daily", timezone=UTC)),
        (datetime.timedelta(minutes=5), DeltaTriggerTimetable(datetime.timedelta(minutes=5))),
    ],
)
def test_an_explicit_schedule_is_the_only_one_and_chains_nothing(schedule, timetable):
    dag = make_dag("explicit", schedule=schedule)

    assert dag.timetable == timetable
    assert dag.get_task("explicit.apply_batch").outlets == []


@pytest.mark.parametrize(
    ("every", "start_date", "time_part"),
    [
        (datetime.timedelta(hours=1), START, DeltaTriggerTimetable(datetime.timedelta(hours=1))),
        ("@hourly", START, CronTriggerTimetable("@hourly", timezone=UTC)),  # 3.2 keeps the alias
        ("30 2 * * *", pendulum.datetime(2026, 1, 1, tz=PARIS), CronTriggerTimetable("30 2 * * *", PARIS)),
    ],
)
def test_back_to_back_takes_its_time_part_in_the_start_dates_zone(every, start_date, time_part):
    dag = make_dag("every", schedule=BackToBack(every=every), start_date=start_date)

    assert dag.timetable.timetable == time_part
    assert dag.timetable.asset_condition == batch_asset(dag.dag_id)


def test_back_to_back_refuses_a_time_part_it_cannot_read():
    with pytest.raises(TypeError, match="takes a timedelta or a cron expression, got 300"):
        make_dag("every", schedule=BackToBack(every=300))  # type: ignore[arg-type]


def test_the_outlets_a_user_gives_the_batch_are_kept():
    mine = Asset(name="warehouse/orders_total_cents")
    dag = make_dag("outlets", operator_kwargs={"batch_size": 5000, "outlets": [mine]})

    assert dag.get_task("outlets.apply_batch").outlets == [mine, batch_asset(dag.dag_id)]


def test_the_parsed_default_dag_is_periodic_for_the_scheduler_and_backfills(tmp_path):
    # what the dag-processor does with a DAG file, then what `airflow backfill create` checks first
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.serialized_dag import SerializedDagModel

    bag = DagBag(dag_folder=str(tmp_path / write_default_dag_file(tmp_path)))
    assert bag.import_errors == {}
    (dag,) = bag.dags.values()
    sync_to_db(dag)

    serialized = SerializedDagModel.get_dag(dag.dag_id)
    assert serialized is not None
    assert serialized.timetable.periodic  # `airflow backfill create` refuses a DAG without it
    assert serialized.timetable.summary == "Asset or 0:05:00"


def test_the_chain_stops_by_itself_once_the_migration_is_finished(monkeypatch, migration_db):
    from airflow.models import DagModel
    from airflow.models.asset import AssetDagRunQueue
    from airflow.utils.session import create_session
    from sqlalchemy import delete, update

    monkeypatch.setenv("AIRFLOW_CONN_HELPER_DB", migration_db.uri())
    make_table(migration_db, "chain_table", 12_000)
    dag = make_dag("chain_table")
    sync_to_db(dag)
    with create_session() as session:  # a paused DAG's asset events queue no run
        session.execute(update(DagModel).where(DagModel.dag_id == dag.dag_id).values(is_paused=False))

    def next_run_queued() -> bool:
        # the scheduler's own question: which DAGs have asset events that start a run?
        with create_session() as session:
            _, triggered = DagModel.dags_needing_dagruns(session)
            # as the scheduler does when it creates the run these events start
            session.execute(delete(AssetDagRunQueue).where(AssetDagRunQueue.target_dag_id == dag.dag_id))
        return dag.dag_id in triggered

    applied = run_dag(dag)
    assert task_states(applied)["chain_table.apply_batch"] == "success"
    assert next_run_queued()

    finished = run_dag(dag)
    assert task_states(finished)["chain_table.apply_batch"] == "skipped"
    assert not next_run_queued()
    assert set(counter_histogram(migration_db, "chain_table")) == {(True, 1), (False, 0)}


@pytest.mark.slow
def test_airflow_backfill_create_takes_the_default_dag(tmp_path):
    # the real command, in its own process, against this session's metadata database (5 to 10 s)
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    (dag,) = DagBag(dag_folder=str(tmp_path / write_default_dag_file(tmp_path))).dags.values()
    sync_to_db(dag)

    result = subprocess.run(
        [sys.executable, "-m", "airflow", "backfill", "create", "--dag-id", dag.dag_id,
         "--from-date", "2026-01-01T00:00:00+00:00", "--to-date", "2026-01-01T00:10:00+00:00"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    assert result.returncode == 0, result.stdout + result.stderr
    with create_session() as session:
        runs = session.scalars(select(DagRun).where(DagRun.dag_id == dag.dag_id)).all()
    assert {run.run_type for run in runs} == {"backfill"}
    assert sorted(run.logical_date.strftime("%H:%M") for run in runs) == ["00:00", "00:05", "00:10"]


def sync_to_db(dag) -> None:
    """Write a DAG to the metadata database as the dag-processor does (``run_dag`` does it too)."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db

    migrate_metadata_db()
    DagBundlesManager().sync_bundles_to_db()
    bag = DagBag(dag_folder=tempfile.mkdtemp(prefix="walthrottle-dags-"), collect_dags=False)
    bag.bag_dag(dag)
    sync_bag_to_db(bag, "dags-folder", None)


def write_default_dag_file(folder) -> str:
    """Write a DAG file that calls ``batched_migration_dag()`` with its defaults; return its name."""
    dag_id = f"helper_default_{uuid.uuid4().hex[:8]}"
    (folder / f"{dag_id}.py").write_text(
        textwrap.dedent(f"""
            import pendulum

            from airflow_provider_walthrottle import batched_migration_dag

            dag = batched_migration_dag(
                dag_id={dag_id!r},
                start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
                postgres_conn_id="warehouse",
                migration_name={dag_id!r},
                table="public.items",
                column="id",
                batch_sql="UPDATE public.items SET done = true WHERE id BETWEEN %(start)s AND %(end)s",
            )
        """)
    )
    return f"{dag_id}.py"

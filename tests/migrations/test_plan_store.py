"""The stored plans on real PostgreSQL: saved as JSON, read back, replaced, and read with their migration."""

from __future__ import annotations

import dataclasses
import json

import psycopg
import pytest

from airflow_provider_walthrottle.migrations.optimizer import BatchSizePolicy
from airflow_provider_walthrottle.migrations.plan import compute_plan
from airflow_provider_walthrottle.migrations.plan_store import load_plan, load_plans, read_plans, save_plan
from airflow_provider_walthrottle.migrations.runner import RunSettings, prepare
from tests.support.migration_runs import run_bounded_batch, run_until_finished
from tests.support.migration_tables import increment_migration, make_table

SETTINGS = RunSettings(
    sub_batch_size=100, pause_ms=0, policy=BatchSizePolicy(min_batch_size=300, max_batch_size=300)
)


def connect(cluster) -> psycopg.Connection:
    return psycopg.connect(cluster.dsn(), autocommit=True)


def plans_table_exists(cluster) -> bool:
    return bool(
        cluster.execute("SELECT to_regclass('walthrottle.batched_migration_plans') IS NOT NULL")[0][0]
    )


def test_a_saved_plan_reads_back_as_its_json_with_the_definitions_fingerprint(migration_db):
    make_table(migration_db, "stored_items", 6000)
    definition = increment_migration("stored_items", "stored_items")
    with connect(migration_db) as conn:
        plan = compute_plan(conn, definition, archiver_window_seconds=0)
        (before,) = conn.execute("SELECT now()").fetchone()
        save_plan(conn, definition, plan)  # the state tables do not exist yet: it creates them
        stored = load_plan(conn, "stored_items")
        (after,) = conn.execute("SELECT now()").fetchone()

    assert stored is not None
    assert stored.migration_name == "stored_items"
    assert stored.fingerprint == definition.fingerprint
    assert before <= stored.planned_at <= after
    # the plan's own figures, as JSON has them (its tuples read back as lists)
    assert stored.plan == json.loads(json.dumps(plan.to_dict()))
    assert stored.plan["rows"] == plan.rows > 0
    assert stored.plan["samples"][0]["keys"] == plan.samples[0].keys
    assert stored.plan["bounds"] == plan.bounds
    assert stored.plan["binding"] == plan.binding
    assert stored.plan["archiver"]["source"] == plan.archiver.source
    assert stored.plan["warnings"] == list(plan.warnings)
    # kept as jsonb, whose fields SQL reads
    rows = migration_db.execute(
        "SELECT (plan ->> 'rows')::bigint, jsonb_typeof(plan -> 'samples') "
        "FROM walthrottle.batched_migration_plans"
    )
    assert rows == [(plan.rows, "array")]


def test_saving_again_replaces_the_plan_of_that_name(migration_db):
    make_table(migration_db, "replaced_items", 3000)
    first = increment_migration("replaced_items", "replaced_items")
    other = dataclasses.replace(first, batch_sql=first.batch_sql.replace("counter + 1", "counter + 2"))
    with connect(migration_db) as conn:
        save_plan(conn, first, compute_plan(conn, first, archiver_window_seconds=0))
        planned = load_plan(conn, first.name)
        replacement = compute_plan(conn, other, archiver_window_seconds=0, max_pending_segments=7)
        save_plan(conn, other, replacement)
        plans = load_plans(conn)

    assert planned is not None
    assert list(plans) == [first.name]  # one row per name
    assert plans[first.name].fingerprint == other.fingerprint != first.fingerprint
    assert plans[first.name].plan["max_pending_segments"] == 7
    assert plans[first.name].planned_at >= planned.planned_at


def test_without_the_state_tables_nothing_is_stored_and_nothing_created(migration_db):
    with psycopg.connect(migration_db.dsn(), autocommit=True) as conn:
        conn.read_only = True
        assert load_plan(conn, "anything") is None
        assert load_plans(conn) == {}
        assert read_plans(conn) == []
    assert migration_db.execute("SELECT to_regnamespace('walthrottle') IS NULL") == [(True,)]


def test_state_tables_from_before_the_plans_table_get_it_at_the_next_run(migration_db):
    make_table(migration_db, "older_items", 600)
    definition = increment_migration("older_items", "older_items")
    with connect(migration_db) as conn:
        prepare(conn, definition, batch_size=300)
        conn.execute("DROP TABLE walthrottle.batched_migration_plans")  # as a release before it left them
        assert load_plans(conn) == {} and read_plans(conn) == []  # read as no plans, not an error

        prepare(conn, definition, batch_size=300)  # the next task creates it in place

        assert plans_table_exists(migration_db)
        save_plan(conn, definition, compute_plan(conn, definition, archiver_window_seconds=0))
        assert set(load_plans(conn)) == {"older_items"}


def test_a_plan_of_another_table_is_refused(migration_db):
    make_table(migration_db, "right_items", 600)
    make_table(migration_db, "wrong_items", 600)
    with connect(migration_db) as conn:
        plan = compute_plan(conn, increment_migration("wrong", "wrong_items"), archiver_window_seconds=0)
        with pytest.raises(
            ValueError, match=r"the plan is of public\.wrong_items\.id, but migration 'right'"
        ):
            save_plan(conn, increment_migration("right", "right_items"), plan)
    assert not plans_table_exists(migration_db)


def test_read_plans_tells_not_started_running_and_stale_plans_with_the_wal_the_jobs_wrote(migration_db):
    for table in ("waiting_items", "running_items", "reused_items"):
        make_table(migration_db, table, 1200)
    waiting = increment_migration("waiting", "waiting_items")
    running = increment_migration("running", "running_items")
    reused = increment_migration("reused", "reused_items")
    with connect(migration_db) as conn:
        for definition in (waiting, running, reused):
            save_plan(conn, definition, compute_plan(conn, definition, archiver_window_seconds=0))
        store = prepare(conn, running, batch_size=300)
        run_bounded_batch(store, SETTINGS)
        # another definition started under the plan's name: the plan is not its plan
        changed = increment_migration("reused", "running_items")
        run_until_finished(prepare(conn, changed, batch_size=300), SETTINGS)
        plans = {reading.name: reading for reading in read_plans(conn)}
        (only,) = read_plans(conn, name="running")

    jobs = dict(
        migration_db.execute(
            "SELECT migration_name, ARRAY[sum(wal_bytes), sum(keys_done)]::bigint[] "
            "FROM walthrottle.batched_migration_jobs GROUP BY 1"
        )
    )
    assert not plans["waiting"].started and not plans["waiting"].stale
    assert (plans["waiting"].wal_bytes, plans["waiting"].keys_done) == (0, 0)
    assert plans["waiting"].measured_wal_bytes_per_row is None

    assert plans["running"].started and not plans["running"].stale
    assert [plans["running"].wal_bytes, plans["running"].keys_done] == jobs["running"]
    assert 0 < plans["running"].keys_done < 1200 * 7 // 6
    assert plans["running"].measured_wal_bytes_per_row == jobs["running"][0] / jobs["running"][1]
    assert only == plans["running"]

    assert plans["reused"].started and plans["reused"].stale
    assert plans["reused"].migration_fingerprint == changed.fingerprint

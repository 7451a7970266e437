"""Where a migration's wall-clock time goes, and the ETA from it, against real PostgreSQL.

The batching core's entry point, ``run_batch``, is called as the operator calls it, with real
sleeps in between for the schedule, the throttled waits, the retry delay and a pause; the time
accounts in the state tables are checked against what the test measured with its own clock.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import threading
import time
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from airflow_provider_walthrottle.migrations import queries
from airflow_provider_walthrottle.migrations.batch import BatchDone, Finished, WaitForBacklog, run_batch
from airflow_provider_walthrottle.migrations.catalog import read_migrations, set_migration_paused
from airflow_provider_walthrottle.migrations.definition import MigrationDefinition
from airflow_provider_walthrottle.migrations.optimizer import BatchSizePolicy
from airflow_provider_walthrottle.migrations.progress import Progress
from airflow_provider_walthrottle.migrations.runner import HealthVerdict, JobFailedError, RunSettings, prepare
from airflow_provider_walthrottle.migrations.state import Activity, MigrationStatus
from airflow_provider_walthrottle.wal.health import evaluate_wal_archival
from airflow_provider_walthrottle.wal.queries import read_archiver_status
from tests.support.migration_runs import always_healthy
from tests.support.migration_tables import SCOPE, counter_histogram, increment_migration, make_table

log = logging.getLogger(__name__)

#: Each sub-batch's statement sleeps this long: about 0.2 s a batch of 10 sub-batches.
STATEMENT_SLEEP = 0.02


def slow_migration(name: str, table: str, *, switch: str | None = None) -> MigrationDefinition:
    """The increment migration, each statement ``STATEMENT_SLEEP`` long; failing while ``switch`` says so."""
    fails = f" + 0 / (SELECT CASE WHEN fail THEN 0 ELSE 1 END FROM {switch})" if switch else ""
    return MigrationDefinition(
        name=name,
        table=table,
        column="id",
        batch_sql=(
            f"UPDATE {table} SET counter = counter + 1{fails} WHERE id BETWEEN %(start)s AND %(end)s "
            f"AND {SCOPE} AND (SELECT pg_sleep({STATEMENT_SLEEP})) IS NOT NULL"
        ),
        scope=SCOPE,
    )


def fixed_batches(keys: int, *, sub_batch_size: int) -> RunSettings:
    """Settings whose every batch is ``keys`` keys, in sub-batches of ``sub_batch_size``."""
    return RunSettings(
        sub_batch_size=sub_batch_size,
        pause_ms=0,
        policy=BatchSizePolicy(min_batch_size=keys, max_batch_size=keys),
    )


def total_keys(cluster, table: str) -> int:
    (count,) = cluster.execute(
        sql.SQL("SELECT count(*) FROM {} WHERE tenant % 3 = 0").format(sql.Identifier(table))
    )[0]
    return int(count)


def stopped_by_the_backlog(conn: psycopg.Connection[Any]):
    """A health check that finds 50 segments pending (above 42), on this server's segment size."""
    status = dataclasses.replace(read_archiver_status(conn), pending_segments=50)
    health = evaluate_wal_archival(status, 42)
    return lambda: HealthVerdict(proceed=False, health=health)


class Stopwatch:
    """The test's own account of where the time went, by the same names as the state tables'."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.last = time.monotonic()

    def lap(self, account: str) -> float:
        """Put the time since the last lap down to ``account``; return it."""
        now = time.monotonic()
        spent, self.last = now - self.last, now
        self.seconds[account] = self.seconds.get(account, 0.0) + spent
        return spent


@pytest.mark.slow
def test_the_time_accounts_add_up_to_the_wall_clock_and_agree_with_a_stopwatch(migration_db):
    make_table(migration_db, "accounts_where", 1500)  # 600 keys in scope: 6 batches of 100
    migration_db.execute("DROP TABLE IF EXISTS accounts_switch")
    migration_db.execute("CREATE TABLE accounts_switch (fail boolean NOT NULL)")
    migration_db.execute("INSERT INTO accounts_switch VALUES (false)")
    definition = slow_migration("accounts_where", "accounts_where", switch="accounts_switch")
    settings = fixed_batches(100, sub_batch_size=50)
    with psycopg.connect(migration_db.dsn(), autocommit=True) as conn:
        store = prepare(conn, definition, batch_size=100)
        watch = Stopwatch()  # the accounts' clock started when prepare() registered the migration
        assert isinstance(run_batch(store, settings, always_healthy), BatchDone)
        watch.lap("running")
        time.sleep(0.6)  # the schedule
        watch.lap("waiting")
        assert isinstance(run_batch(store, settings, stopped_by_the_backlog(conn)), WaitForBacklog)
        watch.lap("running")
        time.sleep(0.8)  # deferred until the backlog drains
        watch.lap("throttled")
        assert isinstance(run_batch(store, settings, always_healthy), BatchDone)
        watch.lap("running")
        time.sleep(0.5)
        watch.lap("waiting")
        migration_db.execute("UPDATE accounts_switch SET fail = true")
        with pytest.raises(JobFailedError, match="division by zero; it will be retried"):
            run_batch(store, settings, always_healthy)
        watch.lap("failed")
        time.sleep(0.6)  # the retry delay
        migration_db.execute("UPDATE accounts_switch SET fail = false")
        watch.lap("failed")
        assert isinstance(run_batch(store, settings, always_healthy), BatchDone)  # the retry
        watch.lap("running")
        set_migration_paused(conn, "accounts_where", True)
        watch.lap("waiting")
        time.sleep(0.8)
        set_migration_paused(conn, "accounts_where", False)
        watch.lap("paused")
        time.sleep(0.4)
        watch.lap("waiting")
        done = run_batch(store, settings, always_healthy)
        watch.lap("running")
        assert isinstance(done, BatchDone)
        time.sleep(0.2)
        progress = store.accounts.progress()
        watch.lap("waiting")

    breakdown = progress.breakdown
    assert breakdown is not None
    measured = watch.seconds
    wall = sum(measured.values())
    log.info("stopwatch %s; state tables %s", measured, breakdown.to_dict())
    assert breakdown.wall_clock == pytest.approx(wall, rel=0.03)
    # each account as the stopwatch saw it, within 0.15 s (the stopwatch's laps include Python's
    # time around the statements that change the accounts); the shortest part is 0.4 s
    assert breakdown.running == pytest.approx(measured["running"], abs=0.15)
    assert breakdown.throttled_by == {"wal_archival": pytest.approx(measured["throttled"], abs=0.15)}
    assert breakdown.waiting == pytest.approx(measured["waiting"], abs=0.15)
    assert breakdown.failed == pytest.approx(measured["failed"], abs=0.15)
    assert breakdown.paused == pytest.approx(measured["paused"], abs=0.15)
    assert breakdown.not_recorded < 0.02 * wall
    # the batch's summary (the XCom) carries the same accounts at its end
    summary = done.summary["time_spent_seconds"]
    assert summary["failed_and_retried"] == pytest.approx(measured["failed"], abs=0.15)
    assert summary["throttled_by"] == {"wal_archival": pytest.approx(measured["throttled"], abs=0.15)}
    assert set(counter_histogram(migration_db, "accounts_where")) == {(True, 1), (True, 0), (False, 0)}


@pytest.mark.slow
def test_the_eta_after_half_the_keys_is_the_time_the_rest_takes_at_a_schedule_slower_than_the_batches(
    migration_db,
):
    """Batches of about 0.2 s every second: the statements are a fifth of the wall-clock time.

    The ETA shown after half the keys (in the batch's XCom and on the page) is checked against the
    time the rest of the keys really took; an ETA from the statements' time alone (0.1's) would
    promise about a fifth of it, and is checked to miss by far, so that this test can fail.
    """
    make_table(migration_db, "accounts_eta", 6000)
    keys = total_keys(migration_db, "accounts_eta")
    batches = 24
    batch = math.ceil(keys / batches)
    gap = 0.8  # the schedule: a batch starts about every 0.8 s + its own time
    settings = fixed_batches(batch, sub_batch_size=math.ceil(batch / 10))
    finished_at: list[float] = []
    summaries: list[dict[str, Any]] = []
    with (
        psycopg.connect(migration_db.dsn(), autocommit=True) as conn,
        psycopg.connect(migration_db.dsn(), autocommit=True) as page,
    ):
        store = prepare(conn, slow_migration("accounts_eta", "accounts_eta"), batch_size=batch)
        shown: float | None = None
        for _ in range(batches + 5):
            step = run_batch(store, settings, always_healthy)
            if isinstance(step, Finished):
                break
            assert isinstance(step, BatchDone), step
            finished_at.append(time.monotonic())
            summaries.append(step.summary)
            if shown is None and step.summary["percentage"] >= 50:
                (summary,) = read_migrations(page, name="accounts_eta")
                shown = summary.eta_seconds
                shown_assumes = summary.eta_assumes
                half = len(summaries) - 1
                # the same tables read with a window of the last 10 batches (whole cycles)
                with page.cursor(row_factory=dict_row) as cursor:
                    cursor.execute(
                        queries.PROGRESS, {"name": "accounts_eta", "recent_minutes": 0, "recent_batches": 10}
                    )
                    last_ten = Progress.from_row(cursor.fetchone())
            time.sleep(gap)
    assert shown is not None, summaries[-1]
    at_half = summaries[half]
    actual = finished_at[-1] - finished_at[half]  # until the last key was done
    eta = at_half["eta_wall_clock_seconds"]
    statement_eta = (at_half["total_keys"] - at_half["keys_done"]) / at_half["statement_keys_per_second"]
    log.info(
        "after %s of %s batches (%.1f%%): ETA %.1f s (%s; page %.1f s), the rest took %.1f s: %+.1f%%; "
        "statement-time ETA %.1f s: %+.1f%%; %s",
        half + 1,
        len(summaries),
        at_half["percentage"],
        eta,
        at_half["eta_assumes"],
        shown,
        actual,
        100 * (eta - actual) / actual,
        statement_eta,
        100 * (statement_eta - actual) / actual,
        at_half["time_spent_seconds"],
    )
    assert len(summaries) == batches
    assert eta == pytest.approx(actual, rel=0.25)
    assert shown == pytest.approx(actual, rel=0.25)
    # all of it within the last 15 minutes: the recent pace is the pace since the first batch
    assert at_half["eta_assumes"] == shown_assumes == "at the pace since the first batch"
    assert at_half["eta_seconds"] == eta  # the deprecated alias
    assert last_ten.pace is not None and last_ten.pace.batches == 10
    assert last_ten.eta_assumes == "at the last 10 batches' pace"
    assert last_ten.eta_seconds == pytest.approx(actual, rel=0.25)
    log.info(
        "at the last 10 batches' pace: ETA %.1f s: %+.1f%%",
        last_ten.eta_seconds,
        100 * (last_ten.eta_seconds - actual) / actual,
    )
    # what the server does while a batch runs is about five times the migration's pace
    assert at_half["statement_keys_per_second"] > 3 * at_half["recent_keys_per_second"]
    assert statement_eta < 0.5 * actual
    spent = summaries[-1]["time_spent_seconds"]
    assert spent["running"] + spent["waiting_between_batches"] == pytest.approx(spent["wall_clock"], rel=0.03)
    assert spent["waiting_between_batches"] > 2 * spent["running"]


def test_the_log_line_and_the_xcom_name_both_rates_the_eta_and_where_the_time_went(migration_db):
    make_table(migration_db, "accounts_line", 1000)
    with psycopg.connect(migration_db.dsn(), autocommit=True) as conn:
        store = prepare(conn, increment_migration("accounts_line", "accounts_line"), batch_size=100)
        settings = fixed_batches(100, sub_batch_size=100)
        first = run_batch(store, settings, always_healthy)
        time.sleep(0.3)
        second = run_batch(store, settings, always_healthy)
    assert isinstance(first, BatchDone) and isinstance(second, BatchDone)
    summary, line = second.summary, second.describe()
    assert summary["effective_keys_per_second"] > 0 and summary["recent_keys_per_second"] > 0
    assert summary["recent_window"] == "since the first batch"
    # the statements ran for milliseconds of the 0.3 s
    assert summary["statement_keys_per_second"] > 10 * summary["effective_keys_per_second"]
    assert summary["rows_per_second"] == summary["statement_keys_per_second"]  # deprecated alias
    assert summary["eta_wall_clock_seconds"] == summary["eta_seconds"] > 0
    assert summary["eta_assumes"] == "at the pace since the first batch"
    assert summary["time_spent_seconds"]["waiting_between_batches"] >= 0.3
    assert line.startswith("job 2 (keys ")
    recent, effective = summary["recent_keys_per_second"], summary["effective_keys_per_second"]
    assert (
        f"; effective rate {recent:.1f} keys/s since the first batch ({effective:.1f} since it started); "
        in line
    )
    assert f"; statement rate {summary['statement_keys_per_second']:.1f} keys/s; ETA " in line
    assert re.search(
        r" at the pace since the first batch; wall clock 0\.[345] s: .*waiting between batches 0\.[345] s$",
        line,
    )


def test_a_throttled_migration_is_held_by_its_signal_and_a_paused_one_by_the_pause(migration_db):
    make_table(migration_db, "accounts_held", 1000)
    with psycopg.connect(migration_db.dsn(), autocommit=True) as conn:
        store = prepare(conn, increment_migration("accounts_held", "accounts_held"), batch_size=100)
        settings = fixed_batches(100, sub_batch_size=100)
        assert isinstance(run_batch(store, settings, always_healthy), BatchDone)
        assert isinstance(run_batch(store, settings, stopped_by_the_backlog(conn)), WaitForBacklog)
        time.sleep(0.3)
        throttled = store.accounts.progress()
        # still stopped at the next task: held since the first stop, not since the last check
        assert isinstance(run_batch(store, settings, stopped_by_the_backlog(conn)), WaitForBacklog)
        again = store.accounts.progress()
        set_migration_paused(conn, "accounts_held", True)
        time.sleep(0.2)
        paused = store.accounts.progress()
        set_migration_paused(conn, "accounts_held", False)
        resumed = store.accounts.progress()
        assert isinstance(run_batch(store, settings, always_healthy), BatchDone)
        going = store.accounts.progress()
    assert throttled.time is not None and throttled.time.activity is Activity.THROTTLED
    assert (throttled.eta_seconds, throttled.held_by) == (None, "throttled by wal_archival")
    assert throttled.held_seconds is not None and 0.3 <= throttled.held_seconds < 0.6
    assert again.held_seconds is not None and again.held_seconds >= 0.3
    assert (paused.status, paused.held_by, paused.eta_seconds) == (MigrationStatus.PAUSED, "paused", None)
    assert paused.held_seconds is not None and paused.held_seconds >= 0.5
    assert resumed.held_by is None and resumed.eta_seconds is not None
    assert going.time is not None and going.time.held_since is None
    breakdown = going.breakdown
    assert breakdown is not None and 0.2 <= breakdown.paused < 0.5
    assert breakdown.throttled_by["wal_archival"] >= 0.3


#: The state tables as 0.1 created them, with a migration half done, throttled when 0.2 arrives.
STATE_0_1 = """
CREATE SCHEMA walthrottle;
CREATE TABLE walthrottle.batched_migrations (
    name text PRIMARY KEY, table_schema text NOT NULL, table_name text NOT NULL,
    column_name text NOT NULL, key_type text NOT NULL, batch_sql text NOT NULL, scope text,
    fingerprint text NOT NULL, min_key text, max_key text, total_rows bigint NOT NULL, cursor_key text,
    status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'paused', 'finished', 'failed')),
    batch_size integer NOT NULL CHECK (batch_size > 0), rows_per_second double precision,
    wal_bytes_per_row double precision, throttled_seconds double precision NOT NULL DEFAULT 0,
    throttled_since timestamptz, last_error text, created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(), finished_at timestamptz);
CREATE TABLE walthrottle.batched_migration_jobs (
    id bigserial PRIMARY KEY,
    migration_name text NOT NULL REFERENCES walthrottle.batched_migrations (name) ON DELETE CASCADE,
    start_key text NOT NULL, end_key text NOT NULL, planned_rows integer NOT NULL, resume_key text,
    status text NOT NULL CHECK (status IN ('pending', 'running', 'paused', 'succeeded', 'failed', 'split')),
    attempts integer NOT NULL DEFAULT 0, rows_affected bigint NOT NULL DEFAULT 0,
    keys_done integer NOT NULL DEFAULT 0, sub_batches integer NOT NULL DEFAULT 0,
    duration_seconds double precision NOT NULL DEFAULT 0, wal_bytes bigint NOT NULL DEFAULT 0,
    pending_segments integer, dag_id text, run_id text, try_number integer, last_error text,
    created_at timestamptz NOT NULL DEFAULT now(), started_at timestamptz, finished_at timestamptz);
CREATE INDEX batched_migration_jobs_migration_status_idx
    ON walthrottle.batched_migration_jobs (migration_name, status);
"""


def test_state_tables_of_0_1_are_upgraded_in_place_and_read_by_the_page_before(migration_db):
    make_table(migration_db, "accounts_old", 1000)
    definition = increment_migration("accounts_old", "accounts_old")
    with psycopg.connect(migration_db.dsn(), autocommit=True) as conn:
        # what 0.1 left: the migration registered an hour ago, 2 batches done, a wait of 2 min
        # closed and one open for 30 s; the first rows of the table done
        prepare(conn, definition, batch_size=100)  # to learn its row as 0.2 writes it
        row = conn.execute(
            "SELECT key_type, batch_sql, scope, fingerprint, min_key, max_key, total_rows "
            "FROM walthrottle.batched_migrations"
        ).fetchone()
        assert row is not None
        conn.execute("DROP SCHEMA walthrottle CASCADE")
        conn.execute(STATE_0_1)
        conn.execute(
            "INSERT INTO walthrottle.batched_migrations (name, table_schema, table_name, column_name, "
            "key_type, batch_sql, scope, fingerprint, min_key, max_key, total_rows, cursor_key, batch_size, "
            "throttled_seconds, throttled_since, created_at, updated_at) VALUES ('accounts_old', 'public', "
            "'accounts_old', 'id', %s, %s, %s, %s, %s, %s, %s, '199', 100, 120, now() - interval '30 s', "
            "now() - interval '1 h', now() - interval '1 min')",
            list(row),
        )
        conn.execute(
            "INSERT INTO walthrottle.batched_migration_jobs (migration_name, start_key, end_key, "
            "planned_rows, resume_key, status, attempts, keys_done, rows_affected, duration_seconds, "
            "started_at, finished_at) "
            "SELECT 'accounts_old', s, e, 50, e, 'succeeded', 1, 50, 50, 0.1, now() - f, now() - f "
            "FROM (VALUES ('1', '99', interval '20 min'), ('100', '199', interval '10 min')) AS j (s, e, f)"
        )
        conn.execute("UPDATE accounts_old SET counter = 1 WHERE id <= 199 AND tenant % 3 = 0")

        # the page reads the tables as they are, before any task upgraded them
        (before,) = read_migrations(conn)
        assert before.keys_done == 100 and before.recent_keys_per_second is not None
        assert (before.held_by, before.eta_seconds) == ("throttled by wal_archival", None)
        assert before.held_seconds == pytest.approx(30, abs=5)
        breakdown = before.breakdown
        assert breakdown is not None
        assert breakdown.throttled_by["wal_archival"] == pytest.approx(150, abs=5)
        assert breakdown.not_recorded == pytest.approx(3600 - 150, abs=5)
        assert set_migration_paused(conn, "accounts_old", True) == "paused"  # 0.1's statement
        assert set_migration_paused(conn, "accounts_old", False) == "active"
        conn.execute("UPDATE walthrottle.batched_migrations SET throttled_since = now() - interval '30 s'")

        # the next task upgrades them in place, and goes on where 0.1 stopped
        store = prepare(conn, definition, batch_size=100)
        columns = {
            name
            for (name,) in conn.execute(
                "SELECT attname FROM pg_attribute WHERE attnum > 0 AND NOT attisdropped "
                "AND attrelid = 'walthrottle.batched_migrations'::regclass"
            )
        }
        assert {"activity", "activity_since", "held_since", "throttled_by", "running_seconds"} <= columns
        upgraded = store.accounts.progress()
        assert upgraded.time is not None and upgraded.time.activity is Activity.THROTTLED
        assert upgraded.breakdown is not None
        assert upgraded.breakdown.throttled_by["wal_archival"] == pytest.approx(150, abs=5)
        assert upgraded.keys_done == 100 and upgraded.cursor_key == "199"
        settings = fixed_batches(1000, sub_batch_size=100)
        steps = [run_batch(store, settings, always_healthy) for _ in range(3)]
        assert [type(step) for step in steps] == [BatchDone, Finished, Finished]
        finished = store.accounts.progress()
    assert set(counter_histogram(migration_db, "accounts_old")) == {(True, 1), (False, 0)}
    assert finished.time is not None and finished.time.activity is Activity.FINISHED
    assert finished.breakdown is not None
    assert finished.breakdown.throttled_by["wal_archival"] == pytest.approx(150, abs=5)
    assert finished.breakdown.not_recorded == pytest.approx(3600 - 150, abs=5)


def test_tables_already_upgraded_are_not_locked_by_the_next_tasks_check(migration_db):
    make_table(migration_db, "accounts_lock", 300)
    definition = increment_migration("accounts_lock", "accounts_lock")
    with (
        psycopg.connect(migration_db.dsn(), autocommit=True) as conn,
        psycopg.connect(migration_db.dsn(), autocommit=True) as reader,
    ):
        prepare(conn, definition, batch_size=100)
        conn.execute("SET lock_timeout = '2s'")
        # a long read of the state tables, as the page's: any ALTER TABLE would wait for it
        with reader.transaction():
            reader.execute("SELECT * FROM walthrottle.batched_migrations").fetchall()
            errors: list[BaseException] = []

            def next_task() -> None:
                try:
                    prepare(conn, definition, batch_size=100)
                except BaseException as error:  # reported below
                    errors.append(error)

            thread = threading.Thread(target=next_task)
            thread.start()
            thread.join(timeout=10)
        assert not thread.is_alive() and not errors, errors

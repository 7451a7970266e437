"""The batching core's entry point, ``run_batch``, against real PostgreSQL: what it says to do next."""

from __future__ import annotations

import dataclasses

import psycopg
import pytest

from airflow_provider_walthrottle.migrations.batch import (
    BatchDone,
    Finished,
    NothingToClaim,
    Paused,
    WaitForBacklog,
    run_batch,
)
from airflow_provider_walthrottle.migrations.catalog import set_migration_paused
from airflow_provider_walthrottle.migrations.optimizer import BatchSizePolicy
from airflow_provider_walthrottle.migrations.runner import HealthVerdict, RunSettings, prepare
from airflow_provider_walthrottle.wal.health import evaluate_wal_archival
from airflow_provider_walthrottle.wal.queries import read_archiver_status
from tests.support.migration_tables import counter_histogram, increment_migration, make_table

SETTINGS = RunSettings(sub_batch_size=100, pause_ms=0, max_pending_segments=42)


def always_healthy() -> HealthVerdict:
    return HealthVerdict(proceed=True)


def backlog_of(conn: psycopg.Connection, pending: int, *, proceed: bool = True):
    """Return a health check that reports ``pending`` segments, on this server's segment size."""
    status = dataclasses.replace(read_archiver_status(conn), pending_segments=pending)
    health = evaluate_wal_archival(status, SETTINGS.max_pending_segments)
    return lambda: HealthVerdict(proceed=proceed, health=health)


def throttle_columns(cluster, name: str) -> tuple[float, bool]:
    """Return the migration's ``throttled_seconds`` and whether a wait is open."""
    ((seconds, open_wait),) = cluster.execute(
        "SELECT throttled_seconds, throttled_since IS NOT NULL FROM walthrottle.batched_migrations "
        "WHERE name = %s",
        [name],
    )
    return seconds, open_wait


def test_batches_are_done_with_their_summary_until_the_migration_is_finished(migration_db):
    make_table(migration_db, "batch_done", 1000)
    with psycopg.connect(migration_db.dsn(), autocommit=True) as conn:
        store = prepare(conn, increment_migration("batch_done", "batch_done"), batch_size=150)
        settings = dataclasses.replace(
            SETTINGS, policy=BatchSizePolicy(min_batch_size=150, max_batch_size=150)
        )
        steps = [run_batch(store, settings, always_healthy) for _ in range(4)]
    histogram = counter_histogram(migration_db, "batch_done")
    assert set(histogram) == {(True, 1), (False, 0)}
    total = histogram[(True, 1)]
    assert [type(step) for step in steps] == [BatchDone] * 3 + [Finished], (total, steps)
    first = steps[0]
    assert isinstance(first, BatchDone)
    assert first.summary["outcome"] == "completed" and first.summary["keys"] == 150
    assert first.summary["total_keys"] == first.result.progress.total_keys == total
    assert first.describe().startswith("job 1 (keys ") and f"% of {total} keys" in first.describe()
    assert steps[-1].reason.startswith(
        f"Migration batch_done is finished: {total} rows affected over {total}"
    )


def test_a_backlog_above_the_threshold_waits_for_it_and_counts_the_wait_as_throttled(migration_db):
    make_table(migration_db, "batch_waits", 600)
    with psycopg.connect(migration_db.dsn(), autocommit=True) as conn:
        store = prepare(conn, increment_migration("batch_waits", "batch_waits"), batch_size=1000)
        step = run_batch(store, SETTINGS, backlog_of(conn, 50, proceed=False))
        assert isinstance(step, WaitForBacklog)
        assert (step.at_most, step.headroom) == (42, False)
        assert step.reason.startswith("throttled: stop: 50 WAL segments pending archival > threshold 42")
        assert throttle_columns(migration_db, "batch_waits") == (0.0, True)
        # the next batch closes the wait: the time between the two counts as throttled
        assert isinstance(run_batch(store, SETTINGS, always_healthy), BatchDone)
    seconds, open_wait = throttle_columns(migration_db, "batch_waits")
    assert seconds > 0 and not open_wait


@pytest.mark.parametrize(
    ("segments_per_min_batch", "pending", "at_most"),
    [
        pytest.param(5, 40, 37, id="five-segments"),
        pytest.param(5.5, 40, 36, id="five-and-a-half-need-six"),
        pytest.param(None, 42, 41, id="nothing-measured-one-segment"),
        pytest.param(50, 40, 0, id="more-than-the-threshold"),
    ],
)
def test_the_wait_for_headroom_ends_where_the_smallest_batch_fits(
    migration_db, segments_per_min_batch, pending, at_most
):
    make_table(migration_db, "batch_headroom", 3000)
    settings = dataclasses.replace(
        SETTINGS, policy=BatchSizePolicy(min_batch_size=1024, max_batch_size=10_000)
    )
    with psycopg.connect(migration_db.dsn(), autocommit=True) as conn:
        store = prepare(conn, increment_migration("batch_headroom", "batch_headroom"), batch_size=1024)
        segment = read_archiver_status(conn).wal_segment_size
        per_row = None if segments_per_min_batch is None else segment * segments_per_min_batch / 1024
        store.accounts.record_throughput(batch_size=1024, rows_per_second=None, wal_bytes_per_row=per_row)
        step = run_batch(store, settings, backlog_of(conn, pending))
    assert isinstance(step, WaitForBacklog), step
    assert (step.at_most, step.headroom) == (at_most, True)
    assert step.reason.startswith("throttled: wait: WAL headroom allows only ")
    assert set(counter_histogram(migration_db, "batch_headroom")) == {(True, 0), (False, 0)}


def test_a_paused_migration_says_paused_and_a_resumed_one_goes_on(migration_db):
    make_table(migration_db, "batch_paused", 600)
    with psycopg.connect(migration_db.dsn(), autocommit=True) as conn:
        store = prepare(conn, increment_migration("batch_paused", "batch_paused"), batch_size=1000)
        assert set_migration_paused(conn, "batch_paused", True) == "paused"
        step = run_batch(store, SETTINGS, always_healthy)
        assert isinstance(step, Paused) and step.reason == "migration batch_paused is paused"
        set_migration_paused(conn, "batch_paused", False)
        assert isinstance(run_batch(store, SETTINGS, always_healthy), BatchDone)


def test_a_range_held_by_another_worker_leaves_nothing_to_claim(migration_db):
    make_table(migration_db, "batch_held", 300)
    definition = increment_migration("batch_held", "batch_held")
    with (
        psycopg.connect(migration_db.dsn(), autocommit=True) as holder,
        psycopg.connect(migration_db.dsn(), autocommit=True) as conn,
    ):
        _, held = prepare(holder, definition, batch_size=1000).jobs.claim(1000, max_attempts=3)
        assert held is not None
        step = run_batch(prepare(conn, definition, batch_size=1000), SETTINGS, always_healthy)
    assert isinstance(step, NothingToClaim)
    assert step.reason.endswith(
        "every remaining range is being run by another task (1 open); nothing to claim"
    )

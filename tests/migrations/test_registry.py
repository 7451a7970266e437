"""The registry against real PostgreSQL: reading a migration's row, with and without its lock."""

from __future__ import annotations

import psycopg
import pytest
from psycopg.rows import dict_row

from airflow_provider_walthrottle.migrations.runner import prepare
from airflow_provider_walthrottle.migrations.state import MigrationStatus
from tests.support.migration_tables import increment_migration, make_table


def test_a_locked_read_needs_the_callers_transaction_and_a_plain_one_opens_its_own(migration_db):
    make_table(migration_db, "registry_load", 300)
    with psycopg.connect(migration_db.dsn(), autocommit=True) as conn:
        registry = prepare(conn, increment_migration("registry_load", "registry_load"), 100).registry
        with pytest.raises(RuntimeError, match="runs in the caller's transaction"), conn.cursor() as cursor:
            registry.load_for_update(cursor)
        assert registry.load().status is MigrationStatus.ACTIVE  # in a transaction of its own
        with conn.transaction(), conn.cursor(row_factory=dict_row) as cursor:
            migration = registry.load_for_update(cursor)
            (locks,) = migration_db.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'transactionid' AND pid = %s",
                [conn.info.backend_pid],
            )
        assert migration.name == "registry_load" and migration.total_keys > 0
    assert locks == (1,)  # FOR UPDATE: the row lock made the transaction take its id


def test_the_flat_names_of_the_store_still_work_for_one_release(migration_db):
    # the migrations page's test and 0.1 callers use them; each is now a method of one part
    make_table(migration_db, "flat_names", 300)
    with psycopg.connect(migration_db.dsn(), autocommit=True) as conn:
        store = prepare(conn, increment_migration("flat_names", "flat_names"), 100)
        assert store.load().name == "flat_names" and store.key_type == "int8"
        _, job = store.claim_job(100, max_attempts=3)
        assert job is not None and job.planned_rows == job.planned_keys
        assert store.run_sub_batch(job, 1000, None).job_finished
        store.release(job)
        store.note_backlog(job.id, 7)
        store.record_batch(batch_size=200, rows_per_second=10.0, wal_bytes_per_row=5.0)
        store.begin_throttle()
        store.end_throttle()
        assert store.set_paused(True) == "paused"
        progress = store.progress()
    assert progress.status == "paused" and progress.total_rows == progress.total_keys > 0
    ((pending, batch_size, open_wait),) = migration_db.execute(
        "SELECT j.pending_segments, m.batch_size, m.throttled_since IS NOT NULL "
        "FROM walthrottle.batched_migration_jobs AS j JOIN walthrottle.batched_migrations AS m "
        "ON m.name = j.migration_name WHERE j.id = %s",
        [job.id],
    )
    assert (pending, batch_size, open_wait) == (7, 200, False)

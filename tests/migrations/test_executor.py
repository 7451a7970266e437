"""A sub-batch in its pipeline: the ranges planned ahead, rows that arrive mid-job, a job moved on or
stopped, an error, and the round trips a sub-batch costs."""

from __future__ import annotations

import collections
import random
import uuid
from typing import TYPE_CHECKING

import psycopg
import pytest
from psycopg import sql

from airflow_provider_walthrottle.migrations import table_queries
from airflow_provider_walthrottle.migrations.runner import prepare
from airflow_provider_walthrottle.migrations.state import MigrationStateError
from tests.support import migration_tables as tables
from tests.support.migration_runs import job_rows
from tests.support.migration_tables import counter_histogram, in_scope_keys, make_table

if TYPE_CHECKING:
    from pathlib import Path

# ------------------------------------------------------------------------------- the range query


def expected_range(keys: list[str], after: int, last: int, rows: int | None, *, inclusive: bool) -> tuple:
    """The range the query must find in ``keys`` (in the server's order), bounds given as positions."""
    found = keys[after if inclusive else after + 1 : last + 1]
    found = found if rows is None else found[:rows]
    return (found[0], found[-1], len(found)) if found else (None, None, 0)


@pytest.mark.parametrize(
    ("key_type", "make_key", "as_key"),
    [
        pytest.param("bigint", lambda i: str(i * 3), int, id="bigint"),
        pytest.param('text COLLATE "C"', lambda i: f"k{i * 7919 % 1000:04d}", str, id="text-C"),
        pytest.param("uuid", lambda i: f"{i * 2654435761 % 2**128:032x}", uuid.UUID, id="uuid"),
    ],
)
def test_the_range_query_finds_the_next_keys_its_ends_and_its_count(migration_db, key_type, make_key, as_key):
    migration_db.execute("DROP TABLE IF EXISTS ranged")
    migration_db.execute(f"CREATE TABLE ranged (key {key_type} PRIMARY KEY)")
    cast = sql.SQL(key_type.split()[0])
    migration_db.execute(
        sql.SQL("INSERT INTO ranged SELECT DISTINCT unnest(%s::text[])::{}").format(cast),
        [[make_key(i) for i in range(1, 400)]],
    )
    query_for = {
        inclusive: table_queries.next_range(
            sql.Identifier("ranged"), sql.Identifier("key"), None, inclusive=inclusive, wal_position=True
        )
        for inclusive in (True, False)
    }
    with migration_db.connect() as conn:
        # the keys in the server's own order and text form
        keys = [
            key for (key,) in conn.execute("SELECT key::text AS k FROM ranged ORDER BY ranged.key").fetchall()
        ]
        chooser = random.Random(12)
        for _ in range(80):
            after, last = sorted(chooser.sample(range(len(keys)), 2))
            rows = chooser.choice([1, 2, 7, 50, 1000, None])
            inclusive = chooser.random() < 0.5
            params = {"after": as_key(keys[after]), "last": as_key(keys[last]), "rows": rows}
            first, end, count, in_range, wal_position = conn.execute(query_for[inclusive], params).fetchone()
            assert (first, end, count) == expected_range(keys, after, last, rows, inclusive=inclusive), params
            assert in_range is True and wal_position


def expected_plan(keys: list[str], after: int, last: int, rows: int, total: int, *, inclusive: bool) -> list:
    """The ranges the plan must find in ``keys``: the next ``total`` keys, in ranges of ``rows``."""
    found = keys[after if inclusive else after + 1 : last + 1][:total]
    if not found:
        return [(None, None, 0, True)]
    ranges = [found[i : i + rows] for i in range(0, len(found), rows)]
    return [(part[0], part[-1], len(part), True) for part in ranges]


@pytest.mark.parametrize(
    ("key_type", "make_key", "as_key"),
    [
        pytest.param("bigint", lambda i: str(i * 3), int, id="bigint"),
        pytest.param('text COLLATE "C"', lambda i: f"k{i * 7919 % 1000:04d}", str, id="text-C"),
        pytest.param("uuid", lambda i: f"{i * 2654435761 % 2**128:032x}", uuid.UUID, id="uuid"),
    ],
)
def test_the_range_plan_finds_consecutive_ranges_of_the_next_keys(migration_db, key_type, make_key, as_key):
    migration_db.execute("DROP TABLE IF EXISTS planned")
    migration_db.execute(f"CREATE TABLE planned (key {key_type} PRIMARY KEY)")
    cast = sql.SQL(key_type.split()[0])
    migration_db.execute(
        sql.SQL("INSERT INTO planned SELECT DISTINCT unnest(%s::text[])::{}").format(cast),
        [[make_key(i) for i in range(1, 400)]],
    )
    query_for = {
        inclusive: table_queries.range_plan(
            sql.Identifier("planned"), sql.Identifier("key"), None, inclusive=inclusive
        )
        for inclusive in (True, False)
    }
    with migration_db.connect() as conn:
        keys = [
            key
            for (key,) in conn.execute("SELECT key::text AS k FROM planned ORDER BY planned.key").fetchall()
        ]
        chooser = random.Random(7)
        for _ in range(80):
            after, last = sorted(chooser.sample(range(len(keys)), 2))
            rows = chooser.choice([1, 2, 7, 50, 1000])
            total = chooser.choice([1, rows, 3 * rows, 3 * rows + 2, 64 * rows])
            inclusive = chooser.random() < 0.5
            params = {"after": as_key(keys[after]), "last": as_key(keys[last]), "rows": rows, "total": total}
            plan = [tuple(row) for row in conn.execute(query_for[inclusive], params).fetchall()]
            assert plan == expected_plan(keys, after, last, rows, total, inclusive=inclusive), params
        # no key left after the last one: the one empty range
        params = {"after": as_key(keys[-1]), "last": as_key(keys[-1]), "rows": 5, "total": 10}
        assert conn.execute(query_for[False], params).fetchall() == [(None, None, 0, True)]


def test_a_range_plan_whose_scope_escapes_its_and_is_out_of_range(migration_db):
    make_table(migration_db, "escaping", 200)
    query = table_queries.range_plan(
        sql.Identifier("escaping"), sql.Identifier("id"), "true) OR (true", inclusive=False
    )
    with migration_db.connect() as conn:
        plan = conn.execute(query, {"after": 100, "last": 150, "rows": 10, "total": 40}).fetchall()
    # the scope escapes WHERE id > 100 AND id <= 150 AND (...): the first range starts at id 1
    assert plan[0][0] == "1" and plan[0][3] is False


def test_a_range_past_the_last_key_is_empty_and_in_range(migration_db):
    make_table(migration_db, "emptyrange", 50)
    query = table_queries.next_range(
        sql.Identifier("emptyrange"), sql.Identifier("id"), tables.SCOPE, inclusive=False, wal_position=False
    )
    with migration_db.connect() as conn:
        row = conn.execute(query, {"after": 10_000, "last": 20_000, "rows": 10}).fetchone()
    assert row == (None, None, 0, True)


# ---------------------------------------------------------------------------- a job's sub-batches


def claim_whole_table(conn: psycopg.Connection, name: str, *, rows: int = 100_000):
    """Prepare ``name``'s increment migration and claim one job over all of its table."""
    store = prepare(conn, tables.increment_migration(name, name), batch_size=rows)
    _, job = store.jobs.claim(rows, max_attempts=3)
    assert job is not None
    return store, job


def run_job(store, job, sub_batch_size: int) -> list:
    """Run the job's sub-batches until it is finished; return their results."""
    results = []
    for _ in range(10_000):
        results.append(store.executor.run(job, sub_batch_size, None))
        if results[-1].job_finished:
            return results
    raise AssertionError("the job never finished")


def test_rows_inserted_ahead_in_a_running_jobs_range_are_applied_exactly_once(migration_db):
    make_table(migration_db, "arrivals", 700)  # every 7th id is missing: room for new rows
    with migration_db.connect() as conn:
        store, job = claim_whole_table(conn, "arrivals")
        first = [store.executor.run(job, 20, None) for _ in range(3)]
        done_up_to = int(first[-1].last_key)
        # new rows in the gaps ahead of the job's resume key, in and out of scope, between two
        # sub-batches: the next range queries see them
        migration_db.execute(
            "INSERT INTO arrivals (id, tenant) SELECT i, i %% 10 "
            "FROM generate_series(%s::bigint, %s::bigint) AS i WHERE i %% 7 = 0",
            [done_up_to + 1, int(job.end_key)],
        )
        run_job(store, job, 20)

    histogram = counter_histogram(migration_db, "arrivals")
    assert set(histogram) == {(True, 1), (False, 0)}, histogram
    arrived = [key for key in in_scope_keys(migration_db, "arrivals") if key % 7 == 0]
    assert arrived and min(arrived) > done_up_to  # each of them applied once, as the histogram says
    (row,) = job_rows(migration_db, "arrivals")
    assert row["status"] == "succeeded" and row["rows_affected"] == histogram[(True, 1)]


def test_a_job_moved_on_by_another_session_is_planned_again_from_where_it_resumes(migration_db):
    make_table(migration_db, "moved", 600)
    with migration_db.connect() as first, migration_db.connect() as second:
        store, job = claim_whole_table(first, "moved")
        store.executor.run(job, 15, None)
        store.executor.run(job, 15, None)
        # another session (a worker that took the job over) runs two sub-batches of it: the first
        # executor's idea of where the job resumes is now stale
        other = prepare(second, tables.increment_migration("moved", "moved"), batch_size=100_000)
        other.executor.run(job, 15, None)
        moved_to = other.executor.run(job, 15, None).last_key
        after = store.executor.run(job, 15, None)
        assert int(after.first_key) > int(moved_to)
        run_job(store, job, 15)

    histogram = counter_histogram(migration_db, "moved")
    assert set(histogram) == {(True, 1), (False, 0)}, histogram
    (row,) = job_rows(migration_db, "moved")
    assert row["rows_affected"] == histogram[(True, 1)]


def test_a_statement_that_fails_after_prepared_ones_is_rolled_back_and_the_session_goes_on(migration_db):
    make_table(migration_db, "failing", 600)
    keys = in_scope_keys(migration_db, "failing")
    poison = keys[150]  # well after psycopg has prepared the sub-batch's statements
    with migration_db.connect() as conn:
        store = prepare(conn, tables.poisoned_migration("failing", "failing", poison), batch_size=100_000)
        _, job = store.jobs.claim(100_000, max_attempts=3)
        assert job is not None
        with pytest.raises(psycopg.errors.DivisionByZero):
            run_job(store, job, 10)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        # nothing of the failed sub-batch was kept: the job resumes right before it
        (row,) = job_rows(migration_db, "failing")
        resume = int(row["resume_key"])
        assert keys.index(resume) == 149  # sub-batches of 10: keys[150:160] failed as one
        applied = migration_db.execute("SELECT id FROM failing WHERE counter > 0 ORDER BY id")
        assert [key for (key,) in applied] == [key for key in keys if key <= resume]
        # the same session goes on with the same prepared statements once the key is out of scope
        migration_db.execute(f"UPDATE failing SET tenant = 1 WHERE id = {poison}")
        run_job(store, job, 10)

    histogram = counter_histogram(migration_db, "failing")
    assert set(histogram) == {(True, 1), (False, 0)}, histogram


def test_a_key_that_arrives_in_front_of_a_planned_range_is_applied_once(migration_db, tmp_path):
    make_table(migration_db, "infront", 700)
    keys = in_scope_keys(migration_db, "infront")
    trace = tmp_path / "libpq.trace"
    with migration_db.connect() as conn:
        store, job = claim_whole_table(conn, "infront")
        # the first plan at a size is of one range, the next of two: the third range is planned now
        assert [int(store.executor.run(job, 10, None).last_key) for _ in range(2)] == [keys[9], keys[19]]
        # a row enters the scope in front of the third range, after it was planned
        newcomer = next(key for key in range(keys[19] + 1, keys[20]) if key % 7)
        migration_db.execute(f"UPDATE infront SET tenant = 0 WHERE id = {newcomer}")
        with trace.open("w") as traced:
            conn.pgconn.trace(traced.fileno())
            third = store.executor.run(job, 10, None)
            conn.pgconn.untrace()
        # its transaction found the newcomer in front of the planned range, rolled back, and ran
        # again over a range planned afresh
        assert "ROLLBACK" in trace.read_text()
        assert (int(third.first_key), int(third.last_key), third.keys) == (newcomer, keys[28], 10)
        run_job(store, job, 10)

    histogram = counter_histogram(migration_db, "infront")
    assert set(histogram) == {(True, 1), (False, 0)}, histogram
    (row,) = job_rows(migration_db, "infront")
    assert row["rows_affected"] == histogram[(True, 1)] == len(keys) + 1


def test_a_job_stopped_by_a_peer_raises_and_keeps_nothing_of_the_statement(migration_db):
    make_table(migration_db, "stopped", 300)
    keys = in_scope_keys(migration_db, "stopped")
    with migration_db.connect() as conn:
        store, job = claim_whole_table(conn, "stopped")
        store.executor.run(job, 10, None)
        # a peer stops the job (as a migration that fails stops its running jobs)
        migration_db.execute(
            "UPDATE walthrottle.batched_migration_jobs SET status = 'paused', last_error = 'stopped here' "
            "WHERE id = %s",
            [job.id],
        )
        with pytest.raises(MigrationStateError, match=r"is paused now, not running \(stopped here\)"):
            store.executor.run(job, 10, None)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    applied = migration_db.execute("SELECT id FROM stopped WHERE counter > 0 ORDER BY id")
    assert [key for (key,) in applied] == keys[:10]
    (row,) = job_rows(migration_db, "stopped")
    assert (row["resume_key"], row["rows_affected"], row["sub_batches"]) == (str(keys[9]), 10, 1)


# -------------------------------------------------------------------------------------- round trips


def protocol_messages(trace: Path) -> list[str]:
    """Return the types of the messages the client sent, in order, from a libpq trace."""
    sent = []
    for line in trace.read_text().splitlines():
        direction, _, kind, *_ = [*line.split("\t"), "", "", ""]
        if direction == "F":
            sent.append(kind.split(" ")[0])
    return sent


def test_a_sub_batch_at_a_steady_size_costs_two_round_trips(migration_db, tmp_path):
    make_table(migration_db, "trips", 6000)
    trace = tmp_path / "libpq.trace"
    with migration_db.connect() as conn:
        store, job = claim_whole_table(conn, "trips")
        store.executor.run(job, 20, None)  # composes its queries, plans the first ranges
        with trace.open("w") as traced:
            conn.pgconn.trace(traced.fileno())
            conn.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS | psycopg.pq.Trace.REGRESS_MODE)
            results = [store.executor.run(job, 20, None) for _ in range(60)]
            conn.pgconn.untrace()
    assert not any(result.job_finished for result in results)
    sent = protocol_messages(trace)
    counts = collections.Counter(sent)
    # the client waits for the server after a Sync (a Flush only rides along with the Sync that ends
    # a pipeline) or a simple Query: two Syncs per sub-batch, and a planning query now and then (the
    # ranges it plans double, up to 64, while they are used up)
    assert counts["Query"] == 0, counts
    assert all(sent[index - 1] == "Sync" for index, kind in enumerate(sent) if kind == "Flush"), counts
    plans = counts["Sync"] - 2 * len(results)
    assert 1 <= plans <= 6, counts  # 2, 4, 8, 16 and 32 ranges for these 60
    # the statements of a sub-batch: BEGIN, the job's row lock, the first key, batch_sql, the
    # progress, COMMIT
    assert counts["Execute"] == 6 * len(results) + plans, counts


def test_a_job_claimed_with_its_sub_batch_size_runs_the_ranges_its_claim_planned(migration_db, tmp_path):
    make_table(migration_db, "handed", 600)
    keys = in_scope_keys(migration_db, "handed")
    trace = tmp_path / "libpq.trace"
    with migration_db.connect() as conn:
        store = prepare(conn, tables.increment_migration("handed", "handed"), batch_size=95)
        # the claim's one walk plans the job (95 keys) and its sub-batches of 20
        _, job = store.jobs.claim(95, max_attempts=3, sub_batch_size=20)
        assert job is not None and (job.start_key, job.end_key, job.planned_keys) == (
            str(keys[0]),
            str(keys[94]),
            95,
        )
        with trace.open("w") as traced:
            conn.pgconn.trace(traced.fileno())
            conn.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS | psycopg.pq.Trace.REGRESS_MODE)
            results = run_job(store, job, 20)
            conn.pgconn.untrace()
    assert [(int(r.first_key), int(r.last_key), r.keys) for r in results] == [
        (keys[start], keys[min(start + 20, 95) - 1], min(20, 95 - start)) for start in range(0, 95, 20)
    ]
    # no planning query: two round trips a sub-batch, and nothing else
    assert collections.Counter(protocol_messages(trace))["Sync"] == 2 * len(results)
    histogram = counter_histogram(migration_db, "handed")
    assert histogram[(True, 1)] == 95

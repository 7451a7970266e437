"""The shared WAL budget against real PostgreSQL: its arithmetic, its lock, and reservations that die.

The headline test, three batches at once against a slow archiver, is in
``test_wal_budget_concurrency.py``.
"""

from __future__ import annotations

import dataclasses
import threading

import psycopg
import pytest

from airflow_provider_walthrottle.migrations.batch import BatchDone, WaitForBacklog, run_batch
from airflow_provider_walthrottle.migrations.definition import MigrationDefinition
from airflow_provider_walthrottle.migrations.optimizer import BatchSizePolicy
from airflow_provider_walthrottle.migrations.runner import (
    HealthVerdict,
    JobFailedError,
    Outcome,
    RunSettings,
    prepare,
    run_one_batch,
)
from airflow_provider_walthrottle.migrations.schema_queries import CREATE_STATE, LOCK_NAMESPACE
from airflow_provider_walthrottle.migrations.wal_budget import (
    BudgetRoom,
    BudgetShortfall,
    WalBudget,
    reservations,
)
from airflow_provider_walthrottle.wal.health import evaluate_wal_archival
from airflow_provider_walthrottle.wal.queries import read_archiver_status
from tests.support.migration_runs import job_rows
from tests.support.migration_tables import SCOPE, counter_histogram, increment_migration, make_table
from tests.support.postgres_cluster import wait_until

MB = 1024 * 1024
SEGMENT = 16 * MB
#: Segment 16 of timeline 1, with 16 MB segments.
SIXTEENTH = "000000010000000000000010"


def wal_position(conn: psycopg.Connection) -> int:
    """Return the WAL insert position, in bytes."""
    row = conn.execute("SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint").fetchone()
    assert row is not None
    return int(row[0])


def hold_job(conn: psycopg.Connection, job_id: int) -> None:
    """Take a job's advisory lock, as the job queue's claim does: a reservation for it counts then."""
    conn.execute("SELECT pg_advisory_lock(%s::int, %s::int)", [LOCK_NAMESPACE, job_id])


def drop_job(conn: psycopg.Connection, job_id: int) -> None:
    """Release a job's advisory lock, as the job queue does when a batch ends."""
    conn.execute("SELECT pg_advisory_unlock(%s::int, %s::int)", [LOCK_NAMESPACE, job_id])


def held_bytes(conn: psycopg.Connection) -> dict[int, tuple[int, bool]]:
    """Return each reservation's bytes and whether it counts, by job."""
    return {row.job_id: (row.bytes, row.live) for row in reservations(conn)}


def backlog_of(pending: int, threshold: int = 42):
    """Return a health check that reports ``pending`` segments, read fresh at each call.

    The segment being written is the real one, so the ceiling follows the server's WAL position.
    """

    def check(conn: psycopg.Connection) -> HealthVerdict:
        status = dataclasses.replace(read_archiver_status(conn), pending_segments=pending)
        return HealthVerdict(proceed=pending <= threshold, health=evaluate_wal_archival(status, threshold))

    return check


@pytest.fixture
def budget_db(migration_db):
    """The shared cluster with fresh state tables, the reservations' table among them."""
    with migration_db.connect() as conn, conn.transaction():
        for statement in CREATE_STATE:
            conn.execute(statement)
    return migration_db


# --------------------------------------------------------------------------------------------------
# arithmetic
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("current_wal_file", "segment_size", "pending", "threshold", "ceiling"),
    [
        pytest.param(SIXTEENTH, SEGMENT, 40, 42, 19 * SEGMENT, id="two-segments-and-the-rest"),
        pytest.param(SIXTEENTH, SEGMENT, 42, 42, 17 * SEGMENT, id="at-the-threshold-the-rest"),
        pytest.param(SIXTEENTH, SEGMENT, 45, 42, 14 * SEGMENT, id="past-it-below-the-position"),
        # 1 MB segments: 4096 of them per log id, not 256
        pytest.param("000000010000000100000002", MB, 3, 8, (4096 + 2 + 6) * MB, id="one-mb-second-log-id"),
        pytest.param(SIXTEENTH, SEGMENT, None, 42, None, id="count-unknown"),
        pytest.param(None, SEGMENT, 3, 42, None, id="a-standby-names-no-segment"),
    ],
)
def test_the_ceiling_of_a_count_is_where_the_next_segment_would_pass_the_threshold(
    pg, current_wal_file, segment_size, pending, threshold, ceiling
):
    with pg.connect() as conn:
        status = dataclasses.replace(
            read_archiver_status(conn),
            current_wal_file=current_wal_file,
            wal_segment_size=segment_size,
            pending_segments=pending,
        )
    verdict = HealthVerdict(proceed=True, health=evaluate_wal_archival(status, threshold))
    assert verdict.wal_ceiling() == ceiling
    if ceiling is not None:  # another threshold moves it by whole segments
        assert verdict.wal_ceiling(threshold + 2) == ceiling + 2 * segment_size
    assert HealthVerdict(proceed=True).wal_ceiling() is None  # nothing counted (the flag off)


@pytest.mark.parametrize(
    ("needed", "reserved", "threshold", "at_most"),
    [
        (512 * 1024, 3 * MB, 8, 4),  # 3.5 MB beside the others: 4 segments of room
        (512 * 1024, 0, 8, 7),  # less than a segment still needs one
        (MB, 0, 8, 7),
        (MB + 1, 0, 8, 6),
        (2 * MB, 20 * MB, 8, 0),  # the others hold more than the threshold: wait for none pending
    ],
)
def test_a_shortfall_waits_for_the_backlog_that_leaves_room_beside_the_others(
    needed, reserved, threshold, at_most
):
    shortfall = BudgetShortfall(needed, 1000, reserved, 2, MB)
    assert shortfall.backlog_to_wait_for(threshold) == at_most
    assert f"the next statement needs {needed}" in shortfall.describe()


def test_the_room_is_the_ceiling_less_the_position_and_the_others():
    room = BudgetRoom(ceiling=100 * MB, wal_position=90 * MB, reserved_elsewhere=4 * MB, batches_elsewhere=2)
    assert room.free_bytes == 6 * MB
    assert dataclasses.replace(room, reserved_elsewhere=12 * MB).free_bytes == -2 * MB


# --------------------------------------------------------------------------------------------------
# reservations on one database
# --------------------------------------------------------------------------------------------------


def test_reservations_leave_each_other_room_and_what_is_shrunk_or_released_goes_back(budget_db):
    with budget_db.connect() as a_conn, budget_db.connect() as b_conn:
        hold_job(a_conn, 101)
        hold_job(b_conn, 102)
        a, b = WalBudget(a_conn, "budget_a"), WalBudget(b_conn, "budget_b")
        ceiling = wal_position(a_conn) + 10 * MB

        first = a.reserve(101, ceiling, want=4 * MB)
        assert (first.granted, first.reserved_elsewhere, first.batches_elsewhere) == (4 * MB, 0, 0)
        second = b.reserve(102, ceiling, want=8 * MB)
        assert (second.reserved_elsewhere, second.batches_elsewhere) == (4 * MB, 1)
        # the rest, up to the ceiling: the WAL written since (a grant's commit) is not handed out twice
        assert second.granted == ceiling - second.wal_position - 4 * MB
        assert 6 * MB - 64 * 1024 < second.granted < 6 * MB
        assert held_bytes(a_conn) == {101: (4 * MB, True), 102: (second.granted, True)}

        # less free than the next statement needs: nothing is held for nothing
        short = b.reserve(102, ceiling, want=8 * MB, need=second.granted + MB)
        assert short.granted == 0 and held_bytes(b_conn)[102] == (0, True)

        # lowering a reservation gives its room back, without the lock; it never raises one
        assert a.shrink(101, MB) == 0  # what the others hold: b's 0
        assert a.shrink(101, 5 * MB) == 0 and held_bytes(a_conn)[101] == (MB, True)
        regrown = b.reserve(102, ceiling, want=20 * MB)
        assert regrown.granted == ceiling - regrown.wal_position - MB

        # released (the batch ended): all of the room is b's
        a.release(101)
        assert 101 not in held_bytes(a_conn)
        assert b.reserve(102, ceiling, want=20 * MB).reserved_elsewhere == 0

        # a job whose lock is dropped holds nothing, even with its row still there
        drop_job(b_conn, 102)
        assert held_bytes(a_conn)[102][1] is False
        assert a.room(ceiling).reserved_elsewhere == 0


def test_concurrent_grants_never_hand_out_more_than_the_room(budget_db):
    workers, rounds, room_bytes = 4, 25, 10 * MB
    barrier = threading.Barrier(workers)
    ceilings = [0] * rounds
    grants: list[list[BudgetRoom]] = [[] for _ in range(rounds)]
    errors: list[BaseException] = []

    def work(job_id: int, leader: bool) -> None:
        try:
            with budget_db.connect() as own:
                hold_job(own, job_id)
                budget = WalBudget(own, f"budget_race_{job_id}")
                for turn in range(rounds):
                    if leader:  # the room of the round: room_bytes above the position now
                        ceilings[turn] = wal_position(own) + room_bytes
                    barrier.wait(timeout=60)
                    # every worker asks for all of it at once: two grants that both saw it free
                    # would hand out twice the room
                    grants[turn].append(budget.reserve(job_id, ceilings[turn], want=room_bytes))
                    barrier.wait(timeout=60)
                    budget.shrink(job_id, 0)
                    barrier.wait(timeout=60)
        except BaseException as error:  # reported by the test
            errors.append(error)
            barrier.abort()

    threads = [
        threading.Thread(target=work, args=(job_id, job_id == 201)) for job_id in range(201, 201 + workers)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    for turn, granted in enumerate(grants):
        assert len(granted) == workers
        assert sum(grant.granted for grant in granted) <= room_bytes, (turn, granted)
        assert any(grant.granted for grant in granted), (turn, granted)
        # each grant left the others' reservations whole: its own and theirs fit under the ceiling
        for grant in granted:
            assert (
                not grant.granted
                or grant.granted + grant.reserved_elsewhere <= grant.ceiling - grant.wal_position
            )


def test_the_reservation_of_a_terminated_backend_counts_no_more(budget_db):
    make_table(budget_db, "budget_killed", 600)
    budget_db.execute("DROP TABLE IF EXISTS budget_killed_control")
    budget_db.execute("CREATE TABLE budget_killed_control AS SELECT true AS slow")
    definition = MigrationDefinition(
        name="budget_killed",
        table="budget_killed",
        column="id",
        batch_sql=(
            "WITH pause AS MATERIALIZED ("
            "SELECT pg_sleep(CASE WHEN (SELECT slow FROM budget_killed_control) THEN 0.3 ELSE 0 END)) "
            "UPDATE budget_killed SET counter = counter + 1 FROM pause "
            f"WHERE id BETWEEN %(start)s AND %(end)s AND {SCOPE}"
        ),
        scope=SCOPE,
    )
    check = backlog_of(0)
    settings = RunSettings(sub_batch_size=10, pause_ms=0, policy=BatchSizePolicy(min_batch_size=100))
    raised: list[BaseException] = []
    doomed = budget_db.connect()
    doomed_pid = doomed.info.backend_pid

    def work() -> None:
        try:
            store = prepare(doomed, definition, batch_size=600)
            run_one_batch(store, settings, lambda: check(doomed))
        except BaseException as error:  # the test asserts which
            raised.append(error)

    worker = threading.Thread(target=work)
    worker.start()
    try:
        with budget_db.connect() as conn:
            (held,) = wait_until(
                lambda: [row for row in reservations(conn) if row.live and row.bytes],
                timeout=30,
                what="the batch to reserve its WAL",
                interval=0.01,
            )
            assert (held.backend_pid, held.migration_name) == (doomed_pid, "budget_killed")
            ceiling = wal_position(conn) + 100 * MB
            assert WalBudget(conn, "other").room(ceiling).reserved_elsewhere > 0

            conn.execute("SELECT pg_terminate_backend(%s)", [doomed_pid])
            worker.join(timeout=60)
            wait_until(
                lambda: (
                    not conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [doomed_pid]).fetchall()
                ),
                timeout=30,
                what="the terminated backend to exit",
            )
            # the session is gone, and its job's lock with it: the row counts no more
            assert held_bytes(conn)[held.job_id][1] is False
            assert WalBudget(conn, "other").room(ceiling).reserved_elsewhere == 0
            # the next grant deletes it
            hold_job(conn, 900_001)
            assert WalBudget(conn, "other").reserve(900_001, ceiling, want=MB).granted == MB
            assert set(held_bytes(conn)) == {900_001}
    finally:
        budget_db.execute("UPDATE budget_killed_control SET slow = false")
        worker.join(timeout=60)
        doomed.close()
    assert len(raised) == 1 and isinstance(raised[0], JobFailedError | psycopg.OperationalError), raised
    (job,) = [job for job in job_rows(budget_db, "budget_killed") if job["id"] == held.job_id]
    assert job["status"] == "running"  # left to be taken over where it stopped, as any lost worker's


# --------------------------------------------------------------------------------------------------
# batches sized and stopped by the budget
# --------------------------------------------------------------------------------------------------


def hold_all_but_one_mb(conn, other, job_id: int, check) -> WalBudget:
    """Make ``other`` hold job ``job_id`` and reserve all the room under ``check``'s count but 1 MB."""
    hold_job(other, job_id)
    blocker = WalBudget(other, "budget_blocker")
    ceiling = check(conn).wal_ceiling()
    assert ceiling is not None
    blocker.reserve(job_id, ceiling, want=blocker.room(ceiling).free_bytes - MB)
    return blocker


def test_a_batch_waits_while_other_batches_hold_the_room_and_runs_once_they_let_go(budget_db):
    make_table(budget_db, "budget_wait", 3000)
    check = backlog_of(40)  # 2 segments of headroom under 42, and the rest of the segment being written
    with budget_db.connect() as conn, budget_db.connect() as other:
        store = prepare(conn, increment_migration("budget_wait", "budget_wait"), batch_size=1000)
        store.accounts.record_throughput(batch_size=1000, rows_per_second=None, wal_bytes_per_row=1000.0)
        # another batch holds all but 1 MB of the room
        blocker = hold_all_but_one_mb(conn, other, 900_002, check)

        # the smallest batch (2,000 rows at 1,000 bytes) needs more than is left: wait, and for a
        # backlog that leaves room beside the blocker's reservation
        small = RunSettings(
            sub_batch_size=5000,
            pause_ms=0,
            policy=BatchSizePolicy(min_batch_size=2000, max_batch_size=100_000),
        )
        step = run_batch(store, small, lambda: check(conn))
        assert isinstance(step, WaitForBacklog) and step.headroom, step
        assert "WAL bytes other batches reserved" in step.reason, step.reason
        assert step.result.decision is not None and step.result.decision.must_wait
        assert step.at_most == 42 - -(-(2000 * 1000 + step.result.decision.reserved_bytes) // SEGMENT)
        assert step.at_most < 40

        # a batch that fits, whose first statement (5,000 keys, 5 MB) does not: stopped before it runs
        fits = dataclasses.replace(small, policy=BatchSizePolicy(min_batch_size=100, max_batch_size=100_000))
        stopped = run_one_batch(store, fits, lambda: check(conn))
        assert stopped.outcome is Outcome.THROTTLED and stopped.keys == 0, stopped
        assert stopped.shortfall is not None and stopped.shortfall.needed_bytes == 5000 * 1000
        assert stopped.shortfall.batches_elsewhere == 1
        (job,) = job_rows(budget_db, "budget_wait")
        assert (job["status"], job["sub_batches"]) == ("paused", 0)
        assert set(held_bytes(conn)) == {900_002}  # its own reservation is gone with the batch
        step = run_batch(store, fits, lambda: check(conn))
        assert isinstance(step, WaitForBacklog) and step.headroom
        assert step.reason.startswith("throttled: the shared WAL budget has ")
        assert step.at_most == step.result.shortfall.backlog_to_wait_for(42) < 40

        # the other batch ends: the paused job runs, and leaves no reservation behind
        blocker.release(900_002)
        drop_job(other, 900_002)
        done = run_batch(store, fits, lambda: check(conn))
        assert isinstance(done, BatchDone), done
        assert done.result.job is not None and done.result.job.id == job["id"]
        assert held_bytes(conn) == {}
    histogram = counter_histogram(budget_db, "budget_wait")
    assert set(histogram) <= {(True, 1), (True, 0), (False, 0)} and histogram.get((True, 1))


def test_existing_state_tables_get_the_reservations_table_unlogged(budget_db):
    make_table(budget_db, "budget_upgrade", 100)
    budget_db.execute("DROP TABLE walthrottle.wal_reservations")  # state tables from before it
    with budget_db.connect() as conn:
        prepare(conn, increment_migration("budget_upgrade", "budget_upgrade"), batch_size=100)
    rows = budget_db.execute(
        "SELECT relpersistence FROM pg_class WHERE oid = to_regclass('walthrottle.wal_reservations')"
    )
    assert rows == [("u",)]


def test_a_batch_short_of_room_waits_in_place_for_it_rather_than_end(budget_db):
    # room that comes back within max_pause_seconds (as an archiver ships segments) is waited for in
    # the batch, counting again, instead of ending it throttled and deferring its task
    make_table(budget_db, "budget_room_back", 3000)
    check = backlog_of(40)
    with budget_db.connect() as conn, budget_db.connect() as other:
        store = prepare(conn, increment_migration("budget_room_back", "budget_room_back"), batch_size=1000)
        store.accounts.record_throughput(batch_size=1000, rows_per_second=None, wal_bytes_per_row=1000.0)
        blocker = hold_all_but_one_mb(conn, other, 900_003, check)
        counts = []

        def counted():
            counts.append(None)
            if len(counts) == 3:  # the other batch ends while this one waits
                blocker.release(900_003)
            return check(conn)

        policy = BatchSizePolicy(min_batch_size=100, max_batch_size=100_000)
        settings = RunSettings(sub_batch_size=5000, pause_ms=0, policy=policy)
        result = run_one_batch(store, settings, counted, sleep=lambda seconds: None)
        drop_job(other, 900_003)
    assert result.outcome is Outcome.COMPLETED and result.keys > 0, result
    assert len(counts) >= 3  # it counted again while it waited
    histogram = counter_histogram(budget_db, "budget_room_back")
    assert set(histogram) <= {(True, 1), (True, 0), (False, 0)} and histogram.get((True, 1))

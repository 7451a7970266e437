"""Three batches at once against a slow archiver share one WAL headroom: the backlog stays at 8.

Each case runs three workers at once, as three tasks of one migration with ``concurrency=3`` or
three migrations on one database, each in a thread of its own on a connection of its own, through
:func:`~airflow_provider_walthrottle.migrations.batch.run_batch` as the operator calls it (a wait
for the backlog polls it until it is at most what the answer said). Each migration ran one batch
alone before, so it knows its WAL per row, as a migration does that ran before others joined it;
then the three start together. The archiver copies one 1 MB segment at a time after a pause, so
the migrations write several times the threshold faster than it can take them. A thread samples
the ``.ready`` files every few milliseconds.

Without the budget (``share_wal_budget=False``) each batch is sized to the whole headroom, and
the backlog peaked at 10 to 13 segments in these runs, above the 9 allowed; with it, at 7 or 8.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest
from psycopg import sql

from airflow_provider_walthrottle.migrations.batch import (
    BatchDone,
    Finished,
    NothingToClaim,
    WaitFixedTime,
    WaitForBacklog,
    run_batch,
)
from airflow_provider_walthrottle.migrations.definition import MigrationDefinition
from airflow_provider_walthrottle.migrations.optimizer import BatchSizePolicy
from airflow_provider_walthrottle.migrations.runner import RunSettings, prepare
from airflow_provider_walthrottle.migrations.wal_budget import reservations
from tests.support.migration_runs import ArchiveHealth, job_rows

if TYPE_CHECKING:
    from tests.support.postgres_cluster import PostgresCluster

pytestmark = pytest.mark.slow

#: The backlog threshold, in 1 MB segments.
THRESHOLD = 8
SEGMENT = 1024 * 1024
#: Keys per statement: about 0.9 MB of WAL at the rows below, just under a segment (a fixed size,
#: so that "one sub-batch's WAL" is one number).
SUB_BATCH = 1150
#: Keys of the first batch, which each migration runs alone: about 8 MB of WAL.
FIRST_BATCH = 10_000
#: Rows in each case: after the first batches, 45 to 60 MB of WAL, six to seven times the threshold.
ROWS = 90_000
#: Seconds ``archive_command`` sleeps before each copy: at most about 8 segments a second.
ARCHIVE_DELAY = 0.1


@pytest.fixture(scope="module")
def slow_pg(pg_cluster_factory) -> PostgresCluster:
    """A cluster of 1 MB segments, for backlogs of a few MB."""
    return pg_cluster_factory(name="wal-budget", wal_segsize_mb=1)


@dataclass
class Sampler:
    """Count the ``.ready`` segments every few milliseconds, from the file system, until stopped."""

    cluster: PostgresCluster
    samples: list[int] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            self.samples.append(len(self.cluster.ready_segments()))
            time.sleep(0.005)


@dataclass(frozen=True)
class Run:
    """What three workers did: the highest backlog sampled, the WAL they wrote, the rows they did."""

    max_pending: int
    wal_bytes: int
    rows: int

    @property
    def statement_segments(self) -> int:
        """One sub-batch's WAL, in segments it can complete: the run's WAL per row, times its keys."""
        return math.ceil(self.wal_bytes / self.rows * SUB_BATCH / SEGMENT)


def rows_done(cluster: PostgresCluster, definitions: list[MigrationDefinition]) -> int:
    """Return the rows the migrations updated exactly once so far."""
    done = sql.SQL("SELECT count(*) FROM {} WHERE counter = 1")
    tables = dict.fromkeys(definition.table for definition in definitions)
    return sum(cluster.execute(done.format(sql.Identifier(table)))[0][0] for table in tables)


def wide_table(cluster: PostgresCluster, name: str, rows: int) -> MigrationDefinition:
    """Create a table whose migration writes about 0.8 kB of WAL per row, and return the migration."""
    table = sql.Identifier(name)
    cluster.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))
    cluster.execute(
        sql.SQL(
            "CREATE TABLE {} (id bigint PRIMARY KEY, counter int NOT NULL DEFAULT 0, payload text)"
        ).format(table)
    )
    cluster.execute(sql.SQL("INSERT INTO {} (id) SELECT generate_series(1, %s)").format(table), [rows])
    return MigrationDefinition(
        name=name,
        table=name,
        column="id",
        batch_sql=(
            f"UPDATE {name} SET counter = counter + 1, payload = repeat(md5(id::text), 16) "
            "WHERE id BETWEEN %(start)s AND %(end)s"
        ),
    )


def settings_for(*, shared: bool) -> RunSettings:
    return RunSettings(
        sub_batch_size=SUB_BATCH,
        pause_ms=0,  # no pacing: the budget alone keeps the backlog down
        max_pending_segments=THRESHOLD,
        policy=BatchSizePolicy(min_batch_size=200, max_batch_size=None),
        share_wal_budget=shared,
    )


def first_batches(cluster: PostgresCluster, definitions: list[MigrationDefinition]) -> None:
    """Run one batch of each migration alone, with a fast archiver: each learns its WAL per row."""
    for definition in dict.fromkeys(definitions):
        with cluster.connect() as conn:
            store = prepare(conn, definition, batch_size=FIRST_BATCH)
            step = run_batch(store, settings_for(shared=True), ArchiveHealth(conn, THRESHOLD))
            assert isinstance(step, BatchDone), step
        cluster.drain()


def work(
    cluster: PostgresCluster, definition: MigrationDefinition, settings: RunSettings, start: threading.Barrier
) -> None:
    """Run batches until the migration is finished, waiting as the answers say."""
    with cluster.connect() as conn:
        store = prepare(conn, definition, batch_size=FIRST_BATCH)
        check = ArchiveHealth(conn, THRESHOLD)
        start.wait(timeout=60)
        for _ in range(5000):
            step = run_batch(store, settings, check)
            if isinstance(step, Finished):
                return
            if isinstance(step, WaitForBacklog):
                deadline = time.monotonic() + 60
                while len(cluster.ready_segments()) > step.at_most and time.monotonic() < deadline:
                    time.sleep(0.02)
            elif isinstance(step, WaitFixedTime | NothingToClaim):
                time.sleep(0.05)
            else:
                assert isinstance(step, BatchDone), step
        raise AssertionError(f"{definition.name} not finished after 5000 batches")


def run_three(cluster: PostgresCluster, definitions: list[MigrationDefinition], *, shared: bool) -> Run:
    """Run three workers over ``definitions`` (one each, or one three times) at once; sample the backlog."""
    settings = settings_for(shared=shared)
    rows_before = rows_done(cluster, definitions)
    ((start,),) = cluster.execute("SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn")
    sampler = Sampler(cluster)
    sampling = threading.Thread(target=sampler.run, daemon=True)
    together = threading.Barrier(len(definitions))
    errors: list[BaseException] = []

    def worker(definition: MigrationDefinition) -> None:
        try:
            work(cluster, definition, settings, together)
        except BaseException as error:  # reported by the test
            errors.append(error)
            together.abort()

    workers = [threading.Thread(target=worker, args=(definition,)) for definition in definitions]
    sampling.start()
    try:
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join(timeout=600)
    finally:
        sampler.stop.set()
        sampling.join(timeout=10)
    assert not errors, errors
    ((end,),) = cluster.execute("SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn")
    return Run(max(sampler.samples), int(end - start), rows_done(cluster, definitions) - rows_before)


def three_workers(cluster: PostgresCluster, layout: str) -> list[MigrationDefinition]:
    """Fresh state and tables for a layout; the migrations that the three workers run."""
    cluster.set_archive_delay(0)
    cluster.drain()
    cluster.execute("DROP SCHEMA IF EXISTS walthrottle CASCADE")
    if layout == "three-migrations":
        definitions = [wide_table(cluster, f"budget_three_{index}", ROWS // 3) for index in range(3)]
    else:
        definitions = [wide_table(cluster, "budget_one", ROWS)] * 3
    first_batches(cluster, definitions)
    return definitions


@pytest.mark.parametrize("layout", ["one-migration-three-workers", "three-migrations"])
def test_three_batches_at_once_keep_the_backlog_within_one_statement_of_the_threshold(slow_pg, layout):
    definitions = three_workers(slow_pg, layout)
    slow_pg.set_archive_delay(ARCHIVE_DELAY)
    try:
        run = run_three(slow_pg, definitions, shared=True)
    finally:
        slow_pg.set_archive_delay(0)

    assert run.wal_bytes >= 5 * THRESHOLD * SEGMENT, f"the run must write several times the threshold: {run}"
    assert run.max_pending >= THRESHOLD - 1, f"the run never pushed against the threshold: {run}"
    assert run.max_pending <= THRESHOLD + run.statement_segments, run
    # every row exactly once: the first batches' and the run's
    assert rows_done(slow_pg, definitions) == ROWS
    for name in dict.fromkeys(definition.name for definition in definitions):
        assert {job["status"] for job in job_rows(slow_pg, name)} == {"succeeded"}
    with slow_pg.connect() as conn:
        assert reservations(conn) == []  # every batch deleted its reservation

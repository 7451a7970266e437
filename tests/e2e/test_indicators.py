"""End to end on a real Airflow: each health indicator stops a migration in turn, and it goes on.

Issue 13's "done when": a migration under the real scheduler (scheduler, dag-processor, triggerer
and api-server, LocalExecutor, metadata in PostgreSQL) is stopped by each indicator in turn and goes
on when each one clears, exactly once.

The database is a primary (archiving through the harness's gate, ``wal_level=logical``, autovacuum
every second) with one streaming standby. The DAG comes from
:func:`~airflow_provider_walthrottle.batched_migration_dag`, ``@continuous`` with one run at a time,
so batches follow one another; its sensor and its operator both evaluate the four indicators, with
low thresholds, and all four flags are turned on with ``airflow variables set``. A statement
trigger on the table makes each sub-batch take :data:`PACE_SECONDS`, so that the migration crawls
through the whole scenario; the test takes the pace away at the end to let it finish.

In turn, while the migration moves:

1. **WAL archival**: the archive gate closes and 5 segments wait (threshold 3);
2. **replication lag**: the standby's replay is paused and the primary writes until the standby is
   more than 8 MiB behind;
3. **replication slots**: a logical slot (``test_decoding``) that nobody consumes retains more than
   8 MiB;
4. **autovacuum**: a slow autovacuum worker (100 ms per page) processes the migrated table.

Each time the migration stops: a task is deferred, its log (the trigger's) names the indicator,
and no row changes over several more checks. Then the condition clears (the gate opens; replay
resumes; the slot is advanced; the worker is cancelled) and the migration goes on. At the end every
row has been changed exactly once, and the jobs are disjoint and succeeded.

It takes about three minutes here; the printed lines give each phase's timings.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import time
from typing import TYPE_CHECKING, Any

import pytest
from psycopg import sql

from airflow_provider_walthrottle.flags import (
    AUTOVACUUM_HEALTH_FLAG,
    REPLICATION_LAG_HEALTH_FLAG,
    REPLICATION_SLOTS_HEALTH_FLAG,
    WAL_HEALTH_FLAG,
)
from airflow_provider_walthrottle.indicators.autovacuum import AutovacuumIndicator
from airflow_provider_walthrottle.indicators.base import IndicatorContext, read_indicators
from airflow_provider_walthrottle.indicators.replication_lag import ReplicationLagIndicator
from airflow_provider_walthrottle.indicators.replication_slots import ReplicationSlotsIndicator
from airflow_provider_walthrottle.indicators.wal_archival import WalArchivalIndicator
from tests.support.airflow_standalone import AirflowStandalone, make_home, serving_dag
from tests.support.postgres_cluster import wait_until

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from tests.support.postgres_cluster import ClusterFactory, PostgresCluster

DAG_ID = "e2e_indicators_migration"
MIGRATION = "e2e_indicators_counter"
CONN_ID = "e2e_db"
TABLE = "e2e_items"
QUALIFIED_TABLE = f"public.{TABLE}"
#: Enough keys that the paced migration is far from done when the last indicator clears.
ROWS = 20_000
MIB = 1024 * 1024
#: The thresholds: low, so that the test can pass them quickly.
MAX_PENDING_SEGMENTS = 3
BACKLOG = 5
MAX_LAG_BYTES = 8 * MIB
#: Lag is judged on bytes here: ``replay_lag`` keeps a paused standby's seconds for a while after
#: it has caught up, and this 2-core machine may be slow to replay for a second or two.
MAX_LAG_SECONDS = 60
MAX_RETAINED_BYTES = 8 * MIB
SLOT = "e2e_cdc"
#: Seconds between two checks of a waiting task (the sensor's and the operator's triggers).
POKE_SECONDS = 2
#: Seconds each sub-batch's statement takes while the scenario runs (the statement trigger's sleep).
PACE_SECONDS = 0.25
SUB_BATCH = 25
#: Checks logged while stopped, after the first, before the condition is cleared.
HELD_CHECKS = 2
#: Seconds allowed for each wait on a state: generous, the machine is shared.
STOP_TIMEOUT = 90
GO_TIMEOUT = 90
FLAGS = (WAL_HEALTH_FLAG, REPLICATION_LAG_HEALTH_FLAG, REPLICATION_SLOTS_HEALTH_FLAG, AUTOVACUUM_HEALTH_FLAG)
#: How the log lines name each indicator ("WAL archival on e2e_db: stop: ...").
LABELS = {
    "wal_archival": "WAL archival",
    "replication_lag": "replication lag",
    "replication_slots": "replication slots",
    "autovacuum": "autovacuum",
}
#: Task instance states that end the test at once.
BROKEN_STATES = ("failed", "up_for_retry", "upstream_failed")

DAG_FILE = f'''
"""Written by tests/e2e/test_indicators.py: {MIGRATION}, batch after batch, under four indicators."""

import datetime

from airflow_provider_walthrottle import batched_migration_dag
from airflow_provider_walthrottle.indicators.autovacuum import AutovacuumIndicator
from airflow_provider_walthrottle.indicators.replication_lag import ReplicationLagIndicator
from airflow_provider_walthrottle.indicators.replication_slots import ReplicationSlotsIndicator
from airflow_provider_walthrottle.indicators.wal_archival import WalArchivalIndicator


def indicators():
    return [
        WalArchivalIndicator(max_pending_segments={MAX_PENDING_SEGMENTS}),
        ReplicationLagIndicator(max_lag_bytes={MAX_LAG_BYTES}, max_lag_seconds={MAX_LAG_SECONDS}),
        ReplicationSlotsIndicator(max_retained_bytes={MAX_RETAINED_BYTES}),
        AutovacuumIndicator(),
    ]


dag = batched_migration_dag(
    dag_id="{DAG_ID}",
    start_date=datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc),
    schedule="@continuous",
    max_active_runs=1,
    tags=["e2e"],
    postgres_conn_id="{CONN_ID}",
    migration_name="{MIGRATION}",
    table="{QUALIFIED_TABLE}",
    column="id",
    batch_sql="UPDATE {QUALIFIED_TABLE} SET counter = counter + 1 WHERE id BETWEEN %(start)s AND %(end)s",
    poke_interval={POKE_SECONDS},
    retries=0,
    sensor_kwargs={{"indicators": indicators(), "table": "{QUALIFIED_TABLE}"}},
    operator_kwargs={{
        "indicators": indicators(),
        "batch_size": 100,
        "min_batch_size": {SUB_BATCH},
        "max_batch_size": {ROWS},
        "target_batch_seconds": 2,
        "sub_batch_size": {SUB_BATCH},
        "pause_ms": 0,
    }},
)
'''

#: The same indicators, read by the test itself for the failure messages.
INDICATORS = (
    WalArchivalIndicator(max_pending_segments=MAX_PENDING_SEGMENTS),
    ReplicationLagIndicator(max_lag_bytes=MAX_LAG_BYTES, max_lag_seconds=MAX_LAG_SECONDS),
    ReplicationSlotsIndicator(max_retained_bytes=MAX_RETAINED_BYTES),
    AutovacuumIndicator(),
)


# --------------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Servers:
    """The primary the migration runs on, and its streaming standby."""

    primary: PostgresCluster
    standby: PostgresCluster


@pytest.fixture(scope="module")
def servers(pg_cluster_factory: ClusterFactory) -> Iterator[Servers]:
    """A primary with the test table and one streaming standby; both stopped after the module."""
    primary = pg_cluster_factory(
        name="e2e-indicators",
        extra_conf={
            "wal_level": "logical",
            # a commit's WAL is written before it returns, so pg_current_wal_lsn() is past it
            "synchronous_commit": "on",
            "autovacuum": "on",
            "autovacuum_naptime": "1",
            # the standby reports its replay position every second, not every 10 s
            "wal_receiver_status_interval": "1",
        },
    )
    standby = None
    try:
        make_items_table(primary)
        standby = primary.make_standby(f"{primary.name}-standby", archive_mode="off")
        yield Servers(primary, standby)
    finally:
        if standby is not None:
            standby.close()
        primary.close()


@pytest.fixture(scope="module")
def metadata_db(pg_cluster_factory: ClusterFactory) -> Iterator[str]:
    """A PostgreSQL database for Airflow's metadata, on a cluster of its own (no archiving)."""
    cluster = pg_cluster_factory(name="e2e-indicators-airflow-metadata", archive_mode="off")
    cluster.execute("CREATE DATABASE airflow")
    yield cluster.uri(dbname="airflow").replace("postgresql://", "postgresql+psycopg://", 1)
    cluster.close()


@pytest.fixture(scope="module")
def airflow(servers: Servers, metadata_db: str) -> Iterator[AirflowStandalone]:
    """A real Airflow in a fresh home, with the test DAG; every process it started is stopped after."""
    home = make_home()
    instance = AirflowStandalone(
        home,
        dags_folder=home / "dags",
        metadata_db=metadata_db,
        connections={CONN_ID: servers.primary.uri()},
        parallelism=4,
    )
    with serving_dag(instance, DAG_ID, DAG_FILE) as ready:
        yield ready


# --------------------------------------------------------------------------------------------------
# the database side
# --------------------------------------------------------------------------------------------------


def make_items_table(primary: PostgresCluster) -> None:
    """Create the migrated table, its pace, and a filler table for WAL.

    Autovacuum stays off on the table until the autovacuum phase: the migration's own updates would
    otherwise bring a worker at any time. Its cost settings make that worker slow (100 ms a page).
    """
    table = sql.Identifier(TABLE)
    primary.execute(
        sql.SQL(
            "CREATE TABLE {} (id bigint PRIMARY KEY, counter int NOT NULL DEFAULT 0, pad text NOT NULL) "
            "WITH (autovacuum_enabled = false, autovacuum_vacuum_cost_delay = 100, "
            "autovacuum_vacuum_cost_limit = 1, autovacuum_vacuum_threshold = 0, "
            "autovacuum_vacuum_scale_factor = 0)"
        ).format(table)
    )
    primary.execute(
        sql.SQL(
            "INSERT INTO {} (id, pad) SELECT i, repeat('x', 100) FROM generate_series(1, %s) AS i"
        ).format(table),
        [ROWS],
    )
    primary.execute("CREATE TABLE e2e_pace (seconds float8 NOT NULL)")
    primary.execute("INSERT INTO e2e_pace VALUES (%s)", [PACE_SECONDS])
    primary.execute(
        "CREATE FUNCTION e2e_pace() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN PERFORM pg_sleep(seconds) FROM e2e_pace; RETURN NULL; END $$"
    )
    primary.execute(
        sql.SQL(
            "CREATE TRIGGER e2e_pace AFTER UPDATE ON {} FOR EACH STATEMENT EXECUTE FUNCTION e2e_pace()"
        ).format(table)
    )
    primary.execute("CREATE TABLE e2e_filler (pad text)")


def rows_done(primary: PostgresCluster) -> int:
    """Return how many rows the migration has changed; fail if it changed one twice."""
    done, most = primary.execute(
        sql.SQL("SELECT count(*) FILTER (WHERE counter > 0), max(counter) FROM {}").format(
            sql.Identifier(TABLE)
        )
    )[0]
    assert most <= 1, f"a row was changed {most} times"
    return int(done)


def write_wal_until(primary: PostgresCluster, measure: Callable[[], int], more_than: int) -> int:
    """Write WAL on the primary, about 2 MiB a statement, until ``measure()`` passes ``more_than``.

    :return: the last measurement.
    """
    for _ in range(50):
        value = measure()
        if value > more_than:
            return value
        primary.execute("INSERT INTO e2e_filler SELECT repeat('x', 200) FROM generate_series(1, 8000)")
    raise AssertionError(f"still {measure()} after writing about 100 MiB of WAL, not above {more_than}")


def standby_lag_bytes(primary: PostgresCluster) -> int:
    """Return how many bytes of WAL the standby has not replayed, as the primary sees it."""
    (lag,) = primary.execute(
        "SELECT coalesce(max(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)), 0)::bigint "
        "FROM pg_stat_replication"
    )[0]
    return int(lag)


def slot_retained_bytes(primary: PostgresCluster) -> int:
    """Return the WAL the test's slot retains."""
    (retained,) = primary.execute(
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint FROM pg_replication_slots "
        "WHERE slot_name = %s",
        [SLOT],
    )[0]
    return int(retained)


def autovacuum_workers_on_table(primary: PostgresCluster) -> list[int]:
    return [
        pid
        for (pid,) in primary.execute(
            "SELECT v.pid FROM pg_stat_progress_vacuum AS v JOIN pg_stat_activity AS a USING (pid) "
            "WHERE v.relid = %s::regclass AND a.backend_type = 'autovacuum worker'",
            [QUALIFIED_TABLE],
        )
    ]


def readings(primary: PostgresCluster) -> dict[str, str]:
    """Return what each indicator reads now, measured by the test itself (for failure messages)."""
    with primary.connect() as conn:
        found = read_indicators(conn, INDICATORS, IndicatorContext(table=QUALIFIED_TABLE))
    return {reading.indicator: f"{reading.signal.value}: {reading.reason}" for reading in found}


def jobs(primary: PostgresCluster) -> list[dict[str, Any]]:
    """Return the migration's jobs, by start key."""
    rows = primary.execute(
        """
SELECT id, start_key::bigint, end_key::bigint, status, rows_affected, attempts, run_id
FROM walthrottle.batched_migration_jobs WHERE migration_name = %s ORDER BY start_key::bigint
""",
        [MIGRATION],
    )
    keys = ("id", "start", "end", "status", "rows", "attempts", "run_id")
    return [dict(zip(keys, row, strict=True)) for row in rows]


def migration_state(primary: PostgresCluster) -> dict[str, Any]:
    """Return the migration's row in the state tables: status, batch size and throughput estimates."""
    columns = ("status", "batch_size", "rows_per_second", "wal_bytes_per_row", "cursor_key")
    rows = primary.execute(
        "SELECT status, batch_size, rows_per_second, wal_bytes_per_row, cursor_key "
        "FROM walthrottle.batched_migrations WHERE name = %s",
        [MIGRATION],
    )
    return dict(zip(columns, rows[0], strict=True)) if rows else {}


def migration_status(primary: PostgresCluster) -> str | None:
    """Return the migration's status in the state tables (``finished`` at the end)."""
    rows = primary.execute("SELECT status FROM walthrottle.batched_migrations WHERE name = %s", [MIGRATION])
    return rows[0][0] if rows else None


# --------------------------------------------------------------------------------------------------
# the Airflow side
# --------------------------------------------------------------------------------------------------


class LogWatch:
    """The task logs (the tasks' own and their triggers') written since this watch was made.

    Files are read from where they ended when the watch was made, so each phase sees only its own
    lines, whichever task instance and trigger wrote them.
    """

    def __init__(self, airflow: AirflowStandalone) -> None:
        self.root = airflow.home / "logs" / f"dag_id={DAG_ID}"
        self.offsets = {path: path.stat().st_size for path in self._files()}

    def _files(self) -> list[Path]:
        return [path for path in self.root.rglob("*") if path.is_file()] if self.root.is_dir() else []

    def lines(self) -> dict[tuple[str, str], list[str]]:
        """Return the new lines, by ``(run_id, task_id)``."""
        found: dict[tuple[str, str], list[str]] = {}
        for path in sorted(self._files()):
            with path.open("rb") as fh:
                fh.seek(self.offsets.get(path, 0))
                text = fh.read().decode(errors="replace")
            if text:
                parts = dict(part.split("=", 1) for part in path.relative_to(self.root).parts[:2])
                found.setdefault((parts["run_id"], parts["task_id"]), []).extend(text.splitlines())
        return found

    def naming(self, label: str) -> dict[tuple[str, str], list[str]]:
        """Return the new lines of checks that ``label`` stopped, by task instance."""
        needle = f"{label} on {CONN_ID}: stop:"
        found = {ti: [line for line in lines if needle in line] for ti, lines in self.lines().items()}
        return {ti: lines for ti, lines in found.items() if lines}

    def tail(self, lines: int = 12) -> str:
        """Return the last new lines of each task instance, as time and message, for a failure message."""
        out = []
        for (run_id, task_id), new in self.lines().items():
            out.append(f"--- {run_id} {task_id}:")
            out += [_log_line(line) for line in new[-lines:]]
        return "\n".join(out[-4 * lines :])


def _log_line(line: str) -> str:
    """Return a task log line (JSON) as ``HH:MM:SS.mmm message``."""
    try:
        record = json.loads(line)
    except ValueError:
        return line[:400]
    return f"{str(record.get('timestamp', ''))[11:23]} {str(record.get('event', ''))[:400]}"


def ti_state(airflow: AirflowStandalone, run_id: str, task_id: str) -> str | None:
    return airflow.task_instance(DAG_ID, run_id, task_id)["state"]


def assert_nothing_broke(airflow: AirflowStandalone) -> None:
    broken = airflow.task_instances(DAG_ID, "~", state=list(BROKEN_STATES))
    if broken:
        logs = "\n".join(
            f"--- {ti['dag_run_id']} {ti['task_id']} ({ti['state']}):\n"
            + airflow.task_log(DAG_ID, ti["dag_run_id"], ti["task_id"])[-3000:]
            for ti in broken[:2]
        )
        raise AssertionError(f"task instances failed:\n{logs}")


def active_tis(airflow: AirflowStandalone) -> list[tuple[str, str, str]]:
    tis = airflow.task_instances(DAG_ID, "~", state=["scheduled", "queued", "running", "deferred"])
    return [(ti["dag_run_id"], ti["task_id"], ti["state"]) for ti in tis]


# --------------------------------------------------------------------------------------------------
# the phases
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Phase:
    """One indicator's turn: what makes it stop the migration and what clears it.

    :param indicator: the indicator's name.
    :param make: brings about what it stops on; returns a line for the report.
    :param clear: takes it away.
    :param after: tidies up once the migration went on (optional).
    """

    indicator: str
    make: Callable[[], str]
    clear: Callable[[], None]
    after: Callable[[], None] = lambda: None

    @property
    def label(self) -> str:
        """How its log lines name it."""
        return LABELS[self.indicator]


@dataclasses.dataclass
class PhaseReport:
    """What one phase saw, with its timings, for the printed report."""

    indicator: str
    made: str = ""
    stopped_task: str = ""
    to_stop: float = 0.0
    held: float = 0.0
    to_go: float = 0.0
    rows_at_stop: int = 0
    checks: int = 0
    others: list[str] = dataclasses.field(default_factory=list)

    def line(self) -> str:
        others = f"; also named: {', '.join(self.others)}" if self.others else ""
        return (
            f"{self.indicator}: {self.made}; stopped {self.to_stop:.1f} s later in {self.stopped_task} "
            f"at {self.rows_at_stop} rows; held through {self.checks} checks ({self.held:.1f} s, no row "
            f"changed); went on {self.to_go:.1f} s after it cleared{others}"
        )


def run_phase(airflow: AirflowStandalone, primary: PostgresCluster, phase: Phase) -> PhaseReport:
    """Stop the moving migration with one indicator, hold, clear it, and see the migration go on."""
    report = PhaseReport(phase.indicator)
    watch = LogWatch(airflow)

    def describe() -> dict[str, Any]:
        return {
            "rows done": rows_done(primary),
            "migration": migration_state(primary),
            "tasks": active_tis(airflow),
            "readings": readings(primary),
            "new log lines": "\n" + watch.tail(),
        }

    started = time.monotonic()
    report.made = phase.make()

    def stopped() -> tuple[str, str] | None:
        assert_nothing_broke(airflow)
        for run_id, task_id in watch.naming(phase.label):
            if ti_state(airflow, run_id, task_id) == "deferred":
                return run_id, task_id
        return None

    run_id, task_id = airflow.wait_until(
        stopped,
        timeout=STOP_TIMEOUT,
        interval=0.5,
        what=f"a task of the migration to defer, stopped by {phase.label}",
        describe=describe,
    )
    stopped_at = time.monotonic()
    report.to_stop = stopped_at - started
    report.stopped_task = task_id.rsplit(".", 1)[-1]
    frozen = report.rows_at_stop = rows_done(primary)
    first = len(watch.naming(phase.label)[run_id, task_id])

    def held() -> int | None:
        # nothing moves while the indicator says stop: the task waits, deferred, and no row changes
        assert rows_done(primary) == frozen, f"rows changed while {phase.label} stopped the migration"
        state = ti_state(airflow, run_id, task_id)
        assert state == "deferred", f"{task_id} of {run_id} left its wait ({state}) while {phase.label} stops"
        checks = len(watch.naming(phase.label)[run_id, task_id])
        return checks if checks >= first + HELD_CHECKS else None

    report.checks = airflow.wait_until(
        held,
        timeout=STOP_TIMEOUT,
        interval=0.5,
        what=f"{HELD_CHECKS} more checks stopped by {phase.label}",
        describe=describe,
    )
    report.held = time.monotonic() - stopped_at
    all_lines = "\n".join(itertools.chain.from_iterable(watch.lines().values()))
    report.others = [
        name
        for name, label in LABELS.items()
        if name != phase.indicator and f"{label} on {CONN_ID}: stop:" in all_lines
    ]

    phase.clear()
    cleared_at = time.monotonic()
    assert rows_done(primary) == frozen

    def went_on() -> int | None:
        assert_nothing_broke(airflow)
        done = rows_done(primary)
        return done if done > frozen else None

    airflow.wait_until(
        went_on,
        timeout=GO_TIMEOUT,
        interval=0.5,
        what=f"the migration to go on after {phase.label} cleared",
        describe=describe,
    )
    report.to_go = time.monotonic() - cleared_at
    phase.after()
    print(f"[e2e] {report.line()}", flush=True)
    return report


def phases(servers: Servers) -> list[Phase]:
    primary, standby = servers.primary, servers.standby

    def make_backlog() -> str:
        primary.make_backlog(BACKLOG)
        return f"{BACKLOG} segments pending behind the closed archive gate (> {MAX_PENDING_SEGMENTS})"

    def pause_replay() -> str:
        standby.execute("SELECT pg_wal_replay_pause()")
        wait_until(
            lambda: standby.execute("SELECT pg_get_wal_replay_pause_state()")[0][0] == "paused",
            what="the standby's replay to pause",
        )
        lag = write_wal_until(primary, lambda: standby_lag_bytes(primary), 2 * MAX_LAG_BYTES)
        return f"replay paused, the standby {lag / MIB:.1f} MiB behind (> {MAX_LAG_BYTES // MIB} MiB)"

    def resume_replay() -> None:
        standby.execute("SELECT pg_wal_replay_resume()")

    def make_slot() -> str:
        primary.execute("SELECT pg_create_logical_replication_slot(%s, 'test_decoding')", [SLOT])
        retained = write_wal_until(primary, lambda: slot_retained_bytes(primary), 2 * MAX_RETAINED_BYTES)
        return f"logical slot {SLOT} retains {retained / MIB:.1f} MiB (> {MAX_RETAINED_BYTES // MIB} MiB)"

    def advance_slot() -> None:
        primary.execute("CHECKPOINT")  # logs the running transactions, from where decoding may restart
        primary.execute("SELECT pg_replication_slot_advance(%s, pg_current_wal_lsn())", [SLOT])

    def drop_slot() -> None:
        primary.execute("SELECT pg_drop_replication_slot(%s)", [SLOT])

    table = sql.Identifier(TABLE)

    def start_autovacuum() -> str:
        primary.execute(sql.SQL("ALTER TABLE {} SET (autovacuum_enabled = true)").format(table))
        pids = wait_until(
            lambda: autovacuum_workers_on_table(primary), interval=0.2, what=f"autovacuum on {TABLE}"
        )
        return f"autovacuum worker {pids[0]} on {TABLE}, at 100 ms a page"

    def cancel_autovacuum() -> None:
        # waits for the worker's lock, and so cancels it (a blocking autovacuum is cancelled)
        primary.execute(sql.SQL("ALTER TABLE {} SET (autovacuum_enabled = false)").format(table))
        for pid in autovacuum_workers_on_table(primary):
            primary.execute("SELECT pg_cancel_backend(%s)", [pid])
        wait_until(lambda: not autovacuum_workers_on_table(primary), what=f"no autovacuum on {TABLE}")

    return [
        Phase("wal_archival", make_backlog, primary.drain),
        Phase("replication_lag", pause_replay, resume_replay),
        Phase("replication_slots", make_slot, advance_slot, drop_slot),
        Phase("autovacuum", start_autovacuum, cancel_autovacuum),
    ]


class Timer:
    """Wall time of each step, printed as it ends."""

    def __init__(self) -> None:
        self.started = self.last = time.monotonic()

    def step(self, name: str) -> None:
        now = time.monotonic()
        print(f"[e2e] {name}: {now - self.last:.1f} s (total {now - self.started:.1f} s)", flush=True)
        self.last = now


# --------------------------------------------------------------------------------------------------
# the scenario
# --------------------------------------------------------------------------------------------------


def test_each_indicator_stops_the_migration_in_turn_and_it_goes_on_exactly_once(
    airflow: AirflowStandalone, servers: Servers
):
    primary = servers.primary
    timer = Timer()
    for flag in FLAGS:
        airflow.set_variable(flag, "true")
    airflow.start()
    airflow.wait_for_dag(DAG_ID)
    airflow.unpause(DAG_ID)
    timer.step("Airflow started, four flags on, DAG parsed and unpaused")

    # the migration moves, with every indicator normal
    def moving() -> bool:
        assert_nothing_broke(airflow)
        return rows_done(primary) > 0

    airflow.wait_until(
        moving,
        timeout=120,
        what="the first rows migrated",
        describe=lambda: {"tasks": active_tis(airflow), "readings": readings(primary)},
    )
    assert all(reading.startswith("normal") for reading in readings(primary).values()), readings(primary)
    timer.step(f"the migration moves ({rows_done(primary)} rows)")

    reports = [run_phase(airflow, primary, phase) for phase in phases(servers)]
    timer.step("each indicator stopped the migration in turn, and it went on")

    # the pace goes: the batches grow to their time target, and the migration finishes
    primary.execute("UPDATE e2e_pace SET seconds = 0")

    def finished() -> bool:
        assert_nothing_broke(airflow)
        return migration_status(primary) == "finished"

    airflow.wait_until(
        finished,
        timeout=180,
        what="the migration to finish",
        describe=lambda: {"migration": migration_state(primary), "tasks": active_tis(airflow)},
    )
    airflow.api("PATCH", f"/api/v2/dags/{DAG_ID}", {"is_paused": True})
    timer.step("the migration finished")

    wrong = primary.execute(
        sql.SQL("SELECT id, counter FROM {} WHERE counter <> 1 ORDER BY id").format(sql.Identifier(TABLE))
    )
    assert wrong == [], f"rows changed the wrong number of times (id, counter): {wrong[:20]}"
    assert rows_done(primary) == ROWS
    done = jobs(primary)
    assert {job["status"] for job in done} == {"succeeded"}, done
    assert sum(job["rows"] for job in done) == ROWS
    assert all(later["start"] > earlier["end"] for earlier, later in itertools.pairwise(done)), done
    assert (done[0]["start"], done[-1]["end"]) == (1, ROWS)
    assert_nothing_broke(airflow)
    timer.step(f"{ROWS} rows checked one by one, {len(done)} disjoint succeeded jobs")
    print("[e2e] " + "\n[e2e] ".join(report.line() for report in reports))

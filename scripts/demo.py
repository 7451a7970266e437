"""The demo: a batched migration on a real Airflow, visibly throttled by a slow WAL archiver.

Run by ``./dev demo``. It starts

* a throwaway PostgreSQL 15 with 1 MiB WAL segments and an ``archive_command`` that copies about
  one segment a second, holding a demo table ``demo.events`` whose migration (rewrite a wide column)
  writes several hundred segments of WAL, and the tables the example DAGs use;
* Airflow 3 (scheduler, dag-processor, triggerer and api-server; LocalExecutor) in a fresh
  ``AIRFLOW_HOME`` under ``.demo/``, with ``example_dags/`` and a demo DAG built with
  ``batched_migration_dag``, and the connection ``warehouse`` to that PostgreSQL.

It turns the feature flag on (``airflow variables set batched_migrations_health_status_wal true``),
unpauses and triggers the demo DAG, prints the URL and the login, then follows the backlog, the task
states and the provider's log lines: the migration writes WAL faster than the archiver copies it,
so whenever more than 42 segments wait, it stops with its progress committed and waits deferred
until the backlog drains. Flip the Variable to false to see it run unthrottled.

Ctrl-C stops everything it started (Airflow and PostgreSQL). ``--check`` runs without a terminal:
it stops at the first throttled check, prints how long that took, and exits 0 (1 if none came).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import shlex
import shutil
import signal
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.airflow_standalone import AirflowCommandError, AirflowStandalone  # noqa: E402
from tests.support.postgres_cluster import (  # noqa: E402
    PostgresCluster,
    make_base_dir,
    remove_base_dir,
    stop_all_clusters,
)

if TYPE_CHECKING:
    from types import FrameType

FLAG = "batched_migrations_health_status_wal"
THRESHOLD = 42
CONN_ID = "warehouse"
DAG_ID = "walthrottle_demo"
MIGRATION = "demo_rewrite_event_payloads"
WALTHROTTLE = Path(sys.executable).parent / "walthrottle"
#: Seconds Airflow gets to stop after SIGINT before the rest is killed (it is all thrown away).
STOP_SECONDS = 6
#: Words in the provider's log lines that mean a check found the backlog too long.
THROTTLED_MARKERS = ("stopping with progress committed", "waiting, next check in", "throttled:")

DEMO_DAG = f'''
"""The demo's migration, written by scripts/demo.py: one batch per run, throttled on the WAL backlog.

``demo.events.payload`` is rewritten in place, which writes about 1.3 kB of WAL per row: far more
than the demo's archiver copies (about one 1 MiB segment a second). Each run waits while more than
42 segments are pending, then applies one batch, stopping between sub-batches when the backlog
passes the threshold.
"""

import datetime

from airflow_provider_walthrottle import batched_migration_dag

dag = batched_migration_dag(
    dag_id="{DAG_ID}",
    start_date=datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc),
    schedule=datetime.timedelta(seconds=30),
    max_active_runs=1,
    tags=["demo"],
    postgres_conn_id="{CONN_ID}",
    migration_name="{MIGRATION}",
    table="demo.events",
    column="id",
    scope="NOT rewritten",
    batch_sql=(
        "UPDATE demo.events SET payload = upper(payload), rewritten = true "
        "WHERE id BETWEEN %(start)s AND %(end)s AND NOT rewritten"
    ),
    max_pending_segments={THRESHOLD},
    poke_interval=5,
    retry_delay=datetime.timedelta(seconds=10),
    # the first batch (about 80 MiB of WAL) is planned before the WAL per row is known: it passes
    # the threshold and stops half-way; later ones are sized to the headroom left below 42 segments
    operator_kwargs={{"batch_size": 60_000, "sub_batch_size": 2_000, "pause_ms": 0}},
)
'''

#: The demo table, and small versions of the tables the example DAGs use, so they run if unpaused.
SCHEMA_SQL = (
    "CREATE SCHEMA demo",
    """CREATE TABLE demo.events (
        id bigint PRIMARY KEY,
        payload text NOT NULL,
        rewritten boolean NOT NULL DEFAULT false
    )""",
    """INSERT INTO demo.events (id, payload)
       SELECT i, repeat(md5(i::text), 16) FROM generate_series(1, %(rows)s) AS i""",
    "CREATE SCHEMA sales",
    """CREATE TABLE sales.orders (
        id bigint PRIMARY KEY,
        total numeric(12, 2) NOT NULL,
        total_cents bigint,
        created_at timestamptz NOT NULL
    )""",
    """INSERT INTO sales.orders (id, total, created_at)
       SELECT i, (i %% 10000) / 100.0, now() - i * interval '1 minute' FROM generate_series(1, 20000) AS i""",
    "CREATE INDEX orders_created_at_idx ON sales.orders (created_at)",
    "CREATE SCHEMA crm",
    "CREATE TABLE crm.customers (id bigint PRIMARY KEY, email text NOT NULL)",
    """INSERT INTO crm.customers (id, email)
       SELECT i, 'Customer' || i || '@Example.COM' FROM generate_series(1, 5000) AS i""",
)

PROGRESS_SQL = """
SELECT m.total_rows, coalesce(sum(j.rows_affected), 0)::bigint, m.status,
       count(*) FILTER (WHERE j.status = 'succeeded'), m.throttled_seconds
FROM walthrottle.batched_migrations AS m
LEFT JOIN walthrottle.batched_migration_jobs AS j ON j.migration_name = m.name
WHERE m.name = %s
GROUP BY m.name
"""

_STARTED = time.monotonic()


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def note(text: str) -> None:
    print(f"[{time.monotonic() - _STARTED:6.1f}s] {text}", flush=True)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


# --------------------------------------------------------------------------------------------------
# setting up
# --------------------------------------------------------------------------------------------------


def start_postgres(base: Path, rows: int, archive_delay: float) -> PostgresCluster:
    """Start the cluster, load the tables with a fast archiver, then make the archiver slow."""
    cluster = PostgresCluster.create(base, name="demo", wal_segsize_mb=1)
    cluster.start()
    for statement in SCHEMA_SQL:
        cluster.execute(statement, {"rows": rows})  # with parameters, so that %% reads as %
    cluster.execute("CHECKPOINT")
    cluster.drain(timeout=300)
    cluster.set_archive_delay(archive_delay)
    return cluster


def prepare_airflow(airflow: AirflowStandalone) -> None:
    """Create the metadata database and turn the flag on, as a user would."""
    airflow.prepare()
    airflow.set_variable(FLAG, "true")


def write_dags(dags_folder: Path) -> None:
    """Copy ``example_dags/`` into the DAGs folder and add the demo DAG."""
    dags_folder.mkdir(parents=True, exist_ok=True)
    for path in sorted((REPO / "example_dags").glob("*.py")):
        shutil.copy2(path, dags_folder / path.name)
    (dags_folder / f"{DAG_ID}.py").write_text(textwrap.dedent(DEMO_DAG).lstrip(), encoding="utf-8")


# --------------------------------------------------------------------------------------------------
# following what happens
# --------------------------------------------------------------------------------------------------


class Follower:
    """Print the backlog, the migration's progress, task state changes and the provider's log lines."""

    def __init__(self, airflow: AirflowStandalone, cluster: PostgresCluster) -> None:
        self.airflow = airflow
        self.cluster = cluster
        self.conn: psycopg.Connection[Any] | None = None
        self.offsets: dict[Path, int] = {}
        self.states: dict[tuple[str, str], tuple[str | None, int]] = {}
        self.last_backlog: tuple[int | None, str] | None = None
        self.last_backlog_at = 0.0
        self.last_progress: tuple[Any, ...] | None = None
        self.first_throttled: float | None = None

    def poll(self) -> None:
        self._backlog()
        self._progress()
        self._task_states()
        self._log_lines()

    def _connection(self) -> psycopg.Connection[Any]:
        if self.conn is None or self.conn.closed or self.conn.broken:
            self.conn = self.cluster.connect()
        return self.conn

    def _backlog(self) -> None:
        from airflow_provider_walthrottle.wal.health import evaluate_wal_archival
        from airflow_provider_walthrottle.wal.queries import read_archiver_status

        health = evaluate_wal_archival(read_archiver_status(self._connection()), THRESHOLD)
        pending = health.status.pending_segments
        current = (pending, health.signal.value)
        now = time.monotonic()
        previous = self.last_backlog
        moved = previous is None or previous[1] != current[1] or abs((pending or 0) - (previous[0] or 0)) >= 5
        if moved or now - self.last_backlog_at >= 15:
            note(f"backlog   | {health.summary()}")
            self.last_backlog, self.last_backlog_at = current, now

    def _progress(self) -> None:
        conn = self._connection()
        exists = conn.execute("SELECT to_regclass('walthrottle.batched_migrations') IS NOT NULL").fetchone()
        if not exists or not exists[0]:
            return
        row = conn.execute(PROGRESS_SQL, [MIGRATION]).fetchone()
        if row is None or row == self.last_progress:
            return
        total, done, status, batches, throttled = row
        self.last_progress = row
        share = 100.0 * done / total if total else 100.0
        note(
            f"migration | {done}/{total} rows ({share:.1f}%) in {batches} batches, {status}, "
            f"throttled {throttled:.0f}s so far"
        )

    def _task_states(self) -> None:
        runs = self.airflow.dag_runs(DAG_ID, order_by="-id", limit=3)
        for run in reversed(runs):
            run_id = run["dag_run_id"]
            for ti in self.airflow.task_instances(DAG_ID, run_id):
                key = (run_id, ti["task_id"])
                value = (ti["state"], ti["try_number"])
                if self.states.get(key, (None, 0)) != value and ti["state"] is not None:
                    task = ti["task_id"].rsplit(".", 1)[-1]
                    note(f"task      | {task:<22} {ti['state']:<16} (run {run_id}, try {ti['try_number']})")
                self.states[key] = value

    def _log_lines(self) -> None:
        folder = self.airflow.home / "logs" / f"dag_id={DAG_ID}"
        if not folder.is_dir():
            return
        for path in sorted(folder.rglob("attempt=*")):
            if not path.is_file():
                continue
            offset = self.offsets.get(path, 0)
            with path.open("rb") as fh:
                fh.seek(offset)
                chunk = fh.read()
            complete = chunk[: chunk.rfind(b"\n") + 1]
            self.offsets[path] = offset + len(complete)
            task = path.parent.name.removeprefix("task_id=").rsplit(".", 1)[-1]
            for line in complete.decode(errors="replace").splitlines():
                self._log_line(task, path.name, line)

    def _log_line(self, task: str, file_name: str, line: str) -> None:
        try:
            record = json.loads(line)
        except ValueError:
            return
        event = str(record.get("event", ""))
        logger = str(record.get("logger", ""))
        if "airflow_provider_walthrottle" not in logger and not event.startswith("Migration "):
            return
        if event.startswith("job "):
            return  # one line per sub-batch: the progress line says it better
        where = "triggerer" if ".trigger." in file_name else task
        note(f"log       | {where}: {event}")
        if self.first_throttled is None and any(marker in event for marker in THROTTLED_MARKERS):
            self.first_throttled = time.monotonic()


# --------------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--check",
        action="store_true",
        help="stop at the first throttled check and exit 0 (1 if none comes within --timeout)",
    )
    mode.add_argument("--for-seconds", type=float, metavar="N", help="stop after N seconds instead of Ctrl-C")
    parser.add_argument("--timeout", type=float, default=300, help="--check: seconds to wait (default 300)")
    parser.add_argument("--rows", type=int, default=300_000, help="rows of demo.events (default 300000)")
    parser.add_argument(
        "--archive-delay", type=float, default=1.0, help="seconds the archiver takes per segment (default 1)"
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)

    base = make_base_dir("walthrottle-demo-pg-")
    (REPO / ".demo").mkdir(exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="airflow-", dir=REPO / ".demo"))
    airflow = AirflowStandalone(
        home,
        dags_folder=home / "dags",
        connections={},  # set once PostgreSQL runs
        parallelism=4,
        serve_logs=True,
        config={"walthrottle": {"ui_connection_ids": CONN_ID}},
    )
    code = 0
    cluster: PostgresCluster | None = None
    try:
        say("starting a throwaway PostgreSQL and preparing Airflow (in parallel)")
        write_dags(airflow.dags_folder)
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            # `airflow db migrate` and `airflow variables set` (about 15 s) while the tables load
            prepared = pool.submit(prepare_airflow, airflow)
            cluster = start_postgres(base, args.rows, args.archive_delay)
            prepared.result()
        note(
            f"PostgreSQL on 127.0.0.1:{cluster.port}: 1 MiB WAL segments, demo.events with {args.rows} "
            f"rows, an archiver that copies one segment every {args.archive_delay:g}s; flag {FLAG} on"
        )

        say("starting Airflow: scheduler, dag-processor, triggerer and api-server (LocalExecutor)")
        airflow.connections[CONN_ID] = cluster.uri()
        airflow.start()
        airflow.wait_for_dag(DAG_ID)
        airflow.unpause(DAG_ID)
        run_id = airflow.trigger(DAG_ID)
        triggered = time.monotonic()
        note(f"Airflow is up; {DAG_ID} unpaused and triggered (run {run_id})")
        print_banner(airflow, cluster)

        say("following the migration (backlog, progress, task states, the provider's log lines)")
        follower = Follower(airflow, cluster)
        deadline = time.monotonic() + (args.timeout if args.check else args.for_seconds or float("inf"))
        while time.monotonic() < deadline:
            try:
                follower.poll()
            except (OSError, AirflowCommandError, psycopg.Error) as error:  # a busy moment: try again
                note(f"(could not follow this time: {' '.join(str(error).split())[:200]})")
            if args.check and follower.first_throttled is not None:
                break
            time.sleep(2)
        if follower.first_throttled is not None:
            say(
                f"first throttled check {follower.first_throttled - _STARTED:.1f}s after the demo started, "
                f"{follower.first_throttled - triggered:.1f}s after the DAG was unpaused and triggered"
            )
        elif args.check:
            say(f"no throttled check within {args.timeout:g}s")
            print(airflow.diagnostics())
            code = 1
    except KeyboardInterrupt:
        print("\ninterrupted", flush=True)
        code = 0 if not args.check else 130
    finally:
        # a second Ctrl-C must not cut the clean-up short
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        say("stopping everything the demo started")
        stopping = time.monotonic()
        for line in airflow.stop(timeout=STOP_SECONDS):
            print(f"  killed: {line}")
        note(f"Airflow stopped in {time.monotonic() - stopping:.1f}s")
        if cluster is not None:
            # a fast shutdown would wait for the slow archiver to copy every pending segment
            cluster.stop(mode="immediate")
        stop_all_clusters()
        remove_base_dir(base)
        shutil.rmtree(home, ignore_errors=True)
        note(f"stopped Airflow and PostgreSQL in {time.monotonic() - stopping:.1f}s")
    return code


def print_banner(airflow: AirflowStandalone, cluster: PostgresCluster) -> None:
    flip_off = airflow.cli_hint("variables", "set", FLAG, "false")
    flip_on = airflow.cli_hint("variables", "set", FLAG, "true")
    status = f"{WALTHROTTLE} status {shlex.quote(cluster.uri())}"
    print(
        textwrap.dedent(
            f"""
            Airflow UI   {airflow.ui_url}   (DAG {DAG_ID}: Graph, Logs, XCom)
            migrations   {airflow.ui_url}/plugin/batched-migrations   (Browse > Batched migrations)
            login        admin / {airflow.password}
            the flag     {FLAG} is on: the migration waits while more than {THRESHOLD} segments are pending.
                         Turn it off to see the migration run unthrottled (the backlog will grow):
                           {flip_off}
                         and on again:
                           {flip_on}
            the backlog  {status}
            logs         {airflow.components_dir}/*.log and {airflow.home}/logs/
            Ctrl-C stops Airflow and PostgreSQL.
            """
        ),
        flush=True,
    )


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())

"""The "Batched migrations" page and its API, served by a real api-server, read in real Chromium.

The database side is real: a PostgreSQL cluster with a gated archiver, a streaming standby and a
replication slot nobody consumes, migrations run with the batching core's ``run_batch`` against its
real health (checked as the gate decides), with real time between their batches (one throttled by
50 pending segments, one waiting for its next batch, one paused, one finished after rows were
deleted under it, one with a ``/`` in its name), a second configured connection that points at a
closed port, and a third to the same database as a role without ``pg_monitor``. Airflow is a real
api-server (only that component: the page needs no scheduler) with SimpleAuthManager and one user
per role. One test starts a second api-server whose page also reads a server that accepts
connections and never answers.

Three time zones meet: the database's (``timezone``, in which PostgreSQL returns ``timestamptz``
values), the processes' (UTC here) and Airflow's ``[core] default_timezone``, in which the page
shows every time; each is a different one here, so a time shown in the wrong zone shows.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import html
import html.parser
import json
import os
import re
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pendulum
import pytest

from airflow_provider_walthrottle.durations import format_duration
from airflow_provider_walthrottle.flags import (
    AUTOVACUUM_HEALTH_FLAG,
    KILL_SWITCH_VARIABLE,
    REPLICATION_LAG_HEALTH_FLAG,
    REPLICATION_SLOTS_HEALTH_FLAG,
    WAL_HEALTH_FLAG,
)
from airflow_provider_walthrottle.gate import GateVerdict, decide
from airflow_provider_walthrottle.indicators.autovacuum import AutovacuumIndicator
from airflow_provider_walthrottle.indicators.base import IndicatorContext, read_indicators
from airflow_provider_walthrottle.indicators.replication_lag import ReplicationLagIndicator
from airflow_provider_walthrottle.indicators.replication_slots import ReplicationSlotsIndicator
from airflow_provider_walthrottle.indicators.wal_archival import WalArchivalIndicator
from airflow_provider_walthrottle.migrations.batch import BatchDone, Finished, WaitForBacklog, run_batch
from airflow_provider_walthrottle.migrations.optimizer import BatchSizePolicy
from airflow_provider_walthrottle.migrations.runner import HealthVerdict, RunSettings, prepare
from airflow_provider_walthrottle.wal.health import OnUnavailable
from tests.support.airflow_standalone import AirflowStandalone, free_port, make_home
from tests.support.migration_tables import increment_migration, make_table
from tests.support.silent_server import SilentServer

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.support.postgres_cluster import ClusterFactory, PostgresCluster

CONN_ID = "pg_ui"
DOWN_CONN_ID = "pg_down"
DOWN_PORT = free_port()  # nothing listens there
PLAIN_CONN_ID = "pg_plain"  # the same database, as a role without pg_monitor
PLAIN_ROLE, PLAIN_PASSWORD = "page_reader", "page-reader-pw"
STANDBY = "ui_standby"  # its application_name, in the replication lag indicator's reading
SLOT = "gone_standby"  # a slot whose standby is gone: it retains every byte written since
THROTTLED = "orders_backfill"
WAITING = "refunds_backfill"  # between two batches, with an ETA
PAUSED = "users_cleanup"
FINISHED = "events_backfill"  # its last rows were deleted while it ran
SLASHED = "billing/invoices_cleanup"
USERS = ("admin", "viewer", "user", "op")
#: Seconds between two batches of a migration in the fixture: its schedule
GAP = 0.3
#: Airflow's ``[core] default_timezone`` for the page's api-server, and the database server's zone
AIRFLOW_TIMEZONE, DATABASE_TIMEZONE = "Europe/Amsterdam", "Asia/Tokyo"
ARTIFACTS = Path(os.environ.get("WALTHROTTLE_TEST_ARTIFACTS", Path(__file__).parents[2] / "test-artifacts"))


# --------------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------------


#: The indicators the migrations in the fixture are checked with, as a task has them by default,
#: with a lag allowance a busy test machine's standby keeps within.
TASK_INDICATORS = (
    WalArchivalIndicator(),
    ReplicationLagIndicator(max_lag_seconds=60, max_lag_bytes=1 << 30),
    ReplicationSlotsIndicator(),
    AutovacuumIndicator(),
)


@pytest.fixture(scope="module")
def database(pg_cluster_factory: ClusterFactory) -> Iterator[PostgresCluster]:
    """A cluster with 1 MB segments, a standby, a slot, migrations, and 50 segments waiting (above 42).

    Its ``timezone`` is neither UTC nor Airflow's, so it returns times in a zone the page must not show.
    """
    cluster = pg_cluster_factory(name="ui", wal_segsize_mb=1, extra_conf={"timezone": DATABASE_TIMEZONE})
    cluster.archive_one_segment()
    standby = cluster.make_standby("ui-standby", archive_mode="off")
    try:
        yield prepared(cluster, standby)
    finally:
        standby.close()


def prepared(cluster: PostgresCluster, standby: PostgresCluster) -> PostgresCluster:
    """Run the fixture's migrations on ``cluster``; return it."""
    standby.execute(f"ALTER SYSTEM SET cluster_name = '{STANDBY}'")  # the walreceiver's application_name
    standby.restart()
    standby.wait_until(
        lambda: cluster.execute("SELECT application_name FROM pg_stat_replication") == [(STANDBY,)],
        what="the standby to stream under its name",
    )
    cluster.execute("SELECT pg_create_physical_replication_slot(%s, true)", [SLOT])
    cluster.create_role(PLAIN_ROLE, PLAIN_PASSWORD, pg_monitor=False)
    make_table(cluster, "orders", 3000)
    make_table(cluster, "refunds", 3000)
    make_table(cluster, "users", 600)
    make_table(cluster, "events", 3000)
    make_table(cluster, "invoices", 300)
    settings = RunSettings(
        sub_batch_size=50, pause_ms=0, policy=BatchSizePolicy(min_batch_size=100, max_batch_size=300)
    )
    with cluster.connect() as checks, cluster.connect() as conn:

        def run(store: Any, dag_id: str = "ui_dag") -> Any:
            def check_health() -> HealthVerdict:
                # as the operator's gate decides, every flag on
                context = IndicatorContext(table=store.definition.table)
                readings = tuple(read_indicators(checks, TASK_INDICATORS, context))
                stopping = decide(readings, OnUnavailable.WAIT)
                return HealthVerdict.from_gate(GateVerdict(True, not stopping, readings, stopping))

            # as the operator does: run_batch keeps what each job's last check saw and the time accounts
            return run_batch(store, settings, check_health, dag_id=dag_id, run_id="manual__1")

        def run_on_schedule(store: Any, batches: int, dag_id: str = "ui_dag") -> None:
            for _ in range(batches):
                assert isinstance(run(store, dag_id), BatchDone)
                time.sleep(GAP)

        orders = prepare(conn, increment_migration(THROTTLED, "orders"), batch_size=300)
        run_on_schedule(orders, 3)
        refunds = prepare(conn, increment_migration(WAITING, "refunds"), batch_size=300)
        run_on_schedule(refunds, 3, "refunds_dag")
        users = prepare(conn, increment_migration(PAUSED, "users"), batch_size=100)
        run_on_schedule(users, 1)
        users.set_paused(True)
        events = prepare(conn, increment_migration(FINISHED, "events"), batch_size=300)
        assert isinstance(run(events, "events_dag"), BatchDone)
        cluster.execute("DELETE FROM events WHERE id > 1100")  # the first batch walked about 1050 ids
        steps = [run(events, "events_dag") for _ in range(3)]
        assert any(isinstance(step, Finished) for step in steps), steps
        prepare(conn, increment_migration(SLASHED, "invoices"), batch_size=100)
        cluster.make_backlog(50)
        throttled = run(orders)
        assert isinstance(throttled, WaitForBacklog), throttled
    # the page's role reads the state tables, and nothing of pg_monitor
    cluster.execute(f"GRANT USAGE ON SCHEMA walthrottle TO {PLAIN_ROLE}")
    cluster.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA walthrottle TO {PLAIN_ROLE}")
    return cluster


@pytest.fixture(scope="module")
def airflow_ui(database: PostgresCluster) -> Iterator[AirflowStandalone]:
    """A real api-server with the provider's plugin, one user per SimpleAuthManager role."""
    home = make_home()
    instance = AirflowStandalone(
        home,
        dags_folder=home / "dags",
        connections={
            CONN_ID: database.uri(),
            DOWN_CONN_ID: f"postgresql://nobody:secret@127.0.0.1:{DOWN_PORT}/postgres",
            PLAIN_CONN_ID: database.uri(PLAIN_ROLE, PLAIN_PASSWORD),
        },
        components=["api-server"],
        config={
            "core": {
                "simple_auth_manager_users": ",".join(f"{name}:{name}" for name in USERS),
                "default_timezone": AIRFLOW_TIMEZONE,
            },
            "walthrottle": {"ui_connection_ids": f"{CONN_ID},{DOWN_CONN_ID},{PLAIN_CONN_ID}"},
        },
    )
    try:
        instance.start()
        yield instance
    finally:
        instance.stop()
        leftovers = instance.leftover_processes()
        if os.environ.get("WALTHROTTLE_KEEP_AIRFLOW_HOME") != "1":
            instance.remove_home()
        assert not leftovers, f"processes left behind: {leftovers}"


@pytest.fixture(scope="module")
def tokens(airflow_ui: AirflowStandalone) -> dict[str, str]:
    return {name: airflow_ui.token_of(name) for name in USERS}


def call(
    airflow: AirflowStandalone,
    method: str,
    path: str,
    *,
    token: str | None = None,
    body: Any = None,
    content_type: str = "application/json",
) -> tuple[int, Any]:
    """Return the HTTP status and the decoded body (JSON, else text) of one request."""
    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        headers["Content-Type"] = content_type
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(airflow.base_url + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, payload = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, payload = error.code, error.read()
    text = payload.decode(errors="replace")
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def migration_status(database: PostgresCluster, name: str) -> str:
    rows = database.execute("SELECT status FROM walthrottle.batched_migrations WHERE name = %s", [name])
    return str(rows[0][0])


PAUSE = f"/walthrottle/api/connections/{CONN_ID}/migrations/{PAUSED}"
FLAG = f"/walthrottle/api/flags/{WAL_HEALTH_FLAG}"


# --------------------------------------------------------------------------------------------------
# auth
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/walthrottle/", None),
        ("GET", "/walthrottle/api/overview", None),
        ("POST", f"{PAUSE}/pause", {}),
        ("POST", f"{PAUSE}/resume", {}),
        ("PUT", FLAG, {"enabled": True}),
    ],
)
def test_every_route_refuses_a_request_without_credentials(airflow_ui, database, method, path, body):
    status, payload = call(airflow_ui, method, path, body=body)
    assert status == 401, payload
    status, payload = call(airflow_ui, method, path, body=body, token="not-a-jwt")
    assert status in (401, 403), payload
    assert migration_status(database, PAUSED) == "paused"


def test_a_viewer_reads_the_page_but_may_not_pause_or_change_flags(airflow_ui, database, tokens):
    status, page = call(airflow_ui, "GET", "/walthrottle/", token=tokens["viewer"])
    assert status == 200
    assert THROTTLED in page and PAUSED in page
    # the buttons a viewer may not use are shown disabled, with the reason
    assert "Pausing and resuming needs permission to edit DAGs" in page
    assert "Changing Variables needs the Op role" in page

    status, payload = call(airflow_ui, "POST", f"{PAUSE}/resume", token=tokens["viewer"], body={})
    assert (status, payload["detail"]) == (403, "Forbidden")
    status, payload = call(airflow_ui, "PUT", FLAG, token=tokens["viewer"], body={"enabled": True})
    assert (status, payload["detail"]) == (403, "Forbidden")
    assert migration_status(database, PAUSED) == "paused"


def test_a_user_pauses_and_resumes_a_migration_but_may_not_change_flags(airflow_ui, database, tokens):
    token = tokens["user"]
    status, payload = call(airflow_ui, "POST", f"{PAUSE}/resume", token=token, body={})
    assert status == 200, payload
    assert payload == {"conn_id": CONN_ID, "migration": PAUSED, "status": "active"}
    assert migration_status(database, PAUSED) == "active"

    status, payload = call(airflow_ui, "POST", f"{PAUSE}/pause", token=token, body={})
    assert (status, payload["status"]) == (200, "paused")
    assert migration_status(database, PAUSED) == "paused"
    # pausing twice is not an error: it is where it was asked to be
    status, payload = call(airflow_ui, "POST", f"{PAUSE}/pause", token=token, body={})
    assert (status, payload["status"]) == (200, "paused")

    status, payload = call(airflow_ui, "PUT", FLAG, token=token, body={"enabled": True})
    assert (status, payload["detail"]) == (403, "Forbidden")


def test_an_op_turns_the_flag_on_and_off_and_airflow_sees_the_variable(airflow_ui, tokens):
    for enabled, word in ((True, "true"), (False, "false")):
        status, payload = call(airflow_ui, "PUT", FLAG, token=tokens["op"], body={"enabled": enabled})
        assert status == 200, payload
        assert (payload["key"], payload["raw"], payload["enabled"]) == (WAL_HEALTH_FLAG, word, enabled)
        shown = airflow_ui.airflow("variables", "get", WAL_HEALTH_FLAG).stdout.strip()
        assert shown == word


def test_only_the_pages_flags_can_be_changed(airflow_ui, tokens):
    status, payload = call(
        airflow_ui,
        "PUT",
        "/walthrottle/api/flags/some_other_variable",
        token=tokens["admin"],
        body={"enabled": True},
    )
    assert status == 404
    assert WAL_HEALTH_FLAG in payload["detail"]


def test_a_change_must_be_sent_as_json(airflow_ui, database, tokens):
    status, payload = call(
        airflow_ui, "POST", f"{PAUSE}/resume", token=tokens["user"], body="x=1", content_type="text/plain"
    )
    assert status == 415, payload
    assert migration_status(database, PAUSED) == "paused"


def test_changes_name_what_is_wrong(airflow_ui, tokens):
    token = tokens["admin"]
    status, payload = call(
        airflow_ui,
        "POST",
        f"/walthrottle/api/connections/{CONN_ID}/migrations/nope/pause",
        token=token,
        body={},
    )
    assert status == 404 and "no batched migration named 'nope'" in payload["detail"]
    status, payload = call(
        airflow_ui,
        "POST",
        f"/walthrottle/api/connections/elsewhere/migrations/{PAUSED}/pause",
        token=token,
        body={},
    )
    assert status == 404 and "not in [walthrottle] ui_connection_ids" in payload["detail"]


# --------------------------------------------------------------------------------------------------
# what the page shows
# --------------------------------------------------------------------------------------------------


def test_the_overview_shows_the_backlog_the_throttled_migration_and_the_broken_connection(airflow_ui, tokens):
    status, overview = call(airflow_ui, "GET", "/walthrottle/api/overview", token=tokens["viewer"])
    assert status == 200, overview
    assert overview["threshold"] == 42
    connections = {connection["conn_id"]: connection for connection in overview["connections"]}
    assert list(connections) == [CONN_ID, DOWN_CONN_ID, PLAIN_CONN_ID]

    ui = connections[CONN_ID]
    assert ui["error"] is None
    assert ui["health"]["signal"] == "stop"
    assert ui["health"]["status"]["pending_segments"] == 50
    assert ui["throttling"] is True
    migrations = {migration["name"]: migration for migration in ui["migrations"]}
    throttled, paused = migrations[THROTTLED], migrations[PAUSED]
    assert (throttled["status"], throttled["throttling"]) == ("active", True)
    assert throttled["throttled_since"] is not None
    assert 0 < throttled["percentage"] < 100
    assert throttled["keys_done"] == sum(job["keys_done"] for job in throttled["recent_jobs"])
    # held by the backlog: how long, not an ETA that counts down
    assert (throttled["eta_wall_clock_seconds"], throttled["eta_seconds"]) == (None, None)
    assert (throttled["activity"], throttled["held_by"]) == ("throttled", "throttled by wal_archival")
    assert throttled["held_seconds"] >= 0
    assert throttled["time_spent_seconds"]["throttled_by"].keys() == {"wal_archival"}
    assert [job["status"] for job in throttled["recent_jobs"]] == ["succeeded"] * 3
    # the chart's points: one per finished job, with the backlog its last check saw (< 42 then)
    assert len(throttled["history"]) == 3
    assert all(0 <= point["pending_segments"] <= 42 for point in throttled["history"])
    # ... among the numbers that check saw, by indicator, as the job keeps them for the chart
    for point in throttled["history"]:
        wal = point["indicator_values"]["wal_archival"]
        assert (wal["pending_segments"], wal["max_pending_segments"]) == (point["pending_segments"], 42)
        # the standby's lag and the slot's retention, against the thresholds of that check
        lag, slots = (point["indicator_values"][name] for name in ("replication_lag", "replication_slots"))
        assert (lag["standbys"], lag["max_lag_bytes"]) == (1, 1 << 30)
        assert slots["max_slot_retained_bytes"] > 0 and slots["max_retained_bytes"] == 1 << 30
        assert "autovacuums_on_table" in point["indicator_values"]["autovacuum"]
    assert (paused["status"], paused["throttling"], paused["held_by"]) == ("paused", False, "paused")

    # both rates, each named: keys per wall-clock second, and while the statements run
    waiting = migrations[WAITING]
    assert (waiting["activity"], waiting["held_by"]) == ("waiting", None)
    effective, statement = waiting["effective_keys_per_second"], waiting["statement_keys_per_second"]
    assert 0 < effective < statement
    assert waiting["recent_keys_per_second"] > 0 and waiting["recent_window"] == "since the first batch"
    assert waiting["rows_per_second"] == statement  # the deprecated alias
    # the ETA from the effective rate, saying what it assumes
    left = waiting["total_keys"] - waiting["keys_done"]
    assert waiting["eta_wall_clock_seconds"] == pytest.approx(left / waiting["recent_keys_per_second"])
    assert waiting["eta_seconds"] == waiting["eta_wall_clock_seconds"]  # the deprecated alias
    assert waiting["eta_assumes"] == "at the pace since the first batch"
    # where the time went: running, then GAP seconds after each batch, waiting for the next
    spent = waiting["time_spent_seconds"]
    assert spent["waiting_between_batches"] >= 3 * GAP - 0.1
    parts = ("running", "throttled", "waiting_between_batches", "paused", "failed_and_retried")
    assert sum(spent[part] for part in parts) == pytest.approx(spent["wall_clock"], abs=0.3)
    assert spent["not_recorded"] <= 0.1
    # the chart's effective rate: keys per wall-clock second over the batches up to each job, in
    # whole cycles (none for the first): about one batch per GAP
    rates = [point["effective_keys_per_second"] for point in waiting["history"]]
    assert rates[0] is None and len(rates) == 3
    assert all(300 / (GAP + 0.5) < rate < 300 / GAP for rate in rates[1:]), rates

    down = connections[DOWN_CONN_ID]
    assert down["migrations"] == [] and down["health"] is None
    assert DOWN_CONN_ID in down["error"] and "connection refused" in down["error"].lower()


INDICATOR_FLAGS = {
    "wal_archival": WAL_HEALTH_FLAG,
    "replication_lag": REPLICATION_LAG_HEALTH_FLAG,
    "replication_slots": REPLICATION_SLOTS_HEALTH_FLAG,
    "autovacuum": AUTOVACUUM_HEALTH_FLAG,
}
#: The tables of the fixture's unfinished migrations, each with the migrations on it.
MIGRATED_TABLES = {
    "public.orders": [THROTTLED],
    "public.refunds": [WAITING],
    "public.users": [PAUSED],
    "public.invoices": [SLASHED],
}


def indicators_of(overview: dict[str, Any], conn_id: str) -> dict[str, dict[str, Any]]:
    """Return a connection's indicator rows by ``indicator`` (autovacuum: ``autovacuum public.orders``)."""
    (connection,) = [c for c in overview["connections"] if c["conn_id"] == conn_id]
    return {" ".join(filter(None, (row["indicator"], row["table"]))): row for row in connection["indicators"]}


def test_every_indicator_is_read_on_every_connection_whatever_its_flag(airflow_ui, tokens):
    """Each indicator's reading, what the gate's rule makes of it, and its flag, in the JSON API.

    No flag is set: every indicator is off, yet read, so an operator sees what turning it on would do.
    """
    status, overview = call(airflow_ui, "GET", "/walthrottle/api/overview", token=tokens["viewer"])
    assert status == 200, overview
    rows = indicators_of(overview, CONN_ID)
    autovacuum = [f"autovacuum {table}" for table in sorted(MIGRATED_TABLES)]  # not the finished one's
    assert list(rows) == ["wal_archival", "replication_lag", "replication_slots", *autovacuum]
    unfinished = {THROTTLED, WAITING, PAUSED, SLASHED}
    for key, row in rows.items():
        assert row["flag_variable"] == INDICATOR_FLAGS[row["indicator"]], key
        assert (row["flag_enabled"], row["enforced_for"]) == (False, []), key
        expected = MIGRATED_TABLES[row["table"]] if row["table"] else unfinished
        assert set(row["migrations"]) == set(expected), key

    # the backlog stops a migration by the gate's rule, whatever its flag says; it is the same reading
    wal = rows["wal_archival"]
    assert (wal["signal"], wal["stops"], wal["values"]["pending_segments"]) == ("stop", True, 50)
    assert wal["values"]["max_pending_segments"] == 42 and wal["details"]["method"] == "exact"
    # the standby, by its name, and its lag in both units
    lag = rows["replication_lag"]
    assert (lag["signal"], lag["stops"], lag["values"]["standbys"]) == ("normal", False, 1)
    assert STANDBY in lag["reason"]
    assert lag["values"]["max_replay_lag_bytes"] >= 0 and lag["values"]["max_lag_bytes"] == 64 << 20
    # the slot nobody consumes retains the backlog's WAL and more
    slots = rows["replication_slots"]
    assert (slots["signal"], slots["stops"], slots["values"]["slots"]) == ("normal", False, 1)
    assert slots["values"]["max_slot_retained_bytes"] > 50 << 20
    assert slots["details"]["slots"][0]["slot_name"] == SLOT
    for key in autovacuum:
        assert (rows[key]["signal"], rows[key]["stops"]) == ("normal", False), rows[key]
        # the server names a table on its search_path without its schema
        assert rows[key]["reason"] == f"no autovacuum is processing {rows[key]['table'].split('.')[1]}"
    (connection,) = [c for c in overview["connections"] if c["conn_id"] == CONN_ID]
    assert connection["stopped_by"] == ["wal_archival"]

    # a role without pg_monitor: what it cannot see, and the grant that fixes it, as the reading says
    plain = indicators_of(overview, PLAIN_CONN_ID)
    assert list(plain) == list(rows)
    assert plain["wal_archival"]["details"]["method"] != "exact"
    hidden = plain["replication_lag"]
    assert (hidden["signal"], hidden["stops"]) == ("unknown", True)
    grant = f"GRANT pg_monitor TO {PLAIN_ROLE}"
    assert (
        hidden["reason"] == f"this role cannot see the state or lag of 1 WAL sender(s) ({STANDBY}): {grant}"
    )
    for key in autovacuum:
        assert plain[key]["reason"].endswith(
            f"; this role would not see which table an autovacuum works on: {grant}"
        )
    (plain_connection,) = [c for c in overview["connections"] if c["conn_id"] == PLAIN_CONN_ID]
    assert plain_connection["error"] is None and plain_connection["stopped_by"][-1] == "replication_lag"
    # the connection that cannot be reached has no readings, only its error
    assert indicators_of(overview, DOWN_CONN_ID) == {}
    # the flags card lists every indicator's flag, then the kill switch
    assert [flag["key"] for flag in overview["flags"]] == [*INDICATOR_FLAGS.values(), KILL_SWITCH_VARIABLE]


def indicator_row(page: str, conn_id: str, key: str) -> str:
    return page.split(f"<tr id='indicator-{conn_id}-{key}' ")[1].split("</tr>")[0]


def test_the_page_has_a_row_per_indicator_per_connection_with_its_flag_and_button(airflow_ui, tokens):
    status, page = call(airflow_ui, "GET", "/walthrottle/", token=tokens["op"])
    assert status == 200
    for conn_id in (CONN_ID, PLAIN_CONN_ID):
        keys = ["wal_archival", "replication_lag", "replication_slots"]
        keys += [f"autovacuum-{table}" for table in MIGRATED_TABLES]
        for key in keys:
            row = indicator_row(page, conn_id, key)
            flag = INDICATOR_FLAGS[key.split("-")[0]]
            assert f"<code>{flag.replace('_', '_<wbr>')}</code>" in row  # it may wrap at its underscores
            assert "<span class='badge b-off'>off" in row  # unset, or false after the tests above
            assert "flag off — not enforced" in row
            assert f"data-url='/walthrottle/api/flags/{flag}'" in row and ">Turn on</button>" in row
    # what each reading would do, in words
    wal = indicator_row(page, CONN_ID, "wal_archival")
    assert "<span class='badge b-stop'>stop</span>" in wal
    assert "would stop migrations, but its flag does not enforce it" in wal
    assert "pending segments <b>50</b> of 42" in wal
    lag = indicator_row(page, CONN_ID, "replication_lag")
    assert "<span class='badge b-normal'>normal</span>" in lag and "lets migrations go on" in lag
    assert re.search(r"max replay lag bytes <b>[\d.]+ (B|KiB|MiB)</b> of 64 MiB", lag), lag
    slots = indicator_row(page, CONN_ID, "replication_slots")
    assert re.search(r"max slot retained bytes <b>\d+ MiB</b> of 1 GiB", slots), slots
    hidden = indicator_row(page, PLAIN_CONN_ID, "replication_lag")
    assert "<span class='badge b-unknown'>unknown</span>" in hidden
    assert f"GRANT pg_monitor TO {PLAIN_ROLE}" in hidden
    assert "would stop migrations (unknown waits, as on stop), but its flag does not enforce it" in hidden
    autovacuum = indicator_row(page, CONN_ID, "autovacuum-public.orders")
    assert "<b>autovacuum on public.orders</b><div class='muted'>orders_backfill</div>" in autovacuum
    # the flags card: every indicator's flag and the kill switch, each with its button
    for key in (*INDICATOR_FLAGS.values(), KILL_SWITCH_VARIABLE):
        row = page.split(f"<tr id='flag-{key}'>")[1].split("</tr>")[0]
        assert f"data-url='/walthrottle/api/flags/{key}'" in row
    # a viewer sees the same rows, with the buttons disabled
    status, page = call(airflow_ui, "GET", "/walthrottle/", token=tokens["viewer"])
    row = indicator_row(page, CONN_ID, "replication_slots")
    assert (
        "<button type='button' disabled title='Changing Variables needs the Op role'>Turn on</button>" in row
    )


def test_turning_an_indicators_flag_on_enforces_it_on_the_page(airflow_ui, tokens):
    url = f"/walthrottle/api/flags/{WAL_HEALTH_FLAG}"
    try:
        status, payload = call(airflow_ui, "PUT", url, token=tokens["op"], body={"enabled": True})
        assert (status, payload["enabled"]) == (200, True), payload
        status, overview = call(airflow_ui, "GET", "/walthrottle/api/overview", token=tokens["viewer"])
        wal = indicators_of(overview, CONN_ID)["wal_archival"]
        assert (wal["flag_enabled"], set(wal["enforced_for"])) == (
            True,
            {THROTTLED, WAITING, PAUSED, SLASHED},
        )
        status, page = call(airflow_ui, "GET", "/walthrottle/", token=tokens["op"])
        row = indicator_row(page, CONN_ID, "wal_archival")
        assert "<span class='badge b-on'>on</span>" in row and "enforced</div>" in row
        assert "stops migrations</div>" in row and ">Turn off</button>" in row
        # a rollout to one migration: enforced for it only
        set_variable(airflow_ui, REPLICATION_SLOTS_HEALTH_FLAG, json.dumps({"actors": [THROTTLED]}))
        status, overview = call(airflow_ui, "GET", "/walthrottle/api/overview", token=tokens["viewer"])
        slots = indicators_of(overview, CONN_ID)["replication_slots"]
        assert (slots["flag_enabled"], slots["enforced_for"]) == (None, [THROTTLED])
        status, page = call(airflow_ui, "GET", "/walthrottle/", token=tokens["op"])
        assert f"rollout: enforced for {THROTTLED}" in indicator_row(page, CONN_ID, "replication_slots")
    finally:
        set_variable(airflow_ui, WAL_HEALTH_FLAG, "false")
        set_variable(airflow_ui, REPLICATION_SLOTS_HEALTH_FLAG, None)


def test_the_dag_view_narrows_the_page_to_the_dags_migrations(airflow_ui, tokens):
    status, overview = call(
        airflow_ui, "GET", "/walthrottle/api/overview?dag_id=ui_dag", token=tokens["viewer"]
    )
    assert status == 200
    assert {m["name"] for m in overview["connections"][0]["migrations"]} == {THROTTLED, PAUSED}
    status, overview = call(
        airflow_ui, "GET", "/walthrottle/api/overview?dag_id=other", token=tokens["admin"]
    )
    assert status == 200
    assert overview["connections"][0]["migrations"] == []


def test_a_finished_migration_reads_100_percent_even_with_rows_deleted_under_it(airflow_ui, tokens):
    status, overview = call(airflow_ui, "GET", "/walthrottle/api/overview", token=tokens["viewer"])
    assert status == 200
    (finished,) = [m for m in overview["connections"][0]["migrations"] if m["name"] == FINISHED]
    assert finished["status"] == "finished"
    assert finished["keys_done"] < finished["total_keys"]  # the deleted rows were never walked
    assert (finished["percentage"], finished["eta_seconds"]) == (100.0, 0.0)
    status, page = call(airflow_ui, "GET", "/walthrottle/", token=tokens["viewer"])
    row = page.split(f"id='migration-{CONN_ID}-{FINISHED}'")[1].split("</tr>")[0]
    assert "<em>100.0%</em>" in row


def test_the_page_shows_every_time_in_airflows_default_timezone_with_the_zone(airflow_ui, tokens):
    """The jobs' times, the chart's ends and the time the page was read, in ``[core] default_timezone``.

    The database returns its times in its own zone (Asia/Tokyo here) and the api-server runs in UTC;
    the page shows them in Europe/Amsterdam, and says which zone that is.
    """
    status, overview = call(airflow_ui, "GET", "/walthrottle/api/overview", token=tokens["viewer"])
    assert status == 200
    (throttled,) = [m for m in overview["connections"][0]["migrations"] if m["name"] == THROTTLED]
    finished = [pendulum.parse(job["finished_at"]) for job in throttled["recent_jobs"]]
    charted = [pendulum.parse(throttled["history"][index]["at"]) for index in (0, -1)]
    # what the page has to convert: times in the database's zone
    assert {moment.utcoffset() for moment in finished} == {pendulum.now(DATABASE_TIMEZONE).utcoffset()}

    status, page = call(airflow_ui, "GET", "/walthrottle/", token=tokens["viewer"])
    assert status == 200
    now = pendulum.now(AIRFLOW_TIMEZONE)
    offset, zone = now.format("Z"), now.format("zz")  # +01:00 and CET (or +02:00 and CEST)
    header = page.split("<h1>Batched migrations</h1>")[1].split("</div>")[0].strip()
    read_at = rf"^<div class='muted'>Read <time datetime='[-0-9T:]+{re.escape(offset)}'>"
    assert re.search(read_at, header), header
    assert f" {zone}</time> (times in {AIRFLOW_TIMEZONE}, UTC{offset});" in header
    details = page.split(f"<summary><b>{THROTTLED}</b>")[1].split("</details>")[0]
    for moment in finished:
        local = moment.in_timezone(AIRFLOW_TIMEZONE)
        shown = rf"<time datetime='{re.escape(local.isoformat(timespec='seconds'))}'>"
        shown += rf"(?:{local.format('YYYY-MM-DD')} )?{local.format('HH:mm:ss zz')}</time>"
        assert re.search(shown, details), (shown, details)
    for moment in charted:
        assert f"{moment.in_timezone(AIRFLOW_TIMEZONE).format('HH:mm:ss zz')}</text>" in details
    # the ETA is an estimate, and says so
    row = page.split(f"id='migration-{CONN_ID}-{WAITING}'")[1].split("</tr>")[0]
    assert "<td class='num eta'>about " in row, row


def test_the_page_shows_both_rates_the_eta_with_its_assumption_and_where_the_time_went(airflow_ui, tokens):
    status, overview = call(airflow_ui, "GET", "/walthrottle/api/overview", token=tokens["viewer"])
    assert status == 200
    migrations = {m["name"]: m for m in overview["connections"][0]["migrations"]}
    status, page = call(airflow_ui, "GET", "/walthrottle/", token=tokens["viewer"])
    assert status == 200

    def cell(name: str, kind: str) -> str:
        row = page.split(f"id='migration-{CONN_ID}-{name}'")[1].split("</tr>")[0]
        return row.split(f"<td class='{kind}'>")[1].split("</td>")[0]

    waiting = migrations[WAITING]
    # the statement rate is keys over the statements' time, which waits do not change: as in JSON
    statement = f"{waiting['statement_keys_per_second']:,.0f} keys/s"
    assert cell(WAITING, "num rate-statement") == f"{statement}<div class='muted'>while statements run</div>"
    # the effective rate is read again with the page, a little later: lower, never higher
    effective = cell(WAITING, "num rate-effective")
    rates = re.fullmatch(
        r"([\d,.]+) keys/s<div class='muted'>since the first batch; ([\d,.]+) since it started</div>",
        effective,
    )
    assert rates, effective
    recent, since_start = (float(rate.replace(",", "")) for rate in rates.groups())
    assert recent == pytest.approx(waiting["recent_keys_per_second"], rel=0.5)
    assert since_start == pytest.approx(waiting["effective_keys_per_second"], rel=0.5)
    assert recent < waiting["statement_keys_per_second"] / 2
    eta = cell(WAITING, "num eta")
    assert re.fullmatch(
        r"about \d+ (s|min)<div class='muted'>at the pace since the first batch</div>", eta
    ), eta
    bar = cell(WAITING, "time-spent")
    assert "<rect class='t-running'" in bar and "<rect class='t-waiting'" in bar
    assert re.search(r"<title>waiting between batches: [^<]+ \(\d+%\)</title>", bar), bar
    # held migrations show how long, and by what; the finished one is done
    assert re.fullmatch(
        r"held [^<]+<div class='muted'>throttled by wal_archival</div>", cell(THROTTLED, "num eta")
    )
    assert re.fullmatch(r"held [^<]+<div class='muted'>paused</div>", cell(PAUSED, "num eta"))
    assert cell(FINISHED, "num eta") == "done"
    # the details: the breakdown as a table, and the effective rate's chart
    details = page.split(f"<summary><b>{THROTTLED}</b>")[1].split("</details>")[0]
    assert "<th>Where the wall-clock time went</th>" in details
    assert "throttled by wal_archival</td>" in details and "waiting between batches</td>" in details
    # the chart: every measurement with a threshold the jobs' checks saw, the standby's and the slot's too
    chart = details.split("<svg class='health-chart'")[1].split("</svg>")[0]
    drawn = re.findall(r"<polyline class='series (s-[\w-]+)'", chart)
    assert drawn == ["s-wal", "s-lag-bytes", "s-lag-seconds", "s-slots"], drawn
    assert "WAL retained by a slot: last " in details
    assert "aria-label='effective rate per job, keys per wall-clock second'" in details


HOSTILE = "<script>document.title='pwned'</script><img src=x onerror=alert(1)>'\" x='&amp;"


def test_a_hostile_variable_value_is_shown_as_text(airflow_ui, tokens):
    try:
        set_variable(airflow_ui, WAL_HEALTH_FLAG, HOSTILE)
        status, page = call(airflow_ui, "GET", "/walthrottle/", token=tokens["op"])
        assert status == 200
        assert page.count("<script") == 1 and "<img" not in page and HOSTILE not in page
        row = page.split(f"<tr id='flag-{WAL_HEALTH_FLAG}'>")[1].split("</tr>")[0]
        assert f"<td class='error'>{HOSTILE}</td>" in html.unescape(row)
        assert parsed(page).scripts == 1 and not parsed(page).handlers
    finally:
        set_variable(airflow_ui, WAL_HEALTH_FLAG, "false")


def test_only_roles_that_may_read_connections_see_a_failing_ones_host_database_and_login(airflow_ui, tokens):
    details = ("127.0.0.1", f":{DOWN_PORT}", "/postgres as", "nobody")
    for role, sees in (("viewer", False), ("user", False), ("op", True), ("admin", True)):
        # Airflow's own connections API agrees (404 for those allowed: the connection is an env var)
        status, _ = call(airflow_ui, "GET", f"/api/v2/connections/{DOWN_CONN_ID}", token=tokens[role])
        assert (status != 403) is sees, (role, status)

        status, overview = call(airflow_ui, "GET", "/walthrottle/api/overview", token=tokens[role])
        assert status == 200
        (down,) = [c for c in overview["connections"] if c["conn_id"] == DOWN_CONN_ID]
        assert f"connection '{DOWN_CONN_ID}'" in down["error"]
        assert "connection refused" in down["error"].lower()
        status, page = call(airflow_ui, "GET", "/walthrottle/", token=tokens[role])
        card = page.split(f"<code>{DOWN_CONN_ID}</code>")[1].split("</div>")[0]
        for text in (down["error"], card):
            assert all((detail in text) is sees for detail in details), (role, text)
        assert "secret" not in down["error"] and "secret" not in page
        if not sees:
            assert "shown to roles that may read connections" in down["error"]


def test_a_migration_whose_name_contains_a_slash_is_paused_and_resumed(airflow_ui, database, tokens):
    quoted = urllib.parse.quote(SLASHED, safe="")
    url = f"/walthrottle/api/connections/{CONN_ID}/migrations/{quoted}"
    status, page = call(airflow_ui, "GET", "/walthrottle/", token=tokens["user"])
    assert f"data-url='/walthrottle/api/connections/{CONN_ID}/migrations/{quoted}/pause'" in page

    status, payload = call(airflow_ui, "POST", f"{url}/pause", token=tokens["user"], body={})
    assert (status, payload) == (200, {"conn_id": CONN_ID, "migration": SLASHED, "status": "paused"})
    assert migration_status(database, SLASHED) == "paused"
    status, payload = call(airflow_ui, "POST", f"{url}/resume", token=tokens["user"], body={})
    assert (status, payload["status"]) == (200, "active")
    assert migration_status(database, SLASHED) == "active"
    # a name that only starts like it is another migration
    status, payload = call(airflow_ui, "POST", f"{url}%2Fextra/pause", token=tokens["user"], body={})
    assert status == 404 and f"no batched migration named '{SLASHED}/extra'" in payload["detail"]


@pytest.mark.parametrize("value", ["yes", "true", 1, 0, None, [True]])
def test_a_flag_is_changed_only_with_a_json_boolean(airflow_ui, tokens, value):
    before = flags_by_key(airflow_ui, tokens["admin"])[WAL_HEALTH_FLAG]["raw"]
    status, payload = call(airflow_ui, "PUT", FLAG, token=tokens["op"], body={"enabled": value})
    assert status == 422, payload
    assert payload["detail"][0]["loc"] == ["body", "enabled"]
    assert flags_by_key(airflow_ui, tokens["admin"])[WAL_HEALTH_FLAG]["raw"] == before


def flags_by_key(airflow: AirflowStandalone, token: str) -> dict[str, dict[str, Any]]:
    status, overview = call(airflow, "GET", "/walthrottle/api/overview", token=token)
    assert status == 200, overview
    return {flag["key"]: flag for flag in overview["flags"]}


def set_variable(airflow: AirflowStandalone, key: str, value: str | None) -> None:
    """Set (or, with ``None``, delete) a Variable through Airflow's REST API, as an admin would."""
    try:
        airflow.api("DELETE", f"/api/v2/variables/{key}")
    except Exception as error:  # not set yet
        assert "HTTP 404" in str(error), error
    if value is not None:
        airflow.api("POST", "/api/v2/variables", {"key": key, "value": value})


def variable_value(airflow: AirflowStandalone, key: str) -> str:
    """Return a Variable's value as Airflow's REST API reads it."""
    return str(airflow.api("GET", f"/api/v2/variables/{key}")["value"])


def test_a_flag_with_an_invalid_value_shows_its_safe_side_in_red(airflow_ui, tokens):
    try:
        set_variable(airflow_ui, WAL_HEALTH_FLAG, "flase")
        set_variable(airflow_ui, KILL_SWITCH_VARIABLE, "flase")
        flags = flags_by_key(airflow_ui, tokens["viewer"])
        wal, kill = flags[WAL_HEALTH_FLAG], flags[KILL_SWITCH_VARIABLE]
        # the WAL flag throttles; the kill switch stops migrations
        assert (wal["enabled"], wal["invalid"], wal["raw"]) == (True, True, "flase")
        assert wal["state"].startswith("on (invalid value 'flase': treated as on, the safe side")
        assert (kill["enabled"], kill["invalid"]) == (False, True)
        assert kill["state"].startswith("off (invalid value 'flase': treated as off, the safe side")

        status, page = call(airflow_ui, "GET", "/walthrottle/", token=tokens["op"])
        for key, button in ((WAL_HEALTH_FLAG, "Turn off"), (KILL_SWITCH_VARIABLE, "Turn on")):
            row = page.split(f"<tr id='flag-{key}'>")[1].split("</tr>")[0]
            assert "<span class='badge b-invalid'>" in row and "flase" in row
            assert button in row
        # the button writes a valid value, and the flag is valid again
        status, payload = call(
            airflow_ui,
            "PUT",
            f"/walthrottle/api/flags/{KILL_SWITCH_VARIABLE}",
            token=tokens["op"],
            body={"enabled": True},
        )
        assert status == 200, payload
        assert (payload["raw"], payload["enabled"], payload["invalid"]) == ("true", True, False)
    finally:
        set_variable(airflow_ui, KILL_SWITCH_VARIABLE, None)
        set_variable(airflow_ui, WAL_HEALTH_FLAG, "false")


def test_the_page_has_a_content_security_policy(airflow_ui, tokens):
    request = urllib.request.Request(
        f"{airflow_ui.base_url}/walthrottle/", headers={"Authorization": f"Bearer {tokens['viewer']}"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        policy = response.headers["Content-Security-Policy"]
        page = response.read().decode()
    assert policy, "the page must send a Content-Security-Policy"
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"].startswith("'sha256-") and directives["style-src"].startswith("'sha256-")
    assert "unsafe" not in policy
    assert directives["frame-ancestors"] == "'self'"
    # nothing the policy refuses: no style attribute, no other script
    assert " style=" not in page and page.count("<script") == 1


def test_airflow_lists_the_plugin_with_its_views(airflow_ui):
    plugins = airflow_ui.api("GET", "/api/v2/plugins")["plugins"]
    (plugin,) = [plugin for plugin in plugins if plugin["name"] == "walthrottle"]
    assert {view["destination"] for view in plugin["external_views"]} == {"nav", "dag", "dag_run"}
    assert [app["url_prefix"] for app in plugin["fastapi_apps"]] == ["/walthrottle"]


def test_the_page_in_chromium_shows_the_throttled_migration_and_its_buttons_work(
    airflow_ui, database, tokens
):
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is needed (./dev test installs it)"
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            # the session cookie the Airflow UI sets at login, here for the `user` role
            context = browser.new_context(viewport={"width": 1280, "height": 1100})
            context.add_cookies([{"name": "_token", "value": tokens["user"], "url": airflow_ui.base_url}])
            page = context.new_page()
            refused: list[str] = []  # what the Content-Security-Policy blocked, as Chromium reports it
            page.on(
                "console",
                lambda message: (
                    refused.append(message.text) if "Content Security Policy" in message.text else None
                ),
            )
            page.goto(f"{airflow_ui.base_url}/walthrottle/?conn_id={CONN_ID}&migration={THROTTLED}")
            page.get_by_role("heading", name="Batched migrations").wait_for()
            highlighted = page.locator("tr.highlight")
            assert THROTTLED in highlighted.inner_text()
            assert "throttled" in highlighted.inner_text()
            assert "50 of 42 segments pending" in page.locator(f"#conn-{CONN_ID}").inner_text()
            assert page.locator("svg[role=img]").count() >= 1
            # the inline stylesheet applied under the policy (its hash matches)
            badge = page.locator(f"tr#migration-{CONN_ID}-{PAUSED} .badge")
            assert badge.evaluate("element => getComputedStyle(element).borderRadius") == "10px"
            # both rates, the ETA with what it assumes, and where the time went, as a person reads them
            headers = page.locator(f"#conn-{CONN_ID} table.migrations").locator("th").all_inner_texts()
            assert {"Effective rate", "Statement rate", "ETA", "Where the time went"} <= set(headers), headers
            waiting = page.locator(f"tr#migration-{CONN_ID}-{WAITING}")
            effective = waiting.locator("td.rate-effective").inner_text()
            assert re.fullmatch(
                r"[\d,.]+ keys/s\s+since the first batch; [\d,.]+ since it started", effective
            )
            assert re.fullmatch(
                r"[\d,.]+ keys/s\s+while statements run", waiting.locator("td.rate-statement").inner_text()
            )
            eta = waiting.locator("td.eta").inner_text()
            assert re.fullmatch(r"about \d+ (s|min)\s+at the pace since the first batch", eta), eta
            spent = waiting.locator("td.time-spent").inner_text()
            assert re.fullmatch(r"\d+ s: running (<1|\d+)%, waiting between batches \d+%", spent), spent
            held = highlighted.locator("td.eta").inner_text()
            assert re.fullmatch(r"held \d+(\.\d)? (s|min)( \d+ s)?\s+throttled by wal_archival", held), held
            # the bar's parts take their colours from the stylesheet
            waiting_part = waiting.locator("rect.t-waiting")
            assert waiting_part.evaluate("element => getComputedStyle(element).fill") == "rgb(160, 174, 192)"
            # the throttled migration's details: the breakdown as a table, and the effective rate's chart
            details = page.locator("details[open]").filter(has_text=THROTTLED)
            table = details.locator("table.time-table").inner_text()
            assert "throttled by wal_archival" in table and "waiting between batches" in table, table
            assert details.locator("svg.rate-chart").count() == 1
            page.locator(f"#conn-{CONN_ID} summary").filter(has_text=WAITING).click()  # for the picture too
            page.screenshot(path=str(ARTIFACTS / "migrations-page.png"), full_page=True)

            # a User may resume: the button calls the API with the session cookie
            page.locator(f"tr#migration-{CONN_ID}-{PAUSED}").get_by_role("button", name="Resume").click()
            page.locator(f"tr#migration-{CONN_ID}-{PAUSED}").get_by_role("button", name="Pause").wait_for()
            assert migration_status(database, PAUSED) == "active"
            # ... but not change a flag: its buttons are disabled
            assert page.get_by_role("button", name="Turn on").first.is_disabled()
            page.locator(f"tr#migration-{CONN_ID}-{PAUSED}").get_by_role("button", name="Pause").click()
            page.locator(f"tr#migration-{CONN_ID}-{PAUSED}").get_by_role("button", name="Resume").wait_for()
            assert migration_status(database, PAUSED) == "paused"

            # an Op turns an indicator's flag on from its row, and off again: the Variable follows
            as_op = browser.new_context(viewport={"width": 1280, "height": 1100})
            as_op.add_cookies([{"name": "_token", "value": tokens["op"], "url": airflow_ui.base_url}])
            op_page = as_op.new_page()
            op_page.goto(f"{airflow_ui.base_url}/walthrottle/")
            lag = op_page.locator(f"tr[id='indicator-{CONN_ID}-replication_lag']")
            try:
                assert lag.locator("td.flag").inner_text().endswith("flag off — not enforced")
                lag.get_by_role("button", name="Turn on").click()
                lag.get_by_role("button", name="Turn off").wait_for()
                assert variable_value(airflow_ui, REPLICATION_LAG_HEALTH_FLAG) == "true"
                assert lag.locator("td.flag").inner_text().endswith("\nenforced")
                assert lag.locator("td.flag .badge").inner_text() == "on"
                # every row of that indicator, on every connection, reads the same flag
                plain_lag = op_page.locator(f"tr[id='indicator-{PLAIN_CONN_ID}-replication_lag']")
                assert "stops migrations (unknown waits, as on stop)" in plain_lag.inner_text()
                lag.get_by_role("button", name="Turn off").click()
                lag.get_by_role("button", name="Turn on").wait_for()
                assert variable_value(airflow_ui, REPLICATION_LAG_HEALTH_FLAG) == "false"
            finally:
                set_variable(airflow_ui, REPLICATION_LAG_HEALTH_FLAG, None)

            # inside the Airflow UI: the external view in the navigation, in an iframe
            page.goto(f"{airflow_ui.base_url}/plugin/batched-migrations")
            frame = page.frame_locator("iframe")
            frame.get_by_role("heading", name="Batched migrations").wait_for(timeout=60_000)
            assert THROTTLED in frame.locator("body").inner_text()
            page.screenshot(path=str(ARTIFACTS / "airflow-ui-batched-migrations.png"))
            assert not [text for text in refused if "walthrottle" in text or "inline" in text], refused
        finally:
            browser.close()


# --------------------------------------------------------------------------------------------------
# a server that accepts connections and never answers
# --------------------------------------------------------------------------------------------------

SILENT_CONN_ID = "pg_silent"
CONCURRENT_REQUESTS = 50


def is_one_red_line_for_the_silent_server(error: str) -> bool:
    """Whether the error is the page's deadline (10 s), or the connect timeout (10 s) that won the race."""
    return (
        error.startswith(f"Connection '{SILENT_CONN_ID}' did not answer within 10 s")
        or (
            error.startswith(f"Cannot connect to PostgreSQL with connection '{SILENT_CONN_ID}'")
            and "no answer within the connect timeout" in error
        )
    ) and "\n" not in error


def test_a_silent_server_costs_the_page_one_red_line_and_the_api_server_nothing(database):
    """Fifty Viewers load the overview while one configured connection never answers.

    On a page that read connections in the api-server's threadpool with no timeout, these requests
    held all of its 40 threads forever, and Airflow's own health endpoint stopped answering.
    """
    with SilentServer() as silent:
        home = make_home()
        airflow = AirflowStandalone(
            home,
            dags_folder=home / "dags",
            connections={
                CONN_ID: database.uri(),
                SILENT_CONN_ID: f"postgresql://mon:mon-secret@127.0.0.1:{silent.port}/postgres",
            },
            components=["api-server"],
            config={
                "core": {"simple_auth_manager_users": "viewer:viewer"},
                # the default timeouts: 10 s to connect, 10 s for the page to wait for each connection
                "walthrottle": {"ui_connection_ids": f"{SILENT_CONN_ID},{CONN_ID}"},
            },
        )
        try:
            airflow.start()
            token = airflow.token_of("viewer")

            def overview() -> tuple[int, Any, float]:
                started = time.monotonic()
                status, body = call(airflow, "GET", "/walthrottle/api/overview", token=token)
                return status, body, time.monotonic() - started

            def health_seconds() -> float:
                started = time.monotonic()
                request = urllib.request.Request(f"{airflow.base_url}/api/v2/monitor/health")
                try:
                    with urllib.request.urlopen(request, timeout=10) as response:
                        assert response.status == 200
                except (TimeoutError, urllib.error.URLError):
                    return 10.0
                return time.monotonic() - started

            with concurrent.futures.ThreadPoolExecutor(max_workers=CONCURRENT_REQUESTS) as pool:
                loads = [pool.submit(overview) for _ in range(CONCURRENT_REQUESTS)]
                time.sleep(2)  # every request is in, waiting on the silent server
                assert not any(load.done() for load in loads)
                while_waiting = []
                for _ in range(5):
                    while_waiting.append(health_seconds())
                    time.sleep(0.5)
                # Airflow's own API answered while fifty page loads waited on the silent server
                assert max(while_waiting) < 2, while_waiting
                results = [load.result(timeout=60) for load in loads]

            for status, body, seconds in results:
                assert status == 200, body
                assert seconds < 10 + 5
                silent_one, good = body["connections"]
                assert silent_one["conn_id"] == SILENT_CONN_ID and silent_one["health"] is None
                assert is_one_red_line_for_the_silent_server(silent_one["error"]), silent_one["error"]
                assert "\n" not in silent_one["error"] and "mon-secret" not in silent_one["error"]
                # the rest of the page: the good connection read as usual
                assert good["conn_id"] == CONN_ID and good["error"] is None
                assert good["health"]["status"]["pending_segments"] == 50
            # the fifty requests shared one read of the silent server
            assert silent.accepted <= 2, silent.accepted

            # the page itself, as one red line for the silent server
            status, page = call(airflow, "GET", "/walthrottle/", token=token)
            assert status == 200
            card = page.split(f"<code>{SILENT_CONN_ID}</code>")[1].split("</div>")[0]
            (line,) = card.split("<p class='error'>")[1:]
            assert is_one_red_line_for_the_silent_server(html.unescape(line.removesuffix("</p>"))), card
            assert THROTTLED in page
        finally:
            airflow.stop()
            leftovers = airflow.leftover_processes()
            if os.environ.get("WALTHROTTLE_KEEP_AIRFLOW_HOME") != "1":
                airflow.remove_home()
            assert not leftovers, f"processes left behind: {leftovers}"


# --------------------------------------------------------------------------------------------------
# the templates, rendered in-process (no api-server): escaping, times and durations
# --------------------------------------------------------------------------------------------------


class ParsedPage(html.parser.HTMLParser):
    """The elements a browser would build from the page: which tags, scripts and event handlers."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.scripts = 0
        self.handlers: list[tuple[str, str]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.scripts += tag == "script"
        self.handlers += [(tag, name) for name, _ in attrs if name.startswith("on")]

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parsed(page: str) -> ParsedPage:
    parser = ParsedPage()
    parser.feed(page)
    parser.close()
    return parser


def hostile_page_data(text: str) -> tuple[list[Any], list[Any]]:
    """Connections and flags with ``text`` in every string the page shows."""
    from airflow_provider_walthrottle.indicators.base import Reading
    from airflow_provider_walthrottle.migrations.catalog import HistoryPoint, JobSummary, MigrationSummary
    from airflow_provider_walthrottle.migrations.progress import RecentPace
    from airflow_provider_walthrottle.migrations.state import Activity
    from airflow_provider_walthrottle.migrations.time_accounts import TimeAccounts
    from airflow_provider_walthrottle.plugins.flag_variables import FlagView
    from airflow_provider_walthrottle.plugins.overview import ConnectionOverview
    from airflow_provider_walthrottle.plugins.readings import IndicatorRow
    from airflow_provider_walthrottle.wal.archiver_status import ArchiverStatus, BacklogMethod
    from airflow_provider_walthrottle.wal.health import HealthSignal, Signal

    at = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.timezone.utc)
    status = ArchiverStatus(
        pending_segments=50,
        pending_bytes=50 << 20,
        method=BacklogMethod.EXACT,
        archive_mode="on",
        wal_segment_size=1 << 20,
        in_recovery=False,
        current_wal_file=None,
        archived_count=1,
        failed_count=0,
        last_failed_wal=None,
        last_failed_time=None,
        last_archived_wal=None,
        last_archived_time=None,
        is_failing=False,
    )
    job = JobSummary(
        id=1,
        start_key=text,
        end_key=text,
        planned_keys=100,
        status=text,
        attempts=1,
        rows_affected=100,
        keys_done=100,
        duration_seconds=0.3,
        wal_bytes=1,
        pending_segments=3,
        dag_id=text,
        run_id=text,
        try_number=1,
        last_error=text,
        started_at=at,
        finished_at=at,
    )
    history = tuple(
        HistoryPoint(
            at + datetime.timedelta(minutes=i), 100, 3 + i, 100, 0.3, 100, 100 * (i + 1), 60.0 * (i + 1)
        )
        for i in range(2)
    )
    ago = datetime.timedelta
    time_accounts = TimeAccounts(
        started_at=at - ago(seconds=200),
        read_at=at,
        activity=Activity.PAUSED,
        activity_since=at - ago(seconds=20),
        held_since=at - ago(seconds=20),
        running_seconds=8.0,
        waiting_seconds=150.0,
        throttled_by={text: 22.0},  # a signal's name as a later indicator may report it
    )
    migration = MigrationSummary(
        name=text,
        table_schema=text,
        table_name=text,
        column_name=text,
        status="paused",
        total_keys=1000,
        cursor_key=text,
        batch_size=100,
        rows_per_second=10.0,
        throttled_seconds=0.0,
        throttled_since=None,
        last_error=text,
        created_at=at,
        updated_at=at,
        finished_at=None,
        rows_affected=100,
        keys_done=100,
        active_seconds=8.0,
        jobs_succeeded=1,
        jobs_open=0,
        read_at=at,
        recent_jobs=(job,),
        history=history,
        time=time_accounts,
        pace=RecentPace(keys=100, seconds=180.0, batches=1, minutes=None, since_first_batch=True),
    )
    health = HealthSignal(Signal.STOP, text, status, 42)
    reading = Reading(text, Signal.UNKNOWN, text, values={text: 1.0}, details={text: text})
    rows = (IndicatorRow(text, text, reading, stops=True, table=text, migrations=(text,)),)
    connections = [
        ConnectionOverview(conn_id=text, health=health, migrations=(migration,), indicators=rows),
        ConnectionOverview(conn_id=text, health=None, error=text),
    ]
    flags = [FlagView(key=text, description=text, default=False, raw=text, enabled=None, state=text)]
    return connections, flags


def render(connections: list[Any], flags: list[Any], **options: Any) -> str:
    from airflow_provider_walthrottle.plugins.page import render_page

    settings: dict[str, Any] = {
        "threshold": 42,
        "api_base": "/walthrottle/api",
        "can_pause": True,
        "can_toggle_flags": True,
    }
    return render_page(connections, flags, **{**settings, **options})


def test_every_value_from_a_database_or_a_variable_is_escaped():
    connections, flags = hostile_page_data(HOSTILE)
    page = render(connections, flags, highlight=(HOSTILE, HOSTILE), filters={"DAG": HOSTILE, "run": HOSTILE})
    elements = parsed(page)
    assert elements.scripts == 1 and "img" not in elements.tags and not elements.handlers
    assert HOSTILE not in page
    # shown as text: the migration's name, table, keys, error, the reason, the flag, the filters ...
    assert "".join(elements.text).count(HOSTILE) >= 15
    # ... and in the buttons' URLs, percent-encoded
    quoted = urllib.parse.quote(HOSTILE, safe="")
    resume = f"data-url='/walthrottle/api/connections/{quoted}/migrations/{quoted}/resume'"
    assert resume in html.unescape(page)


def test_a_readings_reason_and_numbers_are_shown_as_text():
    """An indicator's reason quotes what the server says (a standby's name, a table, an error)."""
    connections, flags = hostile_page_data(HOSTILE)
    page = render(connections, flags)
    elements = parsed(page)
    assert elements.scripts == 1 and "img" not in elements.tags and not elements.handlers
    assert HOSTILE not in page
    row = page.split("<tr id='indicator-")[1].split("</tr>")[0]
    cells = re.findall(r"<td class='(\w+)'>(.*?)</td>", row, flags=re.DOTALL)
    reason = dict(cells)["reason"]
    assert html.unescape(reason) == HOSTILE  # the reason, as text, whole
    numbers = dict(cells)["numbers"]
    assert HOSTILE in html.unescape(numbers)  # a value's name, in the cell and its title
    assert "<b>1</b>" in numbers
    # the row's flag button calls the API with the Variable's key percent-encoded
    quoted = urllib.parse.quote(HOSTILE, safe="")
    assert f"data-url='/walthrottle/api/flags/{quoted}'" in html.unescape(row)
    assert "stops the migrations its rollout covers (unknown waits, as on stop)" in row


@pytest.mark.parametrize(
    ("configured", "zone", "shown"),
    [
        ("Europe/Amsterdam", "Europe/Amsterdam, UTC+01:00", "13:00:00 CET"),
        ("America/New_York", "America/New_York, UTC-05:00", "07:00:00 EST"),
        ("utc", "UTC", "12:00:00 UTC"),
        ("not/a_zone", "UTC", "12:00:00 UTC"),  # as Airflow reads it: UTC
    ],
)
def test_times_are_shown_in_the_configured_zone_with_the_zone(monkeypatch, configured, zone, shown):
    from airflow_provider_walthrottle.plugins.timefmt import TimeDisplay

    monkeypatch.setenv("AIRFLOW__CORE__DEFAULT_TIMEZONE", configured)
    noon = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.timezone.utc)
    times = TimeDisplay.configured(now=noon)
    assert times.zone == zone
    assert times.short(noon) == shown
    assert times.short(noon - datetime.timedelta(days=2)) == f"2025-12-30 {shown}"
    tokyo = noon.astimezone(datetime.timezone(datetime.timedelta(hours=9)))  # as a database returns it
    assert times.short(tokyo) == shown
    page = render(*hostile_page_data("x"), times=times)
    assert f"<time datetime='{times.iso(noon)}'>{times.full(noon)}</time> (times in {zone});" in page
    assert f"<time datetime='{times.iso(noon)}'>{shown}</time>" in page  # the job's finish


def test_durations_on_the_page_come_from_one_function():
    connections, flags = hostile_page_data("x")
    row = render(connections, flags).split("id='migration-x-x'")[1].split("</tr>")[0]
    paused = connections[0].migrations[0]
    assert paused.eta_seconds is None  # paused: no ETA, but how long it has been held
    assert f"<td class='num eta'>held {format_duration(20.0)}<div class='muted'>paused</div></td>" in row
    running = dataclasses.replace(paused, status="active")
    connections[0] = dataclasses.replace(connections[0], migrations=(running,))
    row = render(connections, flags).split("id='migration-x-x'")[1].split("</tr>")[0]
    eta = format_duration(running.eta_seconds, estimate=True)
    assert f"<td class='num eta'>{eta}<div class='muted'>at the pace since the first batch</div></td>" in row
    assert eta == "about 27 min"  # 900 keys left at 100 keys in 180 s of wall-clock time
    # the breakdown's parts, each through the same function
    assert f"<title>waiting between batches: {format_duration(150.0)} (75%)</title>" in row
    assert f"<title>running: {format_duration(8.0)} (4%)</title>" in row


def test_the_page_names_both_rates_and_the_charts_effective_rate():
    connections, flags = hostile_page_data("x")
    # 100 keys in 8.1 ms of statements
    running = dataclasses.replace(
        connections[0].migrations[0], status="active", active_seconds=100 / 12_345.6
    )
    connections[0] = dataclasses.replace(connections[0], migrations=(running,))
    page = render(connections, flags)
    row = page.split("id='migration-x-x'")[1].split("</tr>")[0]
    effective = "0.56 keys/s<div class='muted'>since the first batch; 0.50 since it started</div>"
    assert f"<td class='num rate-effective'>{effective}</td>" in row
    assert (
        "<td class='num rate-statement'>12,346 keys/s<div class='muted'>while statements run</div></td>"
        in row
    )
    # the rate chart: 100 keys in 60 s, then 200 in 120 s: 1.67 keys/s both times, a flat line
    chart = page.split("<svg class='rate-chart'")[1].split("</svg>")[0]
    assert "effective rate (keys per wall-clock second, last 10 batches)" in chart
    (points,) = re.findall(r"<polyline points='([^']+)'", chart)
    heights = {point.split(",")[1] for point in points.split()}
    assert len(points.split()) == 2 and len(heights) == 1


def test_the_chart_draws_each_measurement_as_a_share_of_its_stop_threshold():
    """Pending segments, the standbys' lag in both units and the slots' retention, per job.

    Each job's numbers are those its last check saw, against the thresholds of that check; a job
    that kept only its backlog (before 0.2) is drawn against the page's threshold.
    """
    from airflow_provider_walthrottle.plugins.page import chart_series

    connections, flags = hostile_page_data("x")
    migration = connections[0].migrations[0]
    mib = 1 << 20
    first, second = migration.history
    checked = {
        "wal_archival": {"pending_segments": 21, "max_pending_segments": 42},
        "replication_lag": {
            "standbys": 1,
            "max_replay_lag_bytes": 32 * mib,
            "max_replay_lag_seconds": None,  # not measured yet: no point
            "max_lag_bytes": 64 * mib,
            "max_lag_seconds": 1.5,
        },
        "replication_slots": {
            "slots": 1,
            "max_slot_retained_bytes": 2048 * mib,
            "max_retained_bytes": 1024 * mib,
        },
    }
    history = (first, dataclasses.replace(second, pending_segments=21, indicator_values=checked))
    migration = dataclasses.replace(migration, history=history)
    series = {line.spec.value: line for line in chart_series(history, 42)}
    assert list(series) == ["pending_segments", "max_replay_lag_bytes", "max_slot_retained_bytes"]
    assert [(p.index, p.share) for p in series["pending_segments"].points] == [(0, 3 / 42), (1, 0.5)]
    assert [(p.index, p.share) for p in series["max_replay_lag_bytes"].points] == [(1, 0.5)]
    assert series["max_slot_retained_bytes"].describe(series["max_slot_retained_bytes"].highest) == (
        "2 GiB of 1 GiB (200%)"
    )

    connections[0] = dataclasses.replace(connections[0], migrations=(migration,))
    page = render(connections, flags)
    chart = page.split("<svg class='health-chart'")[1].split("</svg>")[0]
    lines = dict(re.findall(r"<polyline class='series (s-[\w-]+)' points='([^']+)'", chart))
    assert list(lines) == ["s-wal", "s-lag-bytes", "s-slots"]
    assert ">200%</text>" in chart  # the axis reaches the highest share: the slot, at twice its bound
    # the stop line at 100% of a 200% axis: half way down the plot (10 + 148 / 2)
    assert "y1='84.0' y2='84.0' stroke='#c53030'" in chart
    assert lines["s-slots"].endswith(",10.0")  # at the top
    assert lines["s-lag-bytes"] == lines["s-wal"].split()[-1]  # both at half their thresholds
    legend = page.split("<ul class='legend'>")[1].split("</ul>")[0]
    assert "replication lag, bytes: last 32 MiB of 64 MiB (50%), highest 32 MiB of 64 MiB (50%)" in legend
    assert "pending WAL segments: last 21 of 42 (50%), highest 21 of 42 (50%)" in legend


def test_jobs_that_kept_only_their_backlog_are_read_and_their_table_upgraded_in_place(migration_db):
    """State tables from before ``indicator_values`` (time accounts, no numbers by indicator)."""
    import psycopg

    from airflow_provider_walthrottle.migrations.catalog import read_migrations
    from airflow_provider_walthrottle.plugins.page import chart_series

    make_table(migration_db, "kept_backlog", 3000)
    definition = increment_migration("kept_backlog", "kept_backlog")
    settings = RunSettings(
        sub_batch_size=100, pause_ms=0, policy=BatchSizePolicy(min_batch_size=100, max_batch_size=100)
    )
    with psycopg.connect(migration_db.dsn(), autocommit=True) as conn:

        def check_health() -> HealthVerdict:
            readings = tuple(read_indicators(conn, [WalArchivalIndicator()], IndicatorContext()))
            return HealthVerdict.from_gate(GateVerdict(True, True, readings))

        store = prepare(conn, definition, batch_size=100)
        for _ in range(2):
            assert isinstance(run_batch(store, settings, check_health), BatchDone)
        # as a release with the time accounts but not this column left them
        conn.execute("ALTER TABLE walthrottle.batched_migration_jobs DROP COLUMN indicator_values")
        conn.execute("UPDATE walthrottle.batched_migration_jobs SET pending_segments = 7")

        # the page reads them as they are: each job's backlog, against the page's threshold
        (before,) = read_migrations(conn)
        assert [(point.pending_segments, point.indicator_values) for point in before.history] == [
            (7, None)
        ] * 2
        (wal,) = chart_series(before.history, 42)
        assert [point.share for point in wal.points] == [7 / 42] * 2

        # the next task adds the column in place; its job keeps what its check saw
        store = prepare(conn, definition, batch_size=100)
        assert isinstance(run_batch(store, settings, check_health), BatchDone)
        (after,) = read_migrations(conn)
    assert [point.indicator_values for point in after.history[:2]] == [None, None]
    last = after.history[-1]
    assert last.indicator_values is not None
    assert last.indicator_values["wal_archival"]["pending_segments"] == last.pending_segments
    assert last.indicator_values["wal_archival"]["max_pending_segments"] == 42

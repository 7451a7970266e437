"""The "Batched migrations" page and its API, served by a real api-server, read in real Chromium.

The database side is real: a PostgreSQL cluster with a gated archiver, two migrations run with the
batching core against its real backlog (one throttled by 50 pending segments, one paused), and a
second configured connection that points at a closed port. Airflow is a real api-server (only that
component: the page needs no scheduler) with SimpleAuthManager and one user per role.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from airflow_provider_walthrottle.flags import WAL_HEALTH_FLAG
from airflow_provider_walthrottle.health import OnUnavailable, evaluate_wal_archival, may_proceed
from airflow_provider_walthrottle.hooks.wal_archival_sql import read_archiver_status
from airflow_provider_walthrottle.migrations.optimizer import BatchSizePolicy
from airflow_provider_walthrottle.migrations.runner import (
    HealthVerdict,
    Outcome,
    RunSettings,
    prepare,
    run_one_batch,
)
from tests.airflow_standalone import AirflowStandalone, free_port, make_home
from tests.migrations.conftest import increment_migration, make_table

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.postgres_cluster import ClusterFactory, PostgresCluster

CONN_ID = "pg_ui"
DOWN_CONN_ID = "pg_down"
THROTTLED = "orders_backfill"
PAUSED = "users_cleanup"
USERS = ("admin", "viewer", "user", "op")
ARTIFACTS = Path(os.environ.get("WALTHROTTLE_TEST_ARTIFACTS", Path(__file__).parents[2] / "test-artifacts"))


# --------------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def database(pg_cluster_factory: ClusterFactory) -> PostgresCluster:
    """A cluster with 1 MB segments, two migrations in it, and 50 segments waiting (above 42)."""
    cluster = pg_cluster_factory(name="ui", wal_segsize_mb=1)
    cluster.archive_one_segment()
    make_table(cluster, "orders", 3000)
    make_table(cluster, "users", 600)
    settings = RunSettings(
        sub_batch_size=50, pause_ms=0, policy=BatchSizePolicy(min_batch_size=100, max_batch_size=300)
    )
    with cluster.connect() as checks, cluster.connect() as conn:

        def check_health() -> HealthVerdict:
            health = evaluate_wal_archival(read_archiver_status(checks), 42)
            return HealthVerdict(proceed=may_proceed(health, OnUnavailable.WAIT), health=health)

        def run(store: Any) -> Any:
            # what the operator does after each batch: keep the backlog its last check saw
            result = run_one_batch(store, settings, check_health, dag_id="ui_dag", run_id="manual__1")
            if result.job is not None and result.health is not None:
                store.note_backlog(result.job.id, result.health.status.pending_segments)
            return result

        orders = prepare(conn, increment_migration(THROTTLED, "orders"), batch_size=300)
        for _ in range(3):
            assert run(orders).outcome is Outcome.COMPLETED
        users = prepare(conn, increment_migration(PAUSED, "users"), batch_size=100)
        assert run(users).outcome is Outcome.COMPLETED
        users.set_paused(True)
        cluster.make_backlog(50)
        throttled = run(orders)
        assert throttled.outcome is Outcome.THROTTLED, throttled
        orders.begin_throttle()  # as the operator does before it defers
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
            DOWN_CONN_ID: f"postgresql://nobody:secret@127.0.0.1:{free_port()}/postgres",
        },
        components=["api-server"],
        config={
            "core": {"simple_auth_manager_users": ",".join(f"{name}:{name}" for name in USERS)},
            "walthrottle": {"ui_connection_ids": f"{CONN_ID},{DOWN_CONN_ID}"},
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
    assert list(connections) == [CONN_ID, DOWN_CONN_ID]

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
    assert throttled["rows_per_second"] and throttled["rows_per_second"] > 0
    assert throttled["eta_seconds"] and throttled["eta_seconds"] > 0
    assert [job["status"] for job in throttled["recent_jobs"]] == ["succeeded"] * 3
    # the chart's points: one per finished job, with the backlog its last check saw (< 42 then)
    assert len(throttled["history"]) == 3
    assert all(0 <= point["pending_segments"] <= 42 for point in throttled["history"])
    assert (paused["status"], paused["throttling"]) == ("paused", False)

    down = connections[DOWN_CONN_ID]
    assert down["migrations"] == [] and down["health"] is None
    assert DOWN_CONN_ID in down["error"] and "127.0.0.1" in down["error"]


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
            page.goto(f"{airflow_ui.base_url}/walthrottle/?conn_id={CONN_ID}&migration={THROTTLED}")
            page.get_by_role("heading", name="Batched migrations").wait_for()
            highlighted = page.locator("tr.highlight")
            assert THROTTLED in highlighted.inner_text()
            assert "throttled" in highlighted.inner_text()
            assert "50 of 42 segments pending" in page.locator(f"#conn-{CONN_ID}").inner_text()
            assert page.locator("svg[role=img]").count() >= 1
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

            # inside the Airflow UI: the external view in the navigation, in an iframe
            page.goto(f"{airflow_ui.base_url}/plugin/batched-migrations")
            frame = page.frame_locator("iframe")
            frame.get_by_role("heading", name="Batched migrations").wait_for(timeout=60_000)
            assert THROTTLED in frame.locator("body").inner_text()
            page.screenshot(path=str(ARTIFACTS / "airflow-ui-batched-migrations.png"))
        finally:
            browser.close()

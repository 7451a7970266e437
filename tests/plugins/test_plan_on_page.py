"""Saved plans on the migrations page: a migration not started with its plan, a running one against it.

The database side is real: plans computed with ``compute_plan`` on real tables and saved with
``save_plan``, migrations run with the batching core, and the page's connection read as the
api-server reads it (:func:`~airflow_provider_walthrottle.plugins.overview.read_connection`, through
an Airflow connection given as ``AIRFLOW_CONN_*``). The page is rendered in-process from its
templates, as the app serves it; the api-server around it is tested in ``test_migrations_page.py``.
"""

from __future__ import annotations

import dataclasses
import html
import html.parser
import json
import re

import pendulum
import psycopg
import pytest
from psycopg.types.json import Jsonb

from airflow_provider_walthrottle.durations import format_duration
from airflow_provider_walthrottle.indicators.base import format_bytes
from airflow_provider_walthrottle.migrations.definition import MigrationDefinition
from airflow_provider_walthrottle.migrations.optimizer import BatchSizePolicy
from airflow_provider_walthrottle.migrations.plan import compute_plan
from airflow_provider_walthrottle.migrations.plan_actual import compare
from airflow_provider_walthrottle.migrations.plan_store import load_plan, save_plan
from airflow_provider_walthrottle.migrations.runner import RunSettings, prepare
from airflow_provider_walthrottle.plugins.overview import ConnectionOverview, read_connection
from airflow_provider_walthrottle.plugins.page import render_page
from airflow_provider_walthrottle.plugins.timefmt import TimeDisplay
from tests.support.migration_runs import run_bounded_batch, run_until_finished
from tests.support.migration_tables import SCOPE, increment_migration, make_table

CONN_ID = "plan_page"
SETTINGS = RunSettings(
    sub_batch_size=100, pause_ms=0, policy=BatchSizePolicy(min_batch_size=300, max_batch_size=300)
)
#: Markup in every string a plan holds, quotes of both kinds, and an entity.
HOSTILE = "<script>document.title='pwned'</script><img src=x onerror=alert(1)>\" x='&amp;"
TIMES = TimeDisplay(pendulum.UTC, pendulum.now("UTC"))
PAGE_OPTIONS = {
    "threshold": 42,
    "api_base": "/api",
    "can_pause": True,
    "can_toggle_flags": True,
    "times": TIMES,
}


@pytest.fixture
def page_db(migration_db, monkeypatch):
    """The shared cluster with a fresh state schema, as the Airflow connection the page reads."""
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", migration_db.uri())
    return migration_db


def connect(cluster) -> psycopg.Connection:
    return psycopg.connect(cluster.dsn(), autocommit=True)


def save(cluster, definition: MigrationDefinition, **options):
    """Plan ``definition`` for real and save the plan; return it."""
    with connect(cluster) as conn:
        plan = compute_plan(conn, definition, archiver_window_seconds=0, **options)
        save_plan(conn, definition, plan)
    return plan


def page(**filters) -> tuple[str, ConnectionOverview]:
    """Read the connection as the page does and render the page; return it and the overview."""
    overview = read_connection(CONN_ID, 42, **filters)
    assert overview.error is None, overview.error
    return render_page([overview], [], **PAGE_OPTIONS), overview


class ParsedPage(html.parser.HTMLParser):
    """What a browser would build: the tags, scripts, event handlers and style attributes, and the text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.scripts = 0
        self.handlers: list[tuple[str, str]] = []
        self.styles = 0
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.scripts += tag == "script"
        self.handlers += [(tag, name) for name, _ in attrs if name.startswith("on")]
        self.styles += sum(name == "style" for name, _ in attrs)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parsed(rendered: str) -> ParsedPage:
    parser = ParsedPage()
    parser.feed(rendered)
    parser.close()
    return parser


def text_of(fragment: str) -> str:
    """The text a person reads in an HTML fragment, its whitespace folded."""
    spaced = re.sub(r"</t[hd]>|<div[^>]*>", " ", fragment)  # cells and the lines under a figure
    return " ".join(html.unescape(re.sub(r"<[^>]+>", "", spaced)).split())


def segments(count: int) -> str:
    return f"{count:,} segment{'' if count == 1 else 's'}"


def block(rendered: str, start: str, end: str) -> str:
    assert start in rendered, f"{start!r} not on the page"
    return rendered.split(start, 1)[1].split(end, 1)[0]


def plan_row(fragment: str, css: str) -> str:
    """The text of the plan table's row of class ``css``."""
    found = re.search(rf"<tr class='{css}( [\w ]+)?'[^>]*>(.*?)</tr>", fragment, flags=re.DOTALL)
    assert found is not None, f"no row {css!r}"
    return text_of(found.group(2))


# ---------------------------------------------------------------------------------- not started


def test_a_migration_not_started_shows_as_such_with_its_plan(page_db):
    make_table(page_db, "planned_items", 6000)
    page_db.execute(
        "CREATE FUNCTION planned_touch() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$"
    )
    page_db.execute(
        "CREATE TRIGGER planned_touch BEFORE UPDATE ON planned_items "
        "FOR EACH ROW EXECUTE FUNCTION planned_touch()"
    )
    plan = save(
        page_db,
        increment_migration("planned_items", "planned_items"),
        max_pending_segments=30,
        archiver_segments_per_second=0.5,
    )
    with connect(page_db) as conn:
        stored = load_plan(conn, "planned_items")
    assert stored is not None

    rendered, overview = page()

    assert [migration.name for migration in overview.migrations] == []
    assert "No batched migration in this database yet" not in rendered
    row = block(rendered, f"<tr id='migration-{CONN_ID}-planned_items' class='planned'>", "</tr>")
    assert "<span class='badge b-not_started'>not started</span>" in row
    assert f"{plan.rows:,} keys planned (counted)" in text_of(row)
    assert format_duration(plan.expected_seconds, estimate=True) in text_of(row)
    assert f"bound by the {plan.binding}" in text_of(row)

    details = block(rendered, "<summary><b>planned_items</b>: not started; its plan</summary>", "</details>")
    assert plan_row(details, "p-planned") == (
        f"Planned {TIMES.full(stored.planned_at)}, for public.planned_items (key id, scope tenant % 3 = 0)"
    )
    assert plan_row(details, "p-archiver") == f"Archiver {plan.archiver.note}"
    assert plan_row(details, "p-rows") == f"Rows in scope {plan.rows:,} (counted)"
    assert plan_row(details, "p-per-row").startswith(
        f"Per row {format_bytes(plan.wal_bytes_per_row)} of WAL; "
    )
    assert plan_row(details, "p-wal") == (
        f"Projected WAL {format_bytes(plan.total_wal_bytes)} = {segments(plan.wal_segments)} of 16 MiB"
    )
    # the three bounds, the one that binds marked
    for name in ("archiver", "database", "schedule"):
        seconds = plan.bounds[name]
        bound = block(details, f"id='bound-{name}'>", "</tr>")
        shown = "-" if seconds is None else format_duration(seconds, estimate=True)
        assert text_of(bound).startswith(f"{name.capitalize()}-bound {shown}")
        assert ("<span class='badge b-binding'>binds</span>" in bound) == (name == plan.binding)
    assert f"<tr class='p-bound binding' id='bound-{plan.binding}'>" in details
    assert plan_row(details, "p-expected") == (
        f"Expected {format_duration(plan.expected_seconds, estimate=True)}; bound by the {plan.binding}"
    )
    assert plan_row(details, "p-advice") == f"To go faster {plan.advice}"
    peak = "unknown" if plan.peak_backlog_segments is None else segments(plan.peak_backlog_segments)
    assert plan_row(details, "p-peak").startswith(f"Peak backlog {peak} (threshold 30, ")
    assert plan.peak_backlog_note in plan_row(details, "p-peak")
    warnings = [text_of(cell) for cell in re.findall(r"<td class='warn'>(.*?)</td>", details)]
    assert warnings == list(plan.warnings)
    assert any(warning.startswith("trigger planned_touch on public.planned_items") for warning in warnings)
    # within the page's Content-Security-Policy: one script (its own), no style attribute
    elements = parsed(rendered)
    assert elements.scripts == 1 and elements.styles == 0 and not elements.handlers


def test_a_dags_view_shows_the_plans_of_its_migrations_and_none_not_started(page_db):
    make_table(page_db, "dag_items", 600)
    make_table(page_db, "own_items", 600)
    save(page_db, increment_migration("dag_items", "dag_items"))
    own = increment_migration("own_items", "own_items")
    save(page_db, own)
    with connect(page_db) as conn:
        run_bounded_batch(prepare(conn, own, batch_size=300), SETTINGS, dag_id="own_dag")

    everything, _ = page()
    narrowed, overview = page(dag_id="own_dag")

    assert "<summary><b>dag_items</b>: not started" in everything
    assert [plan.name for plan in overview.plans] == ["own_items"]  # a plan not started has no DAG yet
    assert "dag_items" not in narrowed and "<h4>Plan against actual" in narrowed


# --------------------------------------------------------------------------------- plan vs actual


def test_a_running_migration_shows_its_plan_against_what_it_measured(page_db):
    make_table(page_db, "running_items", 6000)
    definition = increment_migration("running_items", "running_items")
    plan = save(page_db, definition)
    with connect(page_db) as conn:
        store = prepare(conn, definition, batch_size=300)
        for _ in range(2):
            run_bounded_batch(store, SETTINGS)

    rendered, overview = page()

    (migration,) = overview.migrations
    (wal, keys) = page_db.execute(
        "SELECT sum(wal_bytes)::bigint, sum(keys_done)::bigint FROM walthrottle.batched_migration_jobs "
        "WHERE migration_name = 'running_items'"
    )[0]
    total = page_db.execute("SELECT total_rows FROM walthrottle.batched_migrations")[0][0]
    assert 0 < keys < total
    # the arithmetic, against the state tables' own numbers
    against = compare(overview.plan_of("running_items"), migration)
    assert (against.keys.planned, against.keys.actual, against.keys_done) == (plan.rows, total, keys)
    assert against.wal_per_key.planned == plan.wal_bytes_per_row
    assert against.wal_per_key.actual == wal / keys
    assert against.wal_per_key.deviation == pytest.approx(wal / keys / plan.wal_bytes_per_row - 1)
    assert against.statement_rate.actual == migration.statement_keys_per_second
    assert against.effective_rate.planned == pytest.approx(plan.rows / plan.expected_seconds)
    assert against.effective_rate.actual == migration.effective_keys_per_second
    assert against.wal_written == wal
    assert against.total_wal.planned == plan.total_wal_bytes
    assert against.total_wal.actual == pytest.approx(wal / keys * total)
    assert against.duration.planned == plan.expected_seconds
    assert against.elapsed_seconds == migration.breakdown.wall_clock
    assert against.eta_seconds == migration.eta_seconds
    # on the page
    table = block(rendered, "<table class='plan-actual'>", "</table>")
    keys_row = plan_row(table, "a-keys")
    assert keys_row.startswith(f"Keys {plan.rows:,} counted {total:,} in the migration; {keys:,} done")
    assert plan_row(table, "a-wal-per-key").startswith(
        f"WAL per key {format_bytes(plan.wal_bytes_per_row)} {format_bytes(wal / keys)} "
        f"the WAL its jobs wrote over the {keys:,} keys they walked"
    )
    assert plan_row(table, "a-wal").startswith(
        f"WAL {format_bytes(plan.total_wal_bytes)} {segments(plan.wal_segments)} "
        f"{format_bytes(wal / keys * total)} {format_bytes(wal)} written so far; at this rate for every key"
    )
    duration = plan_row(table, "a-duration")
    assert duration.startswith(f"Duration {format_duration(plan.expected_seconds, estimate=True)} ")
    assert f"{format_duration(migration.breakdown.wall_clock)} so far" in duration
    off = re.findall(r"<td class='num off[^']*'>([^<]*)</td>", table)
    percent = round((wal / keys / plan.wal_bytes_per_row - 1) * 100)
    assert off[1] == (f"{percent:+d}%" if percent else "0%")  # the WAL per key, off by
    assert "<h4>Plan against actual" in rendered and "stale plan" not in rendered
    # the JSON API has the same comparison
    (entry,) = overview.to_dict()["plans"]
    assert entry["state"] == "current"
    assert entry["against_actual"]["wal_bytes_per_key"]["actual"] == wal / keys
    assert json.loads(json.dumps(entry))["plan"]["rows"] == plan.rows


def test_a_finished_migration_sets_the_wal_it_wrote_against_the_plan(page_db):
    make_table(page_db, "finished_items", 1200)
    definition = increment_migration("finished_items", "finished_items")
    plan = save(page_db, definition)
    with connect(page_db) as conn:
        run_until_finished(prepare(conn, definition, batch_size=300), SETTINGS)

    rendered, overview = page()

    wal = page_db.execute("SELECT sum(wal_bytes)::bigint FROM walthrottle.batched_migration_jobs")[0][0]
    (migration,) = overview.migrations
    against = compare(overview.plan_of("finished_items"), migration)
    assert against.finished and against.total_wal.actual == wal
    assert against.duration.actual == migration.breakdown.wall_clock
    assert against.keys_done == against.keys.actual == plan.rows  # the plan counted the scope exactly
    table = block(rendered, "<table class='plan-actual'>", "</table>")
    assert plan_row(table, "a-wal").startswith(
        f"WAL {format_bytes(plan.total_wal_bytes)} {segments(plan.wal_segments)} {format_bytes(wal)} written"
    )
    assert "it took, wall clock" in plan_row(table, "a-duration")


def test_a_plan_saved_for_another_definition_under_the_name_shows_as_stale(page_db):
    make_table(page_db, "first_items", 600)
    make_table(page_db, "second_items", 600)
    save(page_db, increment_migration("reused_name", "first_items"))
    with connect(page_db) as conn:
        store = prepare(conn, increment_migration("reused_name", "second_items"), batch_size=300)
        run_bounded_batch(store, SETTINGS)

    rendered, overview = page()

    assert overview.plan_of("reused_name").stale
    details = block(rendered, "<summary><b>reused_name</b>", "</details>")
    stale = text_of(block(details, "<p class='stale'>", "</p>"))
    assert stale.startswith("stale plan The plan saved under this name (")
    assert "for public.first_items.id, scope tenant % 3 = 0) was made for another definition" in stale
    assert "Plan against actual" not in details and "<table class='plan-actual'>" not in rendered
    assert overview.to_dict()["plans"][0]["state"] == "stale"
    assert overview.to_dict()["plans"][0]["against_actual"] is None


def test_a_plan_without_some_figures_shows_those_it_has(page_db):
    """A plan saved by another release may lack a figure, or hold one of another type."""
    make_table(page_db, "partial_items", 600)
    definition = increment_migration("partial_items", "partial_items")
    save(page_db, definition)
    page_db.execute(
        "UPDATE walthrottle.batched_migration_plans "
        """SET plan = '{"rows": 400, "bounds": [1, 2], "warnings": "one", "archiver": 3, "binding": 5}'"""
    )

    rendered, _ = page()

    details = block(rendered, "<summary><b>partial_items</b>: not started; its plan</summary>", "</details>")
    assert plan_row(details, "p-rows") == "Rows in scope 400 (?)"
    assert plan_row(details, "p-wal") == "Projected WAL - = - segments of -"
    assert "binds" not in details and "<td class='warn'>" not in details
    with connect(page_db) as conn:
        run_bounded_batch(prepare(conn, definition, batch_size=300), SETTINGS)
    rendered, _ = page()
    table = block(rendered, "<table class='plan-actual'>", "</table>")
    assert plan_row(table, "a-duration").startswith("Duration - expected ")


# ------------------------------------------------------------------------------------ escaping


def hostile(value):
    """``value`` with every string in it replaced by :data:`HOSTILE`."""
    if isinstance(value, dict):
        return {key: hostile(item) for key, item in value.items()}
    if isinstance(value, list):
        return [hostile(item) for item in value]
    return HOSTILE if isinstance(value, str) else value


def test_a_hostile_name_scope_and_plan_are_shown_as_text(page_db):
    make_table(page_db, "hostile_items", 600)
    scope = f"{SCOPE} AND '{HOSTILE.replace(chr(39), chr(39) * 2)}' IS NOT NULL"
    running = MigrationDefinition(
        name=HOSTILE,
        table="hostile_items",
        column="id",
        batch_sql=(
            "UPDATE hostile_items SET counter = counter + 1 "
            f"WHERE id BETWEEN %(start)s AND %(end)s AND {scope}"
        ),
        scope=scope,
    )
    waiting = dataclasses.replace(running, name=HOSTILE + " not started")
    save(page_db, running)
    save(page_db, waiting)
    with connect(page_db) as conn:
        run_bounded_batch(prepare(conn, running, batch_size=300), SETTINGS)
        # a plan whose every string is markup, as whoever may write the state tables could leave it
        (plan,) = conn.execute(
            "SELECT plan FROM walthrottle.batched_migration_plans WHERE migration_name = %s", [waiting.name]
        ).fetchone()
        conn.execute(
            "UPDATE walthrottle.batched_migration_plans SET plan = %s WHERE migration_name = %s",
            [Jsonb(hostile(plan)), waiting.name],
        )

    rendered, overview = page()

    assert not overview.plan_of(running.name).stale
    elements = parsed(rendered)
    assert elements.scripts == 1 and elements.styles == 0 and not elements.handlers
    assert "img" not in elements.tags and HOSTILE not in rendered
    text = "".join(elements.text)
    # the names, the real plan's scope (as the DAG author wrote it, %% read as %), and the hostile plan
    assert text.count(HOSTILE) >= 12
    assert f"'{HOSTILE.replace(chr(39), chr(39) * 2)}' IS NOT NULL" in text
    assert "<h4>Plan against actual" in rendered


# ------------------------------------------------------------------------------------ privileges


def test_a_role_that_may_not_read_the_plans_still_sees_the_migrations_and_why(page_db, monkeypatch):
    make_table(page_db, "granted_items", 600)
    definition = increment_migration("granted_items", "granted_items")
    save(page_db, definition)
    with connect(page_db) as conn:
        run_bounded_batch(prepare(conn, definition, batch_size=300), SETTINGS)
    # as a GRANT made before the plans' table existed left it
    page_db.create_role("plan_page_reader", "reader-pw", pg_monitor=False)
    page_db.execute("GRANT USAGE ON SCHEMA walthrottle TO plan_page_reader")
    page_db.execute(
        "GRANT SELECT ON walthrottle.batched_migrations, walthrottle.batched_migration_jobs "
        "TO plan_page_reader"
    )
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", page_db.uri("plan_page_reader", "reader-pw"))
    try:
        rendered, overview = page()
    finally:
        page_db.execute("DROP OWNED BY plan_page_reader")
        page_db.execute("DROP ROLE plan_page_reader")

    assert [migration.name for migration in overview.migrations] == ["granted_items"]
    assert overview.plans == ()
    assert overview.plans_error == (
        "The saved plans could not be read: permission denied for table batched_migration_plans; "
        "grant the connection's role SELECT on walthrottle.batched_migration_plans"
    )
    assert text_of(block(rendered, "<p class='error plans-error'>", "</p>")) == overview.plans_error
    assert "<summary><b>granted_items</b>: last jobs and history</summary>" in rendered
    assert overview.to_dict()["plans_error"] == overview.plans_error

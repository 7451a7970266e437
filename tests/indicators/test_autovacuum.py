"""AutovacuumIndicator against real autovacuum workers, with no mock.

Autovacuum runs every second (``autovacuum_naptime = 1``) and is made slow on the tables it should
be caught working on (``autovacuum_vacuum_cost_delay = 100`` ms for each page, with a cost limit of
1), so a worker stays on such a table for tens of seconds. An anti-wraparound one is forced by a
table-level ``autovacuum_freeze_max_age`` of 100,000 and as many transactions.
"""

from __future__ import annotations

import contextlib
import json
import threading

import psycopg
import pytest

from airflow_provider_walthrottle.flags import AUTOVACUUM_HEALTH_FLAG
from airflow_provider_walthrottle.indicators.autovacuum import AutovacuumIndicator
from airflow_provider_walthrottle.indicators.base import IndicatorContext, indicator_from_serialized
from airflow_provider_walthrottle.wal.health import Signal
from tests.indicators.readings import AS_MONITOR, AS_PLAIN, PLAIN, read, read_both
from tests.support.postgres_cluster import wait_until

INDICATOR = AutovacuumIndicator()
GRANT = f"GRANT pg_monitor TO {PLAIN}"
#: Every page a vacuum touches costs at least 1: with a limit of 1 it sleeps 100 ms after each.
SLOW = (
    "autovacuum_vacuum_cost_delay = 100, autovacuum_vacuum_cost_limit = 1, "
    "autovacuum_vacuum_threshold = 0, autovacuum_vacuum_scale_factor = 0"
)


def on(table):
    return IndicatorContext(table=table)


@pytest.fixture(scope="module")
def cluster(module_cluster):
    return module_cluster(
        "autovacuum", archive_mode="off", extra_conf={"autovacuum": "on", "autovacuum_naptime": "1"}
    )


def worker_pids(cluster):
    return [
        pid
        for (pid,) in cluster.execute(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'autovacuum worker' "
            "AND datname = current_database()"
        )
    ]


def test_without_a_table_it_is_not_available_and_a_missing_table_is_unknown(cluster):
    without = read_both(cluster, INDICATOR)
    missing = read_both(cluster, INDICATOR, on("public.no_such_table"))
    unqualified = read_both(cluster, INDICATOR, on("no_such_table"))
    malformed = read_both(cluster, INDICATOR, on("a.b.c"))

    assert without.signal is Signal.NOT_AVAILABLE
    assert without.reason == "no table to watch: this indicator needs the migrated table"
    assert missing.signal is unqualified.signal is Signal.UNKNOWN
    assert missing.reason.startswith("table public.no_such_table does not exist in this database")
    assert unqualified.reason.startswith("table public.no_such_table does not exist")
    assert malformed.signal is Signal.UNKNOWN
    assert malformed.reason == "table must be 'table' or 'schema.table', without quotes, got 'a.b.c'"


def test_a_quiet_table_is_normal_and_a_role_without_pg_monitor_says_what_it_would_not_see(cluster):
    cluster.execute("CREATE TABLE quiet (id int) WITH (autovacuum_enabled = false)")
    wait_until(lambda: not worker_pids(cluster), what="autovacuum to be idle")

    reading = read_both(cluster, INDICATOR, on("quiet"))
    plain = read_both(cluster, INDICATOR, on("public.quiet"), **AS_PLAIN)

    assert reading.signal is Signal.NORMAL
    assert reading.reason == "no autovacuum is processing quiet"
    assert reading.values == {"autovacuums_on_table": 0, "anti_wraparound_autovacuums_on_table": 0}
    assert plain.signal is Signal.NORMAL
    assert plain.reason == (
        "no autovacuum is processing quiet; this role would not see which table an autovacuum works on: "
        + GRANT
    )


def test_a_worker_on_the_table_or_its_partition_stops_it_and_not_another_table(cluster):
    cluster.execute("CREATE TABLE calm (id int) WITH (autovacuum_enabled = false)")
    cluster.execute(f"CREATE TABLE busy (id int, pad text) WITH ({SLOW})")
    cluster.execute("CREATE TABLE events (id int, pad text) PARTITION BY RANGE (id)")
    cluster.execute(
        f"CREATE TABLE events_1 PARTITION OF events FOR VALUES FROM (0) TO (1000000) WITH ({SLOW})"
    )
    for table in ("busy", "events"):
        cluster.execute(f"INSERT INTO {table} SELECT g, repeat('x', 100) FROM generate_series(1, 20000) g")
        cluster.execute(f"DELETE FROM {table}")  # 20,000 dead tuples: vacuum at once, slowly
    # report them now: a flush that meets a lock (our readings' sessions come and go) waits 10 s
    cluster.execute("SELECT pg_stat_force_next_flush()")

    busy = wait_until(
        lambda: (r := read(cluster, INDICATOR, on("busy"))).signal is Signal.STOP and r,
        what="autovacuum on busy",
        interval=0.2,
    )
    events = wait_until(
        lambda: (r := read(cluster, INDICATOR, on("events"))).signal is Signal.STOP and r,
        what="autovacuum on a partition of events",
        interval=0.2,
    )
    busy = read_both(cluster, INDICATOR, on("busy"))
    calm = read_both(cluster, INDICATOR, on("calm"))
    plain_busy = read_both(cluster, INDICATOR, on("busy"), **AS_PLAIN)
    plain_calm = read_both(cluster, INDICATOR, on("calm"), **AS_PLAIN)
    monitor_busy = read_both(cluster, INDICATOR, on("busy"), **AS_MONITOR)

    assert busy.reason.startswith("autovacuum (pid ")
    assert " is vacuuming busy (phase " in busy.reason
    assert "wraparound" not in busy.reason
    assert busy.values == {"autovacuums_on_table": 1, "anti_wraparound_autovacuums_on_table": 0}
    assert " is vacuuming events_1 (of events) (phase " in events.reason
    assert calm.signal is Signal.NORMAL
    assert calm.reason.startswith("no autovacuum is processing calm (vacuums in progress on ")
    assert "busy" in calm.reason
    # without pg_monitor, a worker's table is hidden: unknown for every table, never normal
    for reading in (plain_busy, plain_calm):
        assert reading.signal is Signal.UNKNOWN
        assert "on a table this role cannot see" in reading.reason
        assert reading.reason.endswith(GRANT)
        assert reading.values["autovacuums_on_table"] is None
    assert monitor_busy.signal is Signal.STOP

    # the worker is cancelled, and kept away: the table is free again
    cluster.execute("ALTER TABLE busy SET (autovacuum_enabled = false)")  # cancels a worker in its way
    cluster.execute(
        "SELECT pg_cancel_backend(pid) FROM pg_stat_progress_vacuum WHERE relid = 'busy'::regclass"
    )
    cleared = wait_until(
        lambda: (r := read(cluster, INDICATOR, on("busy"))).signal is Signal.NORMAL and r,
        what="busy to be free of autovacuum",
    )
    assert cleared.reason.startswith("no autovacuum is processing busy")


def test_a_manual_vacuum_on_the_table_does_not_stop_it(cluster):
    cluster.execute("CREATE TABLE manual (id int, pad text) WITH (autovacuum_enabled = false)")
    cluster.execute("INSERT INTO manual SELECT g, repeat('x', 100) FROM generate_series(1, 20000) g")
    vacuuming = cluster.connect()
    vacuuming.execute("SET vacuum_cost_delay = 100")
    vacuuming.execute("SET vacuum_cost_limit = 1")

    def vacuum():
        with contextlib.suppress(psycopg.errors.QueryCanceled):  # cancelled below
            vacuuming.execute("VACUUM manual")

    thread = threading.Thread(target=vacuum, daemon=True)
    thread.start()
    try:
        pid = wait_until(
            lambda: cluster.execute(
                "SELECT pid FROM pg_stat_progress_vacuum WHERE relid = 'manual'::regclass"
            ),
            what="the manual VACUUM to start",
        )[0][0]
        reading = read_both(cluster, INDICATOR, on("manual"))
    finally:
        cluster.execute("SELECT pg_cancel_backend(%s)", [vacuuming.info.backend_pid])
        thread.join(timeout=10)
        vacuuming.close()

    assert reading.signal is Signal.NORMAL
    # (an earlier test's worker may still be on events_1: "; vacuums in progress on events_1)")
    assert reading.reason.startswith(f"no autovacuum is processing manual (a manual VACUUM is (pid {pid})")
    (vacuum,) = [v for v in reading.details["vacuums"] if v["relation"] == "manual"]
    assert (vacuum["backend_type"], vacuum["on_table"]) == ("client backend", False)


def test_an_anti_wraparound_autovacuum_stops_and_says_so(cluster):
    # autovacuum_enabled = false keeps regular autovacuum away; an anti-wraparound one comes anyway
    cluster.execute(
        "CREATE TABLE wrap (id int, pad text) WITH (autovacuum_enabled = false, "
        "autovacuum_freeze_max_age = 100000, autovacuum_vacuum_cost_delay = 100, "
        "autovacuum_vacuum_cost_limit = 1)"
    )
    cluster.execute("INSERT INTO wrap SELECT g, repeat('x', 100) FROM generate_series(1, 20000) g")
    cluster.execute(
        "CREATE PROCEDURE burn_xids(n int) LANGUAGE plpgsql AS "
        "$$ BEGIN FOR i IN 1..n LOOP PERFORM pg_current_xact_id(); COMMIT; END LOOP; END $$"
    )
    cluster.execute("CALL burn_xids(100001)")  # wrap's relfrozenxid is now older than 100,000

    reading = wait_until(
        lambda: (r := read(cluster, INDICATOR, on("wrap"))).signal is Signal.STOP and r,
        what="an anti-wraparound autovacuum on wrap",
    )
    reading = read_both(cluster, INDICATOR, on("wrap"))

    assert reading.reason.startswith("an anti-wraparound autovacuum (pid ")
    assert " is vacuuming wrap: it is not cancelled by lock conflicts and must finish first (phase " in (
        reading.reason
    )
    assert reading.values == {"autovacuums_on_table": 1, "anti_wraparound_autovacuums_on_table": 1}
    (vacuum,) = [v for v in reading.details["vacuums"] if v["on_table"]]
    assert (vacuum["backend_type"], vacuum["to_prevent_wraparound"]) == ("autovacuum worker", True)


def test_it_has_no_threshold_and_round_trips():
    indicator = AutovacuumIndicator(flag_default=True)
    kwargs = json.loads(json.dumps(indicator.serialize()))

    indicator.validate()

    assert indicator_from_serialized(indicator.classpath(), kwargs) == indicator
    assert kwargs == {"flag_variable": AUTOVACUUM_HEALTH_FLAG, "flag_default": True}
    assert AutovacuumIndicator.template_fields == ()
    assert (AutovacuumIndicator.name, AutovacuumIndicator.needs_table) == ("autovacuum", True)
    assert AutovacuumIndicator().flag_default is False

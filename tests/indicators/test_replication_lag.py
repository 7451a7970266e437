"""ReplicationLagIndicator against a real primary and a real streaming standby, with no mock.

The standby's replay is paused with ``pg_wal_replay_pause()`` while the primary writes, so its lag
grows for real, in bytes and in seconds, and clears after ``pg_wal_replay_resume()``.
"""

from __future__ import annotations

import json
import re
import time

import pytest
from psycopg import sql

from airflow_provider_walthrottle.flags import REPLICATION_LAG_HEALTH_FLAG
from airflow_provider_walthrottle.indicators.base import indicator_from_serialized
from airflow_provider_walthrottle.indicators.replication_lag import (
    DEFAULT_MAX_LAG_BYTES,
    DEFAULT_MAX_LAG_SECONDS,
    ReplicationLagIndicator,
)
from airflow_provider_walthrottle.wal.health import Signal
from tests.indicators.readings import AS_MONITOR, AS_PLAIN, PLAIN, read, read_both
from tests.support.postgres_cluster import wait_until

MIB = 1024 * 1024
STANDBY = "lag_standby"
#: Stops on bytes only, and on seconds only.
BY_BYTES = ReplicationLagIndicator(max_lag_seconds=3600, max_lag_bytes=MIB)
BY_SECONDS = ReplicationLagIndicator(max_lag_seconds=0.2, max_lag_bytes=1024 * MIB)


def streaming(primary):
    return primary.execute("SELECT application_name, state FROM pg_stat_replication") == [
        (STANDBY, "streaming")
    ]


@pytest.fixture(scope="module")
def clusters(module_cluster):
    """A primary and its streaming standby, whose ``application_name`` is ``lag_standby``."""
    # a commit writes its WAL before it returns, so pg_current_wal_lsn() has moved past it
    primary = module_cluster("lag-primary", archive_mode="off", extra_conf={"synchronous_commit": "on"})
    primary.execute("CREATE TABLE lag_filler (pad text)")
    standby = primary.make_standby(f"{primary.name}-standby", archive_mode="off")
    try:
        conninfo = standby.execute("SHOW primary_conninfo")[0][0]
        standby.execute(
            sql.SQL("ALTER SYSTEM SET primary_conninfo = {}").format(
                sql.Literal(f"{conninfo} application_name={STANDBY}")
            )
        )
        standby.execute("SELECT pg_reload_conf()")
        wait_until(lambda: streaming(primary), what=f"{STANDBY} to stream")
        yield primary, standby
    finally:
        standby.close()


@pytest.fixture
def caught_up(clusters):
    """The primary and its standby, replaying and caught up, before and after the test."""
    primary, standby = clusters
    standby.execute("SELECT pg_wal_replay_resume()")
    standby.wait_for_replay(primary)
    yield primary, standby
    standby.execute("SELECT pg_wal_replay_resume()")
    standby.wait_for_replay(primary)


def write_wal(primary, rows=5000):
    """Write about ``rows`` * 250 bytes of WAL on the primary."""
    primary.execute("INSERT INTO lag_filler SELECT repeat('x', 200) FROM generate_series(1, %s)", [rows])


def pause_replay(standby):
    standby.execute("SELECT pg_wal_replay_pause()")
    wait_until(
        lambda: standby.execute("SELECT pg_get_wal_replay_pause_state()")[0][0] == "paused",
        what="replay to pause",
    )


def wait_for_stop(primary, indicator):
    """Poll until ``indicator`` stops (the standby reports its positions as it receives WAL)."""
    return wait_until(
        lambda: (reading := read(primary, indicator)).signal is Signal.STOP and reading,
        timeout=10,
        what=f"{indicator!r} to stop",
        interval=0.1,
    )


def the_standby(reading):
    (entry,) = reading.details["standbys"]
    return entry


def test_a_caught_up_standby_is_normal(caught_up):
    primary, _ = caught_up

    reading = read_both(primary, ReplicationLagIndicator())

    assert reading.signal is Signal.NORMAL, reading.reason
    assert reading.reason.startswith("1 standby(s) within 1.500 s and 64 MiB")
    assert (reading.values["standbys"], reading.values["max_replay_lag_bytes"]) == (1, 0)
    assert reading.values["max_replay_lag_seconds"] == 0.0
    entry = the_standby(reading)
    assert (entry["application_name"], entry["state"], entry["signal"]) == (STANDBY, "streaming", "normal")
    assert reading.wal_headroom_bytes == DEFAULT_MAX_LAG_BYTES


def test_paused_replay_stops_on_bytes_and_seconds_then_clears_after_resume(caught_up):
    primary, standby = caught_up
    pause_replay(standby)
    write_wal(primary, rows=8000)  # about 2 MiB

    wait_for_stop(primary, BY_BYTES)
    by_bytes = read_both(primary, BY_BYTES)

    assert by_bytes.signal is Signal.STOP, by_bytes.reason
    assert f"standby {STANDBY} (127.0.0.1)" in by_bytes.reason
    assert "behind > 1 MiB" in by_bytes.reason
    assert by_bytes.values["max_replay_lag_bytes"] > MIB
    assert by_bytes.wal_headroom_bytes == 0
    assert the_standby(by_bytes)["signal"] == "stop"

    def late():  # the standby reports at each write it receives: replay_lag grows while replay waits
        write_wal(primary, rows=100)
        return read(primary, BY_SECONDS).signal is Signal.STOP

    wait_until(late, timeout=20, what="replay_lag above 0.2 s")
    by_seconds = read_both(primary, BY_SECONDS)
    assert "late > 0.200 s" in by_seconds.reason, by_seconds.reason
    assert by_seconds.values["max_replay_lag_seconds"] > 0.2

    # the WAL waiting for replay ages a second: replay_lag will read about that once it is replayed
    time.sleep(1)
    standby.execute("SELECT pg_wal_replay_resume()")

    def stale_but_caught_up():
        reading = read(primary, BY_SECONDS)
        entry = the_standby(reading)
        reported = entry["replay_lag_reported_seconds"]
        return entry["replay_lag_bytes"] == 0 and reported is not None and reported > 0.2 and reading

    # replay_lag keeps that second until the standby's next two status reports (10 s apart), long
    # after it has caught up: 0 bytes behind counts as 0 s behind
    reading = wait_until(stale_but_caught_up, timeout=5, what="the standby to catch up")
    assert reading.signal is Signal.NORMAL, reading.reason
    assert reading.values["max_replay_lag_seconds"] == 0.0
    assert read_both(primary, BY_BYTES).signal is Signal.NORMAL
    assert read_both(primary, BY_SECONDS).signal is Signal.NORMAL


def test_an_expected_standby_that_is_absent_stops_with_its_name(caught_up):
    primary, _ = caught_up

    named = read_both(primary, ReplicationLagIndicator(expected_standbys=[STANDBY, "ghost_standby"]))
    counted = read_both(primary, ReplicationLagIndicator(expected_standbys=2))

    assert named.signal is Signal.STOP
    assert named.reason == "expected standby ghost_standby is not connected"
    assert named.details["missing_standbys"] == ["ghost_standby"]
    assert counted.signal is Signal.STOP
    assert counted.reason == "1 of 2 expected standbys connected"
    for present in (1, STANDBY, f" {STANDBY} ", f'["{STANDBY}"]'):
        reading = read(primary, ReplicationLagIndicator(expected_standbys=present))
        assert reading.signal is Signal.NORMAL, (present, reading.reason)


def test_no_standby_and_none_expected_is_normal_but_an_expected_one_stops(caught_up):
    primary, standby = caught_up
    standby.detach_from_primary()
    try:
        wait_until(
            lambda: primary.execute("SELECT count(*) FROM pg_stat_replication")[0][0] == 0,
            what="the primary's WAL sender to exit",
        )

        alone = read_both(primary, ReplicationLagIndicator())
        expected = read_both(primary, ReplicationLagIndicator(expected_standbys=[STANDBY]))
    finally:
        standby.attach_to_primary()
        wait_until(lambda: streaming(primary), what=f"{STANDBY} to stream again")

    assert alone.signal is Signal.NORMAL
    assert alone.reason == "no streaming standby is connected, and none is expected"
    assert alone.values["standbys"] == 0
    assert alone.wal_headroom_bytes is None
    assert expected.signal is Signal.STOP
    assert expected.reason == f"expected standby {STANDBY} is not connected"


def test_on_a_standby_it_is_not_available_and_says_where_to_point(clusters):
    _, standby = clusters

    reading = read_both(standby, ReplicationLagIndicator())

    assert reading.signal is Signal.NOT_AVAILABLE
    assert "standby (in recovery)" in reading.reason
    assert "point the connection at the primary" in reading.reason


def test_a_role_without_pg_monitor_is_unknown_naming_the_grant(caught_up):
    primary, standby = caught_up

    plain = read_both(primary, ReplicationLagIndicator(), **AS_PLAIN)
    monitor = read_both(primary, ReplicationLagIndicator(), **AS_MONITOR)
    plain_expecting = read_both(primary, ReplicationLagIndicator(expected_standbys=["ghost"]), **AS_PLAIN)
    pause_replay(standby)
    write_wal(primary, rows=8000)
    wait_for_stop(primary, BY_BYTES)
    plain_lagging = read_both(primary, BY_BYTES, **AS_PLAIN)
    monitor_lagging = read_both(primary, BY_BYTES, **AS_MONITOR)

    grant = f"GRANT pg_monitor TO {PLAIN}"
    assert plain.signal is Signal.UNKNOWN
    assert plain.reason == f"this role cannot see the state or lag of 1 WAL sender(s) ({STANDBY}): {grant}"
    assert plain.values["max_replay_lag_bytes"] is None
    assert plain.details["hidden_wal_senders"][0]["application_name"] == STANDBY
    assert monitor.signal is Signal.NORMAL
    assert monitor.values["standbys"] == 1
    # an absent standby is certain even without the grant: it stops, and says what is not seen
    assert plain_expecting.signal is Signal.STOP
    assert plain_expecting.reason.startswith("expected standby ghost is not connected; ")
    assert grant in plain_expecting.reason
    assert plain_lagging.signal is Signal.UNKNOWN
    assert monitor_lagging.signal is Signal.STOP


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_lag_seconds": -1}, "max_lag_seconds must be a number of seconds, 0 or more, got -1"),
        ({"max_lag_seconds": True}, "max_lag_seconds must be a number of seconds, 0 or more, got True"),
        ({"max_lag_bytes": 1.5}, "max_lag_bytes must be a whole number of bytes, 0 or more, got 1.5"),
        ({"max_lag_bytes": float("inf")}, "max_lag_bytes must be a whole number of bytes"),
        ({"expected_standbys": -1}, "expected_standbys must be a whole number of standbys or a list"),
        ({"expected_standbys": ["a", ""]}, "expected_standbys must be a whole number of standbys or a list"),
        ({"expected_standbys": [1]}, "expected_standbys must be a whole number of standbys or a list"),
        ({"expected_standbys": True}, "expected_standbys must be a whole number of standbys or a list"),
    ],
)
def test_a_bad_threshold_fails_at_construction_in_one_line(kwargs, message):
    with pytest.raises(ValueError, match="^" + re.escape(message)) as error:
        ReplicationLagIndicator(**kwargs)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("field", "rendered", "message"),
    [
        ("max_lag_seconds", "soon", "max_lag_seconds must be a number of seconds, 0 or more, got 'soon'"),
        ("max_lag_bytes", "64MB", "max_lag_bytes must be a whole number of bytes, 0 or more, got '64MB'"),
        ("expected_standbys", "[1, 2]", "expected_standbys must be a whole number of standbys or a list"),
    ],
)
def test_a_template_is_checked_by_validate_once_rendered(field, rendered, message):
    indicator = ReplicationLagIndicator(**{field: "{{ var.value.lag }}"})  # not checked yet
    setattr(indicator, field, rendered)  # as Airflow renders a template field

    with pytest.raises(ValueError, match="^" + re.escape(message)) as error:
        indicator.validate()
    assert "\n" not in str(error.value)


def test_rendered_templates_validate_and_read_as_numbers():
    indicator = ReplicationLagIndicator(
        max_lag_seconds=" 2.5 ", max_lag_bytes="1048576", expected_standbys="a, b"
    )

    indicator.validate()

    assert indicator.thresholds() == (2.5, MIB, ("a", "b"))
    assert ReplicationLagIndicator.template_fields == (
        "max_lag_seconds",
        "max_lag_bytes",
        "expected_standbys",
    )


@pytest.mark.parametrize(
    "indicator",
    [
        ReplicationLagIndicator(),
        ReplicationLagIndicator(max_lag_seconds=0.5, max_lag_bytes=MIB, expected_standbys=["a", "b"]),
        ReplicationLagIndicator(expected_standbys=2, flag_variable="my_flag", flag_default=True),
        ReplicationLagIndicator(max_lag_seconds="{{ var.value.lag }}", expected_standbys="{{ params.s }}"),
    ],
    ids=repr,
)
def test_serialize_round_trips(indicator):
    kwargs = json.loads(json.dumps(indicator.serialize()))

    rebuilt = indicator_from_serialized(indicator.classpath(), kwargs)

    assert rebuilt == indicator
    assert rebuilt.serialize() == indicator.serialize()
    assert set(kwargs) == {
        "max_lag_seconds",
        "max_lag_bytes",
        "expected_standbys",
        "flag_variable",
        "flag_default",
    }


def test_defaults():
    indicator = ReplicationLagIndicator()

    assert (DEFAULT_MAX_LAG_SECONDS, DEFAULT_MAX_LAG_BYTES) == (1.5, 64 * MIB)
    assert indicator.thresholds() == (1.5, 64 * MIB, None)
    assert (indicator.flag_variable, indicator.flag_default) == (REPLICATION_LAG_HEALTH_FLAG, False)
    assert (indicator.name, indicator.needs_table) == ("replication_lag", False)

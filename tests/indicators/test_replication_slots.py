"""ReplicationSlotsIndicator against a real primary with real slots, with no mock.

A logical slot (``test_decoding``) that nobody consumes retains every byte the primary writes, as a
CDC consumer that has fallen behind does; ``pg_replication_slot_advance`` plays the consumer
catching up. The cluster has 1 MiB segments and ``wal_keep_size = 0``, so that
``max_slot_wal_keep_size`` bites after a few MiB of WAL.
"""

from __future__ import annotations

import json
import re

import pytest

from airflow_provider_walthrottle.flags import REPLICATION_SLOTS_HEALTH_FLAG
from airflow_provider_walthrottle.indicators.base import IndicatorContext, indicator_from_serialized
from airflow_provider_walthrottle.indicators.replication_slots import (
    DEFAULT_MAX_RETAINED_BYTES,
    ReplicationSlotsIndicator,
)
from airflow_provider_walthrottle.wal.health import Signal
from tests.indicators.readings import AS_MONITOR, AS_PLAIN, read_both
from tests.support.postgres_cluster import wait_until

MIB = 1024 * 1024
TWO_MIB = ReplicationSlotsIndicator(max_retained_bytes=2 * MIB)


@pytest.fixture(scope="module")
def cluster(module_cluster):
    return module_cluster(
        "slots-primary",
        archive_mode="off",
        wal_segsize_mb=1,
        # a commit writes its WAL before it returns, so pg_current_wal_lsn() has moved past it
        extra_conf={"wal_level": "logical", "wal_keep_size": "0", "synchronous_commit": "on"},
    )


@pytest.fixture
def primary(cluster):
    """The primary with no slot and no ``max_slot_wal_keep_size``, before and after the test."""
    cluster.execute("CREATE TABLE IF NOT EXISTS slot_filler (pad text)")
    yield cluster
    cluster.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots")
    set_max_slot_wal_keep_size(cluster, "-1")


def set_max_slot_wal_keep_size(cluster, value):
    cluster.execute(f"ALTER SYSTEM SET max_slot_wal_keep_size = '{value}'")
    cluster.execute("SELECT pg_reload_conf()")
    wait_until(lambda: cluster.execute("SHOW max_slot_wal_keep_size")[0][0] == value, what="the setting")


def write_wal(cluster, mib):
    """Write about ``mib`` MiB of WAL."""
    cluster.execute(
        "INSERT INTO slot_filler SELECT repeat('x', 200) FROM generate_series(1, %s)", [4000 * mib]
    )


def the_slot(reading, name):
    (entry,) = [slot for slot in reading.details["slots"] if slot["slot_name"] == name]
    return entry


def test_no_slot_is_normal(primary):
    reading = read_both(primary, ReplicationSlotsIndicator())

    assert reading.signal is Signal.NORMAL
    assert reading.reason == "no replication slots"
    assert reading.values["slots"] == 0
    assert reading.wal_headroom_bytes is None


def test_an_unconsumed_logical_slot_stops_past_the_bound_and_goes_on_once_advanced(primary):
    primary.execute("SELECT pg_create_logical_replication_slot('cdc', 'test_decoding')")
    fresh = read_both(primary, TWO_MIB)
    write_wal(primary, 3)

    behind = read_both(primary, TWO_MIB)
    primary.execute("CHECKPOINT")  # logs the running transactions, from where decoding may restart
    primary.execute("SELECT pg_replication_slot_advance('cdc', pg_current_wal_lsn())")
    advanced = read_both(primary, TWO_MIB)

    assert fresh.signal is Signal.NORMAL, fresh.reason
    assert re.fullmatch(
        r"1 slot\(s\), 1 inactive; the most WAL retained is [\d.]+ (B|KiB) \(cdc\) <= 2 MiB", fresh.reason
    )
    assert 0 < fresh.wal_headroom_bytes < 2 * MIB
    assert behind.signal is Signal.STOP
    assert re.fullmatch(
        r"inactive logical slot cdc \(test_decoding, database postgres\) retains [\d.]+ MiB of WAL > 2 MiB",
        behind.reason,
    ), behind.reason
    slot = the_slot(behind, "cdc")
    assert (slot["active"], slot["wal_status"], slot["signal"]) == (False, "reserved", "stop")
    assert slot["retained_bytes"] > 2 * MIB == behind.values["max_retained_bytes"]
    assert behind.values["max_slot_retained_bytes"] == slot["retained_bytes"]
    assert behind.wal_headroom_bytes == 0
    assert advanced.signal is Signal.NORMAL, advanced.reason
    assert the_slot(advanced, "cdc")["retained_bytes"] < MIB


def test_a_standbys_physical_slot_counts_too(primary):
    primary.execute("SELECT pg_create_physical_replication_slot('standby_slot', true)")
    write_wal(primary, 3)

    reading = read_both(primary, TWO_MIB)

    assert reading.signal is Signal.STOP
    assert reading.reason.startswith("inactive physical slot standby_slot retains ")
    assert the_slot(reading, "standby_slot")["slot_type"] == "physical"


def test_safe_wal_size_below_the_next_batch_stops(primary):
    set_max_slot_wal_keep_size(primary, "8MB")
    primary.execute("SELECT pg_create_logical_replication_slot('cdc', 'test_decoding')")
    generous = ReplicationSlotsIndicator(max_retained_bytes=64 * MIB)

    big_batch = read_both(primary, generous, IndicatorContext(next_batch_wal_bytes=64 * MIB))
    small_batch = read_both(primary, generous, IndicatorContext(next_batch_wal_bytes=1024))
    not_projected = read_both(primary, generous)

    safe = the_slot(big_batch, "cdc")["safe_wal_size"]
    assert 0 < safe <= 9 * MIB
    assert big_batch.signal is Signal.STOP
    assert re.fullmatch(
        r"inactive logical slot cdc \(test_decoding, database postgres\) would lose WAL within the next "
        r"batch: safe_wal_size [\d.]+ MiB < 64 MiB projected",
        big_batch.reason,
    ), big_batch.reason
    assert small_batch.signal is Signal.NORMAL, small_batch.reason
    assert not_projected.signal is Signal.NORMAL
    assert "least safe_wal_size" in small_batch.reason
    # the smaller of the room under the bound and safe_wal_size
    retained = the_slot(small_batch, "cdc")["retained_bytes"]
    assert small_batch.wal_headroom_bytes == min(
        64 * MIB - retained, the_slot(small_batch, "cdc")["safe_wal_size"]
    )
    assert small_batch.wal_headroom_bytes == the_slot(small_batch, "cdc")["safe_wal_size"]


def test_an_unreserved_then_lost_slot_stops(primary):
    set_max_slot_wal_keep_size(primary, "2MB")
    primary.execute("SELECT pg_create_logical_replication_slot('cdc', 'test_decoding')")
    huge_bound = ReplicationSlotsIndicator(max_retained_bytes=1024 * MIB)
    write_wal(primary, 4)
    primary.execute("SELECT pg_switch_wal()")

    unreserved = read_both(primary, huge_bound)
    primary.execute("CHECKPOINT")  # removes the old segments: the slot is invalidated
    lost = read_both(primary, huge_bound)

    assert the_slot(unreserved, "cdc")["wal_status"] == "unreserved"
    assert unreserved.signal is Signal.STOP
    assert "will lose its WAL at the next checkpoint (wal_status unreserved" in unreserved.reason
    assert the_slot(lost, "cdc")["wal_status"] == "lost"
    assert lost.signal is Signal.STOP
    assert "has lost WAL it needs (wal_status lost)" in lost.reason
    assert lost.wal_headroom_bytes is None  # a lost slot bounds nothing any more; it stops until dropped


def test_a_role_without_pg_monitor_sees_every_slot_as_pg_monitor_does(primary):
    primary.execute("SELECT pg_create_logical_replication_slot('cdc', 'test_decoding')")
    primary.execute("SELECT pg_create_physical_replication_slot('standby_slot', true)")
    write_wal(primary, 3)

    plain = read_both(primary, TWO_MIB, **AS_PLAIN)
    monitor = read_both(primary, TWO_MIB, **AS_MONITOR)

    assert plain.signal is monitor.signal is Signal.STOP
    assert plain.reason == monitor.reason
    assert plain.details == monitor.details
    assert [slot["slot_name"] for slot in plain.details["slots"]] == ["cdc", "standby_slot"]


def test_on_a_standby_it_is_not_available_and_says_where_to_point(cluster):
    standby = cluster.make_standby(f"{cluster.name}-standby", archive_mode="off")
    try:
        reading = read_both(standby, ReplicationSlotsIndicator())
    finally:
        standby.close()

    assert reading.signal is Signal.NOT_AVAILABLE
    assert "standby (in recovery)" in reading.reason
    assert "point the connection at the primary" in reading.reason


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (-1, "max_retained_bytes must be a whole number of bytes, 0 or more, got -1"),
        (1.5, "max_retained_bytes must be a whole number of bytes, 0 or more, got 1.5"),
        (False, "max_retained_bytes must be a whole number of bytes, 0 or more, got False"),
        (None, "max_retained_bytes must be a whole number of bytes, 0 or more, got None"),
    ],
)
def test_a_bad_threshold_fails_at_construction_in_one_line(value, message):
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        ReplicationSlotsIndicator(max_retained_bytes=value)


def test_a_template_is_checked_by_validate_once_rendered():
    indicator = ReplicationSlotsIndicator(max_retained_bytes="{{ var.value.slot_bound }}")
    indicator.max_retained_bytes = "1 GB"  # as Airflow renders it
    with pytest.raises(
        ValueError, match=r"^max_retained_bytes must be a whole number of bytes, 0 or more, got '1 GB'$"
    ):
        indicator.validate()

    indicator.max_retained_bytes = "2097152"
    indicator.validate()
    assert indicator.threshold == 2 * MIB
    assert ReplicationSlotsIndicator.template_fields == ("max_retained_bytes",)


@pytest.mark.parametrize(
    "indicator",
    [
        ReplicationSlotsIndicator(),
        ReplicationSlotsIndicator(max_retained_bytes=5 * MIB, flag_variable="my_flag", flag_default=True),
        ReplicationSlotsIndicator(max_retained_bytes="{{ var.value.slot_bound }}"),
    ],
    ids=repr,
)
def test_serialize_round_trips(indicator):
    kwargs = json.loads(json.dumps(indicator.serialize()))

    rebuilt = indicator_from_serialized(indicator.classpath(), kwargs)

    assert rebuilt == indicator
    assert set(kwargs) == {"max_retained_bytes", "flag_variable", "flag_default"}


def test_defaults():
    indicator = ReplicationSlotsIndicator()

    assert indicator.threshold == DEFAULT_MAX_RETAINED_BYTES == 1024 * MIB
    assert (indicator.flag_variable, indicator.flag_default) == (REPLICATION_SLOTS_HEALTH_FLAG, False)
    assert (indicator.name, indicator.needs_table) == ("replication_slots", False)

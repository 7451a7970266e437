"""WalArchivalTrigger's event loop against real PostgreSQL clusters."""

from __future__ import annotations

import asyncio
import datetime
import importlib
import socket

import pytest

from airflow_provider_walthrottle.triggers.wal_archival import WalArchivalTrigger

FLAG_ENV = "AIRFLOW_VAR_BATCHED_MIGRATIONS_HEALTH_STATUS_WAL"


def make_trigger(conn_id, **overrides):
    kwargs = dict(
        postgres_conn_id=conn_id,
        max_pending_segments=3,
        flag_variable="batched_migrations_health_status_wal",
        flag_default=False,
        actor="some_dag",
        on_unavailable="wait",
        poll_interval=0.2,
    )
    kwargs.update(overrides)
    return WalArchivalTrigger(**kwargs)


async def first_event(trigger, timeout):
    return await asyncio.wait_for(anext(trigger.run()), timeout)


DEADLINE = datetime.datetime(2026, 12, 1, 12, 0, tzinfo=datetime.timezone.utc)


@pytest.mark.parametrize("deadline", [None, DEADLINE])
def test_serialize_round_trip(deadline):
    trigger = make_trigger("primary", database="app", deadline=deadline)
    classpath, kwargs = trigger.serialize()
    module, _, name = classpath.rpartition(".")
    rebuilt = getattr(importlib.import_module(module), name)(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)
    assert kwargs["database"] == "app"
    assert kwargs["deadline"] == deadline


def test_a_naive_deadline_is_refused():
    with pytest.raises(ValueError, match="deadline must be timezone-aware"):
        make_trigger("primary", deadline=datetime.datetime(2026, 12, 1, 12, 0))


@pytest.fixture
def backlogged(monkeypatch, pg_drained):
    monkeypatch.setenv(FLAG_ENV, "true")
    monkeypatch.setenv("AIRFLOW_CONN_TRIGGER_PRIMARY", pg_drained.uri())
    pg_drained.archive_one_segment()
    pg_drained.make_backlog(5)
    return pg_drained


def test_waits_above_threshold_then_fires_once_drained(backlogged):
    async def scenario():
        run = make_trigger("trigger_primary").run()
        pending = asyncio.ensure_future(anext(run))
        done, _ = await asyncio.wait({pending}, timeout=1.5)
        assert not done, "the trigger must keep waiting while 5 segments > 3 are pending"
        await asyncio.to_thread(backlogged.open_gate)
        return await asyncio.wait_for(pending, 30)

    event = asyncio.run(scenario())
    assert event.payload["status"] == "success"
    assert event.payload["checked"] is True
    assert event.payload["verdict"]["signal"] == "normal"
    assert event.payload["verdict"]["status"]["pending_segments"] <= 3
    assert event.payload["verdict"]["indicators"]["wal_archival"]["values"]["pending_segments"] <= 3


def test_the_wait_ends_with_a_timeout_event_at_its_deadline(backlogged):
    deadline = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=1.5)
    # polls every 60 s: only the deadline can end this wait within the test's 20 s
    trigger = make_trigger("trigger_primary", poll_interval=60, deadline=deadline)

    event = asyncio.run(first_event(trigger, timeout=20))

    assert event.payload["status"] == "timeout"
    assert "did not clear by the deadline" in event.payload["message"]
    assert "5 WAL segments pending archival > threshold 3" in event.payload["message"]
    assert datetime.datetime.now(datetime.timezone.utc) >= deadline


def test_turning_the_flag_off_releases_the_wait(backlogged, monkeypatch):
    async def scenario():
        pending = asyncio.ensure_future(anext(make_trigger("trigger_primary").run()))
        done, _ = await asyncio.wait({pending}, timeout=1.0)
        assert not done
        monkeypatch.setenv(FLAG_ENV, "false")
        return await asyncio.wait_for(pending, 10)

    event = asyncio.run(scenario())
    assert (event.payload["status"], event.payload["checked"]) == ("success", False)
    assert event.payload["verdict"]["flags_off"] == ["batched_migrations_health_status_wal"]
    assert len(backlogged.ready_segments()) == 5, "the backlog itself did not drain"


def test_unreachable_server_fires_an_error_event(monkeypatch):
    monkeypatch.setenv(FLAG_ENV, "true")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("AIRFLOW_CONN_TRIGGER_GONE", f"postgresql://u:p@127.0.0.1:{port}/db")

    event = asyncio.run(first_event(make_trigger("trigger_gone"), 30))

    assert event.payload["status"] == "error"
    assert "Cannot connect to PostgreSQL with connection 'trigger_gone'" in event.payload["message"]
    assert "Connection refused" in event.payload["message"]


def test_on_unavailable_fail_fires_an_error_event(monkeypatch, pg_cluster_factory):
    cluster = pg_cluster_factory(name="trigger-archive-off", archive_mode="off")
    monkeypatch.setenv(FLAG_ENV, "true")
    monkeypatch.setenv("AIRFLOW_CONN_TRIGGER_OFF", cluster.uri())

    event = asyncio.run(first_event(make_trigger("trigger_off", on_unavailable="fail"), 30))

    assert event.payload["status"] == "error"
    assert "archive_mode is off" in event.payload["message"]


def test_the_event_loop_keeps_running_while_the_trigger_waits_on_a_silent_server(monkeypatch):
    """A server that accepts the connection and never answers: a blocking call would stall the loop."""
    monkeypatch.setenv(FLAG_ENV, "true")
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        monkeypatch.setenv(
            "AIRFLOW_CONN_TRIGGER_SILENT",
            f'postgresql://u:p@127.0.0.1:{port}/db?__extra__={{"connect_timeout": 3}}',
        )

        async def scenario():
            ticks = 0

            async def heartbeat():
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.05)
                    ticks += 1

            beating = asyncio.ensure_future(heartbeat())
            started = asyncio.get_running_loop().time()
            event = await first_event(make_trigger("trigger_silent"), 30)
            elapsed = asyncio.get_running_loop().time() - started
            beating.cancel()
            return event, ticks, elapsed

        event, ticks, elapsed = asyncio.run(scenario())

    assert event.payload["status"] == "error"
    assert "trigger_silent" in event.payload["message"]
    assert elapsed >= 2.5, f"the connection attempt ended after {elapsed:.1f}s, before its timeout"
    # the heartbeat ran all along (a blocking connect would have frozen it for the whole timeout)
    assert ticks >= elapsed / 0.05 * 0.5, f"{ticks} heartbeats in {elapsed:.1f}s"


@pytest.mark.parametrize(
    ("pending", "rate", "expected"),
    [
        (50, 2.0, 4.0),  # 8 segments over the target at 2/s
        (50, 100.0, 1.0),  # never sooner than min_interval
        (500, 2.0, 60),  # never later than poll_interval
        (50, None, 5.0),  # no rate yet: measure one soon
        (50, 0.0, 60),  # not draining
        (50, -1.5, 60),  # growing
        (None, 2.0, 60),  # unknown backlog
    ],
)
def test_the_next_check_comes_when_the_drain_rate_says_the_backlog_reaches_it(pending, rate, expected):
    from airflow_provider_walthrottle.triggers.wal_archival import next_check_in

    delay = next_check_in(pending=pending, target=42, drain_rate=rate, poll_interval=60, min_interval=1)
    assert delay == expected


def test_a_short_poll_interval_is_not_stretched_to_the_first_recheck():
    from airflow_provider_walthrottle.triggers.wal_archival import next_check_in

    assert next_check_in(pending=50, target=42, drain_rate=None, poll_interval=0.5, min_interval=1) == 0.5


@pytest.mark.slow
def test_a_draining_backlog_ends_the_wait_about_when_it_reaches_the_threshold(monkeypatch, pg_drained):
    monkeypatch.setenv(FLAG_ENV, "true")
    monkeypatch.setenv("AIRFLOW_CONN_TRIGGER_DRAINING", pg_drained.uri())
    pg_drained.archive_one_segment()
    pg_drained.make_backlog(20)
    pg_drained.set_archive_delay(0.5)  # about 2 segments a second once the gate opens
    try:

        async def scenario():
            # with a fixed poll the second check would come after 120 s
            trigger = make_trigger(
                "trigger_draining", max_pending_segments=4, poll_interval=120, min_poll_interval=0.5
            )
            pending = asyncio.ensure_future(anext(trigger.run()))
            await asyncio.sleep(0.5)
            await asyncio.to_thread(pg_drained.open_gate)
            opened = asyncio.get_running_loop().time()
            event = await asyncio.wait_for(pending, 60)
            return event, asyncio.get_running_loop().time() - opened

        event, waited = asyncio.run(scenario())
    finally:
        pg_drained.set_archive_delay(0)

    assert event.payload["status"] == "success"
    assert event.payload["verdict"]["status"]["pending_segments"] <= 4
    assert waited < 30, f"the wait ended {waited:.1f}s after the archiver started draining 16 segments"

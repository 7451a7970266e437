"""The health gate over real indicators on a real PostgreSQL cluster: flags, decision, verdict."""

from __future__ import annotations

import asyncio

import pytest

from airflow_provider_walthrottle.gate import HealthGate, decide, task_indicators
from airflow_provider_walthrottle.hooks.wal_archival import WalArchivalHook
from airflow_provider_walthrottle.indicators.base import Reading, indicator_from_serialized
from airflow_provider_walthrottle.indicators.wal_archival import WalArchivalIndicator
from airflow_provider_walthrottle.wal.health import HealthUnavailableError, OnUnavailable, Signal

WAL_FLAG_ENV = "AIRFLOW_VAR_BATCHED_MIGRATIONS_HEALTH_STATUS_WAL"


class FakeTask:
    """The fields a sensor or an operator hands the gate, after rendering."""

    def __init__(self, **fields):
        defaults = dict(
            postgres_conn_id="gate_primary",
            max_pending_segments=42,
            flag_variable="batched_migrations_health_status_wal",
            flag_default=False,
            on_unavailable=OnUnavailable.WAIT,
            database=None,
            indicators=None,
        )
        self.__dict__.update({**defaults, **fields})


@pytest.fixture
def backlog_of_5(monkeypatch, pg_drained):
    monkeypatch.setenv("AIRFLOW_CONN_GATE_PRIMARY", pg_drained.uri())
    pg_drained.archive_one_segment()
    pg_drained.make_backlog(5)
    return pg_drained


def wal_gate(threshold, **more):
    return HealthGate(
        "gate_primary",
        (WalArchivalIndicator(max_pending_segments=threshold),),
        OnUnavailable.WAIT,
        actor="m",
        **more,
    )


def test_with_every_flag_off_the_database_is_not_read(monkeypatch):
    monkeypatch.delenv(WAL_FLAG_ENV, raising=False)
    calls = []
    verdict = wal_gate(3).check(lambda indicators, context: calls.append(indicators) or [])
    assert (verdict.checked, verdict.proceed, calls) == (False, True, [])
    assert verdict.flags_off == ("batched_migrations_health_status_wal",)
    assert "database not contacted" in verdict.describe("gate_primary", on_stop="waiting")


def test_a_backlog_above_the_threshold_stops_with_its_reason(monkeypatch, backlog_of_5):
    monkeypatch.setenv(WAL_FLAG_ENV, "true")
    hook = WalArchivalHook(postgres_conn_id="gate_primary")

    stopped = wal_gate(3).check(hook.read_indicators)
    passed = wal_gate(5).check(hook.read_indicators)

    assert (stopped.proceed, [r.indicator for r in stopped.stopping]) == (False, ["wal_archival"])
    line = stopped.describe("gate_primary", on_stop="waiting")
    assert line.startswith(
        "WAL archival on gate_primary: stop: 5 WAL segments pending archival > threshold 3"
    )
    assert line.endswith("; waiting")
    assert passed.proceed and not passed.stopping
    xcom = passed.to_xcom("batched_migrations_health_status_wal")
    assert (xcom["signal"], xcom["status"]["pending_segments"]) == ("normal", 5)
    assert xcom["indicators"]["wal_archival"]["values"] == {"pending_segments": 5, "max_pending_segments": 5}
    # five segments pending, five allowed: no room left for more WAL
    assert xcom["indicators"]["wal_archival"]["wal_headroom_bytes"] == 0


def test_the_trigger_reads_the_same_indicators_asynchronously(monkeypatch, backlog_of_5):
    monkeypatch.setenv(WAL_FLAG_ENV, "true")
    hook = WalArchivalHook(postgres_conn_id="gate_primary")
    gate = wal_gate(3)

    verdict = asyncio.run(gate.acheck(hook.aread_indicators))

    assert verdict.stopping[0].reason == gate.check(hook.read_indicators).stopping[0].reason


def test_the_trigger_of_a_gate_rebuilds_its_indicators(monkeypatch):
    gate = wal_gate("7", table="t")  # a rendered template
    trigger = gate.trigger(poll_interval=5, max_pending_segments=2)
    rebuilt = trigger.gate()
    assert rebuilt.max_pending_segments == 2  # the lower target of a wait for room
    assert (rebuilt.actor, rebuilt.table, rebuilt.on_unavailable) == ("m", "t", OnUnavailable.WAIT)
    [(classpath, kwargs)] = trigger.serialize()[1]["indicators"]
    assert indicator_from_serialized(classpath, kwargs) == WalArchivalIndicator(max_pending_segments=2)


def test_not_available_and_unknown_follow_on_unavailable():
    reading = Reading("replication_lag", Signal.UNKNOWN, "cannot see replay_lag: GRANT pg_monitor TO app")
    normal = Reading("wal_archival", Signal.NORMAL, "0 pending")
    assert decide([normal, reading], OnUnavailable.WAIT) == (reading,)
    assert decide([normal, reading], OnUnavailable.PROCEED) == ()
    with pytest.raises(HealthUnavailableError, match=r"^replication lag health is unknown: cannot see"):
        decide([normal, reading], OnUnavailable.FAIL)


def test_a_task_names_its_wal_threshold_one_way_only():
    task = FakeTask(indicators=[WalArchivalIndicator(max_pending_segments=9)], max_pending_segments=10)
    with pytest.raises(ValueError, match=r"give the WAL threshold and flag to WalArchivalIndicator"):
        task_indicators(task)
    twice = FakeTask(indicators=[WalArchivalIndicator(), WalArchivalIndicator(max_pending_segments=1)])
    with pytest.raises(ValueError, match=r"name each indicator once"):
        task_indicators(twice)
    rendered_badly = FakeTask(indicators=[WalArchivalIndicator(max_pending_segments="ten")])
    with pytest.raises(ValueError, match=r"max_pending_segments must be a whole number .* got 'ten'"):
        task_indicators(rendered_badly)


def test_a_task_without_indicators_has_all_four_with_its_wal_arguments():
    indicators = task_indicators(FakeTask(max_pending_segments="17"))
    assert [i.name for i in indicators] == [
        "wal_archival",
        "replication_lag",
        "replication_slots",
        "autovacuum",
    ]
    assert indicators[0] == WalArchivalIndicator(max_pending_segments="17")
    assert [i.flag_variable for i in indicators[1:]] == [
        "batched_migrations_health_status_replication_lag",
        "batched_migrations_health_status_replication_slots",
        "batched_migrations_health_status_autovacuum",
    ]

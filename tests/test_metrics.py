"""Metrics through Airflow's stats modules to a real StatsD client and a real UDP listener.

The stats modules are configured here the way Airflow's task runner and triggerer configure them
(``stats.initialize`` with Airflow's own StatsD factory, from ``[metrics]`` settings); the tests of
real Airflow processes are in ``tests/e2e/test_scheduler.py``.
"""

from __future__ import annotations

import contextlib
import datetime
import re
import uuid
from typing import TYPE_CHECKING, Any

import pytest
from airflow.sdk import DAG
from airflow.sdk._shared.observability.metrics.base_stats_logger import NoStatsLogger

from airflow_provider_walthrottle import BatchedMigrationOperator
from airflow_provider_walthrottle.indicators.wal_archival import wal_archival_reading
from airflow_provider_walthrottle.metrics import (
    metric_name,
    record_batch,
    record_readings,
    record_throttle,
    task_stats,
    triggerer_stats,
)
from airflow_provider_walthrottle.wal.archiver_status import ArchiverStatus, BacklogMethod
from airflow_provider_walthrottle.wal.health import evaluate_wal_archival
from tests.support.dag_testing import run_dag, task_states
from tests.support.migration_tables import INCREMENT, SCOPE, make_table
from tests.support.statsd_listener import StatsdListener

if TYPE_CHECKING:
    from collections.abc import Iterator

START = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)


@contextlib.contextmanager
def sending_to_statsd(kind: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, StatsdListener]]:
    """Configure the task's or the triggerer's stats module to send to a listener, under ``airflow.``."""
    with StatsdListener() as listener:
        monkeypatch.setenv("AIRFLOW__METRICS__STATSD_ON", "True")
        monkeypatch.setenv("AIRFLOW__METRICS__STATSD_HOST", "127.0.0.1")
        monkeypatch.setenv("AIRFLOW__METRICS__STATSD_PORT", str(listener.port))
        monkeypatch.setenv("AIRFLOW__METRICS__STATSD_PREFIX", "airflow")
        if kind == "task":
            from airflow.sdk.observability.metrics import stats_utils
        else:
            from airflow.observability.metrics import stats_utils
        stats = task_stats() if kind == "task" else triggerer_stats()
        if isinstance(stats, type):  # Airflow 3.2: the Stats class, with no legacy names to export
            stats.initialize(factory=stats_utils.get_stats_factory(stats))
        else:
            stats.initialize(factory=stats_utils.get_stats_factory(), export_legacy_names=False)
        try:
            yield stats, listener
        finally:
            if isinstance(stats, type):
                stats.initialize(factory=NoStatsLogger)
            else:
                stats.initialize(factory=NoStatsLogger, export_legacy_names=False)


@pytest.fixture(params=["task", "triggerer"])
def statsd(request, monkeypatch):
    with sending_to_statsd(request.param, monkeypatch) as pair:
        yield pair


@pytest.fixture
def task_statsd(monkeypatch):
    with sending_to_statsd("task", monkeypatch) as pair:
        yield pair


def status(pending: int | None) -> ArchiverStatus:
    return ArchiverStatus(
        pending_segments=pending,
        pending_bytes=None if pending is None else pending * 16 * 1024 * 1024,
        method=BacklogMethod.EXACT,
        archive_mode="on",
        wal_segment_size=16 * 1024 * 1024,
        in_recovery=False,
        current_wal_file="000000010000000000000040",
        archived_count=10,
        failed_count=0,
        last_failed_wal=None,
        last_failed_time=None,
        last_archived_wal="000000010000000000000010",
        last_archived_time=None,
        is_failing=False,
        detail=None,
    )


def reading(pending, threshold):
    return wal_archival_reading(evaluate_wal_archival(status(pending), threshold))


def test_a_check_sends_the_backlog_and_the_threshold_as_gauges_per_connection(statsd):
    stats, listener = statsd
    record_readings(stats, [reading(57, 42)], conn_id="warehouse", actor="my_dag")
    lines = listener.wait_for(lambda lines: len(lines) == 2, prefix="airflow.walthrottle.")
    assert sorted(lines) == [
        "airflow.walthrottle.wal.pending_segments.warehouse:57|g",
        "airflow.walthrottle.wal.threshold.warehouse:42|g",
    ]


def test_an_unknown_backlog_sends_no_pending_gauge(statsd):
    stats, listener = statsd
    record_readings(stats, [reading(None, 42)], conn_id="warehouse", actor=None)
    lines = listener.wait_for(bool, prefix="airflow.walthrottle.")
    assert lines == ["airflow.walthrottle.wal.threshold.warehouse:42|g"]


def test_throttle_events_and_batches_are_counted_per_actor(statsd):
    stats, listener = statsd
    record_throttle(stats, conn_id="warehouse", actor="backfill orders/2026", reason="stop")
    record_batch(stats, conn_id="warehouse", migration="backfill_orders", rows=1234, seconds=2.5)
    lines = listener.wait_for(lambda lines: len(lines) == 4, prefix="airflow.walthrottle.")
    assert lines[0] == "airflow.walthrottle.throttle_events.backfill_orders_2026:1|c"
    assert lines[1:3] == [
        "airflow.walthrottle.batches.backfill_orders:1|c",
        "airflow.walthrottle.rows.backfill_orders:1234|c",
    ]
    assert re.fullmatch(r"airflow\.walthrottle\.batch_duration\.backfill_orders:2500(\.0+)?\|ms", lines[3])


def test_metric_names_keep_only_what_statsd_allows():
    assert metric_name("walthrottle.rows", "a.b-c_d") == "walthrottle.rows.a.b-c_d"
    assert metric_name("walthrottle.rows", "schéma:table/1") == "walthrottle.rows.sch_ma_table_1"


def test_the_operator_sends_its_batch_and_backlog_metrics(task_statsd, monkeypatch, migration_db):
    _, listener = task_statsd
    monkeypatch.setenv("AIRFLOW_CONN_METRICS_DB", migration_db.uri())
    monkeypatch.setenv("AIRFLOW_VAR_BATCHED_MIGRATIONS_HEALTH_STATUS_WAL", "true")
    make_table(migration_db, "metrics_items", 3000)
    with DAG(f"metrics_{uuid.uuid4().hex[:8]}", schedule=None, start_date=START) as dag:
        BatchedMigrationOperator(
            task_id="batch",
            postgres_conn_id="metrics_db",
            migration_name="metrics_items",
            table="metrics_items",
            column="id",
            batch_sql=INCREMENT.format(table="metrics_items", scope=SCOPE),
            scope=SCOPE,
            batch_size=500,
            sub_batch_size=100,
            pause_ms=0,
        )
    assert task_states(run_dag(dag))["batch"] == "success"
    lines = listener.wait_for(
        lambda lines: any(".batch_duration." in line for line in lines), prefix="airflow.walthrottle."
    )
    assert "airflow.walthrottle.batches.metrics_items:1|c" in lines
    assert "airflow.walthrottle.rows.metrics_items:500|c" in lines
    # a check before the batch (and between sub-batches when due): one pair of gauges each
    pending = [
        line for line in lines if line.startswith("airflow.walthrottle.wal.pending_segments.metrics_db:")
    ]
    thresholds = [line for line in lines if line.startswith("airflow.walthrottle.wal.threshold.metrics_db:")]
    assert len(pending) == len(thresholds) >= 1
    assert set(thresholds) == {"airflow.walthrottle.wal.threshold.metrics_db:42|g"}
    assert not any("throttle_events" in line for line in lines)


def test_the_gate_counts_a_check_that_stops_tagged_with_its_indicator(task_statsd, monkeypatch):
    """The gate decides and the metrics record; the readings come from a function standing in for the
    database, as in production the hook's ``read_indicators`` gives them."""
    from airflow_provider_walthrottle.gate import HealthGate
    from airflow_provider_walthrottle.indicators.wal_archival import WalArchivalIndicator
    from airflow_provider_walthrottle.wal.health import OnUnavailable

    _, listener = task_statsd
    monkeypatch.setenv("AIRFLOW_VAR_BATCHED_MIGRATIONS_HEALTH_STATUS_WAL", "true")
    gate = HealthGate("warehouse", (WalArchivalIndicator(),), OnUnavailable.WAIT, actor="m")
    assert gate.check(lambda indicators, context: [reading(43, 42)]).proceed is False
    assert gate.check(lambda indicators, context: [reading(42, 42)]).proceed is True
    lines = listener.wait_for(lambda lines: len(lines) == 5, prefix="airflow.walthrottle.")
    events = [line for line in lines if "throttle_events" in line]
    assert events == ["airflow.walthrottle.throttle_events.m:1|c"]
    assert [line for line in lines if "pending_segments" in line] == [
        "airflow.walthrottle.wal.pending_segments.warehouse:43|g",
        "airflow.walthrottle.wal.pending_segments.warehouse:42|g",
    ]


def test_the_triggers_polls_keep_the_gauges_and_count_no_new_throttle_event(monkeypatch):
    """A wait is one throttle event, counted by the task that deferred, however often it is polled."""
    import asyncio

    from airflow_provider_walthrottle.gate import HealthGate
    from airflow_provider_walthrottle.indicators.wal_archival import WalArchivalIndicator
    from airflow_provider_walthrottle.wal.health import OnUnavailable

    async def still_stopped(indicators, context):
        return [reading(43, 42)]

    with sending_to_statsd("triggerer", monkeypatch) as (stats, listener):
        monkeypatch.setenv("AIRFLOW_VAR_BATCHED_MIGRATIONS_HEALTH_STATUS_WAL", "true")
        gate = HealthGate("warehouse", (WalArchivalIndicator(),), OnUnavailable.WAIT, actor="m")
        assert asyncio.run(gate.acheck(still_stopped)).proceed is False
        stats.incr("walthrottle.end_of_test")  # sent after whatever the check sent
        lines = listener.wait_for(
            lambda lines: bool(lines) and "end_of_test" in lines[-1], prefix="airflow.walthrottle."
        )
    assert sorted(lines[:-1]) == [
        "airflow.walthrottle.wal.pending_segments.warehouse:43|g",
        "airflow.walthrottle.wal.threshold.warehouse:42|g",
    ]

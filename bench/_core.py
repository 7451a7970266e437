"""The batching core driven as ``BatchedMigrationOperator`` drives it, for the benchmarks.

The operator is the Airflow face of :func:`~airflow_provider_walthrottle.migrations.batch.run_batch`:
per task it builds the run settings from its arguments, checks the health indicators behind their
feature flags (the flag Variables read at each check, the metrics sent), runs one batch, and on a
done batch sends the batch's metrics and logs its line; the check is its
:class:`~airflow_provider_walthrottle.gate.HealthGate`, with the default indicators. The functions
here do the same through the public core, so that a benchmark measures what a task does, without a
scheduler.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING

from airflow_provider_walthrottle.gate import HealthGate, default_indicators
from airflow_provider_walthrottle.indicators.base import read_indicators
from airflow_provider_walthrottle.indicators.wal_archival import WalArchivalIndicator
from airflow_provider_walthrottle.metrics import record_batch, task_stats
from airflow_provider_walthrottle.migrations.batch import BatchDone, NextStep, run_batch
from airflow_provider_walthrottle.migrations.optimizer import BatchSizePolicy
from airflow_provider_walthrottle.migrations.runner import HealthVerdict, RunSettings
from airflow_provider_walthrottle.wal.health import OnUnavailable

if TYPE_CHECKING:
    from airflow_provider_walthrottle.migrations.store import MigrationStore

#: The logger of a task, which the operator's log lines go to.
TASK_LOG = logging.getLogger("airflow.task")


def operator_settings(*, batch_size: int, sub_batch_size: int, threshold: int) -> RunSettings:
    """Return the run settings of an operator with these arguments and the defaults otherwise (no pause).

    :param batch_size: the operator's ``batch_size``.
    :param sub_batch_size: its ``sub_batch_size``.
    :param threshold: its ``max_pending_segments``.
    """
    policy = BatchSizePolicy(min_batch_size=min(100, batch_size), max_batch_size=max(100_000, batch_size))
    return RunSettings(
        sub_batch_size=sub_batch_size, pause_ms=0, max_pending_segments=threshold, policy=policy
    )


def operator_gate(store: MigrationStore, settings: RunSettings, *, conn_id: str) -> HealthGate:
    """Return an operator's health check with the defaults: each indicator behind its flag, wait if unknown.

    :param store: the migration's store; the migration's name is the flag's actor.
    :param settings: from :func:`operator_settings`.
    :param conn_id: the Airflow connection the metrics and the trigger name.
    """
    wal = WalArchivalIndicator(max_pending_segments=settings.max_pending_segments)
    return HealthGate(
        postgres_conn_id=conn_id,
        indicators=default_indicators(wal),
        on_unavailable=OnUnavailable.WAIT,
        actor=store.definition.name,
        table=store.definition.table,
    )


def operator_task(store: MigrationStore, settings: RunSettings, *, conn_id: str) -> NextStep:
    """Run one batch as one task of the operator does (after ``prepare()``); return the core's answer.

    :param store: the migration's store.
    :param settings: from :func:`operator_settings`.
    :param conn_id: the Airflow connection the metrics name.
    """
    gate = operator_gate(store, settings, conn_id=conn_id)
    read = functools.partial(read_indicators, store.conn)

    def check() -> HealthVerdict:
        return HealthVerdict.from_gate(gate.check(read))

    step = run_batch(store, settings, check, log=TASK_LOG.debug)
    if isinstance(step, BatchDone):
        result, name = step.result, store.definition.name
        record_batch(
            task_stats(), conn_id=conn_id, migration=name, rows=result.rows_affected, seconds=result.seconds
        )
        TASK_LOG.info("Migration %s: %s", name, step.describe())
    return step

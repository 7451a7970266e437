"""The provider's metrics, sent through Airflow's metrics facility (StatsD, Datadog or OpenTelemetry).

Nothing is sent unless ``[metrics] statsd_on`` (or ``otel_on``) is set: Airflow's stats module
drops every call otherwise. As with Airflow's own ``pool.open_slots.<pool>``, each name ends with
what it is about, the connection or the migration (characters StatsD does not allow become ``_``),
so plain StatsD keeps them apart; the same values also go as tags (``conn_id``, ``actor``,
``reason``) for backends that take tags.

===============================================  =======  ==========================================
name                                             type     meaning
===============================================  =======  ==========================================
``walthrottle.wal.pending_segments.<conn_id>``   gauge    segments waiting for ``archive_command``
``walthrottle.wal.threshold.<conn_id>``          gauge    the threshold the backlog was compared with
``walthrottle.throttle_events.<actor>``          counter  a check that stopped a sensor or migration
``walthrottle.batches.<migration>``              counter  batches completed
``walthrottle.rows.<migration>``                 counter  rows the migration's ``batch_sql`` affected
``walthrottle.batch_duration.<migration>``       timer    a batch's time in sub-batches
===============================================  =======  ==========================================

``<actor>`` is who asked the flag: the migration's name for the operator and for the sensor of a
migration DAG, the DAG id for a sensor on its own.

Tasks send through the Task SDK's stats module, which the task runner configures; triggers run in
the triggerer, which configures Airflow's core one. :func:`task_stats` and :func:`triggerer_stats`
return the one that is live where the code runs.
"""

from __future__ import annotations

import datetime
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_provider_walthrottle.wal.health import HealthSignal, OnUnavailable

PREFIX = "walthrottle"
PENDING_SEGMENTS = f"{PREFIX}.wal.pending_segments"
THRESHOLD = f"{PREFIX}.wal.threshold"
THROTTLE_EVENTS = f"{PREFIX}.throttle_events"
BATCHES = f"{PREFIX}.batches"
ROWS = f"{PREFIX}.rows"
BATCH_DURATION = f"{PREFIX}.batch_duration"

_INVALID_CHARACTERS = re.compile(r"[^a-zA-Z0-9_.-]")


def task_stats() -> Any:
    """Return the stats module a task process sends through (the Task SDK's)."""
    try:
        from airflow.sdk.observability import stats
    except ImportError:  # Airflow 3.1 had one stats module for every process
        return _legacy_stats()
    return stats


def triggerer_stats() -> Any:
    """Return the stats module the triggerer configures (Airflow's core one)."""
    try:
        from airflow.observability import stats
    except ImportError:  # Airflow 3.1 had one stats module for every process
        return _legacy_stats()
    return stats


def _legacy_stats() -> Any:
    from airflow.stats import Stats  # type: ignore[attr-defined,unused-ignore]

    return Stats


def record_health(stats: Any, health: HealthSignal, *, conn_id: str, actor: str | None) -> None:
    """Send the backlog a check saw, and a throttle event when it stopped the caller.

    :param stats: the stats module, from :func:`task_stats` or :func:`triggerer_stats`.
    :param health: the evaluated check.
    :param conn_id: the Airflow connection it was made on.
    :param actor: the migration or DAG that asked.
    """
    tags = _tags(conn_id=conn_id, actor=actor)
    if health.status.pending_segments is not None:
        stats.gauge(metric_name(PENDING_SEGMENTS, conn_id), health.status.pending_segments, tags=tags)
    stats.gauge(metric_name(THRESHOLD, conn_id), health.max_pending_segments, tags=tags)


def record_decision(
    stats: Any, health: HealthSignal, on_unavailable: OnUnavailable, *, conn_id: str, actor: str | None
) -> bool:
    """Decide whether the caller may go on, sending the backlog and, if it stops, a throttle event.

    :param stats: the stats module, from :func:`task_stats`.
    :param health: the evaluated check.
    :param on_unavailable: what "not available" and "unknown" mean.
    :param conn_id: the Airflow connection the check was made on.
    :param actor: the migration or DAG that asked.
    :raises HealthUnavailableError: as :func:`~airflow_provider_walthrottle.wal.health.may_proceed`.
    """
    from airflow_provider_walthrottle.wal.health import may_proceed

    record_health(stats, health, conn_id=conn_id, actor=actor)
    proceed = may_proceed(health, on_unavailable)
    if not proceed:
        record_throttle(stats, conn_id=conn_id, actor=actor, reason=health.signal.value)
    return proceed


def record_throttle(stats: Any, *, conn_id: str, actor: str | None, reason: str) -> None:
    """Count a check that stopped a sensor or a migration.

    :param stats: the stats module, from :func:`task_stats` or :func:`triggerer_stats`.
    :param conn_id: the Airflow connection it was made on.
    :param actor: the migration or DAG that was stopped.
    :param reason: ``stop`` (backlog above the threshold), ``unknown``, ``not_available`` or
        ``headroom`` (too little room below the threshold for the smallest batch).
    """
    tags = {**_tags(conn_id=conn_id, actor=actor), "reason": reason}
    stats.incr(metric_name(THROTTLE_EVENTS, actor or conn_id), tags=tags)


def record_batch(stats: Any, *, conn_id: str, migration: str, rows: int, seconds: float) -> None:
    """Count a completed batch, its rows and its duration.

    :param stats: the stats module, from :func:`task_stats`.
    :param conn_id: the Airflow connection the migration runs on.
    :param migration: the migration's name.
    :param rows: rows ``batch_sql`` affected in this try.
    :param seconds: seconds spent in sub-batches in this try.
    """
    tags = _tags(conn_id=conn_id, actor=migration)
    stats.incr(metric_name(BATCHES, migration), tags=tags)
    stats.incr(metric_name(ROWS, migration), rows, tags=tags)
    stats.timing(metric_name(BATCH_DURATION, migration), datetime.timedelta(seconds=seconds), tags=tags)


def metric_name(base: str, subject: str) -> str:
    """Return ``<base>.<subject>`` with the characters StatsD does not allow replaced by ``_``.

    :param base: one of this module's names, e.g. ``PENDING_SEGMENTS``.
    :param subject: the connection id, migration name or DAG id.
    """
    return f"{base}.{_INVALID_CHARACTERS.sub('_', subject)}"


def _tags(*, conn_id: str, actor: str | None) -> dict[str, str]:
    tags = {"conn_id": conn_id}
    if actor:
        tags["actor"] = actor
    return tags

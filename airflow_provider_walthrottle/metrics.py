"""The provider's metrics, sent through Airflow's metrics facility (StatsD, Datadog or OpenTelemetry).

Nothing is sent unless ``[metrics] statsd_on`` (or ``otel_on``) is set: Airflow's stats module
drops every call otherwise. As with Airflow's own ``pool.open_slots.<pool>``, each name ends with
what it is about, the connection or the migration (characters StatsD does not allow become ``_``),
so plain StatsD keeps them apart; the same values also go as tags (``conn_id``, ``actor``,
``indicator``, ``reason``) for backends that take tags. This module only records: what stops a
migration is decided by the gate (:mod:`airflow_provider_walthrottle.gate`).

===============================================  =======  ==========================================
name                                             type     meaning
===============================================  =======  ==========================================
``walthrottle.wal.pending_segments.<conn_id>``   gauge    segments waiting for ``archive_command``
``walthrottle.wal.threshold.<conn_id>``          gauge    the threshold the backlog was compared with
``walthrottle.<indicator>.<value>.<conn_id>``    gauge    another indicator's measurement, e.g.
                                                          ``replication_lag.max_replay_lag_seconds``
``walthrottle.throttle_events.<actor>``          counter  a check that stopped a sensor or migration,
                                                          tagged with the ``indicator`` that stopped it
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
    from collections.abc import Sequence

    from airflow_provider_walthrottle.indicators.base import Reading

PREFIX = "walthrottle"
PENDING_SEGMENTS = f"{PREFIX}.wal.pending_segments"
THRESHOLD = f"{PREFIX}.wal.threshold"
THROTTLE_EVENTS = f"{PREFIX}.throttle_events"
BATCHES = f"{PREFIX}.batches"
ROWS = f"{PREFIX}.rows"
BATCH_DURATION = f"{PREFIX}.batch_duration"

#: Gauges of the WAL archival backlog keep the names they had before the other indicators.
_GAUGE_NAMES = {
    ("wal_archival", "pending_segments"): PENDING_SEGMENTS,
    ("wal_archival", "max_pending_segments"): THRESHOLD,
}

_INVALID_CHARACTERS = re.compile(r"[^a-zA-Z0-9_.-]")


def task_stats() -> Any:
    """Return the stats module a task process sends through (the Task SDK's)."""
    try:
        from airflow.sdk.observability import stats
    except ImportError:  # Airflow 3.1 had one stats module for every process
        return _legacy_stats()
    return _functions_of(stats)


def triggerer_stats() -> Any:
    """Return the stats module the triggerer configures (Airflow's core one)."""
    try:
        from airflow.observability import stats
    except ImportError:  # Airflow 3.1 had one stats module for every process
        return _legacy_stats()
    return _functions_of(stats)


def _functions_of(stats: Any) -> Any:
    """Return what has ``gauge``, ``incr`` and ``timing``: the module (3.3), or its ``Stats`` class (3.2)."""
    return stats if hasattr(stats, "gauge") else stats.Stats


def _legacy_stats() -> Any:
    from airflow.stats import Stats  # type: ignore[attr-defined,unused-ignore]

    return Stats


def record_readings(stats: Any, readings: Sequence[Reading], *, conn_id: str, actor: str | None) -> None:
    """Send each numeric measurement of a check as a gauge per connection.

    The WAL archival backlog keeps its names (``walthrottle.wal.pending_segments``,
    ``walthrottle.wal.threshold``); any other value goes as
    ``walthrottle.<indicator>.<value>.<conn_id>``, e.g.
    ``walthrottle.replication_lag.max_replay_lag_seconds.warehouse``. A value that could not be
    measured is not sent.

    :param stats: the stats module, from :func:`task_stats` or :func:`triggerer_stats`.
    :param readings: the readings of one check.
    :param conn_id: the Airflow connection they were read on.
    :param actor: the migration or DAG that asked.
    """
    tags = _tags(conn_id=conn_id, actor=actor)
    for reading in readings:
        for value_name, value in reading.values.items():
            if value is None:
                continue
            base = _GAUGE_NAMES.get(
                (reading.indicator, value_name), f"{PREFIX}.{reading.indicator}.{value_name}"
            )
            stats.gauge(metric_name(base, conn_id), value, tags={**tags, "indicator": reading.indicator})


def record_throttle(
    stats: Any, *, conn_id: str, actor: str | None, reason: str, indicator: str = "wal_archival"
) -> None:
    """Count a check that stopped a sensor or a migration, tagged with the indicator that stopped it.

    :param stats: the stats module, from :func:`task_stats` or :func:`triggerer_stats`.
    :param conn_id: the Airflow connection it was made on.
    :param actor: the migration or DAG that was stopped.
    :param reason: the signal, ``stop``, ``unknown`` or ``not_available``, or ``headroom`` (too
        little room under a WAL bound for the smallest batch).
    :param indicator: the indicator that stopped it, e.g. ``replication_lag``.
    """
    tags = {**_tags(conn_id=conn_id, actor=actor), "reason": reason, "indicator": indicator}
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

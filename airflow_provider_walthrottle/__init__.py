"""Throttle batched PostgreSQL data migrations on the WAL archival backlog, in Apache Airflow.

The public names are imported lazily, so that Airflow reading the provider's metadata (and
``walthrottle --version``) does not load the hooks, sensors and their dependencies.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from airflow_provider_walthrottle.flags import FeatureFlag
    from airflow_provider_walthrottle.hooks.batched_migration import BatchedMigrationHook
    from airflow_provider_walthrottle.hooks.wal_archival import WalArchivalHook
    from airflow_provider_walthrottle.migration_dag import batched_migration_dag, wal_throttled_migration
    from airflow_provider_walthrottle.operators.batched_migration import BatchedMigrationOperator
    from airflow_provider_walthrottle.sensors.wal_archival import WalArchivalSensor
    from airflow_provider_walthrottle.triggers.wal_archival import WalArchivalTrigger
    from airflow_provider_walthrottle.wal.archiver_status import ArchiverStatus, BacklogMethod
    from airflow_provider_walthrottle.wal.health import HealthSignal, OnUnavailable, Signal

_EXPORTS = {
    "ArchiverStatus": "airflow_provider_walthrottle.wal.archiver_status",
    "BacklogMethod": "airflow_provider_walthrottle.wal.archiver_status",
    "BatchedMigrationHook": "airflow_provider_walthrottle.hooks.batched_migration",
    "BatchedMigrationOperator": "airflow_provider_walthrottle.operators.batched_migration",
    "FeatureFlag": "airflow_provider_walthrottle.flags",
    "HealthSignal": "airflow_provider_walthrottle.wal.health",
    "OnUnavailable": "airflow_provider_walthrottle.wal.health",
    "Signal": "airflow_provider_walthrottle.wal.health",
    "WalArchivalHook": "airflow_provider_walthrottle.hooks.wal_archival",
    "WalArchivalSensor": "airflow_provider_walthrottle.sensors.wal_archival",
    "WalArchivalTrigger": "airflow_provider_walthrottle.triggers.wal_archival",
    "batched_migration_dag": "airflow_provider_walthrottle.migration_dag",
    "wal_throttled_migration": "airflow_provider_walthrottle.migration_dag",
}

__all__ = [
    "ArchiverStatus",
    "BacklogMethod",
    "BatchedMigrationHook",
    "BatchedMigrationOperator",
    "FeatureFlag",
    "HealthSignal",
    "OnUnavailable",
    "Signal",
    "WalArchivalHook",
    "WalArchivalSensor",
    "WalArchivalTrigger",
    "__version__",
    "batched_migration_dag",
    "wal_throttled_migration",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)

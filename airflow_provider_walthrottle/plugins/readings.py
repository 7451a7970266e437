"""What the migrations page reads of each health indicator on a connection, and how it judges it.

On each connection the page reads every health indicator the tasks have by default
(:func:`~airflow_provider_walthrottle.gate.default_indicators`), whatever its flag, and judges the
readings with the gate's own rule (:func:`~airflow_provider_walthrottle.gate.decide`): an operator
deciding to roll a flag out sees what it would do. Autovacuum watches a migrated table, so it is
read once per table of the connection's unfinished migrations. The page records no metric: only the
tasks' checks do.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from airflow_provider_walthrottle.gate import decide, default_indicators
from airflow_provider_walthrottle.indicators.base import IndicatorContext, Reading
from airflow_provider_walthrottle.indicators.wal_archival import WalArchivalIndicator
from airflow_provider_walthrottle.migrations.state import MigrationStatus
from airflow_provider_walthrottle.wal.health import OnUnavailable, Signal

if TYPE_CHECKING:
    from collections.abc import Sequence

    import psycopg

    from airflow_provider_walthrottle.hooks.wal_archival import WalArchivalHook
    from airflow_provider_walthrottle.indicators.base import HealthIndicator
    from airflow_provider_walthrottle.migrations.catalog import MigrationSummary
    from airflow_provider_walthrottle.plugins.flag_variables import FlagView

#: What ``unknown`` and ``not_available`` readings do on the page: what they do to a task by default
#: (wait, as on ``stop``).
PAGE_ON_UNAVAILABLE = OnUnavailable.WAIT

#: Each measurement a reading has a stop threshold for, as the readings name its values:
#: ``(indicator, measurement) -> threshold``. The page shows the measurement against its threshold
#: and charts it per job as a share of it; the metrics send both as gauges
#: (:func:`~airflow_provider_walthrottle.metrics.record_readings`).
MEASURED_AGAINST: dict[tuple[str, str], str] = {
    ("wal_archival", "pending_segments"): "max_pending_segments",
    ("replication_lag", "max_replay_lag_bytes"): "max_lag_bytes",
    ("replication_lag", "max_replay_lag_seconds"): "max_lag_seconds",
    ("replication_slots", "max_slot_retained_bytes"): "max_retained_bytes",
}


@dataclasses.dataclass(frozen=True)
class IndicatorRow:
    """One indicator read on one connection: a row of the connection's health table.

    :param indicator: the indicator's name, e.g. ``replication_lag``.
    :param flag_variable: the Variable of its flag.
    :param reading: what it found; ``None`` when there was nothing to read (autovacuum, with no
        unfinished migration on the connection).
    :param stops: whether the reading stops a migration by the gate's rule
        (:func:`~airflow_provider_walthrottle.gate.decide`, with :data:`PAGE_ON_UNAVAILABLE`), whatever
        its flag says.
    :param table: the migrated table it watched (autovacuum), or ``None``.
    :param migrations: the unfinished migrations it holds when it stops: those on ``table`` for
        autovacuum, every unfinished one on the connection for the others.
    :param public_reason: for a reading that is an error naming the connection's host, database or
        login: the same without them (see :meth:`.ConnectionOverview.without_connection_details`).
    """

    indicator: str
    flag_variable: str
    reading: Reading | None
    stops: bool = False
    table: str | None = None
    migrations: tuple[str, ...] = ()
    public_reason: str | None = None

    @property
    def label(self) -> str:
        """The indicator in words, with its table: ``replication lag``, ``autovacuum on public.orders``."""
        label = self.reading.label if self.reading is not None else self.indicator.replace("_", " ")
        return f"{label} on {self.table}" if self.table is not None else label

    @property
    def key(self) -> str:
        """What tells the row from the others of its connection: the indicator, and its table."""
        return self.indicator if self.table is None else f"{self.indicator}-{self.table}"

    def measurements(self) -> list[tuple[str, float | int | None, float | int | None]]:
        """Return the reading's numbers as ``(name, value, its threshold or None)``, thresholds apart.

        A value that is another's threshold (:data:`MEASURED_AGAINST`) is shown with it, not alone;
        a value that was not measured is left out unless it has a threshold.
        """
        if self.reading is None:
            return []
        values = self.reading.values
        thresholds = {t for (indicator, _), t in MEASURED_AGAINST.items() if indicator == self.indicator}
        numbers = []
        for name, value in values.items():
            limit = values.get(MEASURED_AGAINST.get((self.indicator, name), ""))
            if name not in thresholds and (value is not None or limit is not None):
                numbers.append((name, value, limit))
        return numbers

    def without_connection_details(self) -> IndicatorRow:
        """Return the row with its public reason, for people who may not read the Airflow connection."""
        if self.public_reason is None or self.reading is None:
            return self
        return dataclasses.replace(self, reading=dataclasses.replace(self.reading, reason=self.public_reason))

    def to_dict(self, flag: FlagView | None = None) -> dict[str, Any]:
        """Return the row as JSON-ready values: the reading, and what the gate and the flag make of it.

        :param flag: its flag as the page read it; adds ``flag_enabled`` (``null`` for a partial
            rollout) and ``enforced_for`` (the row's migrations the flag is on for).
        """
        reading = (
            self.reading.to_dict()
            if self.reading is not None
            else {"indicator": self.indicator, "signal": None, "reason": None, "values": {}, "details": {}}
        )
        row = {
            **reading,
            "flag_variable": self.flag_variable,
            "stops": self.stops,
            "table": self.table,
            "migrations": list(self.migrations),
        }
        if flag is not None:
            row["flag_enabled"] = flag.enabled
            row["enforced_for"] = flag.enforced_for(self.migrations)
        return row


def page_indicators(threshold: int) -> tuple[HealthIndicator, ...]:
    """Return the indicators the page reads: the tasks' defaults, with the page's WAL threshold.

    Each at its default thresholds and behind its default flag Variable
    (:func:`~airflow_provider_walthrottle.gate.default_indicators`).

    :param threshold: ``[walthrottle] max_pending_segments``.
    """
    return default_indicators(WalArchivalIndicator(max_pending_segments=threshold))


def read_indicator_rows(
    hook: WalArchivalHook,
    conn: psycopg.Connection[Any],
    indicators: Sequence[HealthIndicator],
    migrations: Sequence[MigrationSummary],
) -> tuple[IndicatorRow, ...]:
    """Read every indicator on an open connection and judge the readings as the gate does.

    An indicator that needs a table (autovacuum) is read once per table of the unfinished
    migrations, in the order of their names. An indicator whose query fails reads ``unknown``, with
    the error, and does not hide the others.

    :param hook: the hook whose connection ``conn`` is.
    :param conn: an open read-only connection in autocommit mode.
    :param indicators: what to read, e.g. :func:`page_indicators`.
    :param migrations: the connection's migrations, as the page shows them.
    """
    unfinished = [m for m in migrations if m.status != MigrationStatus.FINISHED]
    tables: dict[str, list[str]] = {}
    for migration in unfinished:
        tables.setdefault(migration.table, []).append(migration.name)
    rows: list[IndicatorRow] = []
    for indicator in indicators:
        if not indicator.needs_table:
            every = tuple(m.name for m in unfinished)
            rows.append(_read_row(hook, conn, indicator, IndicatorContext(), None, every))
            continue
        if not tables:  # nothing to watch: shown, with its flag, but not read
            rows.append(IndicatorRow(indicator.name, indicator.flag_variable, None))
        for table, names in sorted(tables.items()):
            context = IndicatorContext(table=table)
            rows.append(_read_row(hook, conn, indicator, context, table, tuple(names)))
    stopping = decide([row.reading for row in rows if row.reading is not None], PAGE_ON_UNAVAILABLE)
    return tuple(
        dataclasses.replace(row, stops=any(row.reading is reading for reading in stopping)) for row in rows
    )


def _read_row(
    hook: WalArchivalHook,
    conn: psycopg.Connection[Any],
    indicator: HealthIndicator,
    context: IndicatorContext,
    table: str | None,
    migrations: tuple[str, ...],
) -> IndicatorRow:
    from airflow_provider_walthrottle.exceptions import WalThrottleError

    public = None
    try:
        (reading,) = hook.read_indicators([indicator], context, conn=conn)
    except WalThrottleError as error:
        reading, public = Reading(indicator.name, Signal.UNKNOWN, str(error)), error.public_message
    return IndicatorRow(indicator.name, indicator.flag_variable, reading, False, table, migrations, public)

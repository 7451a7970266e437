"""A stored plan against what its migration did: the figures the migrations page sets side by side.

:class:`PlannedFigures` reads the figures the page shows from a stored plan's JSON, any of which a
plan saved by another release may lack (it then reads ``None``). :func:`compare` sets them against
what the migration of the same name measured so far (:class:`PlanAgainstActual`): its keys, its WAL
per key, both rates, its WAL written and where that leads, and its wall-clock time. Plain
arithmetic, with no database connection; the plans are read in
:mod:`~airflow_provider_walthrottle.migrations.plan_store`.

.. seealso:: :doc:`/howto/plan`, :doc:`/howto/ui`
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_provider_walthrottle.migrations.state import MigrationStatus

if TYPE_CHECKING:
    import datetime

    from airflow_provider_walthrottle.migrations.catalog import MigrationSummary
    from airflow_provider_walthrottle.migrations.plan_store import PlanOfMigration, StoredPlan

#: The bounds of a plan, in the order it reports them (as :data:`~.plan.BOUNDS`).
BOUND_NAMES = ("archiver", "database", "schedule")


def _number(data: dict[str, Any], name: str) -> float | None:
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _text(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class Bound:
    """One of a plan's three durations: what would bind the migration, alone.

    :param name: ``archiver``, ``database`` or ``schedule``.
    :param seconds: the duration; ``None`` when it could not be known.
    :param binding: whether it is the one that wins.
    """

    name: str
    seconds: float | None
    binding: bool


@dataclass(frozen=True)
class PlannedFigures:
    """The figures of a stored plan, as the page shows them; each ``None`` when the plan lacks it.

    :param planned_at: when the plan was saved.
    :param data: the plan's JSON, whole.
    """

    planned_at: datetime.datetime
    data: dict[str, Any]

    @classmethod
    def of(cls, stored: StoredPlan) -> PlannedFigures:
        """Return the figures of ``stored``."""
        return cls(stored.planned_at, stored.plan if isinstance(stored.plan, dict) else {})

    def number(self, name: str) -> float | None:
        """Return the plan's number ``name`` (``rows``, ``total_wal_bytes``…); ``None`` if it lacks it."""
        return _number(self.data, name)

    def text(self, name: str) -> str | None:
        """Return the plan's text ``name`` (``table``, ``advice``…); ``None`` if it lacks it."""
        return _text(self.data, name)

    @property
    def scope(self) -> str | None:
        """The scope as the DAG author wrote it for SQL run without parameters (``%%`` read as ``%``)."""
        scope = self.text("scope")
        return scope.replace("%%", "%") if scope else None

    @property
    def bounds(self) -> tuple[Bound, ...]:
        """The three durations, the one that wins marked."""
        bounds = self.data.get("bounds")
        bounds = bounds if isinstance(bounds, dict) else {}
        binding = self.text("binding")
        return tuple(Bound(name, _number(bounds, name), name == binding) for name in BOUND_NAMES)

    @property
    def archiver_note(self) -> str | None:
        """What the plan found of the archiver's pace, in one line."""
        archiver = self.data.get("archiver")
        return _text(archiver, "note") if isinstance(archiver, dict) else None

    @property
    def warnings(self) -> tuple[str, ...]:
        """The index, trigger and foreign key warnings, one line each."""
        warnings = self.data.get("warnings")
        return tuple(str(line) for line in warnings) if isinstance(warnings, list) else ()

    @property
    def effective_rows_per_second(self) -> float | None:
        """The rows in scope over the expected wall-clock duration: the planned effective rate."""
        rows, seconds = self.number("rows"), self.number("expected_seconds")
        return rows / seconds if rows is not None and seconds else None


@dataclass(frozen=True)
class Comparison:
    """A planned figure and the one measured.

    :param planned: what the plan projected; ``None`` when it could not.
    :param actual: what the migration measured (or where it leads); ``None`` when not known yet.
    """

    planned: float | None
    actual: float | None

    @property
    def deviation(self) -> float | None:
        """How far the actual is from the plan, as a share of the plan: ``0.12`` is 12 % above it."""
        if self.planned is None or self.actual is None or self.planned <= 0:
            return None
        return self.actual / self.planned - 1


@dataclass(frozen=True)
class PlanAgainstActual:
    """A running or finished migration against its plan.

    :param plan: the plan's figures.
    :param keys: the rows in scope the plan counted (or estimated) against the keys the migration
        counted when it started.
    :param keys_done: the keys the migration walked so far.
    :param wal_per_key: WAL per key, projected against measured so far.
    :param wal_per_key_source: where the measured WAL per key comes from.
    :param statement_rate: keys per second of the statements alone (``batch_sql``), projected
        against measured.
    :param effective_rate: keys per wall-clock second, projected (the rows over the expected
        duration) against measured since the migration started.
    :param wal_written: the WAL its jobs wrote so far.
    :param total_wal: the projected WAL against the WAL written, extrapolated to every key while it
        runs (the WAL written once it finished).
    :param elapsed_seconds: wall-clock seconds since it started (until it finished, if it did).
    :param eta_seconds: the migration's ETA, ``None`` when it cannot be told (see
        :attr:`~.catalog.MigrationSummary.eta_seconds`).
    :param duration: the expected duration against the elapsed one plus the ETA (the elapsed one once
        it finished); ``None`` while there is no ETA.
    :param finished: whether the migration finished.
    """

    plan: PlannedFigures
    keys: Comparison
    keys_done: int
    wal_per_key: Comparison
    wal_per_key_source: str
    statement_rate: Comparison
    effective_rate: Comparison
    wal_written: int
    total_wal: Comparison
    elapsed_seconds: float
    eta_seconds: float | None
    duration: Comparison
    finished: bool

    def to_dict(self) -> dict[str, Any]:
        """Return each comparison as ``{"planned": …, "actual": …, "deviation": …}``, and the rest."""

        def pair(comparison: Comparison) -> dict[str, float | None]:
            return {
                "planned": comparison.planned,
                "actual": comparison.actual,
                "deviation": comparison.deviation,
            }

        return {
            "keys": pair(self.keys),
            "keys_done": self.keys_done,
            "wal_bytes_per_key": {**pair(self.wal_per_key), "source": self.wal_per_key_source},
            "statement_keys_per_second": pair(self.statement_rate),
            "effective_keys_per_second": pair(self.effective_rate),
            "wal_bytes_written": self.wal_written,
            "total_wal_bytes": pair(self.total_wal),
            "elapsed_seconds": self.elapsed_seconds,
            "eta_seconds": self.eta_seconds,
            "duration_seconds": pair(self.duration),
            "finished": self.finished,
        }


def compare(reading: PlanOfMigration, migration: MigrationSummary) -> PlanAgainstActual:
    """Set a migration's plan against what the migration measured so far.

    :param reading: the migration's stored plan, with the WAL its jobs wrote (from
        :func:`~airflow_provider_walthrottle.migrations.plan_store.read_plans`).
    :param migration: the migration, as the page reads it.
    """
    plan = PlannedFigures.of(reading.stored)
    finished = migration.status == MigrationStatus.FINISHED
    breakdown = migration.breakdown
    if breakdown is not None:
        elapsed = breakdown.wall_clock
    else:
        end = migration.finished_at if finished and migration.finished_at else migration.read_at
        elapsed = max((end - migration.created_at).total_seconds(), 0.0)
    if reading.keys_done > 0:
        source = f"the WAL its jobs wrote over the {reading.keys_done:,} keys they walked"
    elif reading.measured_wal_bytes_per_row is not None:
        source = "the migration's own estimate"
    else:
        source = "not measured yet"
    total_keys = migration.total_keys
    if finished:
        projected_wal: float | None = float(reading.wal_bytes)
    elif reading.keys_done > 0 and total_keys > 0:
        projected_wal = reading.wal_bytes / reading.keys_done * total_keys
    else:
        projected_wal = None
    eta = migration.eta_seconds
    actual_duration = elapsed if finished else (elapsed + eta if eta is not None else None)
    return PlanAgainstActual(
        plan=plan,
        keys=Comparison(plan.number("rows"), float(total_keys)),
        keys_done=migration.keys_done,
        wal_per_key=Comparison(plan.number("wal_bytes_per_row"), reading.measured_wal_bytes_per_row),
        wal_per_key_source=source,
        statement_rate=Comparison(plan.number("rows_per_second"), migration.statement_keys_per_second),
        effective_rate=Comparison(plan.effective_rows_per_second, migration.effective_keys_per_second),
        wal_written=reading.wal_bytes,
        total_wal=Comparison(plan.number("total_wal_bytes"), projected_wal),
        elapsed_seconds=elapsed,
        eta_seconds=eta,
        duration=Comparison(plan.number("expected_seconds"), actual_duration),
        finished=finished,
    )

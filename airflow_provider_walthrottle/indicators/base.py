"""What every health indicator is: a flag, thresholds, the queries it runs, and the reading it gives.

An indicator is a description, not a connection: it is built in a DAG file (no database access at
parse time), its thresholds may be Jinja templates that Airflow renders with the task's other
fields, and it serializes to a dict so that the trigger can rebuild it in the triggerer. Measuring
is a *conversation*, as for the WAL archival backlog
(:func:`~airflow_provider_walthrottle.wal.queries.archiver_status_conversation`): the indicator
yields each query and receives its rows, so a synchronous connection (a task) and an asynchronous
one (the trigger) drive the very same steps, through :func:`read_indicator` and
:func:`aread_indicator` (:mod:`airflow_provider_walthrottle.conversation`). The decision over
several readings is the gate's (:mod:`airflow_provider_walthrottle.gate`).
"""

from __future__ import annotations

import importlib
import math
from abc import ABC, abstractmethod
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from airflow_provider_walthrottle.conversation import aconverse, converse

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql

    from airflow_provider_walthrottle.wal.health import Signal

__all__ = [
    "Conversation",
    "HealthIndicator",
    "IndicatorContext",
    "Reading",
    "aread_indicator",
    "format_bytes",
    "fraction_of",
    "indicator_from_serialized",
    "non_negative_number",
    "read_indicator",
    "read_indicators",
]


@dataclass(frozen=True)
class IndicatorContext:
    """What the caller knows that an indicator may need.

    :param table: the migrated table as the migration names it (``schema.table`` or ``table``), or
        ``None`` outside a migration (a sensor without a table).
    :param next_batch_wal_bytes: the WAL the next batch is projected to write, or ``None`` before
        any batch measured its WAL per row.
    """

    table: str | None = None
    next_batch_wal_bytes: int | None = None


@dataclass(frozen=True)
class Reading:
    """What one indicator found, in words and numbers.

    :param indicator: the indicator's name, e.g. ``replication_lag``.
    :param signal: the verdict.
    :param reason: why, with the numbers, in one line a person can act on (for ``unknown`` and
        ``not_available``: what it cannot see, and the grant or setting that fixes it).
    :param values: the numeric measurements, by name (``max_replay_lag_seconds``...), for the metrics'
        gauges and the page's chart; ``None`` where a value could not be measured.
    :param details: JSON-ready particulars for the log and XCom (one entry per standby or slot...).
    :param wal_headroom_bytes: how many more bytes of WAL may be written before this indicator
        would stop, or ``None`` if it sets no WAL bound. The batch-size optimizer sizes a batch
        under the smallest headroom of all readings.
    :param wal_bound_bytes: the whole of that WAL bound, when nothing is retained or behind (the
        indicator's own threshold in bytes), or ``None``: waiting can never give more room than it.
    :param load: how near the measurement is to its stop threshold: 0 for none, 1 at the
        threshold; ``None`` for a signal without degrees (autovacuum). Above half, the migration
        pauses between sub-batches, more the nearer it gets (signal-paced pauses).
    """

    indicator: str
    signal: Signal
    reason: str
    values: Mapping[str, float | int | None] = field(default_factory=dict)
    details: Mapping[str, Any] = field(default_factory=dict)
    wal_headroom_bytes: int | None = None
    load: float | None = None
    wal_bound_bytes: int | None = None

    @property
    def label(self) -> str:
        """The indicator's name in words, e.g. ``replication lag``."""
        return self.indicator.replace("_", " ")

    def summary(self) -> str:
        """Return ``<signal>: <reason>``, for the task log."""
        return f"{self.signal.value}: {self.reason}"

    def headline(self, conn_id: str) -> str:
        """Return ``<label> on <conn_id>: <signal>: <reason>``, one line for the task log.

        :param conn_id: the connection it was read on.
        """
        return f"{self.label} on {conn_id}: {self.summary()}"

    def to_dict(self) -> dict[str, Any]:
        """Return the reading as JSON-ready values, e.g. for XCom or ``walthrottle status --json``."""
        return {
            "indicator": self.indicator,
            "label": self.label,
            "signal": self.signal.value,
            "reason": self.reason,
            "values": dict(self.values),
            "details": dict(self.details),
            "wal_headroom_bytes": self.wal_headroom_bytes,
            "load": self.load,
            "wal_bound_bytes": self.wal_bound_bytes,
        }


#: A measurement as a conversation: it yields each query to run, receives that query's rows (as
#: dicts), and returns the reading. Values go into a query as :class:`psycopg.sql.Literal`.
Conversation = Generator["sql.SQL | sql.Composed", list[dict[str, Any]], Reading]


class HealthIndicator(ABC):
    """One health signal behind its own feature flag.

    A subclass sets :attr:`name`, :attr:`default_flag_variable` and :attr:`template_fields`, takes
    its thresholds as keyword arguments (numbers, or strings that are templates until rendered),
    checks them in :meth:`validate`, and measures in :meth:`conversation`. Its constructor's
    keyword arguments must be exactly what :meth:`serialize` returns.

    :param flag_variable: the Airflow Variable of its feature flag (a health-check flag: a value
        that cannot be read reads as on); the class's :attr:`default_flag_variable` if ``None``.
    :param flag_default: the flag's answer while its Variable is missing: off, until rolled out.
    """

    #: The indicator's name in logs, XCom, metrics and on the page.
    name: ClassVar[str]
    #: The Variable of its flag unless the caller names another.
    default_flag_variable: ClassVar[str]
    #: Attributes Airflow renders as Jinja templates when the indicator is an argument of a task.
    template_fields: ClassVar[tuple[str, ...]] = ()
    #: Whether it needs ``IndicatorContext.table`` (without one it is not evaluated).
    needs_table: ClassVar[bool] = False

    def __init__(self, *, flag_variable: str | None = None, flag_default: bool = False) -> None:
        self.flag_variable = flag_variable or self.default_flag_variable
        self.flag_default = flag_default

    def validate(self) -> None:  # noqa: B027 - an indicator without thresholds has nothing to check
        """Check the thresholds once templates are rendered; the base class has none.

        :raises ValueError: naming the threshold, what it got and what it takes.
        """

    @abstractmethod
    def conversation(self, context: IndicatorContext) -> Conversation:
        """Yield the queries that measure this signal and return the reading.

        :param context: what the caller knows (the migrated table, the next batch's WAL).
        """

    def serialize(self) -> dict[str, Any]:
        """Return the keyword arguments that rebuild this indicator (JSON-ready)."""
        return {"flag_variable": self.flag_variable, "flag_default": self.flag_default}

    def classpath(self) -> str:
        """Return ``module.Class``, with which :func:`indicator_from_serialized` finds the class."""
        return f"{type(self).__module__}.{type(self).__qualname__}"

    def __repr__(self) -> str:
        arguments = ", ".join(f"{key}={value!r}" for key, value in self.serialize().items())
        return f"{type(self).__name__}({arguments})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, HealthIndicator)
            and type(other) is type(self)
            and other.serialize() == self.serialize()
        )

    def __hash__(self) -> int:
        return hash((self.classpath(), tuple(sorted(map(repr, self.serialize().items())))))


def indicator_from_serialized(classpath: str, kwargs: Mapping[str, Any]) -> HealthIndicator:
    """Rebuild an indicator from :meth:`HealthIndicator.classpath` and :meth:`HealthIndicator.serialize`.

    :param classpath: ``module.Class`` of a :class:`HealthIndicator` subclass.
    :param kwargs: its constructor's keyword arguments.
    :raises ValueError: if the class cannot be found or is not an indicator.
    """
    module_name, _, class_name = classpath.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(f"no health indicator class {classpath!r}: {error}") from None
    if not (isinstance(cls, type) and issubclass(cls, HealthIndicator)):
        raise ValueError(f"{classpath!r} is not a health indicator")
    return cls(**kwargs)


def read_indicator(
    conn: psycopg.Connection[Any], indicator: HealthIndicator, context: IndicatorContext
) -> Reading:
    """Measure one indicator on an open connection, in a transaction of its own.

    :param conn: a psycopg connection in autocommit mode (or with no transaction open).
    :param indicator: the indicator.
    :param context: what the caller knows.
    """
    return converse(conn, indicator.conversation(context))


def read_indicators(
    conn: psycopg.Connection[Any], indicators: Sequence[HealthIndicator], context: IndicatorContext
) -> list[Reading]:
    """Measure several indicators on one open connection, each as :func:`read_indicator` does.

    A :class:`~airflow_provider_walthrottle.gate.HealthGate` takes it (bound to a connection with
    :func:`functools.partial`) where no hook is at hand, e.g. the benchmarks.

    :param conn: a psycopg connection in autocommit mode.
    :param indicators: what to read.
    :param context: what the caller knows.
    """
    return [read_indicator(conn, indicator, context) for indicator in indicators]


async def aread_indicator(
    conn: psycopg.AsyncConnection[Any], indicator: HealthIndicator, context: IndicatorContext
) -> Reading:
    """Measure one indicator on an open asynchronous connection, as :func:`read_indicator` does.

    :param conn: a psycopg async connection in autocommit mode (or with no transaction open).
    :param indicator: the indicator.
    :param context: what the caller knows.
    """
    return await aconverse(conn, indicator.conversation(context))


def fraction_of(value: float | None, limit: float) -> float | None:
    """Return ``value / limit`` as a reading's load: ``None`` if unmeasured, 1 over a zero limit.

    :param value: the measurement.
    :param limit: its stop threshold.
    """
    if value is None:
        return None
    if limit <= 0:
        return 1.0 if value > 0 else 0.0
    return value / limit


def non_negative_number(name: str, value: object, *, unit: str, integral: bool = False) -> float:
    """Return a threshold as a number, or fail with one line naming it.

    Accepts an int or a float (not a bool), or its text (a rendered template).

    :param name: the threshold's parameter name, for the message.
    :param value: its value after templating.
    :param unit: what it counts, for the message (``seconds``, ``bytes``).
    :param integral: whether only whole numbers are accepted.
    :raises ValueError: if it is not a finite number of 0 or more (a whole one if ``integral``).
    """
    number: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    if number is None or not math.isfinite(number) or number < 0 or (integral and not number.is_integer()):
        kind = "a whole number" if integral else "a number"
        raise ValueError(f"{name} must be {kind} of {unit}, 0 or more, got {value!r}")
    return number


#: Units of :func:`format_bytes`, each 1024 times the one before, as ``pg_size_pretty`` counts.
_BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def format_bytes(count: float) -> str:
    """Return a number of bytes as a person reads it, in powers of 1024, for a reading's reason.

    Whole units from 10 up, one decimal below: ``512 B``, ``1.5 MiB``, ``64 MiB``, ``1 GiB``.

    >>> format_bytes(64 * 1024 * 1024), format_bytes(1536 * 1024), format_bytes(512)
    ('64 MiB', '1.5 MiB', '512 B')

    :param count: the bytes (negative counts keep their sign).
    """
    value = float(count)
    unit = _BYTE_UNITS[0]
    for unit in _BYTE_UNITS:
        if abs(value) < 1024 or unit == _BYTE_UNITS[-1]:
            break
        value /= 1024
    if unit == _BYTE_UNITS[0] or abs(round(value, 1)) >= 10 or round(value, 1).is_integer():
        return f"{value:.0f} {unit}"
    return f"{value:.1f} {unit}"

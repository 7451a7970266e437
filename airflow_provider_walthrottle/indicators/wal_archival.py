"""The WAL archival backlog as a health indicator: segments waiting for ``archive_command``.

The measurement and its evaluation are the WAL side's own
(:func:`~airflow_provider_walthrottle.wal.queries.archiver_status_conversation`,
:func:`~airflow_provider_walthrottle.wal.health.evaluate_wal_archival`); this module puts them
behind the indicator interface, so the gate evaluates the backlog beside the other signals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from airflow_provider_walthrottle.flags import WAL_HEALTH_FLAG
from airflow_provider_walthrottle.indicators.base import (
    HealthIndicator,
    IndicatorContext,
    Reading,
    fraction_of,
)
from airflow_provider_walthrottle.wal.health import (
    DEFAULT_MAX_PENDING_SEGMENTS,
    evaluate_wal_archival,
    exact_count_limit,
    parse_max_pending_segments,
)

if TYPE_CHECKING:
    from airflow_provider_walthrottle.indicators.base import Conversation
    from airflow_provider_walthrottle.wal.health import HealthSignal


@dataclass(frozen=True)
class WalArchivalReading(Reading):
    """A reading of the WAL archival backlog, with the evaluated signal it came from.

    :param health: the backlog, the threshold and the archiver's state, for the batch-size
        optimizer and the sensor's XCom.
    """

    health: HealthSignal | None = None

    @property
    def label(self) -> str:
        """``WAL archival``."""
        return "WAL archival"

    def summary(self) -> str:
        """Return the signal, the numbers, the counting method and whether the archiver fails."""
        return self.health.summary() if self.health is not None else super().summary()


class WalArchivalIndicator(HealthIndicator):
    """Stop while more than ``max_pending_segments`` WAL segments wait for ``archive_command``.

    The count is exact (``.ready`` files of real segments) where the role may list
    ``archive_status`` (``pg_monitor``), else estimated from WAL positions; see
    :doc:`/concepts`.

    :param max_pending_segments: only a backlog *above* it stops; a whole number, or its digits
        (a rendered template). GitLab's default, 42.
    :param flag_variable: the flag's Variable, ``batched_migrations_health_status_wal`` by default.
    :param flag_default: the flag while its Variable is missing.
    """

    name: ClassVar[str] = "wal_archival"
    default_flag_variable: ClassVar[str] = WAL_HEALTH_FLAG
    template_fields: ClassVar[tuple[str, ...]] = ("max_pending_segments",)

    def __init__(
        self,
        *,
        max_pending_segments: int | str = DEFAULT_MAX_PENDING_SEGMENTS,
        flag_variable: str | None = None,
        flag_default: bool = False,
    ) -> None:
        super().__init__(flag_variable=flag_variable, flag_default=flag_default)
        if not isinstance(max_pending_segments, str):  # else checked once the template is rendered
            parse_max_pending_segments(max_pending_segments)
        self.max_pending_segments = max_pending_segments

    @property
    def threshold(self) -> int:
        """The rendered threshold as a number."""
        return parse_max_pending_segments(self.max_pending_segments)

    def validate(self) -> None:
        """Check the rendered threshold.

        :raises ValueError: if it is not a whole number of 0 or more.
        """
        parse_max_pending_segments(self.max_pending_segments)

    def conversation(self, context: IndicatorContext) -> Conversation:
        """Measure the backlog (exactly up to twice the threshold) and compare it with the threshold.

        :param context: not used: the backlog is the server's, whatever the table.
        """
        from airflow_provider_walthrottle.wal.queries import archiver_status_conversation

        threshold = self.threshold
        status = yield from archiver_status_conversation(exact_up_to=exact_count_limit(threshold))
        return wal_archival_reading(evaluate_wal_archival(status, threshold))

    def serialize(self) -> dict[str, Any]:
        """Return the keyword arguments that rebuild this indicator."""
        return {"max_pending_segments": self.max_pending_segments, **super().serialize()}


def wal_archival_reading(health: HealthSignal) -> WalArchivalReading:
    """Return an evaluated backlog as a reading: its numbers, and the WAL it leaves room for.

    :param health: from :func:`~airflow_provider_walthrottle.wal.health.evaluate_wal_archival`.
    """
    status, threshold = health.status, health.max_pending_segments
    pending = status.pending_segments
    headroom = None
    if pending is not None and status.wal_segment_size > 0:
        headroom = max(threshold - pending, 0) * status.wal_segment_size
    return WalArchivalReading(
        indicator=WalArchivalIndicator.name,
        signal=health.signal,
        reason=health.reason,
        values={"pending_segments": pending, "max_pending_segments": threshold},
        details={"method": status.method.value, "archiver_failing": status.is_failing},
        wal_headroom_bytes=headroom,
        load=fraction_of(pending, threshold),
        wal_bound_bytes=threshold * status.wal_segment_size,
        health=health,
    )

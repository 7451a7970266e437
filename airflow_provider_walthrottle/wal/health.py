"""Health signals: whether a migration may go on, given the WAL archival backlog.

The four signals follow GitLab's ``Gitlab::Database::HealthStatus::Signals``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

from airflow_provider_walthrottle.wal.archiver_status import ArchiverStatus, BacklogMethod

if TYPE_CHECKING:
    from airflow_provider_walthrottle.indicators.base import Reading

#: GitLab's threshold: above this many segments waiting for ``archive_command``, migrations stop.
DEFAULT_MAX_PENDING_SEGMENTS = 42


class Signal(str, Enum):
    """What a health check tells a migration."""

    #: The backlog is at or below the threshold: go on.
    NORMAL = "normal"
    #: The backlog is above the threshold: stop until it drains.
    STOP = "stop"
    #: The server archives nothing (``archive_mode`` off, or a standby that does not archive).
    NOT_AVAILABLE = "not_available"
    #: The backlog cannot be known right now.
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class HealthSignal:
    """A signal with the reason for it, in words for the task log.

    :param signal: the verdict.
    :param reason: why, with the numbers that led to it.
    :param status: the measurement the verdict came from.
    :param max_pending_segments: the threshold it was compared with.
    """

    signal: Signal
    reason: str
    status: ArchiverStatus
    max_pending_segments: int

    def summary(self) -> str:
        """Return one line for an on-call engineer: verdict, numbers, method and archiver state."""
        archiver = "failing" if self.status.is_failing else "not failing"
        return f"{self.signal.value}: {self.reason} (method {self.status.method.value}, archiver {archiver})"

    def to_dict(self) -> dict[str, Any]:
        """Return the signal and its measurement as JSON-ready values, e.g. for XCom."""
        return {
            "signal": self.signal.value,
            "reason": self.reason,
            "max_pending_segments": self.max_pending_segments,
            "status": self.status.to_dict(),
        }


def exact_count_limit(max_pending_segments: int) -> int:
    """Return the backlog up to which a check counts segments exactly: twice the threshold, at least 16.

    Above it the LSN estimate is used; a backlog that far above the threshold stops migrations
    either way, and counting thousands of ``.ready`` files costs the server a ``stat`` each.

    :param max_pending_segments: the threshold.
    """
    return max(2 * max_pending_segments, 16)


def parse_max_pending_segments(value: object) -> int:
    """Return the threshold as an int, or fail with one clear line.

    Accepts an int, or a string of digits (a rendered template).

    :param value: the ``max_pending_segments`` argument, after templating.
    :raises ValueError: if it is not a whole number of 0 or more.
    """
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    elif isinstance(value, str) and value.strip().isdigit():
        number = int(value.strip())
    else:
        number = None
    if number is None or number < 0:
        raise ValueError(
            f"max_pending_segments must be a whole number of segments, 0 or more (default "
            f"{DEFAULT_MAX_PENDING_SEGMENTS}), got {value!r}"
        )
    return number


def evaluate_wal_archival(
    status: ArchiverStatus, max_pending_segments: int = DEFAULT_MAX_PENDING_SEGMENTS
) -> HealthSignal:
    """Compare the backlog with the threshold. Only a backlog *above* the threshold stops.

    :param status: a measurement from
        :class:`~airflow_provider_walthrottle.hooks.wal_archival.WalArchivalHook`.
    :param max_pending_segments: the most segments that may wait before migrations stop.
    """
    pending = status.pending_segments
    if status.method is BacklogMethod.NOT_APPLICABLE:
        return HealthSignal(Signal.NOT_AVAILABLE, f"{status.detail}", status, max_pending_segments)
    if pending is None:
        reason = f"pending WAL segments unknown ({status.method.value}): {status.detail}"
        return HealthSignal(Signal.UNKNOWN, reason, status, max_pending_segments)
    if pending > max_pending_segments:
        reason = f"{pending} WAL segments pending archival > threshold {max_pending_segments}"
        return HealthSignal(Signal.STOP, reason, status, max_pending_segments)
    reason = f"{pending} WAL segments pending archival <= threshold {max_pending_segments}"
    return HealthSignal(Signal.NORMAL, reason, status, max_pending_segments)


class OnUnavailable(str, Enum):
    """What a check does when the backlog is not available or unknown."""

    #: Go on as if the backlog were normal.
    PROCEED = "proceed"
    #: Wait and check again, as on a "stop" signal. The default: a wrong connection (a standby
    #: instead of the primary) or a missing privilege never lets a migration run unthrottled.
    WAIT = "wait"
    #: Fail the task with the reason.
    FAIL = "fail"

    @classmethod
    def parse(cls, value: str | OnUnavailable) -> OnUnavailable:
        """Return the member for ``value``, or fail with the accepted values.

        :param value: a member or its name, in any case.
        """
        try:
            return cls(value.lower() if isinstance(value, str) else value)
        except ValueError:
            accepted = ", ".join(repr(member.value) for member in cls)
            raise ValueError(f"on_unavailable must be one of {accepted}, got {value!r}") from None


class HealthUnavailableError(ValueError):
    """A signal could not be judged and ``on_unavailable`` is ``fail``."""


def may_proceed(health: HealthSignal | Reading, on_unavailable: OnUnavailable) -> bool:
    """Return whether a migration may go on after this signal: the rule for one signal.

    ``normal`` goes on, ``stop`` stops, and "not available" and "unknown" do what
    ``on_unavailable`` says. The gate (:func:`airflow_provider_walthrottle.gate.decide`) applies it
    to every indicator's reading.

    :param health: the evaluated signal, or any indicator's reading.
    :param on_unavailable: what "not available" and "unknown" mean.
    :raises HealthUnavailableError: on "not available" or "unknown" when ``on_unavailable`` is ``fail``.
    """
    if health.signal is Signal.NORMAL:
        return True
    if health.signal is Signal.STOP:
        return False
    if on_unavailable is OnUnavailable.FAIL:
        label = getattr(health, "label", "WAL archival")
        raise HealthUnavailableError(
            f"{label} health is {health.signal.value}: {health.reason} (on_unavailable='fail')"
        )
    return on_unavailable is OnUnavailable.PROCEED

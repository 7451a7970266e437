"""Pace a batch from inside: statements sized by time, pauses that come from the health signals.

Two rules, plain Python, used by the runner between sub-batches unless the caller fixed them
(``sub_batch_size``, ``pause_ms``):

1. **Statements sized by time.** Each ``batch_sql`` statement aims at
   :data:`DEFAULT_TARGET_STATEMENT_SECONDS`, as pt-online-schema-change's ``--chunk-time`` aims
   chunks at 0.5 s: short enough that the rows it locks are held for a fraction of a second and a
   statement timeout is never near, long enough that the per-statement round trips weigh little.
   The next statement's keys are the last one's rate times the target, growing at most
   :data:`MAX_STATEMENT_GROWTH` times per statement and shrinking at once.
2. **Pauses paced by the signals.** No pause while every reading is at most half its stop
   threshold. Above half, the migration writes a shrinking share of the time, ``duty = 2 * (1 -
   load)``: at 75 % of the threshold it writes half the time, at 90 % a fifth, and at the
   threshold not at all (then the gate stops it anyway). The pause after a statement of ``t``
   seconds is ``t * (1 - duty) / duty``, at most ``max_pause_seconds``. So the WAL backlog (or
   a standby's lag, or a slot's retention) approaches its threshold smoothly instead of running
   into the stop, while a healthy server gets back-to-back statements.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: The duration each statement aims at, in seconds.
DEFAULT_TARGET_STATEMENT_SECONDS = 0.2
#: The first statement's keys, before any rate is measured.
FIRST_STATEMENT_KEYS = 100
#: The most a statement's keys grow from one statement to the next.
MAX_STATEMENT_GROWTH = 4.0
#: The longest pause the signals ask for between two statements, in seconds.
DEFAULT_MAX_PAUSE_SECONDS = 5.0
#: The load from which the signals pace: half the stop threshold.
PACING_STARTS_AT = 0.5


@dataclass(frozen=True)
class StatementSizer:
    """The keys of the next ``batch_sql`` statement: fixed, or sized by time.

    :param keys: the next statement's keys.
    :param fixed: whether the caller fixed them (``sub_batch_size``); then they never change.
    :param target_seconds: the duration a statement aims at, when not fixed.
    """

    keys: int = FIRST_STATEMENT_KEYS
    fixed: bool = False
    target_seconds: float = DEFAULT_TARGET_STATEMENT_SECONDS

    @classmethod
    def for_settings(cls, sub_batch_size: int | None, target_seconds: float) -> StatementSizer:
        """Return the sizer for a run: fixed at ``sub_batch_size``, or sized by time without one.

        :param sub_batch_size: the caller's fixed keys per statement, or ``None``.
        :param target_seconds: the duration a statement aims at.
        """
        if sub_batch_size is not None:
            return cls(keys=sub_batch_size, fixed=True, target_seconds=target_seconds)
        return cls(target_seconds=target_seconds)

    def after(self, keys: int, seconds: float) -> StatementSizer:
        """Return the sizer for the next statement, given what the last one did.

        >>> StatementSizer(keys=100).after(100, 0.01).keys  # 10,000 keys/s, growth-limited
        400
        >>> StatementSizer(keys=4000).after(4000, 0.8).keys  # 5,000 keys/s: 0.2 s is 1,000 keys
        1000

        :param keys: keys the last statement walked (fewer than asked at a job's end).
        :param seconds: the seconds it took.
        """
        if self.fixed or keys <= 0 or seconds <= 0 or keys < self.keys:
            return self  # nothing to learn from a short or unmeasured statement
        by_time = math.floor(keys / seconds * self.target_seconds)
        most = math.floor(self.keys * MAX_STATEMENT_GROWTH)
        return StatementSizer(max(1, min(by_time, most)), fixed=False, target_seconds=self.target_seconds)


def signal_pause(load: float | None, statement_seconds: float, max_pause_seconds: float) -> float:
    """Return the seconds to pause after a statement, from how near the signals are to stopping.

    >>> signal_pause(0.4, 0.2, 5.0)
    0.0
    >>> signal_pause(0.75, 0.2, 5.0)  # write half the time
    0.2
    >>> round(signal_pause(0.9, 0.2, 5.0), 3)  # write a fifth of the time
    0.8
    >>> signal_pause(1.0, 0.2, 5.0)
    5.0

    :param load: the highest reading's share of its stop threshold (1 at the threshold), or
        ``None`` when no reading has degrees.
    :param statement_seconds: the last statement's duration.
    :param max_pause_seconds: the longest pause.
    """
    if load is None or load <= PACING_STARTS_AT:
        return 0.0
    duty = 2.0 * (1.0 - min(load, 1.0))
    if duty <= 0:
        return max_pause_seconds
    return min(max_pause_seconds, max(statement_seconds, 0.0) * (1.0 - duty) / duty)

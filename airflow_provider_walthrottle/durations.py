"""Durations as a person reads them: ``0.3 s``, ``42 s``, ``4 min 5 s``, ``about 3 h 20 min``.

One function for every duration the provider shows a person (on the migrations page: the ETA, the
time spent throttled and each job's time), on pendulum's :class:`~pendulum.Duration`, as Airflow
does. Plain Python with no Airflow import, so that the batching core can use it too.
"""

from __future__ import annotations

import math

import pendulum

#: Below this many seconds a measured duration keeps one decimal (``9.4 s``).
_DECIMALS_BELOW = 9.95


def format_duration(seconds: float, *, estimate: bool = False) -> str:
    """Return a duration in at most two units, the second rounded: ``3 h 20 min``, not ``3 h 20 min 5 s``.

    ``12005`` seconds reads ``3 h 20 min``, ``200000`` reads ``2 d 8 h``; a second unit that rounds to
    zero is left out (``3 h``). Below 10 s a measured duration keeps one decimal (``0.3 s``).

    :param seconds: the duration.
    :param estimate: whether it is an estimate, such as an ETA: it then reads ``about 3 h 20 min``,
        with no seconds past the first minute (``about 4 min``, not ``about 4 min 5 s``), no decimals,
        and ``less than 1 s`` below a second.
    :raises ValueError: for a negative, infinite or NaN duration.
    """
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"a duration must be a finite number of seconds, at least 0, got {seconds!r}")
    if seconds == 0:
        return "0 s"
    if estimate and seconds < 1:
        return "less than 1 s"
    if seconds < _DECIMALS_BELOW and not estimate:
        return f"{seconds:.1f} s"
    text = _two_units(seconds, coarse=estimate)
    return f"about {text}" if estimate else text


def _two_units(seconds: float, *, coarse: bool) -> str:
    whole = round(seconds)
    # round to the smaller of the two units shown: seconds below an hour, minutes below a day, else
    # hours; an estimate past its first minute to minutes
    step = 1 if whole < 60 or (whole < 3600 and not coarse) else 60 if whole < 86400 else 3600
    duration = pendulum.duration(seconds=round(seconds / step) * step)
    if duration.in_days():
        units = ((duration.in_days(), "d"), (duration.hours, "h"))
    elif duration.hours:
        units = ((duration.hours, "h"), (duration.minutes, "min"))
    elif duration.minutes:
        units = ((duration.minutes, "min"), (duration.remaining_seconds, "s"))
    else:
        units = ((duration.remaining_seconds, "s"), (0, ""))
    return " ".join(f"{value} {unit}" for value, unit in units if value)

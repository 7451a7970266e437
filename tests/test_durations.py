"""Durations as the provider shows them to a person."""

from __future__ import annotations

import math

import pytest

from airflow_provider_walthrottle.durations import format_duration


@pytest.mark.parametrize(
    ("seconds", "measured", "estimated"),
    [
        (0, "0 s", "0 s"),
        (0.04, "0.0 s", "less than 1 s"),
        (0.3, "0.3 s", "less than 1 s"),
        (9.94, "9.9 s", "about 10 s"),
        (9.96, "10 s", "about 10 s"),
        (42, "42 s", "about 42 s"),
        (59.6, "1 min", "about 1 min"),
        (61, "1 min 1 s", "about 1 min"),
        (245, "4 min 5 s", "about 4 min"),
        (3599.6, "1 h", "about 1 h"),
        (12005, "3 h 20 min", "about 3 h 20 min"),
        (86399.9, "1 d", "about 1 d"),
        (200000, "2 d 8 h", "about 2 d 8 h"),
    ],
)
def test_a_duration_reads_in_at_most_two_units(seconds, measured, estimated):
    assert format_duration(seconds) == measured
    assert format_duration(seconds, estimate=True) == estimated


@pytest.mark.parametrize("seconds", [-1, math.inf, math.nan])
def test_a_duration_that_is_no_duration_fails_naming_it(seconds):
    with pytest.raises(ValueError, match=f"got {seconds!r}"):
        format_duration(seconds)

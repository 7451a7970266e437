from __future__ import annotations

import dataclasses
import json
import math
import random
from fractions import Fraction
from typing import Any

import pytest

from airflow_provider_walthrottle.migrations.optimizer import (
    LIMITS,
    BatchObservation,
    BatchSizeDecision,
    BatchSizePolicy,
    ThroughputEstimate,
    backlog_bound,
    next_batch_size,
    wal_row_bound,
)

MB = 1024 * 1024
SEGMENT = 16 * MB

#: A policy roomy enough that the WAL bound, not ``max_batch_size``, is what the WAL tests hit.
ROOMY = BatchSizePolicy(min_batch_size=100, max_batch_size=1_000_000)


def decide(
    current_size: int,
    estimate: ThroughputEstimate,
    policy: BatchSizePolicy | None = None,
    pending_segments: int | None = None,
    max_pending_segments: int = 42,
    wal_segment_size: int = SEGMENT,
) -> BatchSizeDecision:
    return next_batch_size(
        current_size,
        estimate,
        policy or BatchSizePolicy(),
        pending_segments=pending_segments,
        max_pending_segments=max_pending_segments,
        wal_segment_size=wal_segment_size,
    )


# --- ThroughputEstimate ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "observation", "alpha", "rows_per_second", "wal_bytes_per_row"),
    [
        # the first observation seeds both averages
        (ThroughputEstimate(), BatchObservation(1000, 10.0, 52_000), 0.3, 100.0, 52.0),
        # later ones blend: 0.3 * new + 0.7 * old
        (ThroughputEstimate(100.0, 52.0), BatchObservation(2000, 10.0, 200_000), 0.3, 130.0, 66.4),
        (ThroughputEstimate(100.0, 52.0), BatchObservation(2000, 10.0, 200_000), 0.5, 150.0, 76.0),
        # alpha 1 forgets the past
        (ThroughputEstimate(100.0, 52.0), BatchObservation(2000, 10.0, 200_000), 1.0, 200.0, 100.0),
        # no measurable time: the rate stays, the WAL per row still updates
        (ThroughputEstimate(100.0, 52.0), BatchObservation(1000, 0.0, 100_000), 0.3, 100.0, 66.4),
        (ThroughputEstimate(), BatchObservation(1000, -1.0, 100_000), 0.3, None, 100.0),
        # no rows: the WAL per row stays, the rate sees an empty batch
        (ThroughputEstimate(100.0, 52.0), BatchObservation(0, 10.0, 0), 0.3, 70.0, 52.0),
        (ThroughputEstimate(), BatchObservation(0, 10.0, 8192), 0.3, 0.0, None),
        # nothing measurable at all
        (ThroughputEstimate(), BatchObservation(0, 0.0, 0), 0.3, None, None),
    ],
)
def test_observe(before, observation, alpha, rows_per_second, wal_bytes_per_row):
    after = before.observe(observation, alpha=alpha)
    assert after.rows_per_second == pytest.approx(rows_per_second)
    assert after.wal_bytes_per_row == pytest.approx(wal_bytes_per_row)


def test_observe_uses_default_alpha_and_returns_a_new_estimate():
    before = ThroughputEstimate(100.0, 52.0)
    after = before.observe(BatchObservation(2000, 10.0, 200_000))
    assert (after.rows_per_second, after.wal_bytes_per_row) == (pytest.approx(130.0), pytest.approx(66.4))
    assert before == ThroughputEstimate(100.0, 52.0)


def test_estimate_round_trips_through_json():
    estimate = ThroughputEstimate().observe(BatchObservation(1000, 3.0, 52_000))
    data = json.loads(json.dumps(dataclasses.asdict(estimate)))
    assert ThroughputEstimate(**data) == estimate
    assert all(isinstance(value, float) for value in data.values())


@pytest.mark.parametrize("alpha", [0.0, -0.1, 1.5, math.nan])
def test_observe_rejects_alpha_outside_unit_interval(alpha):
    with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\]"):
        ThroughputEstimate().observe(BatchObservation(1, 1.0, 1), alpha=alpha)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rows": -1, "seconds": 1.0, "wal_bytes": 0}, "rows must be 0 or more"),
        ({"rows": 1, "seconds": math.inf, "wal_bytes": 0}, "seconds must be a finite number"),
        ({"rows": 1, "seconds": 1.0, "wal_bytes": -8}, "wal_bytes must be 0 or more"),
    ],
)
def test_observation_rejects_impossible_measurements(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BatchObservation(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rows_per_second": -1.0}, "rows_per_second must be a finite number of 0 or more"),
        ({"wal_bytes_per_row": math.nan}, "wal_bytes_per_row must be a finite number of 0 or more"),
    ],
)
def test_estimate_rejects_impossible_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ThroughputEstimate(**kwargs)


# --- BatchSizePolicy ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_batch_size": 0}, "min_batch_size must be 1 or more, got 0"),
        (
            {"min_batch_size": 500, "max_batch_size": 499},
            r"max_batch_size must be at least min_batch_size \(500\)",
        ),
        ({"target_batch_seconds": 0}, "target_batch_seconds must be a positive number, got 0"),
        ({"target_batch_seconds": -30.0}, "target_batch_seconds must be a positive number"),
        ({"target_batch_seconds": math.inf}, "target_batch_seconds must be a positive number"),
        ({"max_growth": 0.5}, r"max_growth must be 1 or more \(1 never grows\), got 0.5"),
        ({"max_growth": math.nan}, "max_growth must be 1 or more"),
    ],
)
def test_policy_rejects_impossible_bounds(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BatchSizePolicy(**kwargs)


def test_policy_accepts_a_fixed_size():
    policy = BatchSizePolicy(min_batch_size=500, max_batch_size=500, max_growth=1.0)
    assert policy.clamp(1) == policy.clamp(10**9) == 500


# --- next_batch_size: time target, growth and clamps ------------------------------------------------


@pytest.mark.parametrize(
    ("current", "rows_per_second", "policy", "size", "by_time", "limited_by"),
    [
        # no rate yet: the current size, clamped
        (1000, None, BatchSizePolicy(), 1000, None, "initial"),
        (10, None, BatchSizePolicy(), 100, None, "initial"),
        (500_000, None, BatchSizePolicy(), 100_000, None, "initial"),
        # 30 s at 50 rows/s: up within the growth bound
        (1000, 50.0, BatchSizePolicy(), 1500, 1500, "time"),
        # 30 s at 100 rows/s asks 3000, but at most 2x 1000
        (1000, 100.0, BatchSizePolicy(), 2000, 3000, "growth"),
        (1000, 100.0, BatchSizePolicy(max_growth=1.5), 1500, 3000, "growth"),
        (1000, 100.0, BatchSizePolicy(max_growth=1.0), 1000, 3000, "growth"),
        (1000, 100.0, BatchSizePolicy(target_batch_seconds=10.0), 1000, 1000, "time"),
        # shrinking is immediate
        (10_000, 10.0, BatchSizePolicy(), 300, 300, "time"),
        # clamps
        (1000, 1.0, BatchSizePolicy(), 100, 30, "min"),
        (1000, 0.0, BatchSizePolicy(), 100, 0, "min"),
        (80_000, 10_000.0, BatchSizePolicy(), 100_000, 300_000, "max"),
        (40_000, 10_000.0, BatchSizePolicy(), 80_000, 300_000, "growth"),
        # growth counts from the clamped current size
        (0, 100.0, BatchSizePolicy(), 200, 3000, "growth"),
        (10, 100.0, BatchSizePolicy(), 200, 3000, "growth"),
        (10**9, 100.0, BatchSizePolicy(), 3000, 3000, "time"),
    ],
)
def test_time_target(current, rows_per_second, policy, size, by_time, limited_by):
    decision = decide(current, ThroughputEstimate(rows_per_second, 52.0), policy)
    assert (decision.size, decision.by_time, decision.limited_by) == (size, by_time, limited_by)
    assert decision.by_wal is None
    assert decision.must_wait is False


# --- next_batch_size: WAL headroom ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("current", "estimate", "pending", "threshold", "size", "by_wal", "limited_by", "must_wait"),
    [
        # 12 segments of 16 MiB at 1000 bytes/row: 12 * 16 MiB / 1000 rows
        (200_000, ThroughputEstimate(10_000.0, 1000.0), 30, 42, 201_326, 201_326, "wal", False),
        (
            200_000,
            ThroughputEstimate(10_000.0, 1000.0),
            30,
            42,
            12 * SEGMENT // 1000,
            12 * SEGMENT // 1000,
            "wal",
            False,
        ),
        # the time target is smaller: the headroom does not bind
        (20_000, ThroughputEstimate(1000.0, 1000.0), 30, 42, 30_000, 201_326, "time", False),
        # the WAL bound applies before any rate is known, once the WAL per row is
        (500_000, ThroughputEstimate(None, 1000.0), 30, 42, 201_326, 201_326, "wal", False),
        (1000, ThroughputEstimate(None, 1000.0), 30, 42, 1000, 201_326, "initial", False),
        # headroom exhausted, or already past the threshold: wait
        (1000, ThroughputEstimate(100.0, 1000.0), 42, 42, 0, 0, "wal", True),
        (1000, ThroughputEstimate(100.0, 1000.0), 50, 42, 0, 0, "wal", True),
        (1000, ThroughputEstimate(None, None), 42, 42, 0, 0, "wal", True),
        (1000, ThroughputEstimate(100.0, 0.0), 42, 42, 0, 0, "wal", True),
        # some headroom, but less than min_batch_size rows of it: wait
        (1000, ThroughputEstimate(100.0, 1_000_000.0), 41, 42, 16, 16, "wal", True),
        (1000, ThroughputEstimate(100.0, SEGMENT / 128), 41, 42, 128, 128, "wal", False),
        # WAL per row not measured yet, or none written: no bound while there is headroom
        (1000, ThroughputEstimate(100.0, None), 30, 42, 2000, None, "growth", False),
        (1000, ThroughputEstimate(100.0, 0.0), 30, 42, 2000, None, "growth", False),
        # backlog unknown or not applicable: no bound at all
        (1000, ThroughputEstimate(100.0, 10**9), None, 42, 2000, None, "growth", False),
        (1000, ThroughputEstimate(None, 10**9), None, 0, 1000, None, "initial", False),
    ],
)
def test_wal_headroom(current, estimate, pending, threshold, size, by_wal, limited_by, must_wait):
    decision = decide(current, estimate, ROOMY, pending_segments=pending, max_pending_segments=threshold)
    assert (decision.size, decision.by_wal, decision.limited_by, decision.must_wait) == (
        size,
        by_wal,
        limited_by,
        must_wait,
    )


@pytest.mark.parametrize(("segment", "size", "must_wait"), [(100_000, 100, False), (99_999, 99, True)])
def test_wal_bound_exactly_at_min_batch_size_runs(segment, size, must_wait):
    decision = decide(
        1000, ThroughputEstimate(100.0, 1000.0), ROOMY, pending_segments=41, wal_segment_size=segment
    )
    assert (decision.size, decision.limited_by, decision.must_wait) == (size, "wal", must_wait)


def test_wal_bound_uses_the_segment_size():
    estimate = ThroughputEstimate(100_000.0, 1000.0)
    small = decide(1_000_000, estimate, ROOMY, pending_segments=30, wal_segment_size=1 * MB)
    large = decide(1_000_000, estimate, ROOMY, pending_segments=30, wal_segment_size=64 * MB)
    assert small.by_wal == 12 * MB // 1000
    assert large.by_wal == 12 * 64 * MB // 1000


@pytest.mark.parametrize(
    ("headroom", "segment", "per_row", "expected"),
    [
        (12, SEGMENT, 1000.0, 201_326),
        (1, 1000, 10.0, 100),  # exact division stays exact
        # exact, not float, division: the float 0.1 is a bit more than 1/10, the float 0.3 a bit less
        (1, 1000, 0.1, 9_999),
        (1, 3, 0.3, 10),
        (0, SEGMENT, 1000.0, 0),
        (-5, SEGMENT, 1000.0, 0),
        (3, SEGMENT, None, None),
        (3, SEGMENT, 0.0, None),
    ],
)
def test_wal_row_bound(headroom, segment, per_row, expected):
    assert wal_row_bound(headroom, segment, per_row) == expected


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"current_size": -1}, "current_size must be 0 or more, got -1"),
        ({"pending_segments": -1}, "pending_segments and max_pending_segments must be 0 or more"),
        ({"pending_segments": 3, "max_pending_segments": -1}, "must be 0 or more, got 3 and -1"),
        ({"pending_segments": 3, "wal_segment_size": 0}, "wal_segment_size must be positive, got 0"),
    ],
)
def test_next_batch_size_rejects_impossible_inputs(kwargs, message):
    arguments: dict[str, Any] = {
        "pending_segments": None,
        "max_pending_segments": 42,
        "wal_segment_size": SEGMENT,
    }
    arguments.update(kwargs)
    current_size = arguments.pop("current_size", 1000)
    with pytest.raises(ValueError, match=message):
        next_batch_size(current_size, ThroughputEstimate(100.0, 100.0), BatchSizePolicy(), **arguments)


def test_without_a_backlog_the_wal_arguments_are_not_checked():
    decision = decide(1000, ThroughputEstimate(), max_pending_segments=-1, wal_segment_size=0)
    assert decision.size == 1000


# --- describe -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("current", "estimate", "policy", "pending", "expected"),
    [
        (
            8000,
            ThroughputEstimate(300.0, 52.0),
            BatchSizePolicy(),
            41,
            "next batch 9000 rows (limited by time: 30s target at 300 rows/s; WAL headroom allows 322638)",
        ),
        (
            8000,
            ThroughputEstimate(300.0, 4194.0),
            BatchSizePolicy(),
            41,
            "next batch 4000 rows (limited by wal: 1 segments of headroom allow 4000 rows"
            " at 4194 WAL bytes/row; time target asks 9000)",
        ),
        (
            1000,
            ThroughputEstimate(300.0, None),
            BatchSizePolicy(),
            None,
            "next batch 2000 rows (limited by growth: at most 2x the last 1000; time target asks 9000)",
        ),
        (
            1000,
            ThroughputEstimate(2.5, None),
            BatchSizePolicy(),
            None,
            "next batch 100 rows (limited by min: min_batch_size 100; time target asks 75)",
        ),
        (
            90_000,
            ThroughputEstimate(10_000.0, None),
            BatchSizePolicy(),
            None,
            "next batch 100000 rows (limited by max: max_batch_size 100000; time target asks 300000)",
        ),
        (
            5000,
            ThroughputEstimate(),
            BatchSizePolicy(),
            None,
            "next batch 5000 rows (limited by initial: no throughput estimate yet, starting from 5000)",
        ),
        (
            5000,
            ThroughputEstimate(300.0, 52.0),
            BatchSizePolicy(),
            42,
            "wait: WAL headroom allows only 0 rows (limited by wal: 0 segments of headroom,"
            " the backlog is at or past the threshold; time target asks 9000)",
        ),
        (
            5000,
            ThroughputEstimate(300.0, 1_000_000.0),
            BatchSizePolicy(),
            41,
            "wait: WAL headroom allows only 16 rows (limited by wal: 1 segments of headroom allow 16 rows"
            " at 1000000 WAL bytes/row, below min_batch_size 100; time target asks 9000)",
        ),
        (
            5000,
            ThroughputEstimate(1.25, 0.5),
            BatchSizePolicy(target_batch_seconds=2.5, max_growth=1.5),
            None,
            "next batch 100 rows (limited by min: min_batch_size 100; time target asks 3)",
        ),
    ],
)
def test_describe(current, estimate, policy, pending, expected):
    decision = decide(current, estimate, policy, pending_segments=pending)
    assert decision.describe() == expected


def test_describe_mentions_fractional_rates():
    decision = decide(100, ThroughputEstimate(7.5, 0.25), BatchSizePolicy(target_batch_seconds=20.0))
    assert decision.describe() == "next batch 150 rows (limited by time: 20s target at 7.5 rows/s)"


def test_describe_without_the_context_fields_still_names_the_limit():
    for limited_by in LIMITS:
        line = BatchSizeDecision(
            size=100, by_time=200, by_wal=None, limited_by=limited_by, must_wait=False
        ).describe()
        assert line.startswith(f"next batch 100 rows (limited by {limited_by}: ")


# --- property: the planned batch never overshoots the headroom ------------------------------------


def test_planned_wal_never_exceeds_the_headroom():
    rng = random.Random(20240607)
    for _ in range(5000):
        minimum = rng.randint(1, 5000)
        policy = BatchSizePolicy(
            min_batch_size=minimum,
            max_batch_size=rng.randint(minimum, 2_000_000),
            target_batch_seconds=rng.uniform(0.1, 120.0),
            max_growth=rng.uniform(1.0, 4.0),
        )
        estimate = ThroughputEstimate(
            rows_per_second=rng.choice([None, rng.uniform(0.0, 1e6)]),
            wal_bytes_per_row=rng.choice([None, 0.0, rng.uniform(0.01, 1e6), rng.uniform(1e6, 1e9)]),
        )
        threshold = rng.randint(0, 200)
        pending = rng.choice([None, rng.randint(0, 250)])
        segment = 2 ** rng.randint(20, 30)
        current = rng.randint(0, 3_000_000)

        decision = decide(current, estimate, policy, pending, threshold, segment)

        assert decision.limited_by in LIMITS
        assert 0 <= decision.size <= policy.max_batch_size
        assert decision.must_wait == (decision.size < policy.min_batch_size)
        if decision.beyond_bound:
            # only once nothing is pending, and only when even the whole threshold is too small
            assert pending == 0 and decision.size == policy.min_batch_size
            assert estimate.wal_bytes_per_row and minimum * estimate.wal_bytes_per_row > threshold * segment
            continue
        if decision.must_wait:
            assert decision.limited_by == "wal"
        if decision.by_wal is not None:
            assert decision.size <= decision.by_wal
        if decision.by_time is not None and decision.limited_by != "wal":
            growth_cap = math.floor(policy.clamp(current) * policy.max_growth)
            assert decision.size <= max(policy.min_batch_size, growth_cap)
        if pending is None:
            assert decision.by_wal is None
            continue
        headroom = (threshold - pending) * segment
        if headroom <= 0:
            assert decision.size == 0
            assert decision.must_wait
        elif estimate.wal_bytes_per_row:
            assert decision.size * estimate.wal_bytes_per_row <= headroom
            # and the bound is tight: one more row would overshoot
            assert decision.by_wal is not None
            assert (decision.by_wal + 1) * Fraction(estimate.wal_bytes_per_row) > headroom
        assert decision.describe()


@pytest.mark.parametrize(
    ("pending", "wal_bytes", "segment", "bound"),
    [
        (0, 0, SEGMENT, 1),  # the segment being written at the count may complete
        (10, 0, SEGMENT, 11),
        (10, SEGMENT - 1, SEGMENT, 11),
        (10, SEGMENT, SEGMENT, 12),
        (10, 40 * MB, SEGMENT, 13),
        (41, 0, SEGMENT, 42),  # at a threshold of 42, still no need to count again
        (41, 1 * MB, 1 * MB, 43),  # one more segment of 1 MB could pass it
        (0, 10 * MB, 1 * MB, 11),
    ],
)
def test_backlog_bound(pending, wal_bytes, segment, bound):
    assert backlog_bound(pending, wal_bytes, segment) == bound


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((-1, 0, SEGMENT), "pending_segments and wal_bytes_since must be 0 or more, got -1 and 0"),
        ((0, -5, SEGMENT), "pending_segments and wal_bytes_since must be 0 or more, got 0 and -5"),
        ((0, 0, 0), "wal_segment_size must be positive, got 0"),
    ],
)
def test_backlog_bound_rejects_impossible_inputs(args, message):
    with pytest.raises(ValueError, match=message):
        backlog_bound(*args)


def test_a_decision_refuses_a_limit_it_cannot_explain():
    with pytest.raises(
        ValueError, match="limited_by must be one of time, wal, replication, growth, min, max, initial"
    ):
        BatchSizeDecision(size=100, by_time=None, by_wal=None, limited_by="headroom", must_wait=False)


def test_replication_slots_bound_a_batch_as_the_archival_headroom_does():
    estimate = ThroughputEstimate().observe(BatchObservation(rows=1000, seconds=1.0, wal_bytes=200_000))
    policy = BatchSizePolicy(min_batch_size=100, max_batch_size=100_000)
    room = 150 * 200  # bytes the slots may still retain: 150 rows at 200 WAL bytes each
    decision = next_batch_size(
        1000,
        estimate,
        policy,
        pending_segments=0,
        max_pending_segments=42,
        wal_segment_size=16 * 1024 * 1024,
        replication_headroom_bytes=room,
    )
    assert (decision.size, decision.limited_by, decision.must_wait) == (150, "replication", False)
    assert "replication allows 30000 more WAL bytes, 150 rows at 200 WAL bytes/row" in decision.describe()
    tight = next_batch_size(
        1000,
        estimate,
        policy,
        pending_segments=None,
        max_pending_segments=42,
        wal_segment_size=16 * 1024 * 1024,
        replication_headroom_bytes=99 * 200,
    )
    assert (tight.size, tight.must_wait) == (99, True)


MIB = 1024 * 1024


@pytest.mark.parametrize("bound", ["replication", "wal"])
def test_a_bound_that_could_never_take_the_smallest_batch_does_not_make_it_wait_for_ever(bound):
    """Another session's 16 MiB burst during a 50-row batch inflates the WAL per row to ~336 kB: at
    that rate not even a wholly free bound takes 25 rows, so waiting would never end. The smallest
    batch runs instead, and measures again."""
    estimate = ThroughputEstimate().observe(
        BatchObservation(rows=50, seconds=0.5, wal_bytes=50 * 600 + 16 * MIB)
    )
    policy = BatchSizePolicy(min_batch_size=25, max_batch_size=20000, target_batch_seconds=2)
    if bound == "replication":
        kwargs = dict(pending_segments=0, max_pending_segments=3, replication_headroom_bytes=8 * MIB)
        wholly_free = dict(replication_capacity_bytes=8 * MIB)
    else:
        kwargs = dict(pending_segments=0, max_pending_segments=0)
        wholly_free = {}
    decision = next_batch_size(100, estimate, policy, wal_segment_size=16 * MIB, **kwargs, **wholly_free)
    assert (decision.size, decision.must_wait, decision.beyond_bound) == (25, False, True)
    assert "exceeds the whole bound: it runs to measure again" in decision.describe()
    if bound == "replication":
        # the same bound half used up, with room to come: it waits for that room
        half = next_batch_size(
            100,
            ThroughputEstimate(rows_per_second=100.0, wal_bytes_per_row=200_000.0),
            policy,
            wal_segment_size=16 * MIB,
            pending_segments=0,
            max_pending_segments=3,
            replication_headroom_bytes=4 * MIB,
            replication_capacity_bytes=8 * MIB,
        )
        assert (half.must_wait, half.beyond_bound) == (True, False)


@pytest.mark.parametrize(
    ("pending", "shared", "limited_by"),
    [
        (0, True, "time"),  # the archiver keeps up, the budget bounds the writing: time sizes the batch
        (1, True, "time"),  # the one segment it is archiving
        (2, True, "wal"),  # falling behind: the headroom bounds the batch again
        (0, False, "wal"),  # not shared (share_wal_budget=False): nothing else bounds the writing
    ],
)
def test_an_archiver_that_keeps_up_does_not_cut_a_shared_batch_to_the_headroom(pending, shared, limited_by):
    # 100,000 rows/s for 30 s is 3,000,000 rows of 1,000 WAL bytes: 2.9 GB, far past 42 x 16 MiB
    estimate = ThroughputEstimate(rows_per_second=100_000.0, wal_bytes_per_row=1000.0)
    policy = BatchSizePolicy(min_batch_size=100, max_batch_size=None, max_growth=1000)
    headroom = (42 - pending) * SEGMENT
    decision = next_batch_size(
        1_000_000,
        estimate,
        policy,
        pending_segments=pending,
        max_pending_segments=42,
        wal_segment_size=SEGMENT,
        wal_room_bytes=headroom if shared else None,
        reserved_bytes=0 if shared else None,
    )

    assert decision.limited_by == limited_by
    assert decision.by_wal == headroom // 1000
    assert decision.size == (3_000_000 if limited_by == "time" else headroom // 1000)

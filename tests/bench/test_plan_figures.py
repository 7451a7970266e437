"""The plan-accuracy benchmark's own arithmetic (``bench/_plan_figures.py``), and its WAL breakdown
read with ``pg_waldump`` from a real cluster's archive (``bench/plan_accuracy.py``).

The benchmark reports numbers and asserts none; these tests check that the numbers it reports mean
what its page says they mean.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

# the benchmarks are scripts, not a package: they import each other from their own directory
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import _plan_figures
import plan_accuracy

if TYPE_CHECKING:
    from tests.support.postgres_cluster import ClusterFactory


@pytest.mark.parametrize(
    ("wal", "records", "relation", "distance", "seconds", "expected"),
    [
        # the table and its indexes are larger than the checkpoint distance: images are not capped
        (1000.0, 200.0, 10_000, 100.0, 0.0, 1000.0),
        # images fewer than the pages once: not capped
        (1000.0, 200.0, 5_000, 1e12, 0.0, 1000.0),
        # no checkpoint in the run: each page's image once
        (1000.0, 200.0, 100, 1e12, 0.0, 300.0),
        # no checkpoint by WAL, two by checkpoint_timeout (600 s at 300 s): three cycles
        (1000.0, 200.0, 100, 1e12, 600.0, 500.0),
        # records never above the projection
        (100.0, 150.0, 10, 1e12, 0.0, 100.0),
    ],
)
def test_with_image_cap(
    wal: float, records: float, relation: int, distance: float, seconds: float, expected: float
) -> None:
    capped = _plan_figures.with_image_cap(wal, records, relation, distance, seconds, timeout=300.0)
    assert capped == pytest.approx(expected, rel=1e-6)


def test_with_image_cap_counts_the_checkpoints_its_own_wal_asks_for() -> None:
    # 400 of records and 100 of pages, a checkpoint every 250: W = 400 + 100 * (1 + W / 250),
    # so W = 500 / (1 - 100 / 250) = 833.3
    capped = _plan_figures.with_image_cap(10_000.0, 400.0, 100, 250.0, 0.0, timeout=300.0)
    assert capped == pytest.approx(500 / (1 - 100 / 250), rel=1e-6)


def test_archiver_in_run_leaves_out_idle_time() -> None:
    # (seconds since the start, pending, archived so far): idle from 0.75 to 1.0 s, drained at 1.5 s
    samples = [
        (-0.25, 0, 0),
        (0.0, 0, 0),
        (0.25, 1, 0),
        (0.5, 1, 1),
        (0.75, 0, 2),
        (1.0, 0, 2),
        (1.25, 1, 2),
        (1.5, 0, 3),
        (1.75, 0, 3),
    ]
    figures = _plan_figures.archiver_in_run(samples)
    assert figures["archiver_idle_seconds"] == pytest.approx(0.25)
    assert figures["archiver_segments_per_second"] == pytest.approx(3 / 1.5)
    assert figures["archiver_busy_segments_per_second"] == pytest.approx(3 / 1.25)


@pytest.mark.parametrize(
    ("text", "size"), [("64MB", 64 * 2**20), ("8GB", 8 * 2**30), ("8kB", 8192), ("1024", 1024)]
)
def test_parse_size(text: str, size: int) -> None:
    assert _plan_figures.parse_size(text) == size


@pytest.mark.parametrize(("text", "seconds"), [("5min", 300.0), ("30s", 30.0), ("1h", 3600.0)])
def test_parse_seconds(text: str, seconds: float) -> None:
    assert _plan_figures.parse_seconds(text) == seconds


@pytest.mark.parametrize(
    ("value", "goal", "met"), [(1.2, 0.2, True), (0.8, 0.2, True), (1.21, 0.2, False), (None, 0.3, False)]
)
def test_within(value: float | None, goal: float, met: bool) -> None:
    assert _plan_figures.within(value, goal) is met


def test_waldump_splits_full_page_images_from_records(pg_cluster_factory: ClusterFactory) -> None:
    cluster = pg_cluster_factory(name="plan-figures", wal_segsize_mb=1)
    cluster.execute("CREATE TABLE t (id bigint PRIMARY KEY, n int NOT NULL)")
    cluster.execute("INSERT INTO t SELECT i, 0 FROM generate_series(1, 20000) AS i")
    cluster.execute("CHECKPOINT")
    first = cluster.insert_lsn()
    cluster.execute("UPDATE t SET n = n + 1")  # the first change of each page since the checkpoint
    second = cluster.insert_lsn()
    cluster.execute("UPDATE t SET n = n + 1")  # the same rows again: their pages are imaged already
    third = cluster.insert_lsn()
    cluster.execute("SELECT pg_switch_wal()")
    cluster.drain()

    once = plan_accuracy.waldump(cluster, first, second)
    again = plan_accuracy.waldump(cluster, second, third)

    assert once["fpi"] > 100 * 8192  # the table's pages, about 110 of them, and its index's
    assert again["fpi"] < once["fpi"] / 10
    assert once["heap_records"] > 20000 * 50 and once["btree_records"] > 0
    written = plan_accuracy.lsn_to_int(second) - plan_accuracy.lsn_to_int(first)
    # pg_waldump sums the records; the WAL also holds the pages' headers
    assert 0.95 * written < once["total"] <= written


def test_archiver_in_run_without_a_backlog() -> None:
    samples = [(0.0, 0, 5), (0.25, 0, 5), (0.5, 0, 5)]
    assert _plan_figures.archiver_in_run(samples) == {
        "archiver_segments_per_second": 0.0,
        "archiver_busy_segments_per_second": 0.0,
        "archiver_idle_seconds": 0.0,
    }

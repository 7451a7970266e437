"""Tests of the PostgreSQL test harness: ``postgres_cluster.py`` and the fixtures in ``conftest.py``."""

from __future__ import annotations

import urllib.parse
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

from tests.support.postgres_cluster import PostgresCluster, PostgresClusterError, lsn_to_int

if TYPE_CHECKING:
    from pathlib import Path

    from tests.support.postgres_cluster import ClusterFactory

COUNT_READY_SQL = r"SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name ~ '^[0-9A-F]{24}\.ready$'"


def ready_count_sql(cluster: PostgresCluster) -> int:
    """Count pending segments the way the provider does.

    :param cluster: the cluster to ask.
    :return: the number of segment ``.ready`` files the server reports.
    """
    return int(cluster.execute(COUNT_READY_SQL)[0][0])


def current_walfile(cluster: PostgresCluster) -> str:
    """Return the WAL file being written.

    :param cluster: the cluster to ask.
    :return: ``pg_walfile_name(pg_current_wal_lsn())``.
    """
    return str(cluster.execute("SELECT pg_walfile_name(pg_current_wal_lsn())")[0][0])


@pytest.fixture(scope="module")
def pg_1mb(pg_cluster_factory: ClusterFactory) -> PostgresCluster:
    """A cluster with 1 MB WAL segments."""
    return pg_cluster_factory(name="seg1mb", wal_segsize_mb=1)


@pytest.fixture(scope="module")
def pg_64mb_boundary(pg_cluster_factory: ClusterFactory) -> PostgresCluster:
    """A cluster with 64 MB segments that starts two segments before the log-id 0 -> 1 boundary."""
    return pg_cluster_factory(name="seg64mb", wal_segsize_mb=64, start_wal_segment="00000001000000000000003E")


def test_backlog_of_five_matches_server_count(pg_drained: PostgresCluster) -> None:
    pg = pg_drained
    ready = pg.make_backlog(5)
    assert len(ready) == 5
    assert pg.ready_segments() == ready
    assert ready_count_sql(pg) == 5
    assert pg.gate_closed


def test_make_backlog_tops_up_existing_backlog(pg_drained: PostgresCluster) -> None:
    pg = pg_drained
    first = pg.make_backlog(2)
    second = pg.make_backlog(4)
    assert second[:2] == first
    assert len(second) == 4
    with pytest.raises(ValueError, match="more than"):
        pg.make_backlog(3)


def test_drain_archives_the_backlog(pg_drained: PostgresCluster) -> None:
    pg = pg_drained
    segments = [name.removesuffix(".ready") for name in pg.make_backlog(3)]
    pg.drain()
    assert pg.ready_segments() == []
    assert ready_count_sql(pg) == 0
    assert not pg.gate_closed
    assert set(segments) <= set(pg.archived_files())
    stats = pg.archiver_stats()
    assert stats["last_archived_wal"] == segments[-1]


def test_closed_gate_makes_archive_command_fail(pg_drained: PostgresCluster) -> None:
    pg = pg_drained
    before = pg.archiver_stats()
    pg.close_gate()
    segment = pg.write_wal_and_switch()
    stats = pg.wait_until(
        lambda: (s := pg.archiver_stats())["failed_count"] > before["failed_count"] and s,
        timeout=10,
        what="failed_count to rise",
    )
    assert stats["last_failed_wal"] == segment
    assert stats["archived_count"] == before["archived_count"]
    assert pg.ready_segments() == [segment + ".ready"]


def test_1mb_segments(pg_1mb: PostgresCluster) -> None:
    assert pg_1mb.execute("SHOW wal_segment_size") == [("1MB",)]
    ready = pg_1mb.make_backlog(6)
    assert len(ready) == 6
    assert ready_count_sql(pg_1mb) == 6
    pg_1mb.drain()
    assert ready_count_sql(pg_1mb) == 0


def test_64mb_segments_across_log_id_boundary(pg_64mb_boundary: PostgresCluster) -> None:
    pg = pg_64mb_boundary
    assert pg.execute("SHOW wal_segment_size") == [("64MB",)]
    assert current_walfile(pg) == "00000001000000000000003E"
    pg.close_gate()
    completed = [pg.write_wal_and_switch() for _ in range(3)]
    assert completed == [
        "00000001000000000000003E",
        "00000001000000000000003F",
        "000000010000000100000000",
    ]
    assert pg.execute("SELECT pg_current_wal_lsn()::text") == [("1/4000000",)]  # start of 1/01
    assert pg.ready_segments() == [name + ".ready" for name in completed]
    assert ready_count_sql(pg) == 3
    pg.drain()
    assert set(completed) <= set(pg.archived_files())


def test_roles_dsn_and_uri(pg: PostgresCluster) -> None:
    password = "p@ss w:rd/'\"%?#"
    pg.create_role("harness monitor", password, pg_monitor=True)
    pg.create_role("harness_plain", password, pg_monitor=False)
    pg.create_role("harness_plain", password, pg_monitor=False)  # idempotent

    uri = pg.uri("harness monitor", password)
    parts = urllib.parse.urlsplit(uri)
    assert parts.scheme == "postgresql"
    assert (parts.hostname, parts.port, parts.path) == ("127.0.0.1", pg.port, "/postgres")
    assert urllib.parse.unquote(parts.password or "") == password
    with psycopg.connect(uri) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("harness monitor",)
        conn.execute("SELECT count(*) FROM pg_ls_archive_statusdir()").fetchone()

    with psycopg.connect(pg.dsn("harness_plain", password)) as conn:
        assert conn.execute("SELECT count(*) FROM pg_stat_archiver").fetchone() == (1,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT count(*) FROM pg_ls_archive_statusdir()")

    with psycopg.connect(pg.uri()) as conn:
        assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone() == (
            True,
        )
    with psycopg.connect(pg.dsn()) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("postgres",)


def test_start_failure_reports_log_tail_and_close_is_idempotent(pg_base_dir: Path) -> None:
    cluster = PostgresCluster.create(pg_base_dir, name="broken", extra_conf={"shared_buffers": "lots"})
    with cluster, pytest.raises(PostgresClusterError) as excinfo:
        cluster.start()
    message = str(excinfo.value)
    assert str(cluster.log_path) in message
    assert 'invalid value for parameter "shared_buffers"' in message
    cluster.close()
    cluster.close()


def _promote_and_settle(standby: PostgresCluster) -> dict[str, Any]:
    standby.promote()
    standby.wait_until(lambda: not standby.ready_files(), what="the promoted standby to archive everything")
    return standby.archiver_stats()


def test_promotion_at_segment_boundary_archives_only_the_history_file(pg_drained: PostgresCluster) -> None:
    pg = pg_drained
    segment_size = 16 * 1024 * 1024
    with pg.make_standby("standby-boundary") as standby:
        received = standby.stop_on_segment_boundary(pg)
        assert lsn_to_int(received) % segment_size == 0
        stats = _promote_and_settle(standby)
        assert stats["last_archived_wal"] == "00000002.history"
        assert stats["archived_count"] == 1
        assert stats["failed_count"] == 0
        assert standby.archived_files() == ["00000002.history"]
        assert standby.ready_segments() == []
        assert ready_count_sql(standby) == 0


def test_promotion_mid_segment_archives_history_then_partial(pg_drained: PostgresCluster) -> None:
    pg = pg_drained
    with pg.make_standby("standby-mid") as standby:
        pg.write_wal_and_switch()
        pg.execute("CREATE TABLE IF NOT EXISTS harness_mid_segment (x int)")
        pg.execute("INSERT INTO harness_mid_segment VALUES (1)")  # WAL after the last switch
        partial_of = str(pg.execute("SELECT pg_walfile_name(pg_current_wal_insert_lsn())")[0][0])
        standby.wait_for_replay(pg)
        stats = _promote_and_settle(standby)
        # The history file is archived first (the archiver gives history files priority), then the
        # old timeline's last, incomplete segment under a .partial name.
        assert standby.archived_files() == [partial_of + ".partial", "00000002.history"]
        assert stats["last_archived_wal"] == partial_of + ".partial"
        assert stats["archived_count"] == 2
        assert standby.ready_segments() == []
        # The new timeline continues in the same segment number.
        assert current_walfile(standby) == "00000002" + partial_of[8:]
        # Segments on the new timeline are archived as usual.
        completed = standby.write_wal_and_switch()
        standby.wait_until(lambda: completed in standby.archived_files(), what="the first timeline-2 segment")

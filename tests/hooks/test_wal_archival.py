"""WalArchivalHook against real PostgreSQL 15 clusters, with no mock of the database.

Each backlog is checked against the ground truth: the ``.ready`` files of real segments that the
test reads from the cluster's ``pg_wal/archive_status`` directory.
"""

from __future__ import annotations

import pytest

from airflow_provider_walthrottle.archiver_status import BacklogMethod
from airflow_provider_walthrottle.exceptions import (
    ConnectionNotDefinedError,
    DatabaseConnectError,
    InsufficientPrivilegeError,
)
from airflow_provider_walthrottle.hooks.wal_archival import WalArchivalHook

MB = 1024 * 1024


@pytest.fixture
def hooks(monkeypatch):
    """Return a function giving an exact (superuser) and an LSN-only (plain role) hook for a cluster."""

    def make(cluster):
        plain = "plain_reader"  # a standby gets it from its primary
        if not cluster.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [plain]):
            cluster.create_role(plain, "plain-pw", pg_monitor=False)
        monkeypatch.setenv(f"AIRFLOW_CONN_EXACT_{cluster.port}", cluster.uri())
        monkeypatch.setenv(f"AIRFLOW_CONN_LSN_{cluster.port}", cluster.uri(user=plain, password="plain-pw"))
        return (
            WalArchivalHook(postgres_conn_id=f"exact_{cluster.port}"),
            WalArchivalHook(postgres_conn_id=f"lsn_{cluster.port}"),
        )

    return make


def test_exact_count_equals_ready_files_and_lsn_fallback_agrees(pg_drained, hooks):
    exact, lsn = hooks(pg_drained)
    pg_drained.archive_one_segment()
    ready = pg_drained.make_backlog(7)

    by_count, by_lsn = exact.get_archiver_status(), lsn.get_archiver_status()

    assert len(ready) == len(pg_drained.ready_segments()) == 7
    assert (by_count.method, by_count.pending_segments) == (BacklogMethod.EXACT, 7)
    assert (by_lsn.method, by_lsn.pending_segments) == (BacklogMethod.LSN, 7)
    assert by_count.pending_bytes == 7 * 16 * MB
    assert by_count.wal_segment_size == 16 * MB
    assert (
        by_count.current_wal_file
        == pg_drained.execute("SELECT file_name FROM pg_walfile_name_offset(pg_current_wal_lsn())")[0][0]
    )


def test_a_drained_backlog_reads_zero_by_both_methods(pg_drained, hooks):
    exact, lsn = hooks(pg_drained)
    pg_drained.archive_one_segment()

    assert exact.get_archiver_status().pending_segments == 0
    assert lsn.get_archiver_status().pending_segments == 0


@pytest.mark.parametrize(
    ("segment_mb", "start_segment"),
    [
        (1, "000000010000000000000FFD"),  # 4096 segments per log id
        (64, "00000001000000000000003E"),  # 64 segments per log id, where 16 MB arithmetic is far off
    ],
)
def test_other_segment_sizes_across_a_log_id_boundary(pg_cluster_factory, hooks, segment_mb, start_segment):
    cluster = pg_cluster_factory(
        name=f"seg{segment_mb}", wal_segsize_mb=segment_mb, start_wal_segment=start_segment
    )
    exact, lsn = hooks(cluster)
    cluster.archive_one_segment()
    cluster.make_backlog(4)
    assert "00000001" in cluster.ready_segments()[-1][8:16], "the backlog should cross into log id 1"

    by_count, by_lsn = exact.get_archiver_status(), lsn.get_archiver_status()

    assert by_count.wal_segment_size == segment_mb * MB
    assert (by_count.pending_segments, by_lsn.pending_segments) == (4, 4)
    assert by_lsn.pending_bytes == 4 * segment_mb * MB


def test_a_cluster_that_never_archived(pg_cluster_factory, hooks):
    cluster = pg_cluster_factory(name="never-archived")
    exact, lsn = hooks(cluster)
    cluster.make_backlog(3)

    by_count, by_lsn = exact.get_archiver_status(), lsn.get_archiver_status()

    assert by_count.pending_segments == 3
    assert by_count.last_archived_wal is None
    assert (by_lsn.method, by_lsn.pending_segments, by_lsn.pending_bytes) == (BacklogMethod.LSN, None, None)
    assert "nothing has been archived" in by_lsn.detail
    assert "pg_monitor" in by_lsn.detail


def test_archive_mode_off_is_not_applicable(pg_cluster_factory, hooks):
    cluster = pg_cluster_factory(name="archive-off", archive_mode="off")
    for hook in hooks(cluster):
        status = hook.get_archiver_status()
        assert (status.method, status.pending_segments, status.archive_mode) == (
            BacklogMethod.NOT_APPLICABLE,
            None,
            "off",
        )
        assert "archive_mode is off" in status.detail


def test_failing_archiver(pg_drained, hooks):
    exact, _ = hooks(pg_drained)
    pg_drained.archive_one_segment()
    failed_before = exact.get_archiver_status().failed_count
    ready = pg_drained.make_backlog(2)
    pg_drained.wait_until(
        lambda: pg_drained.archiver_stats()["failed_count"] > failed_before, what="the archiver to fail"
    )

    failing = exact.get_archiver_status()
    assert failing.is_failing
    assert failing.failed_count > failed_before
    assert failing.last_failed_wal == ready[0].removesuffix(".ready")
    assert failing.last_failed_time is not None

    pg_drained.drain()
    recovered = exact.get_archiver_status()
    assert not recovered.is_failing
    assert recovered.pending_segments == 0
    assert recovered.last_archived_wal == ready[-1].removesuffix(".ready")


def test_standbys_are_measured_only_where_they_archive(pg_cluster_factory, hooks):
    primary = pg_cluster_factory(name="standby-primary")
    hooks(primary)  # creates the plain role, which the standbys inherit
    primary.archive_one_segment()
    with (
        primary.make_standby("standby-on", archive_mode="on") as standby,
        primary.make_standby("standby-always", archive_mode="always") as watcher,
    ):
        for hook in hooks(standby):  # archive_mode=on: a standby archives nothing until promoted
            status = hook.get_archiver_status()
            assert status.in_recovery
            assert (status.method, status.pending_segments) == (BacklogMethod.NOT_APPLICABLE, None)
            assert "standby" in status.detail
        watched = hooks(watcher)[0].get_archiver_status()  # always: it archives what it receives
        assert watched.in_recovery
        assert (watched.method, watched.pending_segments) == (
            BacklogMethod.EXACT,
            len(watcher.ready_segments()),
        )


def test_timeline_history_file_as_last_archived(pg_cluster_factory, hooks):
    primary = pg_cluster_factory(name="history-primary")
    hooks(primary)
    primary.archive_one_segment()
    with primary.make_standby("history-standby") as standby:
        exact, lsn = hooks(standby)
        standby.stop_on_segment_boundary(primary)  # promoted there, only 00000002.history is archived
        standby.promote()
        standby.wait_until(
            lambda: (
                standby.archiver_stats()["last_archived_wal"] == "00000002.history"
                and not standby.ready_files()
            ),
            what="the promoted standby to archive 00000002.history",
        )
        standby.close_gate()

        by_count, by_lsn = exact.get_archiver_status(), lsn.get_archiver_status()
        assert not by_count.in_recovery
        assert (by_count.method, by_count.pending_segments) == (BacklogMethod.EXACT, 0)
        assert by_lsn.last_archived_wal == "00000002.history"
        assert (by_lsn.method, by_lsn.pending_segments) == (BacklogMethod.LSN, None)
        assert "timeline history file 00000002.history" in by_lsn.detail

        # once a segment of the new timeline is archived, the LSN count is known again
        standby.archive_one_segment()
        standby.make_backlog(3)
        assert lsn.get_archiver_status().pending_segments == 3 == exact.get_archiver_status().pending_segments


def test_partial_segment_as_last_archived(pg_cluster_factory, hooks):
    primary = pg_cluster_factory(name="partial-primary")
    hooks(primary)
    primary.archive_one_segment()
    with primary.make_standby("partial-standby") as standby:
        exact, lsn = hooks(standby)
        primary.execute("SELECT pg_switch_wal()")
        primary.execute("CREATE TABLE mid_segment AS SELECT 1 AS x")  # WAL after the last switch
        standby.wait_for_replay(primary)
        standby.promote()
        standby.wait_until(
            lambda: (
                str(standby.archiver_stats()["last_archived_wal"]).endswith(".partial")
                and not standby.ready_files()
            ),
            what="the promoted standby to archive the old timeline's .partial segment",
        )
        standby.close_gate()
        assert lsn.get_archiver_status().pending_segments == 0 == exact.get_archiver_status().pending_segments

        standby.make_backlog(2)  # the first is the new timeline's segment that shares the .partial's number
        by_count, by_lsn = exact.get_archiver_status(), lsn.get_archiver_status()
        assert by_lsn.last_archived_wal.endswith(".partial")
        assert (by_lsn.method, by_lsn.pending_segments) == (BacklogMethod.LSN, 2)
        assert by_count.pending_segments == 2 == len(standby.ready_segments())


# ---------------------------------------------------------------------------------------- bad input


def test_missing_connection_names_the_id_and_the_fix():
    with pytest.raises(ConnectionNotDefinedError) as raised:
        WalArchivalHook(postgres_conn_id="no_such_conn").get_archiver_status()
    message = str(raised.value)
    assert "'no_such_conn' is not defined" in message
    assert "AIRFLOW_CONN_NO_SUCH_CONN" in message
    assert "\n" not in message


def test_unreachable_server(monkeypatch, pg):
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("AIRFLOW_CONN_GONE", f"postgresql://postgres:pw@127.0.0.1:{port}/postgres")
    with pytest.raises(DatabaseConnectError) as raised:
        WalArchivalHook(postgres_conn_id="gone").get_archiver_status()
    message = str(raised.value)
    assert f"connection 'gone' (127.0.0.1:{port}/postgres as postgres)" in message
    assert "Connection refused" in message and "check the connection's host and port" in message
    assert "\n" not in message and "pw" not in message.replace("password", "")


def test_wrong_password(monkeypatch, pg):
    monkeypatch.setenv("AIRFLOW_CONN_WRONG_PW", pg.uri(password="not-the-password"))
    with pytest.raises(DatabaseConnectError, match=r"password authentication failed.*login and password"):
        WalArchivalHook(postgres_conn_id="wrong_pw").get_archiver_status()


def test_role_without_connect_privilege(monkeypatch, pg):
    pg.execute("DROP DATABASE IF EXISTS locked")
    pg.execute("CREATE DATABASE locked")
    pg.execute("REVOKE CONNECT ON DATABASE locked FROM PUBLIC")
    if not pg.execute("SELECT 1 FROM pg_roles WHERE rolname = 'nobody'"):
        pg.create_role("nobody", "nobody-pw", pg_monitor=False)
    monkeypatch.setenv("AIRFLOW_CONN_LOCKED", pg.uri(user="nobody", password="nobody-pw", dbname="locked"))
    with pytest.raises(DatabaseConnectError, match=r"permission denied for database.*grant the role CONNECT"):
        WalArchivalHook(postgres_conn_id="locked").get_archiver_status()


def test_the_hook_changes_nothing(pg_drained, hooks):
    exact, lsn = hooks(pg_drained)
    objects_before = pg_drained.execute("SELECT count(*) FROM pg_class")
    for hook in (exact, lsn):
        hook.get_archiver_status()
        with hook.connect(read_only=True) as conn, conn.transaction():
            assert conn.execute("SHOW transaction_read_only").fetchone() == ("on",)
    assert pg_drained.execute("SELECT count(*) FROM pg_class") == objects_before


async def _async_status(hook, **kwargs):
    return await hook.aget_archiver_status(**kwargs)


def test_async_measurement_agrees_with_sync(pg_drained, hooks):
    import asyncio

    exact, lsn = hooks(pg_drained)
    pg_drained.archive_one_segment()
    pg_drained.make_backlog(4)
    for hook in (exact, lsn):
        sync_status = hook.get_archiver_status()
        async_status = asyncio.run(_async_status(hook))
        assert async_status.pending_segments == sync_status.pending_segments == 4
        assert async_status.method is sync_status.method


def test_role_that_may_not_read_the_archiver_statistics(hooks, pg_drained):
    _, lsn = hooks(pg_drained)
    pg_drained.execute("REVOKE SELECT ON pg_catalog.pg_stat_archiver FROM PUBLIC")
    try:
        with pytest.raises(InsufficientPrivilegeError) as raised:
            lsn.get_archiver_status()
    finally:
        pg_drained.execute("GRANT SELECT ON pg_catalog.pg_stat_archiver TO PUBLIC")
    message = str(raised.value)
    assert "Role 'plain_reader' of connection 'lsn_" in message
    assert "permission denied for view pg_stat_archiver" in message
    assert "SELECT on pg_catalog.pg_stat_archiver" in message
    assert "\n" not in message


def test_exact_count_takes_only_real_segment_names(pg_cluster_factory, hooks):
    import os
    import re

    cluster = pg_cluster_factory(name="status-names")
    exact, _ = hooks(cluster)
    cluster.make_backlog(2)
    status_dir = cluster.data_dir / "pg_wal" / "archive_status"
    owner = os.stat(status_dir)
    for name in (
        "00000002.history.ready",
        "000000010000000000000009.partial.ready",
        "000000010000000000000002.00000028.backup.ready",
        "00000001000000000000000a.ready",  # lower-case hex is not a segment PostgreSQL names
        "00000001000000000000000G.ready",
        "0000000100000000000000FF0.ready",
        "000000010000000000000042.done",
        "0000000100000000000000F0.ready",  # a real segment name
    ):
        path = status_dir / name
        path.touch()
        os.chown(path, owner.st_uid, owner.st_gid)
    truth = [name for name in os.listdir(status_dir) if re.fullmatch(r"[0-9A-F]{24}\.ready", name)]

    assert exact.get_archiver_status().pending_segments == len(truth) == 3


def test_far_above_the_limit_the_estimate_replaces_the_exact_count(pg_drained, hooks):
    import asyncio

    exact, _ = hooks(pg_drained)
    pg_drained.archive_one_segment()
    pg_drained.make_backlog(7)

    at_limit = exact.get_archiver_status(exact_up_to=7)
    above = exact.get_archiver_status(exact_up_to=6)
    above_async = asyncio.run(_async_status(exact, exact_up_to=6))

    assert (at_limit.method, at_limit.pending_segments) == (BacklogMethod.EXACT, 7)
    assert (above.method, above.pending_segments) == (BacklogMethod.LSN, 7)
    assert (above_async.method, above_async.pending_segments) == (BacklogMethod.LSN, 7)

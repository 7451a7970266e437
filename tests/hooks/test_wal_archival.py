"""WalArchivalHook against real PostgreSQL 15 clusters, with no mock of the database.

Each backlog is checked against the ground truth: the ``.ready`` files of real segments that the
test reads from the cluster's ``pg_wal/archive_status`` directory.
"""

from __future__ import annotations

import pytest

from airflow_provider_walthrottle.exceptions import (
    ConnectionNotDefinedError,
    DatabaseConnectError,
    InsufficientPrivilegeError,
)
from airflow_provider_walthrottle.hooks.wal_archival import WalArchivalHook
from airflow_provider_walthrottle.wal.archiver_status import BacklogMethod

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


# ------------------------------------------------------------------------- timeouts, silent servers


def _bounded(function, seconds):
    """Return what ``function()`` returns or raises, or fail the test if it takes over ``seconds``.

    Without a connect timeout, a silent server holds the caller forever: the test must end anyway.
    """
    import concurrent.futures

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(function).result(timeout=seconds)
    except concurrent.futures.TimeoutError:
        pytest.fail(f"still waiting for a silent server after {seconds} s")
    finally:
        pool.shutdown(wait=False)


@pytest.mark.slow
def test_a_silent_server_fails_with_one_line_after_the_default_connect_timeout(monkeypatch):
    import time

    from tests.support.silent_server import SilentServer

    with SilentServer() as server:
        monkeypatch.setenv("AIRFLOW_CONN_SILENT", f"postgresql://mon:mon-secret@127.0.0.1:{server.port}/db")
        started = time.monotonic()
        with pytest.raises(DatabaseConnectError) as raised:
            _bounded(WalArchivalHook(postgres_conn_id="silent").get_archiver_status, 30)
        waited = time.monotonic() - started
        assert server.accepted == 1  # it was reached, and said nothing
    assert 9 <= waited <= 15  # the default connect timeout, 10 s
    message = str(raised.value)
    assert message.startswith(
        f"Cannot connect to PostgreSQL with connection 'silent' (127.0.0.1:{server.port}/"
    )
    assert "timeout expired" in message and "check the connection's host and port" in message
    assert "\n" not in message and "mon-secret" not in message


def test_a_silent_server_fails_the_async_check_too(monkeypatch):
    import asyncio
    import time

    from tests.support.silent_server import SilentServer

    monkeypatch.setenv("AIRFLOW__WALTHROTTLE__CONNECT_TIMEOUT", "2")  # [walthrottle] connect_timeout = 2
    with SilentServer() as server:
        monkeypatch.setenv("AIRFLOW_CONN_SILENT_ASYNC", f"postgresql://mon:pw@127.0.0.1:{server.port}/db")
        hook = WalArchivalHook(postgres_conn_id="silent_async")
        started = time.monotonic()
        with pytest.raises(DatabaseConnectError) as raised:
            _bounded(lambda: asyncio.run(_async_status(hook)), 30)
        waited = time.monotonic() - started
        assert server.accepted == 1
    assert 1.5 <= waited <= 7
    message = str(raised.value)
    assert "connection 'silent_async'" in message and "timeout expired" in message
    assert "\n" not in message


def test_the_default_timeouts_in_the_connection_arguments(monkeypatch):
    from airflow_provider_walthrottle.config import (
        DEFAULT_CONNECT_TIMEOUT_SECONDS,
        DEFAULT_READ_ONLY_STATEMENT_TIMEOUT_SECONDS,
    )

    assert (DEFAULT_CONNECT_TIMEOUT_SECONDS, DEFAULT_READ_ONLY_STATEMENT_TIMEOUT_SECONDS) == (10, 30)
    monkeypatch.setenv("AIRFLOW_CONN_PLAIN", "postgresql://mon:pw@db.example:5432/app")
    monkeypatch.delenv("PGOPTIONS", raising=False)
    hook = WalArchivalHook(postgres_conn_id="plain")
    assert hook.connection_kwargs()["connect_timeout"] == 10
    assert "options" not in hook.connection_kwargs()  # the operator's migration has its own timeout
    assert hook.connection_kwargs(read_only=True)["options"] == "-c statement_timeout=30000"

    # airflow.cfg's [walthrottle] changes the defaults; the connection's extra still wins
    monkeypatch.setenv("AIRFLOW__WALTHROTTLE__CONNECT_TIMEOUT", "4")
    monkeypatch.setenv("AIRFLOW__WALTHROTTLE__READ_ONLY_STATEMENT_TIMEOUT", "0")
    assert hook.connection_kwargs()["connect_timeout"] == 4
    assert "options" not in hook.connection_kwargs(read_only=True)
    monkeypatch.setenv(
        "AIRFLOW_CONN_TUNED",
        "postgresql://mon:pw@db.example/app?connect_timeout=25&options=-c%20work_mem%3D8MB",
    )
    monkeypatch.delenv("AIRFLOW__WALTHROTTLE__READ_ONLY_STATEMENT_TIMEOUT")
    tuned = WalArchivalHook(postgres_conn_id="tuned").connection_kwargs(read_only=True)
    assert tuned["connect_timeout"] == "25"
    assert tuned["options"] == "-c statement_timeout=30000 -c work_mem=8MB"


def test_a_timeout_option_that_is_not_a_number_names_the_option(monkeypatch):
    from airflow_provider_walthrottle.exceptions import UnsupportedConfigurationError

    monkeypatch.setenv("AIRFLOW_CONN_PLAIN", "postgresql://mon:pw@db.example:5432/app")
    monkeypatch.setenv("AIRFLOW__WALTHROTTLE__CONNECT_TIMEOUT", "10s")
    with pytest.raises(
        UnsupportedConfigurationError, match=r"\[walthrottle\] connect_timeout must be a whole"
    ):
        WalArchivalHook(postgres_conn_id="plain").get_archiver_status()


def test_read_only_connections_have_a_statement_timeout_and_the_migrations_do_not(pg, monkeypatch):
    import asyncio

    monkeypatch.setenv("AIRFLOW_CONN_TIMED", pg.uri())
    monkeypatch.setenv("AIRFLOW_CONN_TIMED_OWN", pg.uri() + "?options=-c%20statement_timeout%3D5s")
    hook = WalArchivalHook(postgres_conn_id="timed")
    server_default = pg.execute("SHOW statement_timeout")[0][0]

    async def async_setting() -> str:
        async with hook._async_read_only_connection() as conn, conn.cursor() as cursor:
            await cursor.execute("SHOW statement_timeout")
            return (await cursor.fetchone())[0]

    with hook.connect(read_only=True) as conn:
        assert conn.execute("SHOW statement_timeout").fetchone() == ("30s",)
    assert asyncio.run(async_setting()) == "30s"
    with hook.connect() as conn:  # the operator's: BatchedMigrationOperator(statement_timeout_ms=...)
        assert conn.execute("SHOW statement_timeout").fetchone() == (server_default,)
    with WalArchivalHook(postgres_conn_id="timed_own").connect(read_only=True) as conn:
        assert conn.execute("SHOW statement_timeout").fetchone() == ("5s",)

    # the provider's wins over the role's own (a startup option beats ALTER ROLE ... SET)
    pg.create_role("timed_reader", "timed-pw", pg_monitor=True)
    pg.execute("ALTER ROLE timed_reader SET statement_timeout = '1h'")
    monkeypatch.setenv("AIRFLOW_CONN_TIMED_ROLE", pg.uri(user="timed_reader", password="timed-pw"))
    role_hook = WalArchivalHook(postgres_conn_id="timed_role")
    with role_hook.connect(read_only=True) as conn:
        assert conn.execute("SHOW statement_timeout").fetchone() == ("30s",)
    with role_hook.connect() as conn:
        assert conn.execute("SHOW statement_timeout").fetchone() == ("1h",)


def test_connect_errors_have_a_public_form_without_host_database_and_login(monkeypatch, pg):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("AIRFLOW_CONN_GONE_PUBLIC", f"postgresql://alice:pw@127.0.0.1:{port}/ledger")
    monkeypatch.setenv("AIRFLOW_CONN_WRONG_LOGIN", pg.uri(user="mallory", password="not-the-password"))
    for conn_id, reason in (("gone_public", "connection refused"), ("wrong_login", "authentication failed")):
        with pytest.raises(DatabaseConnectError) as raised:
            WalArchivalHook(postgres_conn_id=conn_id).get_archiver_status()
        public = raised.value.public_message
        assert public.startswith(f"Cannot connect to PostgreSQL with connection '{conn_id}': ")
        assert reason in public and "\n" not in public
        for detail in ("127.0.0.1", str(port), str(pg.port), "alice", "mallory", "ledger", "postgres"):
            assert detail not in public, (detail, public)
        assert "127.0.0.1" in str(raised.value)


def test_a_password_that_libpq_quotes_is_hidden(monkeypatch):
    # a password pasted into the host field: libpq names the host it could not resolve
    password = "Tr0ub4dor-and-3"
    monkeypatch.setenv(
        "AIRFLOW_CONN_PASTED",
        f'{{"conn_type": "postgres", "host": "{password}", "login": "mon", "password": "{password}"}}',
    )
    with pytest.raises(DatabaseConnectError) as raised:
        WalArchivalHook(postgres_conn_id="pasted").get_archiver_status()
    message = str(raised.value)
    assert password not in message and password not in raised.value.public_message
    assert "[password hidden]" in message and "check the connection's host name" in message

"""Throwaway PostgreSQL 15 clusters for the test suite.

Each :class:`PostgresCluster` lives in its own directory under a base directory made by
:func:`make_base_dir`::

    <base>/<name>/data          the data directory (``initdb`` or ``pg_basebackup``)
    <base>/<name>/archive       where ``archive_command`` copies segments
    <base>/<name>/sock          the Unix socket directory
    <base>/<name>/gate_closed   present while the archive gate is closed
    <base>/<name>/postgres.log  the server log (``pg_ctl -l``)

The server refuses to run as root, so when the tests run as root every server binary is run through
``runuser -u postgres --`` and every directory the server uses is owned by ``postgres``.

The harness settings live in ``<data>/harness.conf``, included from ``postgresql.conf``; a standby made
with :meth:`PostgresCluster.make_standby` gets its own copy of that file with its own port, socket
directory, archive directory and gate.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence
    from types import TracebackType

__all__ = [
    "READY_SEGMENT_RE",
    "ClusterFactory",
    "PostgresCluster",
    "PostgresClusterError",
    "find_binary",
    "int_to_lsn",
    "iter_live_clusters",
    "lsn_to_int",
    "make_base_dir",
    "remove_base_dir",
    "stop_all_clusters",
    "wait_until",
]

#: Name of a ``.ready`` status file of a real WAL segment (not a history, backup or partial file).
READY_SEGMENT_RE = re.compile(r"^[0-9A-F]{24}\.ready$")

SERVER_USER = "postgres"
SUPERUSER = "postgres"
HOST = "127.0.0.1"
FILLER_TABLE = "harness_wal_filler"
LOG_TAIL_LINES = 40
WAL_PAGE_SIZE = 8192
LONG_PAGE_HEADER_SIZE = 40
SHORT_PAGE_HEADER_SIZE = 24
START_ATTEMPTS = 3

T = TypeVar("T")

#: Clusters whose server may be running; :func:`stop_all_clusters` stops them.
_LIVE: dict[int, PostgresCluster] = {}
#: Ports handed out by this process, so that two clusters never get the same one.
_PORTS_USED: set[int] = set()


class PostgresClusterError(RuntimeError):
    """A server binary failed, or a cluster did not reach the expected state."""


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def _running_as_root() -> bool:
    return os.geteuid() == 0


def _server_ids() -> tuple[int, int]:
    """Return the uid and gid that own the server's files.

    :return: ``(uid, gid)`` of the ``postgres`` user when running as root, else our own.
    """
    if _running_as_root():
        entry = pwd.getpwnam(SERVER_USER)
        return entry.pw_uid, entry.pw_gid
    return os.geteuid(), os.getegid()


def _give_to_server(path: Path, mode: int | None = None) -> None:
    """Make ``path`` owned by the server's user (when root) and optionally chmod it.

    :param path: file or directory to hand over.
    :param mode: permission bits to set, or ``None`` to leave them.
    """
    if _running_as_root():
        uid, gid = _server_ids()
        os.chown(path, uid, gid)
    if mode is not None:
        os.chmod(path, mode)


def _server_dir(path: Path, mode: int = 0o700) -> Path:
    """Create a directory that the server's user owns.

    :param path: directory to create (its parent must exist).
    :param mode: permission bits.
    :return: ``path``.
    """
    path.mkdir(mode=mode)
    _give_to_server(path, mode)
    return path


def _server_file(path: Path, text: str, mode: int = 0o600) -> Path:
    """Write a text file that the server's user owns.

    :param path: file to write.
    :param text: its content.
    :param mode: permission bits.
    :return: ``path``.
    """
    path.write_text(text, encoding="utf-8")
    _give_to_server(path, mode)
    return path


_BINARIES: dict[str, str] = {}


def find_binary(name: str) -> str:
    """Locate a PostgreSQL program: on ``PATH`` first, else in ``pg_config --bindir``.

    :param name: program name, e.g. ``"initdb"``.
    :return: absolute path of the program.
    :raises PostgresClusterError: if it cannot be found.
    """
    if name in _BINARIES:
        return _BINARIES[name]
    found = shutil.which(name)
    if found is None:
        pg_config = shutil.which("pg_config")
        if pg_config is not None:
            bindir = subprocess.run(
                [pg_config, "--bindir"], check=True, capture_output=True, text=True
            ).stdout.strip()
            candidate = Path(bindir) / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                found = str(candidate)
    if found is None:
        raise PostgresClusterError(
            f"cannot find the PostgreSQL program {name!r} on PATH or in pg_config --bindir"
        )
    _BINARIES[name] = found
    return found


def _clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return our environment without libpq's ``PG*`` variables, plus ``extra``.

    :param extra: variables to add.
    :return: the environment for a child process.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    if extra:
        env.update(extra)
    return env


def _run_server_program(
    name: str,
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 120,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a PostgreSQL program as the server's user.

    :param name: program name, found with :func:`find_binary`.
    :param args: its arguments.
    :param env: extra environment variables.
    :param timeout: seconds before giving up.
    :param cwd: working directory; must be enterable by the server's user.
    :return: the completed process.
    :raises PostgresClusterError: if it exits non-zero.
    """
    cmd = [find_binary(name), *args]
    if _running_as_root():
        cmd = ["runuser", "-u", SERVER_USER, "--", *cmd]
    proc = subprocess.run(
        cmd,
        env=_clean_env(env),
        cwd=str(cwd) if cwd is not None else "/",
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise PostgresClusterError(
            f"{name} failed with exit code {proc.returncode}\ncommand: {shlex.join(cmd)}\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


def _free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free now and not handed out before by this process.

    :return: the port number.
    """
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port = int(sock.getsockname()[1])
        if port not in _PORTS_USED:
            _PORTS_USED.add(port)
            return port
    raise PostgresClusterError("could not find a free TCP port")


def _conf_value(value: str) -> str:
    """Quote a value for ``postgresql.conf``.

    :param value: the raw value.
    :return: the value in single quotes, with quotes and backslashes escaped.
    """
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _check_delay(seconds: float) -> float:
    """Return ``seconds`` as a float, or fail naming it if it is not a finite number from 0 to 3600."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 <= seconds <= 3600:
        raise ValueError(f"archive_delay_seconds must be a number of seconds from 0 to 3600, got {seconds!r}")
    return float(seconds)


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 30,
    what: str = "condition",
    interval: float = 0.05,
) -> T:
    """Poll ``predicate`` until it returns something truthy.

    :param predicate: called with no arguments every ``interval`` seconds.
    :param timeout: seconds before giving up.
    :param what: description used in the error message.
    :param interval: seconds between polls.
    :return: the first truthy value ``predicate`` returned.
    :raises AssertionError: naming ``what`` if the timeout passes.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def lsn_to_int(lsn: str) -> int:
    """Convert an LSN in text form to a byte position.

    :param lsn: e.g. ``"1/4000000"``.
    :return: e.g. ``0x104000000``.
    """
    high, low = lsn.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def int_to_lsn(position: int) -> str:
    """Convert a byte position to an LSN in text form.

    :param position: e.g. ``0x104000000``.
    :return: e.g. ``"1/4000000"``.
    """
    return f"{position >> 32:X}/{position & 0xFFFFFFFF:X}"


def make_base_dir(prefix: str = "walthrottle-pg-") -> Path:
    """Create a temporary directory that the server's user can use.

    pytest's ``tmp_path`` lives under a root-only directory, so the harness makes its own.

    :param prefix: prefix of the directory name.
    :return: the new directory (mode 0755, owned by ``postgres`` when running as root).
    """
    path = Path(tempfile.mkdtemp(prefix=prefix))
    _give_to_server(path, 0o755)
    return path


def remove_base_dir(path: Path) -> None:
    """Remove a directory made by :func:`make_base_dir`, with everything in it.

    :param path: the directory.
    """
    shutil.rmtree(path, ignore_errors=True)


def stop_all_clusters() -> None:
    """Stop every cluster of this process whose server may still be running."""
    for cluster in list(_LIVE.values()):
        with contextlib.suppress(Exception):
            cluster.close()


atexit.register(stop_all_clusters)


# --------------------------------------------------------------------------------------------------
# the cluster
# --------------------------------------------------------------------------------------------------


class PostgresCluster:
    """One throwaway PostgreSQL cluster, with an archive gate the test controls.

    Make one with :meth:`create` (a primary) or :meth:`make_standby`; do not call the constructor.

    :param root: directory of the cluster (``<base>/<name>``).
    :param name: name of the cluster.
    :param port: TCP port on 127.0.0.1.
    :param superuser_password: password of the ``postgres`` role.
    :param wal_segsize_mb: WAL segment size in MB.
    :param archive_mode: ``archive_mode`` setting (``on``, ``always`` or ``off``).
    :param extra_conf: further settings for ``harness.conf``.
    """

    superuser: str = SUPERUSER
    host: str = HOST
    #: Seconds ``archive_command`` sleeps before each copy; 0 copies at once (see :meth:`set_archive_delay`).
    archive_delay_seconds: float = 0.0

    def __init__(
        self,
        root: Path,
        *,
        name: str,
        port: int,
        superuser_password: str,
        wal_segsize_mb: int,
        archive_mode: str,
        extra_conf: Mapping[str, str] | None = None,
    ) -> None:
        self.root = root
        self.name = name
        self.port = port
        self.superuser_password = superuser_password
        self.wal_segsize_mb = wal_segsize_mb
        self.archive_mode = archive_mode
        self.extra_conf: dict[str, str] = dict(extra_conf or {})
        self.data_dir = root / "data"
        self.archive_dir = root / "archive"
        self.socket_dir = root / "sock"
        self.gate_path = root / "gate_closed"
        self.log_path = root / "postgres.log"
        self._conn: psycopg.Connection[Any] | None = None
        self._filler_ready = False
        self._running = False
        self._primary_conninfo: str | None = None

    def __repr__(self) -> str:
        return f"PostgresCluster(name={self.name!r}, port={self.port}, data_dir={self.data_dir!s})"

    # ---------------------------------------------------------------------------------- creation

    @classmethod
    def create(
        cls,
        base_dir: Path,
        *,
        name: str,
        wal_segsize_mb: int = 16,
        archive_mode: str = "on",
        start_wal_segment: str | None = None,
        extra_conf: dict[str, str] | None = None,
        archive_delay_seconds: float = 0.0,
    ) -> PostgresCluster:
        """Initialise a new, stopped primary cluster under ``base_dir``.

        :param base_dir: directory from :func:`make_base_dir`.
        :param name: cluster name, also the name of its directory; must be new in ``base_dir``.
        :param wal_segsize_mb: WAL segment size in MB (a power of two from 1 to 1024).
        :param archive_mode: ``archive_mode`` setting.
        :param start_wal_segment: if given, a WAL file name passed to ``pg_resetwal -l`` so that the
            cluster starts writing in that segment (e.g. just before a log-id boundary).
        :param extra_conf: further server settings; they override the harness's own.
        :param archive_delay_seconds: a slow archiver: ``archive_command`` sleeps this long before
            each copy (see :meth:`set_archive_delay`); 0, the default, copies at once.
        :return: the cluster, not started yet.
        """
        root = _server_dir(base_dir / name, 0o755)
        cluster = cls(
            root,
            name=name,
            port=_free_port(),
            superuser_password="pw-" + secrets.token_urlsafe(12),
            wal_segsize_mb=wal_segsize_mb,
            archive_mode=archive_mode,
            extra_conf=extra_conf,
        )
        cluster.archive_delay_seconds = _check_delay(archive_delay_seconds)
        _server_dir(cluster.archive_dir)
        _server_dir(cluster.socket_dir)
        pwfile = _server_file(root / "pwfile", cluster.superuser_password + "\n")
        try:
            _run_server_program(
                "initdb",
                [
                    "-D",
                    str(cluster.data_dir),
                    "-U",
                    SUPERUSER,
                    "--pwfile",
                    str(pwfile),
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--wal-segsize",
                    str(wal_segsize_mb),
                    "--no-sync",
                    "--no-instructions",
                ],
                cwd=root,
            )
        finally:
            pwfile.unlink()
        if start_wal_segment is not None:
            _run_server_program(
                "pg_resetwal", ["-l", start_wal_segment, "-D", str(cluster.data_dir)], cwd=root
            )
        cluster._ensure_replication_hba()
        conf = cluster.data_dir / "postgresql.conf"
        with conf.open("a", encoding="utf-8") as fh:
            fh.write("\n# added by tests/support/postgres_cluster.py\ninclude 'harness.conf'\n")
        cluster._write_harness_conf()
        return cluster

    def make_standby(self, name: str, *, archive_mode: str = "on") -> PostgresCluster:
        """Make a streaming standby of this (running) cluster and start it.

        Uses ``pg_basebackup -R -X stream`` over TCP as the superuser. The standby has its own port,
        archive directory and (open) gate. Returns once it is in recovery and streaming.

        :param name: name of the standby; must be new in this cluster's base directory.
        :param archive_mode: ``archive_mode`` of the standby (``on`` archives only after promotion).
        :return: the running standby.
        """
        standby = type(self)(
            _server_dir(self.root.parent / name, 0o755),
            name=name,
            port=_free_port(),
            superuser_password=self.superuser_password,
            wal_segsize_mb=self.wal_segsize_mb,
            archive_mode=archive_mode,
            extra_conf=self.extra_conf,
        )
        _server_dir(standby.archive_dir)
        _server_dir(standby.socket_dir)
        _run_server_program(
            "pg_basebackup",
            [
                "-D",
                str(standby.data_dir),
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-U",
                self.superuser,
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
                "-w",
            ],
            env={"PGPASSWORD": self.superuser_password},
            cwd=standby.root,
        )
        standby._write_harness_conf()
        try:
            standby.start()
            standby.wait_until(
                lambda: standby.execute("SELECT pg_is_in_recovery()")[0][0],
                what=f"standby {name} to be in recovery",
            )
            standby.wait_until(
                lambda: standby.execute("SELECT status FROM pg_stat_wal_receiver") == [("streaming",)],
                what=f"standby {name} to stream from {self.name}",
            )
        except BaseException:
            standby.close()
            raise
        return standby

    def _ensure_replication_hba(self) -> None:
        """Make sure ``pg_hba.conf`` lets 127.0.0.1 connect for replication with scram."""
        hba = self.data_dir / "pg_hba.conf"
        text = hba.read_text(encoding="utf-8")
        wanted = re.compile(r"^host\s+replication\s+all\s+127\.0\.0\.1/32\s+scram-sha-256\s*$", re.MULTILINE)
        if not wanted.search(text):
            with hba.open("a", encoding="utf-8") as fh:
                fh.write("host    replication     all     127.0.0.1/32    scram-sha-256\n")

    def settings(self) -> dict[str, str]:
        """Return the server settings the harness writes to ``harness.conf``.

        :return: setting name to raw value (``extra_conf`` applied last).
        """
        archive_command = (
            f"test ! -f {shlex.quote(str(self.gate_path))} && cp %p {shlex.quote(str(self.archive_dir))}/%f"
        )
        if self.archive_delay_seconds > 0:
            # a slow archiver: at most one segment per delay (the archiver copies one file at a time)
            gate = f"test ! -f {shlex.quote(str(self.gate_path))} && "
            archive_command = f"{gate}sleep {self.archive_delay_seconds:g} && {archive_command[len(gate) :]}"
        conf = {
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": str(self.socket_dir),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "on",
            "wal_level": "replica",
            "max_wal_senders": "5",
            "wal_keep_size": "1GB",
            "archive_mode": self.archive_mode,
            "archive_command": archive_command,
            "archive_timeout": "0",
            "logging_collector": "off",
            "log_min_messages": "warning",
            "shared_buffers": "32MB",
            "autovacuum": "off",
        }
        conf.update(self.extra_conf)
        return conf

    def _write_harness_conf(self) -> None:
        lines = [f"# written by tests/support/postgres_cluster.py for cluster {self.name}"]
        lines += [f"{key} = {_conf_value(value)}" for key, value in self.settings().items()]
        _server_file(self.data_dir / "harness.conf", "\n".join(lines) + "\n")

    # ---------------------------------------------------------------------------------- lifecycle

    @property
    def running(self) -> bool:
        """Whether this harness started the server and has not stopped it."""
        return self._running

    def start(self) -> None:
        """Start the server (``pg_ctl start -w``); a no-op if it is running.

        If the port turns out to be taken, a new port is picked and the start retried.

        :raises PostgresClusterError: with the last lines of the server log if it does not start.
        """
        if self._running:
            return
        for attempt in range(START_ATTEMPTS):
            log_size = self.log_path.stat().st_size if self.log_path.exists() else 0
            try:
                _run_server_program(
                    "pg_ctl",
                    ["start", "-w", "-t", "60", "-D", str(self.data_dir), "-l", str(self.log_path)],
                    cwd=self.root,
                )
            except (PostgresClusterError, subprocess.TimeoutExpired) as exc:
                self._kill_half_started()
                new_log = self._read_log()[log_size:]
                if "Address already in use" in new_log and attempt + 1 < START_ATTEMPTS:
                    self.port = _free_port()
                    self._write_harness_conf()
                    continue
                raise PostgresClusterError(
                    f"cluster {self.name} did not start: {exc}\n"
                    f"last {LOG_TAIL_LINES} lines of {self.log_path}:\n{self.log_tail()}"
                ) from exc
            break
        self._running = True
        _LIVE[id(self)] = self

    def _kill_half_started(self) -> None:
        """After a failed start, stop a postmaster that may still be running (``-m immediate``)."""
        if (self.data_dir / "postmaster.pid").exists():
            with contextlib.suppress(PostgresClusterError, subprocess.TimeoutExpired):
                _run_server_program(
                    "pg_ctl",
                    ["stop", "-w", "-t", "30", "-m", "immediate", "-D", str(self.data_dir)],
                    cwd=self.root,
                )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``pg_ctl stop -m fast -w``); a no-op if it is not running.

        Falls back to ``-m immediate`` if a fast shutdown does not finish.

        :param mode: shutdown mode passed to ``pg_ctl stop -m``.
        """
        self._close_conn()
        if not self._running:
            return
        try:
            _run_server_program(
                "pg_ctl", ["stop", "-w", "-t", "60", "-m", mode, "-D", str(self.data_dir)], cwd=self.root
            )
        except (PostgresClusterError, subprocess.TimeoutExpired):
            if (self.data_dir / "postmaster.pid").exists():
                _run_server_program(
                    "pg_ctl",
                    ["stop", "-w", "-t", "60", "-m", "immediate", "-D", str(self.data_dir)],
                    cwd=self.root,
                )
        self._running = False
        _LIVE.pop(id(self), None)

    def restart(self) -> None:
        """Stop and start the server."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server and close the harness's connection; safe to call more than once."""
        self.stop()

    def __enter__(self) -> PostgresCluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def promote(self, timeout: float = 30) -> None:
        """Promote this standby (``pg_ctl promote -w``) and wait until it leaves recovery.

        :param timeout: seconds to wait for ``pg_is_in_recovery()`` to become false.
        """
        _run_server_program(
            "pg_ctl", ["promote", "-w", "-t", str(int(timeout)), "-D", str(self.data_dir)], cwd=self.root
        )
        self.wait_until(
            lambda: not self.execute("SELECT pg_is_in_recovery()")[0][0],
            timeout=timeout,
            what=f"{self.name} to leave recovery after promotion",
        )

    def insert_lsn(self) -> str:
        """Return ``pg_current_wal_insert_lsn()``.

        Unlike ``pg_current_wal_lsn()`` (the write position) it counts WAL not written yet, which
        matters with ``synchronous_commit=off``.

        :return: the LSN as text, e.g. ``0/4003B98``.
        """
        return str(self.execute("SELECT pg_current_wal_insert_lsn()::text")[0][0])

    def wait_for_replay(self, primary: PostgresCluster, timeout: float = 30) -> str:
        """On a standby, wait until it has replayed all WAL the primary has inserted so far.

        Right after a WAL switch the insert position is just past the new segment's page header, but
        no record is there yet, so the target is moved back to the segment start; otherwise the wait
        would last until the primary next writes a record.

        :param primary: the cluster this standby streams from.
        :param timeout: seconds before giving up.
        :return: the LSN waited for, as text.
        """
        target = lsn_to_int(primary.insert_lsn())
        segment_size = self.wal_segsize_mb * 1024 * 1024
        if target % segment_size == LONG_PAGE_HEADER_SIZE:
            target -= LONG_PAGE_HEADER_SIZE
        elif target % WAL_PAGE_SIZE == SHORT_PAGE_HEADER_SIZE:
            target -= SHORT_PAGE_HEADER_SIZE
        target_text = int_to_lsn(target)
        self.wait_until(
            lambda: self.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", [target_text])[0][0],
            timeout=timeout,
            what=f"{self.name} to replay {primary.name} up to {target_text}",
        )
        return target_text

    def stop_on_segment_boundary(self, primary: PostgresCluster, attempts: int = 3) -> str:
        """On a standby: detach it from ``primary`` with its received WAL ending on a segment boundary.

        Promoted there, it archives only ``<timeline>.history``, with no ``.partial`` file. The primary's
        bgwriter may log a RUNNING_XACTS record after a switch (every 15 s), so this tries again.

        :param primary: the cluster this standby streams from.
        :param attempts: how many switches to try.
        :return: the received LSN, on the boundary.
        """
        segment_size = self.wal_segsize_mb * 1024 * 1024
        for _ in range(attempts):
            primary.write_wal_and_switch()
            self.wait_for_replay(primary)
            self.detach_from_primary()
            received = self.received_lsn()
            if received is not None and lsn_to_int(received) % segment_size == 0:
                return received
            self.attach_to_primary()
        raise PostgresClusterError(f"{self.name} never stopped on a segment boundary in {attempts} tries")

    def detach_from_primary(self, timeout: float = 30) -> None:
        """On a standby, stop streaming: ``primary_conninfo`` is emptied (``ALTER SYSTEM``) and reloaded.

        WAL already received stays; nothing more arrives until :meth:`attach_to_primary`.

        :param timeout: seconds to wait for the WAL receiver to exit.
        """
        if self._primary_conninfo is None:
            self._primary_conninfo = str(self.execute("SHOW primary_conninfo")[0][0])
        self.execute("ALTER SYSTEM SET primary_conninfo = ''")
        self.execute("SELECT pg_reload_conf()")
        self.wait_until(
            lambda: self.execute("SELECT count(*) FROM pg_stat_wal_receiver")[0][0] == 0,
            timeout=timeout,
            what=f"the WAL receiver of {self.name} to stop",
        )

    def attach_to_primary(self, timeout: float = 30) -> None:
        """Undo :meth:`detach_from_primary` and wait until the standby streams again.

        :param timeout: seconds to wait for streaming.
        """
        if self._primary_conninfo is None:
            return
        self.execute(
            sql.SQL("ALTER SYSTEM SET primary_conninfo = {}").format(sql.Literal(self._primary_conninfo))
        )
        self.execute("SELECT pg_reload_conf()")
        self.wait_until(
            lambda: self.execute("SELECT status FROM pg_stat_wal_receiver") == [("streaming",)],
            timeout=timeout,
            what=f"{self.name} to stream again",
        )

    def received_lsn(self) -> str | None:
        """On a standby, return ``pg_last_wal_receive_lsn()`` (WAL received and flushed by streaming).

        :return: the LSN as text, or ``None`` if nothing was streamed.
        """
        value = self.execute("SELECT pg_last_wal_receive_lsn()::text")[0][0]
        return None if value is None else str(value)

    def _read_log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """Return the last lines of the server log.

        :param lines: how many lines.
        :return: those lines, joined with newlines.
        """
        return "\n".join(self._read_log().splitlines()[-lines:])

    # ---------------------------------------------------------------------------------- connecting

    def dsn(self, user: str = SUPERUSER, password: str | None = None, dbname: str = "postgres") -> str:
        """Return a libpq keyword/value connection string for 127.0.0.1.

        :param user: role to connect as.
        :param password: its password; defaults to the superuser password when ``user`` is the superuser.
        :param dbname: database to connect to.
        :return: e.g. ``host=127.0.0.1 port=54321 user=postgres password=... dbname=postgres``.
        """
        if password is None and user == self.superuser:
            password = self.superuser_password
        params: dict[str, Any] = {"host": self.host, "port": self.port, "user": user, "dbname": dbname}
        if password is not None:
            params["password"] = password
        return make_conninfo("", **params)

    def uri(self, user: str = SUPERUSER, password: str | None = None, dbname: str = "postgres") -> str:
        """Return a ``postgresql://`` URI, usable as an ``AIRFLOW_CONN_<ID>`` environment variable.

        :param user: role to connect as.
        :param password: its password (URL-quoted here); defaults to the superuser password when
            ``user`` is the superuser.
        :param dbname: database name.
        :return: e.g. ``postgresql://postgres:pw@127.0.0.1:54321/postgres``.
        """
        if password is None and user == self.superuser:
            password = self.superuser_password
        userinfo = urllib.parse.quote(user, safe="")
        if password is not None:
            userinfo += ":" + urllib.parse.quote(password, safe="")
        return f"postgresql://{userinfo}@{self.host}:{self.port}/{urllib.parse.quote(dbname, safe='')}"

    def connect(
        self, user: str = SUPERUSER, password: str | None = None, dbname: str = "postgres"
    ) -> psycopg.Connection[Any]:
        """Open a new autocommit psycopg connection; the caller closes it.

        :param user: role to connect as.
        :param password: its password (see :meth:`dsn`).
        :param dbname: database.
        :return: the connection.
        """
        return psycopg.connect(self.dsn(user, password, dbname), autocommit=True, connect_timeout=10)

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._close_conn()
            self._conn = self.connect()
        return self._conn

    def _close_conn(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    def execute(
        self, query: str | sql.SQL | sql.Composed, params: Sequence[Any] | Mapping[str, Any] | None = None
    ) -> list[tuple[Any, ...]]:
        """Run one statement as the superuser, in autocommit mode.

        :param query: SQL text or a :mod:`psycopg.sql` composition.
        :param params: query parameters.
        :return: the rows, or ``[]`` for a statement that returns none.
        """
        conn = self._connection()
        try:
            with conn.cursor() as cur:
                cur.execute(query, params)
                return list(cur.fetchall()) if cur.description is not None else []
        except psycopg.OperationalError:
            if conn.broken:
                self._close_conn()
            raise

    def create_role(self, name: str, password: str, *, pg_monitor: bool) -> None:
        """Create (or update) a login role.

        If the role exists its password is reset and its ``pg_monitor`` membership set as asked.

        :param name: role name.
        :param password: its password.
        :param pg_monitor: whether it is a member of ``pg_monitor``.
        """
        role = sql.Identifier(name)
        exists = self.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [name])
        verb = sql.SQL("ALTER") if exists else sql.SQL("CREATE")
        self.execute(sql.SQL("{} ROLE {} LOGIN PASSWORD {}").format(verb, role, sql.Literal(password)))
        grant = "GRANT pg_monitor TO {}" if pg_monitor else "REVOKE pg_monitor FROM {}"
        self.execute(sql.SQL(grant).format(role))

    # ---------------------------------------------------------------------------------- WAL and archiving

    def close_gate(self) -> None:
        """Make ``archive_command`` fail from now on.

        When segments are waiting, the archiver is woken and this returns after its first failed
        attempt, so no copy that started before the gate closed can still complete afterwards.
        """
        if not self.gate_path.exists():
            _server_file(self.gate_path, "closed\n", 0o644)
        if self._running and self._all_ready() and self.archive_mode != "off":
            before = self.archiver_stats()["failed_count"]
            self.execute("SELECT pg_reload_conf()")
            self.wait_until(
                lambda: self.archiver_stats()["failed_count"] > before or not self._all_ready(),
                what=f"the archiver of {self.name} to fail behind the closed gate",
            )

    def open_gate(self) -> None:
        """Let ``archive_command`` succeed again, and wake the archiver (``pg_reload_conf()``)."""
        with contextlib.suppress(FileNotFoundError):
            self.gate_path.unlink()
        if self._running:
            self.execute("SELECT pg_reload_conf()")

    def set_archive_delay(self, seconds: float) -> None:
        """Make the archiver slow (or fast again): ``archive_command`` sleeps ``seconds`` before each copy.

        The archiver copies one segment at a time, so a backlog drains at about one segment per
        ``seconds``. The new command applies from the next segment (``pg_reload_conf()``); a copy under
        way finishes at the old pace. The gate still works as before: a closed gate fails at once.

        :param seconds: the delay; 0 copies at once, as by default.
        """
        self.archive_delay_seconds = _check_delay(seconds)
        self._write_harness_conf()
        if self._running:
            self.execute("SELECT pg_reload_conf()")

    @property
    def gate_closed(self) -> bool:
        """Whether the archive gate is closed."""
        return self.gate_path.exists()

    def write_wal_and_switch(self) -> str:
        """Write a little WAL, then ``pg_switch_wal()``: each call completes exactly one segment.

        :return: name of the segment that was completed.
        """
        table = sql.Identifier(FILLER_TABLE)
        if not self._filler_ready:
            self.execute(
                sql.SQL("CREATE TABLE IF NOT EXISTS {} (id bigserial PRIMARY KEY, payload text)").format(
                    table
                )
            )
            self._filler_ready = True
        self.execute(sql.SQL("INSERT INTO {} (payload) VALUES ('wal')").format(table))
        return str(self.execute("SELECT pg_walfile_name(pg_switch_wal())")[0][0])

    def archive_one_segment(self, timeout: float = 30) -> str:
        """Open the gate, complete one segment and wait until ``pg_stat_archiver`` reports it archived.

        Gives the LSN method its starting point (``last_archived_wal``). The archived file appears
        before the statistics are updated, so this waits for the statistics.

        :param timeout: seconds to wait.
        :return: name of the archived segment.
        """
        self.open_gate()
        name = self.write_wal_and_switch()
        self.wait_until(
            lambda: self.archiver_stats()["last_archived_wal"] == name and not self.ready_segments(),
            timeout=timeout,
            what=f"{self.name} to report {name} archived",
        )
        return name

    def _status_names(self) -> list[str]:
        try:
            return sorted(os.listdir(self.data_dir / "pg_wal" / "archive_status"))
        except FileNotFoundError:
            return []

    def _all_ready(self) -> list[str]:
        return [n for n in self._status_names() if n.endswith(".ready")]

    def ready_files(self) -> list[str]:
        """Return every ``.ready`` status file, including history, backup and ``.partial`` ones.

        :return: sorted file names in ``pg_wal/archive_status``.
        """
        return self._all_ready()

    def ready_segments(self) -> list[str]:
        """Return the ``.ready`` files of real WAL segments, read from the file system.

        :return: sorted names matching ``^[0-9A-F]{24}\\.ready$``.
        """
        return [n for n in self._status_names() if READY_SEGMENT_RE.match(n)]

    def archived_files(self) -> list[str]:
        """Return the names of the files in the archive directory.

        :return: sorted file names.
        """
        try:
            return sorted(os.listdir(self.archive_dir))
        except FileNotFoundError:
            return []

    def archiver_stats(self) -> dict[str, Any]:
        """Return the row of ``pg_stat_archiver``.

        :return: column name to value.
        """
        conn = self._connection()
        with conn.cursor() as cur:
            cur.execute("SELECT * FROM pg_stat_archiver")
            row = cur.fetchone()
            assert row is not None and cur.description is not None
            return {col.name: value for col, value in zip(cur.description, row, strict=True)}

    def make_backlog(self, n: int, timeout: float = 30) -> list[str]:
        """Close the gate and complete segments until exactly ``n`` segment ``.ready`` files exist.

        :param n: number of pending segments wanted.
        :param timeout: seconds before giving up.
        :return: the ``.ready`` file names (see :meth:`ready_segments`).
        :raises ValueError: if more than ``n`` are already pending.
        """
        self.close_gate()
        deadline = time.monotonic() + timeout
        while True:
            ready = self.ready_segments()
            if len(ready) == n:
                return ready
            if len(ready) > n:
                raise ValueError(
                    f"{self.name} already has {len(ready)} pending segments, more than the {n} asked for"
                )
            if time.monotonic() >= deadline:
                raise AssertionError(f"timed out making a backlog of {n} on {self.name}")
            self.write_wal_and_switch()

    def drain(self, timeout: float = 60) -> None:
        """Open the gate and wait until nothing is left to archive.

        Waits for every ``.ready`` file (segments, history, backup and ``.partial`` files) to go,
        waking the archiver once a second.

        :param timeout: seconds before giving up.
        """
        self.open_gate()
        last_wake = time.monotonic()

        def drained() -> bool:
            nonlocal last_wake
            if not self._all_ready():
                return True
            if self._running and time.monotonic() - last_wake > 1:
                self.execute("SELECT pg_reload_conf()")
                last_wake = time.monotonic()
            return False

        self.wait_until(drained, timeout=timeout, what=f"{self.name} to archive everything")

    wait_until = staticmethod(wait_until)


class ClusterFactory(Protocol):
    """Type of the ``pg_cluster_factory`` fixture: creates and starts a cluster."""

    def __call__(
        self,
        *,
        name: str,
        wal_segsize_mb: int = 16,
        archive_mode: str = "on",
        start_wal_segment: str | None = None,
        extra_conf: dict[str, str] | None = None,
    ) -> PostgresCluster: ...


def iter_live_clusters() -> Iterator[PostgresCluster]:
    """Iterate over the clusters of this process whose server may be running.

    :return: an iterator over them.
    """
    return iter(list(_LIVE.values()))

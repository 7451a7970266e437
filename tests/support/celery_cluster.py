"""A real Airflow on the CeleryExecutor: a Redis broker and Celery workers, all started by the test.

:class:`CeleryAirflow` is an :class:`~tests.support.airflow_standalone.AirflowStandalone` whose
executor is the CeleryExecutor of Airflow's celery provider. Besides the scheduler, dag-processor,
triggerer and api-server it starts:

- a ``redis-server`` (Debian's, installed by ``./dev``) on a free port of 127.0.0.1, in a directory
  of its own in the home, without persistence (no RDB snapshots, no AOF): the broker;
- ``workers`` processes of ``airflow celery worker``, each with its own Celery hostname
  (``--celery-hostname``) and ``--concurrency`` task slots, without log servers (the api-server
  reads the task logs from the files they share on this machine).

Task results go to the metadata PostgreSQL (``[celery] result_backend = db+postgresql+psycopg://…``),
so it needs ``metadata_db``. The workers run tasks through the execution API at
``[core] execution_api_server_url`` (the api-server), as Airflow 3's workers do::

    <home>/redis/                         the broker's directory and its log, redis.log
    <home>/components/<worker>.log        each worker's output, next to the other components'

Both workers run on one machine, where a task instance's ``hostname`` would be the same for both.
Each worker is therefore given ``[core] hostname_callable`` returning its Celery hostname (what a
worker on a machine of its own reports by default), so that Airflow's API tells them apart.
:meth:`CeleryAirflow.celery_task_ids` reads what each worker's own log says it received, for a check
that does not depend on that setting.

:meth:`CeleryAirflow.stop` stops the workers with the other components (SIGINT: a warm shutdown,
which lets running tasks finish, then SIGKILL after the timeout), and the broker last. Only the
main leg's virtualenv has the celery provider (``pyproject.toml``'s ``e2e`` group): this module
imports nothing of Celery at its top, so the floor leg still collects the tests that use it.
"""

from __future__ import annotations

import atexit
import contextlib
import re
import shutil
import socket
import subprocess
import time
from typing import TYPE_CHECKING, Any

from tests.support.airflow_standalone import HOST, AirflowStandalone, _airflow_argv, free_port

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

__all__ = ["CeleryAirflow", "RedisServer", "celery_settings"]

#: The module, written into the Airflow home, that a worker's ``[core] hostname_callable`` names.
HOSTNAME_MODULE = "walthrottle_worker_hostname"
#: The environment variable that carries a worker's Celery hostname to that module.
HOSTNAME_VARIABLE = "WALTHROTTLE_CELERY_HOSTNAME"
#: Celery's log line for each task a worker takes from the broker.
RECEIVED = re.compile(r"execute_workload\[([0-9a-f-]{36})\] received")
#: Servers still running in this process; stopped at exit whatever happens.
_LIVE_REDIS: dict[int, RedisServer] = {}


def celery_settings(broker_url: str, result_backend: str) -> dict[str, dict[str, str]]:
    """Return the ``airflow.cfg`` settings of the CeleryExecutor with this broker and result backend.

    :param broker_url: e.g. ``redis://127.0.0.1:6379/0``.
    :param result_backend: a SQLAlchemy URL prefixed with ``db+``, e.g. ``db+postgresql://…``.
    """
    return {
        "core": {"executor": "CeleryExecutor"},
        "celery": {
            "broker_url": broker_url,
            "result_backend": result_backend,
            # what each worker announces; the harness checks that every one answers a ping
            "worker_enable_remote_control": "true",
        },
        # a task is redelivered after this long without an ack; set to quiet the default's warning
        "celery_broker_transport_options": {"visibility_timeout": "21600"},
    }


class RedisServer:
    """
    A throwaway ``redis-server`` on 127.0.0.1: no persistence, stopped by :meth:`stop` (or at exit).

    :param directory: its working directory (made if missing), where it writes ``redis.log``.
    :param port: the port; a free one by default.
    """

    def __init__(self, directory: Path, *, port: int | None = None) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The broker URL, ``redis://127.0.0.1:<port>/0``."""
        return f"redis://{HOST}:{self.port}/0"

    @property
    def log_file(self) -> Path:
        """The server's log."""
        return self.directory / "redis.log"

    def start(self, timeout: float = 30) -> None:
        """Start the server and wait until it answers ``PING``.

        :param timeout: seconds to wait for the first ``PONG``.
        :raises AssertionError: if it exits or does not answer in time, with its log's tail.
        """
        binary = shutil.which("redis-server")
        if binary is None:
            raise AssertionError("redis-server is not installed: `./dev test` installs Debian's redis-server")
        self.directory.mkdir(parents=True, exist_ok=True)
        argv = [
            binary, "--bind", HOST, "--port", str(self.port), "--dir", str(self.directory),
            "--logfile", str(self.log_file), "--save", "", "--appendonly", "no",
            "--daemonize", "no", "--protected-mode", "yes", "--databases", "1",
        ]  # fmt: skip
        _LIVE_REDIS[id(self)] = self
        self.process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not self.ping():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"redis-server did not start on port {self.port}\n{self.log_tail()}")
            time.sleep(0.1)

    def ping(self) -> bool:
        """Return whether the server answers ``PING`` with ``PONG`` (within a second)."""
        try:
            with socket.create_connection((HOST, self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, timeout: float = 10) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout``). Safe to call more than once."""
        process, self.process = self.process, None
        _LIVE_REDIS.pop(id(self), None)
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def log_tail(self, lines: int = 20) -> str:
        """Return the last lines of the server's log, headed by its path."""
        try:
            text = self.log_file.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return f"--- {self.log_file}: (none)"
        return f"--- last {lines} lines of {self.log_file}:\n" + "\n".join(text.splitlines()[-lines:])


@atexit.register
def _stop_all_redis() -> None:
    for server in list(_LIVE_REDIS.values()):
        with contextlib.suppress(Exception):
            server.stop()


class CeleryAirflow(AirflowStandalone):
    """
    An :class:`AirflowStandalone` on the CeleryExecutor, with its own Redis broker and Celery workers.

    :param home: a new or empty directory for ``AIRFLOW_HOME``.
    :param metadata_db: a SQLAlchemy URL of an empty PostgreSQL database for Airflow's metadata;
        Celery's task results go there too.
    :param workers: how many ``airflow celery worker`` processes to start.
    :param worker_concurrency: task slots of each worker (``--concurrency``).
    :param kwargs: the other arguments of :class:`AirflowStandalone`; ``parallelism`` is what the
        scheduler sends to Celery at once.
    """

    def __init__(
        self,
        home: Path,
        *,
        metadata_db: str,
        workers: int = 2,
        worker_concurrency: int = 2,
        **kwargs: Any,
    ) -> None:
        if not metadata_db.startswith("postgresql"):
            raise ValueError(f"the Celery harness needs a PostgreSQL metadata database, got {metadata_db!r}")
        super().__init__(home, metadata_db=metadata_db, **kwargs)
        self.redis = RedisServer(home / "redis")
        self.worker_concurrency = worker_concurrency
        #: The workers' Celery hostnames; Celery names the nodes ``celery@<hostname>``.
        self.worker_names = tuple(f"walthrottle-worker-{number}" for number in range(1, workers + 1))

    @property
    def result_backend(self) -> str:
        """Celery's result backend: the metadata database, as a ``db+`` SQLAlchemy URL."""
        assert self.metadata_db is not None
        return "db+" + self.metadata_db

    def settings(self) -> dict[str, dict[str, str]]:
        """Return the settings of :class:`AirflowStandalone` on the CeleryExecutor (given ``config`` last)."""
        settings = super().settings()
        for section, options in celery_settings(self.redis.url, self.result_backend).items():
            settings.setdefault(section, {}).update(options)
        for section, options in self.extra_config.items():
            settings[section].update(options)
        return settings

    def prepare(self) -> None:
        """Write the hostname module, then ``airflow.cfg`` and the metadata database."""
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / f"{HOSTNAME_MODULE}.py").write_text(
            '"""Written by tests/support/celery_cluster.py: a worker\'s [core] hostname_callable."""\n\n'
            "import os\n\n\n"
            f"def hostname():\n    return os.environ[{HOSTNAME_VARIABLE!r}]\n",
            encoding="utf-8",
        )
        super().prepare()

    def start(self, timeout: float = 150) -> None:
        """Start the broker, the four components, then the workers; wait until every worker answers.

        :param timeout: seconds to wait for the components to be healthy, and again for the workers.
        :raises AssertionError: if one does not start, with the logs' tails; everything is stopped.
        """
        try:
            self.redis.start()
            super().start(timeout)
            env = self.env()
            for name in self.worker_names:
                self._spawn_worker(name, env)
            self.wait_until(
                self._workers_ready, timeout=timeout, interval=2, what=f"Celery workers {self.worker_names}"
            )
        except BaseException:
            self.stop()
            raise

    def _spawn_worker(self, name: str, env: Mapping[str, str]) -> None:
        worker_env = {
            **env,
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": f"{HOSTNAME_MODULE}.hostname",
            HOSTNAME_VARIABLE: name,
        }
        argv = [
            *_airflow_argv(), "celery", "worker", "--celery-hostname", name,
            "--concurrency", str(self.worker_concurrency), "--skip-serve-logs",
            "--without-mingle", "--without-gossip",
        ]  # fmt: skip
        log = (self.components_dir / f"{name}.log").open("ab")
        try:
            self.processes[name] = subprocess.Popen(
                argv, env=worker_env, cwd=str(self.home), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        finally:
            log.close()

    def _workers_ready(self) -> bool:
        for name in self.worker_names:
            process = self.processes[name]
            if process.poll() is not None:
                raise AssertionError(
                    f"Celery worker {name} exited with code {process.returncode}\n{self.log_tail(name)}"
                )
        return set(self.ping_workers()) >= {f"celery@{name}" for name in self.worker_names}

    def ping_workers(self, timeout: float = 1.0) -> list[str]:
        """Return the Celery nodes that answer a ping through the broker (``celery@<hostname>``).

        :param timeout: seconds to wait for the answers.
        """
        from celery import Celery  # the main leg only (see the module's docstring)

        app = Celery(broker=self.redis.url)
        try:
            return sorted(node for reply in app.control.ping(timeout=timeout) for node in reply)
        finally:
            app.close()

    def stop(self, timeout: float = 30) -> list[str]:
        """Stop the workers and the components (see :meth:`AirflowStandalone.stop`), then the broker.

        :param timeout: seconds to wait for a graceful shutdown.
        :return: what had to be killed, one line each.
        """
        try:
            return super().stop(timeout)
        finally:
            self.redis.stop()

    def diagnostics(self) -> str:
        """Return the tail of every component's, worker's and the broker's log."""
        parts = [super().diagnostics(), *(self.log_tail(name) for name in self.worker_names)]
        return "\n".join([*parts, self.redis.log_tail()])

    def celery_task_ids(self) -> dict[str, set[str]]:
        """Return, for each worker, the ids of the Celery tasks its log says it received.

        The CeleryExecutor uses a task instance's ``external_executor_id`` as its Celery task id.
        """
        found: dict[str, set[str]] = {}
        for name in self.worker_names:
            path = self.components_dir / f"{name}.log"
            text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
            found[name] = set(RECEIVED.findall(text))
        return found

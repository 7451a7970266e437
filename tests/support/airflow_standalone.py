"""A real Airflow for end-to-end tests and the demo: scheduler, dag-processor, triggerer and api-server.

:class:`AirflowStandalone` does what ``airflow standalone`` does, with each component started by
the harness so that it can bind the api-server to 127.0.0.1 on a free port, skip (or move) the log
servers, keep one log file per component, and stop every process it started::

    <home>/airflow.cfg            every setting (so `AIRFLOW_HOME=<home> airflow ...` just works)
    <home>/airflow.db             the SQLite metadata database (unless given a PostgreSQL one)
    <home>/components/<name>.log  stdout and stderr of each component
    <home>/logs/                  task logs, as Airflow writes them
    <home>/simple_auth_manager_passwords.json.generated   the admin password

Connections come from ``AIRFLOW_CONN_<ID>`` environment variables given to the components and CLI
calls only; Variables are set with the real ``airflow variables set``. The executor is the
LocalExecutor, with low parallelism (the test machines have 2 cores).

Every component runs in a process group of its own. :meth:`AirflowStandalone.stop` sends SIGINT
to each group, then SIGKILL after a timeout, and finally kills any process still carrying this
instance's marker in its environment (task processes set up process groups of their own), so
nothing outlives it, even when a test fails.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping
    from types import TracebackType

__all__ = [
    "COMPONENTS",
    "AirflowCommandError",
    "AirflowStandalone",
    "free_port",
    "make_home",
    "serving_dag",
    "stop_all",
]

#: The long-running components, in the order they are started.
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
#: Dag run states after which nothing more happens to a run.
FINISHED_RUN_STATES = frozenset({"success", "failed"})
#: Instances whose components may be running; :func:`stop_all` stops them (also at exit).
_LIVE: dict[int, AirflowStandalone] = {}
#: Name of the environment variable that marks every process of one instance.
MARKER_VARIABLE = "WALTHROTTLE_AIRFLOW_STANDALONE"
#: A module, written into the Airflow home, with the SQLite connect arguments of every component.
SQLITE_SETTINGS_MODULE = "walthrottle_sqlite_settings"
#: Seconds a writer waits for SQLite's lock before "database is locked".
SQLITE_BUSY_TIMEOUT_SECONDS = 60
HOST = "127.0.0.1"
LOG_TAIL_LINES = 30

T = TypeVar("T")


class AirflowCommandError(RuntimeError):
    """An ``airflow`` command line call failed; the message has its output."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free now.

    :return: the port number.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _airflow_argv() -> list[str]:
    """Return the command that runs this interpreter's Airflow CLI."""
    script = Path(sys.executable).parent / "airflow"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "airflow"]


def _cfg_text(settings: Mapping[str, Mapping[str, str]]) -> str:
    lines = ["# written by tests/support/airflow_standalone.py"]
    for section, options in settings.items():
        lines.append(f"\n[{section}]")
        lines += [f"{key} = {value}" for key, value in options.items()]
    return "\n".join(lines) + "\n"


class AirflowStandalone:
    """
    One Airflow installation in its own ``AIRFLOW_HOME``, started and stopped by the harness.

    :param home: a new or empty directory for ``AIRFLOW_HOME``; made if missing.
    :param dags_folder: the DAGs folder the dag-processor watches.
    :param connections: Airflow connections as ``{conn_id: uri}``, given as ``AIRFLOW_CONN_<ID>``.
    :param parallelism: ``[core] parallelism``: task slots of the LocalExecutor.
    :param api_port: the api-server's port on 127.0.0.1; a free one by default.
    :param serve_logs: start the worker and triggerer log servers (on free ports; they listen on
        every interface, which Airflow does not make configurable). Without them the UI still shows
        logs from the local files, which is all a single machine needs.
    :param config: more settings, ``{section: {key: value}}``, applied last.
    :param components: the components to start, a subset of :data:`COMPONENTS` (a test of the UI
        needs only the api-server).
    :param metadata_db: a SQLAlchemy URL of an empty PostgreSQL database for Airflow's metadata;
        by default a SQLite file in the home. Several components writing at once (a scheduler and
        ``airflow backfill create``) can make SQLite refuse a write at once, "database is locked".
    """

    def __init__(
        self,
        home: Path,
        *,
        dags_folder: Path,
        connections: Mapping[str, str] | None = None,
        parallelism: int = 4,
        api_port: int | None = None,
        serve_logs: bool = False,
        config: Mapping[str, Mapping[str, str]] | None = None,
        components: Iterable[str] = COMPONENTS,
        metadata_db: str | None = None,
    ) -> None:
        self.home = home
        self.metadata_db = metadata_db
        self.components = tuple(name for name in COMPONENTS if name in set(components))
        self.dags_folder = dags_folder
        self.connections = dict(connections or {})
        self.parallelism = parallelism
        self.api_port = api_port or free_port()
        self.serve_logs = serve_logs
        self.extra_config = {section: dict(options) for section, options in (config or {}).items()}
        # 0: nothing listens there, so nothing asks another Airflow on this machine for our logs
        self.worker_log_port = free_port() if serve_logs else 0
        self.trigger_log_port = free_port() if serve_logs else 0
        self._secrets = {
            "fernet_key": _fernet_key(),
            "secret_key": secrets.token_urlsafe(64),
            "jwt_secret": secrets.token_urlsafe(64),
        }
        self.marker = uuid.uuid4().hex
        self.components_dir = home / "components"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._token: str | None = None
        self._prepared = False

    # ------------------------------------------------------------------------------ set-up

    @property
    def base_url(self) -> str:
        """The api-server's URL, e.g. ``http://127.0.0.1:41234``."""
        return f"http://{HOST}:{self.api_port}"

    @property
    def ui_url(self) -> str:
        """The URL to open in a browser on this machine."""
        return f"http://localhost:{self.api_port}"

    @property
    def password_file(self) -> Path:
        """The file where SimpleAuthManager writes the generated admin password."""
        return self.home / "simple_auth_manager_passwords.json.generated"

    @property
    def password(self) -> str:
        """The generated password of ``admin`` (the api-server writes it when it starts)."""
        return self.password_of("admin")

    def password_of(self, username: str) -> str:
        """Return the generated password of a user of ``[core] simple_auth_manager_users``."""
        return str(json.loads(self.password_file.read_text(encoding="utf-8"))[username])

    def token_of(self, username: str) -> str:
        """Return a fresh JWT for a user (``POST /auth/token`` with its generated password)."""
        body = {"username": username, "password": self.password_of(username)}
        return str(self._request("POST", "/auth/token", body, auth=False)["access_token"])

    def settings(self) -> dict[str, dict[str, str]]:
        """Return the settings written to ``airflow.cfg``, ``{section: {key: value}}``."""
        settings: dict[str, dict[str, str]] = {
            "core": {
                "dags_folder": str(self.dags_folder),
                "load_examples": "False",
                "executor": "LocalExecutor",
                "parallelism": str(self.parallelism),
                "execution_api_server_url": f"{self.base_url}/execution/",
                "fernet_key": self._secrets["fernet_key"],
                "dags_are_paused_at_creation": "True",
                "unit_test_mode": "False",
            },
            "database": (
                {"sql_alchemy_conn": self.metadata_db}
                if self.metadata_db
                else {
                    "sql_alchemy_conn": f"sqlite:///{self.home / 'airflow.db'}",
                    # wait for SQLite's lock instead of failing after its default 5 s: the scheduler,
                    # dag-processor, triggerer, api-server and CLI calls all write the same file
                    "sql_alchemy_connect_args": f"{SQLITE_SETTINGS_MODULE}.CONNECT_ARGS",
                }
            ),
            "api": {
                "host": HOST,
                "port": str(self.api_port),
                "workers": "1",
                "secret_key": self._secrets["secret_key"],
                "expose_config": "False",
            },
            "api_auth": {"jwt_secret": self._secrets["jwt_secret"]},
            "logging": {
                "base_log_folder": str(self.home / "logs"),
                "logging_level": "INFO",
                "worker_log_server_port": str(self.worker_log_port),
                "trigger_log_server_port": str(self.trigger_log_port),
            },
            "scheduler": {
                "scheduler_idle_sleep_time": "0.5",
                "enable_health_check": "False",
            },
            "dag_processor": {
                # look for new files every 10 s, re-parse a file at most every 10 s, one parser
                "refresh_interval": "10",
                "min_file_process_interval": "10",
                "parsing_processes": "1",
                "print_stats_interval": "600",
            },
            "triggerer": {"capacity": "50"},
            # a new migration's first run plans it: not 10 s of watching the archiver each (as conftest.py)
            "walthrottle": {"plan_archiver_window_seconds": "0"},
        }
        for section, options in self.extra_config.items():
            settings.setdefault(section, {}).update(options)
        return {section: options for section, options in settings.items() if options}

    def env(self) -> dict[str, str]:
        """Return the environment of every process this harness starts.

        Nothing ``AIRFLOW``-prefixed leaks in from our own environment (the test session sets its
        own ``AIRFLOW_HOME`` and settings); ``PG*`` variables are dropped too.
        """
        env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("AIRFLOW", "_AIRFLOW", "PG"))
        }
        env["AIRFLOW_HOME"] = str(self.home)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.home), env.get("PYTHONPATH")]))
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env["PYTHONUNBUFFERED"] = "1"
        env["NO_COLOR"] = "1"
        env[MARKER_VARIABLE] = self.marker
        for conn_id, uri in self.connections.items():
            env[f"AIRFLOW_CONN_{conn_id.upper()}"] = uri
        return env

    def prepare(self) -> None:
        """Write ``airflow.cfg`` and create the metadata database (``airflow db migrate``)."""
        if self._prepared:
            return
        self.home.mkdir(parents=True, exist_ok=True)
        self.dags_folder.mkdir(parents=True, exist_ok=True)
        self.components_dir.mkdir(exist_ok=True)
        (self.home / "airflow.cfg").write_text(_cfg_text(self.settings()), encoding="utf-8")
        (self.home / f"{SQLITE_SETTINGS_MODULE}.py").write_text(
            f"CONNECT_ARGS = {{'timeout': {SQLITE_BUSY_TIMEOUT_SECONDS}}}\n", encoding="utf-8"
        )
        self.airflow("db", "migrate", timeout=180)
        self._prepared = True

    # ------------------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 150) -> None:
        """Prepare, start the four components and wait until ``/api/v2/monitor/health`` is healthy.

        :param timeout: seconds to wait for every component to report healthy.
        :raises AssertionError: if they do not, with the tail of each component's log; everything
            started is stopped first.
        """
        _LIVE[id(self)] = self
        try:
            self.prepare()
            env = self.env()
            for name in self.components:
                self._spawn(name, env)
            self.wait_until(self._healthy, timeout=timeout, what="every Airflow component to be healthy")
            self.wait_until(self.password_file.exists, timeout=30, what="the admin password file")
        except BaseException:
            self.stop()
            raise

    def _spawn(self, name: str, env: Mapping[str, str]) -> None:
        args = [name]
        if name in ("scheduler", "triggerer") and not self.serve_logs:
            args.append("--skip-serve-logs")
        log = (self.components_dir / f"{name}.log").open("ab")
        try:
            self.processes[name] = subprocess.Popen(
                [*_airflow_argv(), *args],
                env=dict(env),
                cwd=str(self.home),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()

    def _healthy(self) -> bool:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise AssertionError(
                    f"Airflow {name} exited with code {process.returncode} while starting\n"
                    f"{self.log_tail(name)}"
                )
        try:
            health = self._request("GET", "/api/v2/monitor/health", auth=False)
        except (OSError, AirflowCommandError):
            return False
        parts = ["metadatabase"] + [
            name.replace("-", "_") for name in self.components if name != "api-server"
        ]
        return all(
            isinstance(health.get(part), dict) and health[part].get("status") == "healthy" for part in parts
        )

    def stop(self, timeout: float = 30) -> list[str]:
        """Stop everything this instance started: SIGINT to each process group, SIGKILL after ``timeout``.

        Then kills, by pid, any process still carrying this instance's marker (a task process in a
        group of its own). Safe to call more than once.

        :param timeout: seconds to wait for a graceful shutdown.
        :return: what had to be killed, one line each (empty after a clean shutdown).
        """
        forced: list[str] = []
        running = {name: proc for name, proc in self.processes.items() if proc.poll() is None}
        for proc in running.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGINT)
        deadline = time.monotonic() + timeout
        for name, proc in running.items():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                forced.append(f"{name} (pid {proc.pid}) ignored SIGINT for {timeout:g} s")
        # the leaders are gone (or stuck): whatever is left in their groups goes now
        for proc in self.processes.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        for proc in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        for pid in self.leftover_processes():
            forced.append(f"pid {pid} ({_command_line(pid)}) outlived its component")
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(AssertionError):
            _wait(lambda: not self.leftover_processes(), timeout=10, what="leftover processes to exit")
        _LIVE.pop(id(self), None)
        return forced

    def leftover_processes(self) -> list[int]:
        """Return the pids of live processes that carry this instance's marker.

        :return: sorted pids (empty once everything is stopped).
        """
        needle = f"{MARKER_VARIABLE}={self.marker}".encode()
        found: list[int] = []
        proc = Path("/proc")
        for entry in proc.iterdir() if proc.is_dir() else ():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                environ = (entry / "environ").read_bytes()
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z" and needle in environ.split(b"\0"):
                found.append(int(entry.name))
        return sorted(found)

    def __enter__(self) -> AirflowStandalone:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def remove_home(self) -> None:
        """Delete ``AIRFLOW_HOME`` with everything in it (after :meth:`stop`)."""
        shutil.rmtree(self.home, ignore_errors=True)

    # ------------------------------------------------------------------------------ diagnostics

    def log_tail(self, component: str, lines: int = LOG_TAIL_LINES) -> str:
        """Return the last lines of a component's log, headed by its path."""
        path = self.components_dir / f"{component}.log"
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return f"--- {path}: (none)"
        # the api-server logs every request; the test's own polling would hide everything else
        kept = [line for line in text.splitlines() if "[http.access]" not in line]
        tail = "\n".join(kept[-lines:])
        return f"--- last {lines} lines of {path}:\n{tail}"

    def diagnostics(self) -> str:
        """Return the tail of every component's log, for a failure message."""
        return "\n".join(self.log_tail(name) for name in COMPONENTS)

    def wait_until(
        self,
        predicate: Callable[[], T | None],
        *,
        timeout: float,
        what: str,
        interval: float = 1.0,
        describe: Callable[[], object] | None = None,
    ) -> T:
        """Poll ``predicate`` until it returns something truthy.

        :param predicate: called every ``interval`` seconds.
        :param timeout: seconds before giving up.
        :param what: what is waited for, for the error message.
        :param interval: seconds between polls.
        :param describe: called on timeout; its result goes in the message (e.g. the task states).
        :return: the first truthy value.
        :raises AssertionError: naming ``what``, the last value seen, ``describe()`` and the
            components' log tails.
        """
        try:
            return _wait(predicate, timeout=timeout, what=what, interval=interval)
        except AssertionError as error:
            details = [str(error)]
            if describe is not None:
                with contextlib.suppress(Exception):
                    details.append(f"state: {describe()}")
            details.append(self.diagnostics())
            raise AssertionError("\n".join(details)) from None

    def task_log(self, dag_id: str, run_id: str, task_id: str) -> str:
        """Return every log file of one task instance (tries and trigger logs), concatenated.

        :param dag_id: the DAG.
        :param run_id: the run.
        :param task_id: the task, with its group prefix.
        """
        folder = self.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
        parts = []
        for path in sorted(folder.rglob("*")) if folder.is_dir() else []:
            if path.is_file():
                parts.append(path.read_text(encoding="utf-8", errors="replace"))
        return "\n".join(parts)

    # ------------------------------------------------------------------------------ the command line

    def airflow(
        self, *args: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``airflow <args>`` in this home (about 4-5 s of start-up each).

        :param args: the arguments.
        :param timeout: seconds before the call is killed.
        :param check: raise on a non-zero exit code.
        :return: the completed process, with text output.
        :raises AirflowCommandError: with the command and its output.
        """
        argv = [*_airflow_argv(), *args]
        proc = subprocess.run(
            argv,
            env=self.env(),
            cwd=str(self.home),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            start_new_session=True,
        )
        if check and proc.returncode != 0:
            raise AirflowCommandError(
                f"`airflow {' '.join(args)}` exited with code {proc.returncode}\n"
                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
            )
        return proc

    def set_variable(self, key: str, value: str) -> None:
        """Set an Airflow Variable as a user would: ``airflow variables set KEY VALUE``."""
        self.airflow("variables", "set", key, value)

    def cli_hint(self, *args: str) -> str:
        """Return a shell command that runs ``airflow <args>`` against this instance."""
        return f"AIRFLOW_HOME={shlex.quote(str(self.home))} {shlex.join([*_airflow_argv(), *args])}"

    # ------------------------------------------------------------------------------ the REST API

    def token(self, *, renew: bool = False) -> str:
        """Return a JWT for ``admin`` (``POST /auth/token`` with the generated password)."""
        if self._token is None or renew:
            body = {"username": "admin", "password": self.password}
            self._token = str(self._request("POST", "/auth/token", body, auth=False)["access_token"])
        return self._token

    def api(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        """Call the REST API as ``admin``; return the decoded JSON.

        :param method: ``GET``, ``POST``, ``PATCH``...
        :param path: e.g. ``/api/v2/dags/my_dag``.
        :param body: a JSON body.
        :param params: query parameters (``None`` values are left out).
        :raises AirflowCommandError: on an HTTP error, with the status and the response.
        """
        query = {key: value for key, value in params.items() if value is not None}
        if query:
            path = f"{path}?{urllib.parse.urlencode(query, doseq=True)}"
        try:
            return self._request(method, path, body)
        except AirflowCommandError as error:
            if "HTTP 401" not in str(error):
                raise
            self.token(renew=True)
            return self._request(method, path, body)

    def get_text(self, path: str) -> str:
        """GET a page as ``admin``; return its text.

        :raises AirflowCommandError: on an HTTP error, with the status and the response.
        """
        request = urllib.request.Request(
            self.base_url + path, headers={"Authorization": f"Bearer {self.token()}"}, method="GET"
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return str(response.read().decode())
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")[:2000]
            raise AirflowCommandError(f"GET {path}: HTTP {error.code}: {detail}") from None

    def _request(self, method: str, path: str, body: Any = None, *, auth: bool = True) -> Any:
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if auth:
            headers["Authorization"] = f"Bearer {self.token()}"
        request = urllib.request.Request(self.base_url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                payload = response.read()
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")[:2000]
            raise AirflowCommandError(f"{method} {path}: HTTP {error.code}: {detail}") from None
        return json.loads(payload) if payload else None

    def health(self) -> dict[str, Any]:
        """Return ``/api/v2/monitor/health``."""
        return dict(self._request("GET", "/api/v2/monitor/health", auth=False))

    def import_errors(self) -> list[dict[str, Any]]:
        """Return the DAG import errors the dag-processor recorded."""
        return list(self.api("GET", "/api/v2/importErrors")["import_errors"])

    def wait_for_dag(self, dag_id: str, timeout: float = 90) -> dict[str, Any]:
        """Wait until the dag-processor has parsed and serialized ``dag_id``; return it.

        :raises AssertionError: on timeout, or at once if the DAGs folder has import errors.
        """

        def parsed() -> dict[str, Any] | None:
            errors = self.import_errors()
            if errors:
                raise AssertionError(f"import errors in the DAGs folder: {json.dumps(errors, indent=2)}")
            try:
                return dict(self.api("GET", f"/api/v2/dags/{dag_id}"))
            except AirflowCommandError as error:
                if "HTTP 404" in str(error):
                    return None
                raise

        return self.wait_until(parsed, timeout=timeout, what=f"DAG {dag_id} to be parsed")

    def unpause(self, dag_id: str, *, via_cli: bool = False) -> None:
        """Unpause a DAG: ``PATCH /api/v2/dags/{dag_id}`` (the UI's toggle), or ``airflow dags unpause``.

        :param dag_id: the DAG.
        :param via_cli: use the command line (4-5 s slower) instead of the REST API.
        """
        if via_cli:
            self.airflow("dags", "unpause", dag_id)
        else:
            self.api("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})

    def trigger(
        self, dag_id: str, *, run_id: str | None = None, conf: Mapping[str, Any] | None = None
    ) -> str:
        """Trigger a manual run, as the UI's trigger button does; return its run id."""
        body: dict[str, Any] = {"logical_date": None, "conf": dict(conf or {})}
        if run_id is not None:
            body["dag_run_id"] = run_id
        return str(self.api("POST", f"/api/v2/dags/{dag_id}/dagRuns", body)["dag_run_id"])

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        """Return one run (``state``, ``run_type``, ``logical_date``...)."""
        return dict(self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{_quote(run_id)}"))

    def dag_runs(self, dag_id: str, **params: Any) -> list[dict[str, Any]]:
        """Return a DAG's runs, oldest first; ``params`` filter them (e.g. ``run_type="backfill"``)."""
        params.setdefault("limit", 100)
        params.setdefault("order_by", "id")
        return list(self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns", **params)["dag_runs"])

    def task_instances(self, dag_id: str, run_id: str = "~", **params: Any) -> list[dict[str, Any]]:
        """Return task instances (``task_id``, ``state``, ``try_number``...) of one run, or all (``~``)."""
        params.setdefault("limit", 100)
        path = f"/api/v2/dags/{dag_id}/dagRuns/{_quote(run_id)}/taskInstances"
        return list(self.api("GET", path, **params)["task_instances"])

    def task_instance(self, dag_id: str, run_id: str, task_id: str) -> dict[str, Any]:
        """Return one task instance."""
        path = f"/api/v2/dags/{dag_id}/dagRuns/{_quote(run_id)}/taskInstances/{_quote(task_id)}"
        return dict(self.api("GET", path))

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        """Return ``{task_id: state}`` of one run."""
        return {ti["task_id"]: ti["state"] for ti in self.task_instances(dag_id, run_id)}

    def describe_runs(self, dag_id: str) -> dict[str, Any]:
        """Return every run's state and task states, for a failure message."""
        return {
            run["dag_run_id"]: (run["state"], self.task_states(dag_id, run["dag_run_id"]))
            for run in self.dag_runs(dag_id)
        }

    def backfill(
        self, dag_id: str, *, from_date: str, to_date: str, max_active_runs: int, timeout: float
    ) -> tuple[list[dict[str, Any]], int]:
        """Backfill ``dag_id`` (``airflow backfill create``) and wait until its runs have ended.

        :return: the backfill's runs, and the most of them seen running at once.
        """
        self.airflow(
            "backfill", "create", "--dag-id", dag_id, "--from-date", from_date,
            "--to-date", to_date, "--max-active-runs", str(max_active_runs),
        )  # fmt: skip
        most_running = 0

        def ended() -> list[dict[str, Any]] | None:
            nonlocal most_running
            runs = self.dag_runs(dag_id, run_type="backfill")
            most_running = max(most_running, sum(run["state"] == "running" for run in runs))
            return runs if runs and all(run["state"] in ("success", "failed") for run in runs) else None

        runs = self.wait_until(
            ended,
            timeout=timeout,
            interval=1,
            what=f"the backfill of {dag_id} to end",
            describe=lambda: self.describe_runs(dag_id),
        )
        return runs, most_running

    def wait_for_runs(
        self, dag_id: str, run_ids: Iterable[str], *, timeout: float, interval: float = 2.0
    ) -> dict[str, dict[str, Any]]:
        """Wait until every run in ``run_ids`` has finished; return them by run id.

        :raises AssertionError: on timeout, with every task state of those runs.
        """
        wanted = set(run_ids)

        def finished() -> dict[str, dict[str, Any]] | None:
            runs = {run["dag_run_id"]: run for run in self.dag_runs(dag_id) if run["dag_run_id"] in wanted}
            done = all(run["state"] in FINISHED_RUN_STATES for run in runs.values())
            return runs if done and set(runs) == wanted else None

        return self.wait_until(
            finished,
            timeout=timeout,
            interval=interval,
            what=f"runs {sorted(wanted)} of {dag_id} to finish",
            describe=lambda: {run: self.task_states(dag_id, run) for run in sorted(wanted)},
        )


def _command_line(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return " ".join(part.decode(errors="replace") for part in raw.split(b"\0") if part)[:200]


def _quote(value: str) -> str:
    return urllib.parse.quote(value, safe="~")


def _fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


def _wait(predicate: Callable[[], T | None], *, timeout: float, what: str, interval: float = 1.0) -> T:
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        last = value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last value: {last!r})")
        time.sleep(interval)


def stop_all() -> None:
    """Stop every instance of this process that may still be running (registered with :mod:`atexit`)."""
    for instance in list(_LIVE.values()):
        with contextlib.suppress(Exception):
            instance.stop()


atexit.register(stop_all)


def make_home(prefix: str = "walthrottle-airflow-standalone-") -> Path:
    """Create a fresh directory for an ``AIRFLOW_HOME``.

    :param prefix: prefix of its name.
    """
    return Path(tempfile.mkdtemp(prefix=prefix))


@contextlib.contextmanager
def serving_dag(instance: AirflowStandalone, dag_id: str, dag_source: str) -> Iterator[AirflowStandalone]:
    """Prepare ``instance`` with one DAG file; afterwards stop every process it started and fail if
    one is left behind.

    Its home is removed unless ``WALTHROTTLE_KEEP_AIRFLOW_HOME=1`` (to read the logs after a failure).

    :param instance: an Airflow, not prepared yet.
    :param dag_id: the DAG file's name, without ``.py``.
    :param dag_source: the DAG file's text (dedented here).
    """
    try:
        instance.prepare()
        (instance.dags_folder / f"{dag_id}.py").write_text(textwrap.dedent(dag_source), encoding="utf-8")
        yield instance
    finally:
        forced = instance.stop()
        leftovers = instance.leftover_processes()
        if os.environ.get("WALTHROTTLE_KEEP_AIRFLOW_HOME") != "1":
            instance.remove_home()
        assert not leftovers, f"processes left behind: {leftovers}"
        if forced:
            print("\nstopping Airflow needed force:\n  " + "\n  ".join(forced))

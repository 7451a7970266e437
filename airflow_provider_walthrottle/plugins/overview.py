"""What the migrations page shows, read in the api-server: backlogs, migrations and flags.

Each configured connection is read on its own: one that is missing, unreachable, not allowed or
silent shows its error on the page and does not hide the others. :class:`ConnectionReader` reads
them concurrently, in a few threads of its own (not the api-server's), each within a deadline, so a
server that accepts and never answers costs the page one red line and the api-server nothing.
Variables are read and written with Airflow's core ``Variable`` model (the api-server has the
metadata database; the Task SDK's ``Variable`` is for tasks).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import logging
from typing import TYPE_CHECKING, Any

from airflow_provider_walthrottle.flags import (
    KILL_SWITCH_VARIABLE,
    WAL_HEALTH_FLAG,
    InvalidFlagValueError,
    parse_flag_value,
)
from airflow_provider_walthrottle.wal.health import DEFAULT_MAX_PENDING_SEGMENTS, evaluate_wal_archival

if TYPE_CHECKING:
    from airflow_provider_walthrottle.migrations.catalog import MigrationSummary
    from airflow_provider_walthrottle.wal.health import HealthSignal

log = logging.getLogger(__name__)

#: The configuration section of the provider (``[walthrottle]`` in ``airflow.cfg``).
CONFIG_SECTION = "walthrottle"

#: Seconds the page waits for one connection's backlog and migrations, unless
#: ``[walthrottle] ui_read_timeout`` sets another; after it, the connection shows as not answering.
DEFAULT_UI_READ_TIMEOUT_SECONDS = 10

#: Threads that read connections for the page, apart from the api-server's own threadpool (which
#: serves every sync route of Airflow's API): however many requests wait on a silent server, they
#: hold at most this many threads.
READ_THREADS = 8


@dataclasses.dataclass(frozen=True)
class FlagView:
    """A flag Variable as the page shows it.

    :param key: the Variable key.
    :param description: what turning it on does.
    :param default: the answer while the Variable is unset.
    :param raw: the Variable's value, or ``None`` when it is unset.
    :param enabled: on for everybody (``True``), off (``False``), or a partial rollout (``None``).
    :param state: the value in words, e.g. ``"on"``, ``"off (unset: the default)"``, ``"rollout: 25%"``.
    :param invalid: the value cannot be parsed, so the flag reads as its safe side (``enabled``).
    """

    key: str
    description: str
    default: bool
    raw: str | None
    enabled: bool | None
    state: str
    invalid: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Return the flag as JSON-ready values."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class FlagSpec:
    """A safety switch the page shows.

    :param description: what turning it on does.
    :param default: its answer while the Variable is unset.
    :param safe: its answer while the Variable holds a value that cannot be parsed: the side that
        protects the database.
    """

    description: str
    default: bool
    safe: bool


#: The Variables the page shows and lets operators (Airflow's ``Op`` role and up) toggle, with their
#: safe sides: the WAL flag throttles (on), the kill switch stops migrations (off).
FLAGS: dict[str, FlagSpec] = {
    WAL_HEALTH_FLAG: FlagSpec(
        "Throttle sensors and migrations on the WAL archival backlog", default=False, safe=True
    ),
    KILL_SWITCH_VARIABLE: FlagSpec(
        "Run batched migrations at all (off: every migration waits or skips)", default=True, safe=False
    ),
}


class FlagNotWritableError(RuntimeError):
    """The Variable is defined outside the metadata database, which wins over what the page writes."""


@dataclasses.dataclass(frozen=True)
class ConnectionOverview:
    """One connection's backlog and migrations, or the error that kept them from being read.

    :param conn_id: the Airflow connection.
    :param health: the backlog against the page's threshold; ``None`` when it could not be read.
    :param migrations: the batched migrations in its database.
    :param error: why the backlog or the migrations could not be read, in one line.
    :param public_error: the same without the connection's host, port, database and login, for
        people who may not read the Airflow connection (see :meth:`without_connection_details`).
    """

    conn_id: str
    health: HealthSignal | None
    migrations: tuple[MigrationSummary, ...] = ()
    error: str | None = None
    public_error: str | None = None

    @property
    def throttling(self) -> bool:
        """Whether any of its migrations waits on the backlog now."""
        return any(migration.throttling for migration in self.migrations)

    def without_connection_details(self) -> ConnectionOverview:
        """Return the overview as a person who may not read the Airflow connection sees it."""
        if self.error is None or self.public_error == self.error:
            return self
        public = self.public_error or f"Connection '{self.conn_id}' could not be read"
        return dataclasses.replace(
            self,
            error=f"{public} Its host, database and login are shown to roles that may read connections.",
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the connection's part of the page as JSON-ready values."""
        return {
            "conn_id": self.conn_id,
            "error": self.error,
            "throttling": self.throttling,
            "health": self.health.to_dict() if self.health else None,
            "migrations": [migration.to_dict() for migration in self.migrations],
        }


def configured_connection_ids() -> list[str]:
    """Return ``[walthrottle] ui_connection_ids``, the connections the page reads, in order."""
    from airflow.configuration import conf

    raw = conf.get(CONFIG_SECTION, "ui_connection_ids", fallback="postgres_default") or ""
    return list(dict.fromkeys(part.strip() for part in raw.split(",") if part.strip()))


def configured_threshold() -> int:
    """Return ``[walthrottle] max_pending_segments``, the threshold the page compares backlogs with."""
    from airflow.configuration import conf

    return conf.getint(CONFIG_SECTION, "max_pending_segments", fallback=DEFAULT_MAX_PENDING_SEGMENTS)


def configured_read_timeout() -> float:
    """Return ``[walthrottle] ui_read_timeout``: the seconds the page waits for each connection."""
    from airflow.configuration import conf

    seconds = conf.getfloat(CONFIG_SECTION, "ui_read_timeout", fallback=DEFAULT_UI_READ_TIMEOUT_SECONDS)
    return seconds if seconds > 0 else DEFAULT_UI_READ_TIMEOUT_SECONDS


def read_connection(conn_id: str, threshold: int, **filters: Any) -> ConnectionOverview:
    """Read one connection's backlog and migrations; never raise for a connection's own problem.

    :param conn_id: the Airflow connection.
    :param threshold: the threshold to compare the backlog with.
    :param filters: passed to :meth:`~.BatchedMigrationHook.get_archiver_status_and_migrations`.
    """
    from airflow_provider_walthrottle.exceptions import WalThrottleError
    from airflow_provider_walthrottle.hooks.batched_migration import BatchedMigrationHook

    hook = BatchedMigrationHook(postgres_conn_id=conn_id)
    try:
        status, migrations = hook.get_archiver_status_and_migrations(**filters)
    except WalThrottleError as error:
        return ConnectionOverview(
            conn_id=conn_id, health=None, error=str(error), public_error=error.public_message
        )
    health = evaluate_wal_archival(status, threshold)
    return ConnectionOverview(conn_id=conn_id, health=health, migrations=tuple(migrations))


@dataclasses.dataclass
class _SharedRead:
    future: concurrent.futures.Future[ConnectionOverview]
    waiting: asyncio.Future[ConnectionOverview]
    waiters: int = 0


class ConnectionReader:
    """Read connections for the page: concurrently, each within a deadline, in threads of its own.

    :func:`read_connection` blocks (psycopg, and reading the Airflow connection). Here it runs in a
    pool of :data:`READ_THREADS` threads, so the api-server's threadpool, which serves Airflow's own
    sync routes (``/api/v2/monitor/health``, ``/auth/token``, …), never waits on a database.
    Requests that ask for the same connection with the same filters while a read is under way share
    that read: fifty page loads against a silent server hold one thread, not fifty, and a slow
    connection does not take the threads the others need. A read nobody waits for any more is
    dropped if it has not started.

    :param threads: the most connections read at once.
    """

    def __init__(self, *, threads: int = READ_THREADS) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="walthrottle-page"
        )
        self._reads: dict[tuple[Any, ...], _SharedRead] = {}

    async def read_all(
        self, conn_ids: list[str], threshold: int, *, timeout: float, **filters: Any
    ) -> list[ConnectionOverview]:
        """Read every connection at once; return them in order, each read or timed out after ``timeout``.

        :param conn_ids: the connections.
        :param threshold: the threshold to compare each backlog with.
        :param timeout: seconds to wait for each connection.
        :param filters: passed to :func:`read_connection`.
        """
        reads = (self.read(conn_id, threshold, timeout=timeout, **filters) for conn_id in conn_ids)
        return list(await asyncio.gather(*reads))

    async def read(
        self, conn_id: str, threshold: int, *, timeout: float, **filters: Any
    ) -> ConnectionOverview:
        """Read one connection, or say that it did not answer within ``timeout`` seconds.

        :param conn_id: the Airflow connection.
        :param threshold: the threshold to compare the backlog with.
        :param timeout: seconds to wait.
        :param filters: passed to :func:`read_connection`.
        """
        key = (conn_id, threshold, *sorted(filters.items()))
        shared = self._reads.get(key)
        if shared is None:
            future = self._executor.submit(functools.partial(read_connection, conn_id, threshold, **filters))
            shared = _SharedRead(future, asyncio.wrap_future(future))
            self._reads[key] = shared
            shared.waiting.add_done_callback(functools.partial(self._forget, key, shared))
        shared.waiters += 1
        try:
            return await asyncio.wait_for(asyncio.shield(shared.waiting), timeout)
        except asyncio.TimeoutError:
            message = (
                f"Connection '{conn_id}' did not answer within {timeout:g} s; the page reads it again at its "
                "next refresh. Check that the server answers, or raise [walthrottle] ui_read_timeout"
            )
            return ConnectionOverview(conn_id=conn_id, health=None, error=message, public_error=message)
        except Exception as error:  # a bug must not hide the other connections
            log.exception("Reading connection %s for the migrations page failed", conn_id)
            message = (
                f"Reading connection '{conn_id}' failed unexpectedly ({type(error).__name__}); "
                "the api-server's log has the details"
            )
            return ConnectionOverview(conn_id=conn_id, health=None, error=message, public_error=message)
        finally:
            shared.waiters -= 1
            if not shared.waiters:
                shared.future.cancel()  # only if it has not started: a running read ends by its timeouts

    def _forget(self, key: tuple[Any, ...], shared: _SharedRead, _: object) -> None:
        if self._reads.get(key) is shared:
            del self._reads[key]

    async def call(self, function: Any, *args: Any, timeout: float) -> Any:
        """Run ``function(*args)`` in the reader's threads, waiting at most ``timeout`` seconds.

        :param function: a blocking function, e.g. a hook method.
        :param args: its arguments.
        :param timeout: seconds to wait for it.
        :raises TimeoutError: (``asyncio.TimeoutError``) when it has not returned by then; it may still
            run to its end.
        """
        future = self._executor.submit(function, *args)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        finally:
            future.cancel()


def read_flags() -> list[FlagView]:
    """Read the flag Variables the page shows."""
    return [read_flag(key) for key in FLAGS]


def read_flag(key: str) -> FlagView:
    """Read one flag Variable and say what it means.

    A value that cannot be parsed reads as the flag's safe side (``safe`` of its :class:`FlagSpec`), as the
    sensor, the trigger and the operator read it, and says so.

    :param key: one of :data:`FLAGS`.
    """
    from airflow.models import Variable

    spec = FLAGS[key]
    description, default = spec.description, spec.default
    raw = Variable.get(key, default_var=None)
    if raw is None:
        return FlagView(key, description, default, None, default, f"{_word(default)} (unset: the default)")
    try:
        state = parse_flag_value(raw)
    except InvalidFlagValueError as error:
        safe = _word(spec.safe)
        shown = raw if len(raw) <= 40 else f"{raw[:40]}…"
        return FlagView(
            key,
            description,
            default,
            raw,
            spec.safe,
            f"{safe} (invalid value {shown!r}: treated as {safe}, the safe side; {error.reason})",
            invalid=True,
        )
    if state.enabled:
        return FlagView(key, description, default, raw, True, "on")
    if state.actors or state.percentage_of_actors:
        parts = [f"{state.percentage_of_actors:g}% of actors"] if state.percentage_of_actors else []
        parts += [f"{len(state.actors)} listed actor(s)"] if state.actors else []
        return FlagView(key, description, default, raw, None, "rollout: " + ", ".join(parts))
    return FlagView(key, description, default, raw, False, "off")


def _word(enabled: bool) -> str:
    return "on" if enabled else "off"


def write_flag(key: str, enabled: bool) -> FlagView:
    """Set a flag Variable to ``true`` or ``false`` in the metadata database; return it read back.

    :param key: one of :data:`FLAGS`.
    :param enabled: the new value.
    :raises FlagNotWritableError: when an environment variable or a secrets backend defines the
        Variable, so the written value would not take effect.
    """
    from airflow.models import Variable

    value = "true" if enabled else "false"
    Variable.set(key, value, description=FLAGS[key].description)
    flag = read_flag(key)
    if flag.raw != value:
        raise FlagNotWritableError(
            f"Variable {key} is defined outside the metadata database (an AIRFLOW_VAR_{key.upper()} "
            "environment variable or a secrets backend), which wins over the value written here; "
            "change it there"
        )
    return flag

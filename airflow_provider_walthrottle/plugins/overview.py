"""What the migrations page shows, read in the api-server: health indicators, migrations and flags.

Each configured connection is read on its own: one that is missing, unreachable, not allowed or
silent shows its error on the page and does not hide the others. :class:`ConnectionReader` reads
them concurrently, in a few threads of its own (not the api-server's), each within a deadline, so a
server that accepts and never answers costs the page one red line and the api-server nothing. What
is read of the health indicators is in :mod:`~airflow_provider_walthrottle.plugins.readings`; the
flags are in :mod:`~airflow_provider_walthrottle.plugins.flag_variables`. The plans saved for its
migrations (:mod:`~airflow_provider_walthrottle.migrations.plan_store`) are read with them: a plan
whose migration has not started shows as such; a running one's plan against what it did.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import logging
from typing import TYPE_CHECKING, Any

import psycopg

from airflow_provider_walthrottle.indicators.wal_archival import WalArchivalReading
from airflow_provider_walthrottle.migrations.plan_actual import compare
from airflow_provider_walthrottle.migrations.plan_store import read_plans
from airflow_provider_walthrottle.plugins.readings import page_indicators, read_indicator_rows
from airflow_provider_walthrottle.wal.health import DEFAULT_MAX_PENDING_SEGMENTS

if TYPE_CHECKING:
    from collections.abc import Mapping

    from airflow_provider_walthrottle.migrations.catalog import MigrationSummary
    from airflow_provider_walthrottle.migrations.plan_store import PlanOfMigration
    from airflow_provider_walthrottle.plugins.flag_variables import FlagView
    from airflow_provider_walthrottle.plugins.readings import IndicatorRow
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
class ConnectionOverview:
    """One connection's health indicators and migrations, or the error that kept them from being read.

    :param conn_id: the Airflow connection.
    :param health: the backlog against the page's threshold; ``None`` when it could not be read.
    :param migrations: the batched migrations in its database.
    :param error: why the connection or its migrations could not be read, in one line.
    :param public_error: the same without the connection's host, port, database and login, for
        people who may not read the Airflow connection (see :meth:`without_connection_details`).
    :param indicators: every indicator read on it, in the order of
        :func:`~airflow_provider_walthrottle.gate.default_indicators` (autovacuum once per migrated
        table).
    :param plans: the plans saved for its migrations: of those shown, and of those not started.
    :param plans_error: why the saved plans could not be read, in one line (the migrations still show).
    """

    conn_id: str
    health: HealthSignal | None
    migrations: tuple[MigrationSummary, ...] = ()
    error: str | None = None
    public_error: str | None = None
    indicators: tuple[IndicatorRow, ...] = ()
    plans: tuple[PlanOfMigration, ...] = ()
    plans_error: str | None = None

    def plan_of(self, name: str) -> PlanOfMigration | None:
        """Return the plan saved for the migration ``name``, if any."""
        return next((plan for plan in self.plans if plan.name == name), None)

    @property
    def not_started(self) -> list[PlanOfMigration]:
        """The plans of migrations that have not started, most recently planned first."""
        return [plan for plan in self.plans if not plan.started]

    @property
    def stopped_by(self) -> list[str]:
        """The indicators whose readings stop a migration here by the gate's rule, whatever their flags."""
        return list(dict.fromkeys(row.indicator for row in self.indicators if row.stops))

    @property
    def throttling(self) -> bool:
        """Whether any of its migrations waits on the backlog now."""
        return any(migration.throttling for migration in self.migrations)

    def without_connection_details(self) -> ConnectionOverview:
        """Return the overview as a person who may not read the Airflow connection sees it."""
        indicators = tuple(row.without_connection_details() for row in self.indicators)
        if self.error is None or self.public_error == self.error:
            return dataclasses.replace(self, indicators=indicators)
        public = self.public_error or f"Connection '{self.conn_id}' could not be read"
        return dataclasses.replace(
            self,
            error=f"{public} Its host, database and login are shown to roles that may read connections.",
            indicators=indicators,
        )

    def to_dict(self, flags: Mapping[str, FlagView] | None = None) -> dict[str, Any]:
        """Return the connection's part of the page as JSON-ready values.

        :param flags: the flags as the page read them, by Variable key; each indicator then says
            whether its flag is on, and for which of its migrations.
        """
        flags = flags or {}
        return {
            "conn_id": self.conn_id,
            "error": self.error,
            "throttling": self.throttling,
            "health": self.health.to_dict() if self.health else None,
            "indicators": [row.to_dict(flags.get(row.flag_variable)) for row in self.indicators],
            "stopped_by": self.stopped_by,
            "migrations": [migration.to_dict() for migration in self.migrations],
            "plans": [self._plan_to_dict(plan) for plan in self.plans],
            "plans_error": self.plans_error,
        }

    def _plan_to_dict(self, plan: PlanOfMigration) -> dict[str, Any]:
        migration = next((m for m in self.migrations if m.name == plan.name), None)
        state = "not started" if not plan.started else "stale" if plan.stale else "current"
        against = compare(plan, migration) if migration is not None and state == "current" else None
        return {
            "migration": plan.name,
            "state": state,
            "planned_at": plan.stored.planned_at.isoformat(),
            "fingerprint": plan.stored.fingerprint,
            "plan": plan.stored.plan,
            "against_actual": against.to_dict() if against is not None else None,
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
    """Read one connection's migrations and health indicators; never raise for a connection's own problem.

    Both are read on one read-only connection, the migrations first (autovacuum is read on their
    tables), with the plans saved for them (:func:`read_connection_plans`).

    :param conn_id: the Airflow connection.
    :param threshold: the threshold to compare the backlog with.
    :param filters: passed to :meth:`~.BatchedMigrationHook.get_migrations`.
    """
    from airflow_provider_walthrottle.exceptions import WalThrottleError
    from airflow_provider_walthrottle.hooks.batched_migration import BatchedMigrationHook

    hook = BatchedMigrationHook(postgres_conn_id=conn_id)
    try:
        with hook.connect(read_only=True) as conn:
            migrations = hook._read_migrations(conn, filters)
            plans, plans_error = read_connection_plans(conn, migrations, **filters)
            rows = read_indicator_rows(hook, conn, page_indicators(threshold), migrations)
    except WalThrottleError as error:
        return ConnectionOverview(
            conn_id=conn_id, health=None, error=str(error), public_error=error.public_message
        )
    health = next((row.reading.health for row in rows if isinstance(row.reading, WalArchivalReading)), None)
    return ConnectionOverview(
        conn_id=conn_id,
        health=health,
        migrations=tuple(migrations),
        indicators=rows,
        plans=plans,
        plans_error=plans_error,
    )


def read_connection_plans(
    conn: psycopg.Connection[Any], migrations: list[MigrationSummary], **filters: Any
) -> tuple[tuple[PlanOfMigration, ...], str | None]:
    """Read the plans the page shows with ``migrations``; never raise for the database's own problem.

    The plans of the migrations shown, and of migrations not started yet; under a ``dag_id``, only
    those of the migrations shown (a plan not started belongs to no DAG yet). A role that may read
    the migrations but not the plans (the table came later than a ``GRANT`` on the others) costs
    the page its plans, with one line that says why, and not the migrations.

    :param conn: the page's read-only connection.
    :param migrations: the migrations the page shows.
    :param filters: the page's filters, as :func:`read_connection` takes them.
    """
    try:
        plans = read_plans(conn, name=filters.get("name"))
    except psycopg.Error as error:
        log.warning("Reading the saved plans for the migrations page failed: %s", error)
        reason = error.diag.message_primary or type(error).__name__
        fix = (
            "; grant the connection's role SELECT on walthrottle.batched_migration_plans"
            if isinstance(error, psycopg.errors.InsufficientPrivilege)
            else ""
        )
        return (), f"The saved plans could not be read: {reason}{fix}"
    if filters.get("dag_id"):
        shown = {migration.name for migration in migrations}
        plans = [plan for plan in plans if plan.name in shown]
    return tuple(plans), None


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

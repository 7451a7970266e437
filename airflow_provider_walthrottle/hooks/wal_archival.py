"""The hook that measures PostgreSQL's health: the WAL archival backlog and the other indicators."""

from __future__ import annotations

import os
import warnings
from contextlib import asynccontextmanager, contextmanager
from copy import deepcopy
from typing import TYPE_CHECKING, Any

import psycopg
from airflow.providers.postgres.hooks.postgres import PostgresHook
from airflow.sdk.exceptions import AirflowNotFoundException

from airflow_provider_walthrottle.config import (
    configured_connect_timeout,
    configured_read_only_statement_timeout,
)
from airflow_provider_walthrottle.conversation import aconverse
from airflow_provider_walthrottle.exceptions import (
    ConnectionNotDefinedError,
    DatabaseConnectError,
    DatabaseQueryError,
    InsufficientPrivilegeError,
    UnsupportedConfigurationError,
    connect_error,
    first_line,
    hide_password,
)
from airflow_provider_walthrottle.indicators.base import aread_indicator, read_indicator
from airflow_provider_walthrottle.wal.queries import (
    archiver_status_conversation,
    read_archiver_status,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator, Sequence

    from airflow.sdk import Connection

    from airflow_provider_walthrottle.hooks.batched_migration import BatchedMigrationHook
    from airflow_provider_walthrottle.indicators.base import HealthIndicator, IndicatorContext, Reading
    from airflow_provider_walthrottle.migrations.catalog import MigrationSummary
    from airflow_provider_walthrottle.wal.archiver_status import ArchiverStatus


class WalArchivalHook(PostgresHook):
    """
    Measure how many WAL segments wait for PostgreSQL's ``archive_command``.

    The count is exact when the connection's role may call ``pg_ls_archive_statusdir()``
    (PostgreSQL 12+, superuser or ``pg_monitor``): it counts the ``.ready`` files of real segments.
    Without that privilege it falls back to LSN arithmetic with the server's real segment size.
    The hook only reads, in a read-only transaction.

    Every connection it opens has a ``connect_timeout`` (10 s unless the Airflow connection's
    extra or ``[walthrottle] connect_timeout`` sets another), and read-only ones a
    ``statement_timeout`` (30 s, ``[walthrottle] read_only_statement_timeout``; see
    :mod:`airflow_provider_walthrottle.config`), so a server that accepts and never answers cannot
    hold a task, a trigger or the api-server.

    .. seealso::
        :doc:`/howto/hook`

    :param postgres_conn_id: the Airflow connection to the PostgreSQL server (type ``postgres``).
    :param database: a database name that overrides the connection's schema.
    """

    hook_name = "Postgres WAL archival"

    @property
    def conn_id(self) -> str:
        """The Airflow connection id this hook uses."""
        return getattr(self, self.conn_name_attr)

    def describe_target(self, *, public: bool = False) -> str:
        """Describe the connection for messages, without its password.

        :param public: name only the connection id, not its host, port, database and login (for
            people who may not read the Airflow connection).
        """
        if public:
            return f"connection '{self.conn_id}'"
        connection = self._get_airflow_connection()
        database = self.database or connection.schema or connection.login
        details = hide_password(
            f"{connection.host}:{connection.port or 5432}/{database} as {connection.login}",
            connection.password,
        )
        return f"connection '{self.conn_id}' ({details})"

    def _get_airflow_connection(self) -> Connection:
        try:
            return self.connection
        except AirflowNotFoundException:
            raise ConnectionNotDefinedError(
                f"Airflow connection '{self.conn_id}' is not defined; create it with "
                f"`airflow connections add {self.conn_id} --conn-uri "
                "postgresql://USER:PASSWORD@HOST:5432/DB` "
                f"or set AIRFLOW_CONN_{self.conn_id.upper()}"
            ) from None

    def connection_kwargs(self, *, read_only: bool = False) -> dict[str, Any]:
        """Return libpq keyword arguments for the connection, with the provider's timeouts.

        They are the ones ``PostgresHook.get_conn()`` builds, without the ``cursor`` extra.
        ``connect_timeout`` is
        :func:`~airflow_provider_walthrottle.config.configured_connect_timeout` unless the
        connection's extra sets it. A read-only connection also gets ``-c statement_timeout=…`` in
        ``options``, first, so that a ``statement_timeout`` in the connection's own ``options`` (or
        ``PGOPTIONS``) wins.

        :param read_only: add the read-only connections' ``statement_timeout``.
        :raises UnsupportedConfigurationError: for an IAM connection (the asynchronous trigger cannot
            fetch its token), or a timeout option that is not a whole number of seconds.
        """
        connection = self._get_airflow_connection()
        if connection.extra_dejson.get("iam", False):
            raise UnsupportedConfigurationError(
                f"Connection '{self.conn_id}' uses IAM authentication, which the asynchronous trigger "
                "does not support; use deferrable=False"
            )
        return self._libpq_kwargs(connection, read_only=read_only)

    def _libpq_kwargs(self, connection: Connection, *, read_only: bool) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "connect_timeout": configured_connect_timeout(),
            "host": connection.host,
            "user": connection.login,
            "password": connection.password,
            "dbname": self.database or connection.schema,
            "port": connection.port,
        }
        if self.options:
            kwargs["options"] = self.options
        for name, value in connection.extra_dejson.items():
            if name not in self.ignored_extra_options:
                kwargs[name] = value
        statement_timeout = configured_read_only_statement_timeout() if read_only else 0
        if statement_timeout:
            # PostgreSQL applies `-c` settings in order: a statement_timeout of the user's own comes later
            theirs = kwargs.get("options") or os.environ.get("PGOPTIONS", "")
            kwargs["options"] = f"-c statement_timeout={statement_timeout * 1000} {theirs}".strip()
        return {name: value for name, value in kwargs.items() if value is not None}

    def _sync_connection_kwargs(self, *, read_only: bool) -> dict[str, Any]:
        """Return :meth:`connection_kwargs`; for an IAM connection, with a token for login and password."""
        connection = self._get_airflow_connection()
        if connection.extra_dejson.get("iam", False):
            connection = deepcopy(connection)
            # what PostgresHook.get_conn() does for IAM, keeping the provider's timeouts
            connection.login, connection.password, connection.port = self.get_iam_token(connection)
        return self._libpq_kwargs(connection, read_only=read_only)

    @contextmanager
    def connect(self, *, read_only: bool = False) -> Iterator[psycopg.Connection[Any]]:
        """Open a psycopg connection in autocommit mode, closed on exit; wrap its transactions yourself.

        It has the timeouts of :meth:`connection_kwargs`.

        :param read_only: make every transaction on it read-only, with the read-only
            ``statement_timeout``.
        :raises ConnectionNotDefinedError: if the Airflow connection does not exist.
        :raises DatabaseConnectError: if the server cannot be reached, does not answer within the
            connect timeout, or refuses the login.
        """
        target = self.describe_target()
        kwargs = self._sync_connection_kwargs(read_only=read_only)
        try:
            conn = psycopg.connect(**kwargs)
        except psycopg.Error as error:  # ProgrammingError for a bad option in the extra
            raise self._connect_error(target, error, kwargs) from None
        try:
            conn.autocommit = True
            conn.read_only = read_only
            yield conn
        finally:
            conn.close()

    def _connect_error(
        self, target: str, error: psycopg.Error, kwargs: dict[str, Any]
    ) -> DatabaseConnectError:
        return connect_error(
            target, error, public_target=self.describe_target(public=True), password=kwargs.get("password")
        )

    def get_archiver_status(self, *, exact_up_to: int | None = None) -> ArchiverStatus:
        """Measure the archiver's state and backlog once.

        :param exact_up_to: count exactly only while the LSN estimate is at most this many segments
            (see :func:`~airflow_provider_walthrottle.wal.queries.archiver_status_conversation`);
            ``None``, the default: always count exactly when the role may.
        :raises ConnectionNotDefinedError: if the Airflow connection does not exist.
        :raises DatabaseConnectError: if the server cannot be reached or refuses the login.
        :raises InsufficientPrivilegeError: if the role may not even read the archiver statistics.
        """
        with self.connect(read_only=True) as conn:
            return self._read_archiver_status(conn, exact_up_to)

    def _read_archiver_status(self, conn: psycopg.Connection[Any], exact_up_to: int | None) -> ArchiverStatus:
        try:
            return read_archiver_status(conn, exact_up_to=exact_up_to)
        except psycopg.Error as error:
            raise self._query_error(error) from None

    async def aget_archiver_status(self, *, exact_up_to: int | None = None) -> ArchiverStatus:
        """Measure the archiver's state and backlog once, with psycopg's ``AsyncConnection``.

        Reading the Airflow connection is the only blocking step; it runs in a worker thread.

        :param exact_up_to: as for :meth:`get_archiver_status`.

        :raises ConnectionNotDefinedError: if the Airflow connection does not exist.
        :raises DatabaseConnectError: if the server cannot be reached or refuses the login.
        :raises InsufficientPrivilegeError: if the role may not even read the archiver statistics.
        """
        async with self._async_read_only_connection() as conn:
            try:
                return await aconverse(conn, archiver_status_conversation(exact_up_to=exact_up_to))
            except psycopg.Error as error:
                raise self._query_error(error) from None

    def read_indicators(
        self,
        indicators: Sequence[HealthIndicator],
        context: IndicatorContext,
        *,
        conn: psycopg.Connection[Any] | None = None,
    ) -> list[Reading]:
        """Read health indicators, each in a transaction of its own, on one connection.

        :param indicators: what to read, e.g. a :class:`~airflow_provider_walthrottle.gate.HealthGate`'s.
        :param context: what the indicators may need (the migrated table, the next batch's WAL).
        :param conn: an open connection in autocommit mode (a migration's own); by default a
            read-only connection is opened and closed.
        :raises ConnectionNotDefinedError: if the Airflow connection does not exist.
        :raises DatabaseConnectError: if the server cannot be reached or refuses the login.
        :raises InsufficientPrivilegeError: if the role may not run an indicator's query at all.
        """
        if conn is None:
            with self.connect(read_only=True) as own:
                return self.read_indicators(indicators, context, conn=own)
        readings = []
        for indicator in indicators:
            try:
                readings.append(read_indicator(conn, indicator, context))
            except psycopg.Error as error:  # named by indicator: read_indicators() would not say which
                raise self._query_error(error, indicator) from None
        return readings

    async def aread_indicators(
        self, indicators: Sequence[HealthIndicator], context: IndicatorContext
    ) -> list[Reading]:
        """Read health indicators as :meth:`read_indicators` does, on an ``AsyncConnection``.

        :param indicators: what to read.
        :param context: what the indicators may need.
        :raises ConnectionNotDefinedError: if the Airflow connection does not exist.
        :raises DatabaseConnectError: if the server cannot be reached or refuses the login.
        :raises InsufficientPrivilegeError: if the role may not run an indicator's query at all.
        """
        readings = []
        async with self._async_read_only_connection() as conn:
            for indicator in indicators:
                try:
                    readings.append(await aread_indicator(conn, indicator, context))
                except psycopg.Error as error:
                    raise self._query_error(error, indicator) from None
        return readings

    # -- moved to BatchedMigrationHook; these names stay for one release --------------------------

    def get_migrations(self, **filters: Any) -> list[MigrationSummary]:
        """Deprecated: use :meth:`.BatchedMigrationHook.get_migrations`.

        :param filters: as that method takes them.
        """
        return self._as_migration_hook("get_migrations").get_migrations(**filters)

    def get_archiver_status_and_migrations(
        self, **filters: Any
    ) -> tuple[ArchiverStatus, list[MigrationSummary]]:
        """Deprecated: use :meth:`.BatchedMigrationHook.get_archiver_status_and_migrations`.

        :param filters: as that method takes them.
        """
        return self._as_migration_hook(
            "get_archiver_status_and_migrations"
        ).get_archiver_status_and_migrations(**filters)

    def set_migration_paused(self, name: str, paused: bool) -> str:
        """Deprecated: use :meth:`.BatchedMigrationHook.set_migration_paused`.

        :param name: the migration.
        :param paused: ``True`` to pause, ``False`` to resume.
        """
        return self._as_migration_hook("set_migration_paused").set_migration_paused(name, paused)

    def _as_migration_hook(self, method: str) -> BatchedMigrationHook:
        from airflow_provider_walthrottle.hooks.batched_migration import BatchedMigrationHook

        warnings.warn(
            f"WalArchivalHook.{method}() moved to BatchedMigrationHook.{method}() "
            "(airflow_provider_walthrottle.hooks.batched_migration); the old name goes in the next release",
            DeprecationWarning,
            stacklevel=3,
        )
        return BatchedMigrationHook(
            postgres_conn_id=self.conn_id,
            database=self.database,
            options=self.options,
            connection=self._get_airflow_connection(),
        )

    @asynccontextmanager
    async def _async_read_only_connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        from asgiref.sync import sync_to_async

        target = await sync_to_async(self.describe_target)()
        kwargs = await sync_to_async(self.connection_kwargs)(read_only=True)
        try:
            conn = await psycopg.AsyncConnection.connect(**kwargs)
        except psycopg.Error as error:
            raise self._connect_error(target, error, kwargs) from None
        try:
            await conn.set_autocommit(True)  # each conversation runs in a transaction of its own
            await conn.set_read_only(True)
            yield conn
        finally:
            await conn.close()

    def _query_error(
        self, error: psycopg.Error, indicator: HealthIndicator | None = None
    ) -> DatabaseQueryError | InsufficientPrivilegeError:
        """Turn a failed query into one line that names the connection, what was read, and what to do."""
        what = "the WAL archiver state"
        needs = (
            "it needs SELECT on pg_catalog.pg_stat_archiver (granted to PUBLIC by default) and, for "
            "the exact count, pg_monitor"
        )
        if indicator is not None and indicator.name != "wal_archival":
            what = f"the {indicator.name.replace('_', ' ')} indicator's statistics"
            needs = f"grant it pg_monitor (GRANT pg_monitor TO <role>) or turn {indicator.flag_variable} off"
        if isinstance(error, psycopg.errors.InsufficientPrivilege):
            login = self._get_airflow_connection().login
            return InsufficientPrivilegeError(
                f"Role '{login}' of connection '{self.conn_id}' may not read {what}: "
                f"{first_line(error)}; {needs}",
                public=f"The role of connection '{self.conn_id}' may not read {what}: "
                f"{first_line(error)}; {needs}",
            )
        return DatabaseQueryError(
            f"Reading {what} with {self.describe_target()} failed: {first_line(error)}",
            public=f"Reading {what} with {self.describe_target(public=True)} failed: {first_line(error)}",
        )

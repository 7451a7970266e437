"""The hook that keeps batched migrations: their state tables, read and paused from outside a task."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import psycopg

from airflow_provider_walthrottle.exceptions import (
    DatabaseQueryError,
    InsufficientPrivilegeError,
    first_line,
)
from airflow_provider_walthrottle.hooks.wal_archival import WalArchivalHook
from airflow_provider_walthrottle.migrations.schema_queries import STATE_SCHEMA

if TYPE_CHECKING:
    from airflow_provider_walthrottle.migrations.catalog import MigrationSummary
    from airflow_provider_walthrottle.wal.archiver_status import ArchiverStatus


class BatchedMigrationHook(WalArchivalHook):
    """
    Read and pause the batched migrations kept in a database, and open the connection they run on.

    It is a :class:`~airflow_provider_walthrottle.hooks.wal_archival.WalArchivalHook` because a
    migration throttles on the backlog of the server it writes to: the operator checks the backlog
    on its migration's own connection, and the migrations page reads both on one connection. Every
    connection has the provider's timeouts.

    .. seealso::
        :doc:`/howto/operator` and :doc:`/howto/ui`

    :param postgres_conn_id: the Airflow connection to the PostgreSQL primary (type ``postgres``).
    :param database: a database name that overrides the connection's schema.
    """

    hook_name = "Postgres batched migrations"

    def get_migrations(self, **filters: Any) -> list[MigrationSummary]:
        """Read the database's batched migrations, with their last jobs and history.

        :param filters: ``name``, ``dag_id``, ``run_id``, ``recent_jobs`` and ``history``, as
            :func:`~airflow_provider_walthrottle.migrations.catalog.read_migrations` takes them.
        :raises ConnectionNotDefinedError: if the Airflow connection does not exist.
        :raises DatabaseConnectError: if the server cannot be reached or refuses the login.
        :raises InsufficientPrivilegeError: if the role may not read the state tables.
        """
        with self.connect(read_only=True) as conn:
            return self._read_migrations(conn, filters)

    def get_archiver_status_and_migrations(
        self, **filters: Any
    ) -> tuple[ArchiverStatus, list[MigrationSummary]]:
        """Measure the backlog (counted exactly) and read the batched migrations, on one connection.

        :param filters: as for :meth:`get_migrations`.
        :raises ConnectionNotDefinedError: if the Airflow connection does not exist.
        :raises DatabaseConnectError: if the server cannot be reached or refuses the login.
        :raises InsufficientPrivilegeError: if the role may not read the archiver statistics or
            the state tables.
        """
        with self.connect(read_only=True) as conn:
            return self._read_archiver_status(conn, None), self._read_migrations(conn, filters)

    def _read_migrations(
        self, conn: psycopg.Connection[Any], filters: dict[str, Any]
    ) -> list[MigrationSummary]:
        from airflow_provider_walthrottle.migrations.catalog import read_migrations

        try:
            return read_migrations(conn, **filters)
        except psycopg.Error as error:
            raise self._state_error(error, "read") from None

    def set_migration_paused(self, name: str, paused: bool) -> str:
        """Pause an active migration or resume a paused one; return its new status.

        :param name: the migration.
        :param paused: ``True`` to pause, ``False`` to resume.
        :raises MigrationNotFoundError: no migration has that name.
        :raises MigrationStatusError: it is finished or failed.
        :raises InsufficientPrivilegeError: if the role may not update the state tables.
        """
        from airflow_provider_walthrottle.migrations.catalog import set_migration_paused

        with self.connect() as conn:
            try:
                return set_migration_paused(conn, name, paused)
            except psycopg.Error as error:
                raise self._state_error(error, "update") from None

    def _state_error(
        self, error: psycopg.Error, action: str
    ) -> DatabaseQueryError | InsufficientPrivilegeError:
        """Turn a failed query on the state tables into one line that names the connection and the fix."""
        if isinstance(error, psycopg.errors.InsufficientPrivilege):
            login = self._get_airflow_connection().login
            grant = (
                f"grant USAGE on schema {STATE_SCHEMA} and "
                f"{'SELECT' if action == 'read' else 'SELECT, UPDATE'} on its tables"
            )
            return InsufficientPrivilegeError(
                f"Role '{login}' of connection '{self.conn_id}' may not {action} the batched migrations' "
                f"state tables: {first_line(error)}; {grant}",
                public=f"The role of connection '{self.conn_id}' may not {action} the batched migrations' "
                f"state tables: {first_line(error)}; {grant}",
            )
        doing = "Reading the batched migrations" if action == "read" else "Updating a batched migration"
        return DatabaseQueryError(
            f"{doing} with {self.describe_target()} failed: {first_line(error)}",
            public=f"{doing} with {self.describe_target(public=True)} failed: {first_line(error)}",
        )

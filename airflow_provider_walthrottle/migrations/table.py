"""The migration's own table as the store's parts see it: its identifiers, its keys, its errors."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from airflow_provider_walthrottle.migrations import table_queries
from airflow_provider_walthrottle.migrations.definition import MigrationDefinitionError
from airflow_provider_walthrottle.migrations.state import KEY_TYPES, MigrationStateError, RangeEscapedError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from airflow_provider_walthrottle.migrations.definition import MigrationDefinition

#: Errors of a query on the migration's table that mean the table, or a column it names, is gone.
TABLE_GONE_ERRORS = (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn)


class MigrationTable:
    """
    The table a migration walks, with its key column; the key's type is known once registered.

    :param definition: the migration.
    """

    def __init__(self, definition: MigrationDefinition) -> None:
        self.definition = definition
        self.identifier = sql.Identifier(definition.schema_name, definition.table_name)
        self.column = sql.Identifier(definition.column)
        self.key_type: str | None = None

    @property
    def qualified_name(self) -> str:
        """``schema.table``, for messages."""
        return f"{self.definition.schema_name}.{self.definition.table_name}"

    def range_query(self, *, inclusive: bool, wal_position: bool = False) -> sql.Composed:
        """Return the query for the next range of this table's keys, within the migration's scope.

        See :func:`~airflow_provider_walthrottle.migrations.table_queries.next_range`, whose
        parameters these are.

        :param inclusive: whether ``%(after)s`` itself belongs to the range.
        :param wal_position: also return the WAL insert position.
        """
        return table_queries.next_range(
            self.identifier,
            self.column,
            self.definition.scope,
            inclusive=inclusive,
            wal_position=wal_position,
        )

    def key(self, text: str) -> Any:
        """Read a key back from its text form, by the key column's type.

        :param text: the key as the state tables keep it.
        :raises MigrationStateError: before the migration is registered (its key type is unknown).
        """
        if self.key_type is None:
            raise MigrationStateError("register() the migration before working on it")
        return KEY_TYPES[self.key_type](text)

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """Turn the error of a query on a table renamed or dropped since the migration began into one line.

        :raises MigrationDefinitionError: naming the table and what to do.
        """
        try:
            yield
        except TABLE_GONE_ERRORS as error:
            raise MigrationDefinitionError(
                f"migration {self.definition.name!r} cannot read table {self.qualified_name}: "
                f"{error.diag.message_primary or error.sqlstate}; if the table or its column "
                f"{self.definition.column} was renamed or dropped since the migration began, restore "
                "it (the job resumes where it stopped), or run a new migration under a new migration_name"
            ) from None

    def escaped(self, what: str) -> RangeEscapedError:
        """Return the error of a range query that found keys outside its bounds.

        :param what: the range and the keys found, e.g. ``job 7 (keys 1..100): its next sub-batch
            found keys 90..120``.
        """
        return RangeEscapedError(
            f"migration {self.definition.name!r}: {what}, so its scope "
            f"{self.definition.scope!r} does not stay inside AND (...); nothing of that range was run; "
            "fix the scope and start the migration again under a new migration_name"
        )

"""The registry of migrations: the state tables, the checks of a new migration, and its row.

A migration is registered at its first run, with the bounds of its keys, after its table, its key
column and its ``batch_sql`` passed the checks here; later runs check that the name still means
the same migration and that its table is still fit to walk.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import class_row, dict_row

from airflow_provider_walthrottle.migrations import queries, schema_queries, table_queries
from airflow_provider_walthrottle.migrations.definition import MigrationDefinitionError
from airflow_provider_walthrottle.migrations.state import KEY_TYPES, Migration, MigrationStateError

if TYPE_CHECKING:
    from airflow_provider_walthrottle.migrations.table import MigrationTable


class MigrationRegistry:
    """
    Create the state tables, check and register a migration, and read its row.

    :param conn: a connection in autocommit mode; each method opens its own transaction, except
        :meth:`load_for_update`, which runs in the caller's.
    :param table: the migration's table.
    """

    def __init__(self, conn: psycopg.Connection[Any], table: MigrationTable) -> None:
        self.conn = conn
        self.table = table
        self.definition = table.definition
        #: Whether the last :meth:`register` registered the migration, rather than finding it
        #: registered: true in its first run alone, even when first runs race.
        self.registered_now = False

    def ensure_state_tables(self) -> None:
        """Create the provider's schema and tables if they are missing; safe to run concurrently."""
        with self.conn.transaction(), self.conn.cursor() as cursor:
            cursor.execute(schema_queries.LOCK_STATE_CREATION)
            for statement in schema_queries.CREATE_STATE:
                cursor.execute(statement)

    def inspect_key_column(self) -> str:
        """Check that the key column can be walked; return its type name.

        :raises MigrationDefinitionError: naming the table or column and what is wrong with it.
        """
        definition = self.definition
        where = self.table.qualified_name
        with self.conn.transaction(), self.conn.cursor(row_factory=dict_row) as cursor:
            cursor.execute(
                table_queries.KEY_COLUMN,
                {
                    "schema": definition.schema_name,
                    "table": definition.table_name,
                    "column": definition.column,
                },
            )
            row = cursor.fetchone()
        if row is None:
            raise MigrationDefinitionError(f"table {where} does not exist (or this role cannot see it)")
        if row["column_name"] is None:
            raise MigrationDefinitionError(f"column {definition.column!r} does not exist in table {where}")
        column = f"column {where}.{definition.column}"
        if row["type_name"] not in KEY_TYPES:
            raise MigrationDefinitionError(
                f"{column} is of type {row['type_name']}; the key must be smallint, integer, bigint, text, "
                "varchar or uuid"
            )
        if not row["not_null"]:
            raise MigrationDefinitionError(f"{column} may be NULL; the key must be NOT NULL")
        if not row["unique_indexed"]:
            what = "indexed but not unique" if row["indexed"] else "not indexed"
            raise MigrationDefinitionError(
                f"{column} is {what}; the key needs a unique index of its own "
                f"(e.g. CREATE UNIQUE INDEX CONCURRENTLY ON {where} ({definition.column}))"
            )
        if not row["deterministic_collation"]:
            raise MigrationDefinitionError(
                f"{column} has a nondeterministic collation; its order is not defined"
            )
        return str(row["type_name"])

    def check_batch_sql(self, key_type: str, sample_key: str | None) -> None:
        """Plan ``batch_sql`` with ``EXPLAIN`` (which runs nothing), to catch its errors before any row.

        :param key_type: the key column's type.
        :param sample_key: a key to bind as both ends of the range (NULL when the table is empty).
        :raises MigrationDefinitionError: with the server's error.
        """
        key = None if sample_key is None else KEY_TYPES[key_type](sample_key)
        try:
            with self.conn.transaction(force_rollback=True), self.conn.cursor() as cursor:
                cursor.execute(table_queries.explain(self.definition.batch_sql), {"start": key, "end": key})
        except psycopg.Error as error:
            message = " ".join(str(error).split())
            raise MigrationDefinitionError(
                f"batch_sql of migration {self.definition.name!r} does not plan: {message}"
            ) from None

    def register(self, batch_size: int) -> Migration:
        """Record the migration at its first run, with its key bounds; check it on later runs.

        :param batch_size: the first batch size.
        :raises MigrationDefinitionError: if the name is taken by a migration that does something else,
            or the table or its key column is not fit (or no longer fit) to walk.
        """
        definition = self.definition
        self.registered_now = False
        try:
            key_type = self.inspect_key_column()
        except MigrationDefinitionError as error:
            if not self._registered():
                raise
            raise MigrationDefinitionError(
                f"migration {definition.name!r} was registered on table {self.table.qualified_name}, but "
                f"{error}; if the table or its column was renamed or changed since, restore it and the "
                "migration resumes where it stopped, or start a new migration under a new migration_name"
            ) from None
        with self.conn.transaction(), self.conn.cursor() as cursor:
            cursor.execute(queries.MIGRATION_EXISTS, [definition.name])
            if cursor.fetchone() is None:
                min_key, max_key, total = self._key_bounds(cursor)
                # before the row exists, so that a typo does not take the name
                self.check_batch_sql(key_type, min_key)
                cursor.execute(
                    queries.INSERT_MIGRATION,
                    {
                        "name": definition.name,
                        "schema": definition.schema_name,
                        "table": definition.table_name,
                        "column": definition.column,
                        "key_type": key_type,
                        "batch_sql": definition.batch_sql,
                        "scope": definition.scope,
                        "fingerprint": definition.fingerprint,
                        "min_key": min_key,
                        "max_key": max_key,
                        "total": total,
                        "batch_size": batch_size,
                    },
                )
                self.registered_now = cursor.rowcount == 1  # 0: a concurrent first run registered it
        migration = self.load()
        self.table.key_type = migration.key_type
        if migration.fingerprint != definition.fingerprint:
            raise MigrationDefinitionError(
                f"migration name {definition.name!r} is already used in this database for another migration "
                f"(a different table, column, scope or batch_sql); choose a new migration_name"
            )
        return migration

    def load(self) -> Migration:
        """Return the migration's row, read in a transaction of its own.

        :raises MigrationStateError: if it is not registered.
        """
        with self.conn.transaction(), self.conn.cursor(row_factory=class_row(Migration)) as cursor:
            cursor.execute(queries.LOAD_MIGRATION, [self.definition.name])
            return self._found(cursor.fetchone())

    def load_for_update(self, cursor: psycopg.Cursor[Any]) -> Migration:
        """Return the migration's row, locked until the caller's transaction ends.

        Claims take this lock first, and every change of a job's state under a changing migration
        does too, so that the two never deadlock.

        :param cursor: a cursor of the caller's transaction (a ``conn.transaction()`` block).
        :raises RuntimeError: outside a transaction, where the lock would end with the statement.
        :raises MigrationStateError: if the migration is not registered.
        """
        if cursor.connection.info.transaction_status is TransactionStatus.IDLE:
            raise RuntimeError("load_for_update() runs in the caller's transaction; open one first")
        with cursor.connection.cursor(row_factory=class_row(Migration)) as locking:
            locking.execute(queries.LOAD_MIGRATION_FOR_UPDATE, [self.definition.name])
            return self._found(locking.fetchone())

    def _found(self, migration: Migration | None) -> Migration:
        if migration is None:
            raise MigrationStateError(f"migration {self.definition.name!r} is not registered")
        return migration

    def _registered(self) -> bool:
        """Whether the migration's row exists."""
        with self.conn.transaction(), self.conn.cursor() as cursor:
            cursor.execute(queries.MIGRATION_EXISTS, [self.definition.name])
            return cursor.fetchone() is not None

    def _key_bounds(self, cursor: psycopg.Cursor[Any]) -> tuple[str | None, str | None, int]:
        """Return the first and last key in the scope, and how many keys it holds."""
        query = table_queries.key_bounds(self.table.identifier, self.table.column, self.definition.scope)
        try:
            with self.conn.transaction():
                # with parameters (none), so that %% in the scope reads as % as it does everywhere else
                cursor.execute(query, {})
        except psycopg.Error as error:
            raise MigrationDefinitionError(
                f"scope {self.definition.scope!r} of migration {self.definition.name!r} does not plan: "
                f"{' '.join(str(error).split())}"
            ) from None
        row = cursor.fetchone()
        assert row is not None
        return row[0], row[1], row[2]

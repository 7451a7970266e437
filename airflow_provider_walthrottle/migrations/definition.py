"""What a batched migration is: a name, a table keyed by a column, and a statement per key range."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

#: Placeholders that ``batch_sql`` must use, and the only ones it may use.
RANGE_PARAMETERS = ("start", "end")

_PLACEHOLDER = re.compile(r"%\((?P<name>[^)]*)\)s")
_IDENTIFIER_PART = re.compile(r'^[^."]+$')


class MigrationDefinitionError(ValueError):
    """The migration's definition is invalid; the message names the argument and the fix."""


def parse_table_name(table: str) -> tuple[str, str]:
    """Split ``schema.table`` (or ``table``, meaning ``public``) into its parts.

    Quotes are not interpreted: each part is taken literally and later quoted with
    :class:`psycopg.sql.Identifier`, so ``"MyTable"`` needs no quotes here.

    :param table: the table name, optionally schema-qualified.
    :raises MigrationDefinitionError: if the name has more than two parts, or an empty one.
    """
    parts = table.split(".")
    if len(parts) == 1:
        parts = ["public", *parts]
    if len(parts) != 2 or not all(part and _IDENTIFIER_PART.match(part) for part in parts):
        raise MigrationDefinitionError(
            f"table must be 'table' or 'schema.table', without quotes, got {table!r}"
        )
    return parts[0], parts[1]


@dataclass(frozen=True)
class MigrationDefinition:
    """A batched migration, as its DAG declares it.

    :param name: a name unique in the target database; progress is kept under it.
    :param table: the table to walk, ``schema.table`` or ``table`` (``public``).
    :param column: the key column: unique, NOT NULL, indexed, integer, bigint, text or uuid.
    :param batch_sql: the statement run once per sub-batch, with ``%(start)s`` and ``%(end)s`` bound
        to the first and last key of the range, inclusive. It must apply ``scope`` itself.
    :param scope: an optional SQL condition on the table's rows; only keys of rows that match it are
        planned into ranges and counted. Like ``batch_sql``, write ``%%`` for a literal ``%``.
    """

    name: str
    table: str
    column: str
    batch_sql: str
    scope: str | None = None

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise MigrationDefinitionError(f"migration_name must be a non-empty string, got {self.name!r}")
        parse_table_name(self.table)
        if not self.column or not _IDENTIFIER_PART.match(self.column):
            raise MigrationDefinitionError(
                f"column must be a column name without quotes, got {self.column!r}"
            )
        used = set(_PLACEHOLDER.findall(self.batch_sql))
        missing = [name for name in RANGE_PARAMETERS if name not in used]
        if missing:
            raise MigrationDefinitionError(
                f"batch_sql must use the range parameters %(start)s and %(end)s (inclusive); "
                f"missing {', '.join(f'%({name})s' for name in missing)} in {self.batch_sql!r}"
            )
        unknown = sorted(used - set(RANGE_PARAMETERS))
        if unknown:
            raise MigrationDefinitionError(
                f"batch_sql may only use %(start)s and %(end)s, got {', '.join(f'%({n})s' for n in unknown)}"
            )
        if self.scope is not None and _PLACEHOLDER.search(self.scope):
            raise MigrationDefinitionError(f"scope takes no parameters, got {self.scope!r}")

    @property
    def schema_name(self) -> str:
        """The table's schema."""
        return parse_table_name(self.table)[0]

    @property
    def table_name(self) -> str:
        """The table's name without its schema."""
        return parse_table_name(self.table)[1]

    @property
    def fingerprint(self) -> str:
        """A digest of what the migration does, to refuse a name reused for another migration."""
        payload = json.dumps(
            [self.schema_name, self.table_name, self.column, self.batch_sql, self.scope],
            separators=(",", ":"),
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:32]


def validate_batch_sizes(batch_size: object, sub_batch_size: object) -> tuple[int, int]:
    """Check the sizes; return them as ints.

    :param batch_size: rows per batch (one task instance).
    :param sub_batch_size: rows per statement, at most ``batch_size``.
    :raises MigrationDefinitionError: for a size that is not a whole number above 0.
    """
    sizes = []
    for label, value in (("batch_size", batch_size), ("sub_batch_size", sub_batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise MigrationDefinitionError(f"{label} must be a whole number of rows above 0, got {value!r}")
        sizes.append(value)
    return sizes[0], sizes[1]

"""What a batched migration is: a name, a table keyed by a column, and a statement per key range."""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

#: Placeholders that ``batch_sql`` must use, and the only ones it may use.
RANGE_PARAMETERS = ("start", "end")

#: The largest count the state tables hold (their columns are PostgreSQL ``integer``), and the
#: largest ``statement_timeout`` in milliseconds.
MAX_INTEGER = 2**31 - 1

_PLACEHOLDER = re.compile(r"%\((?P<name>[^)]*)\)s")
_IDENTIFIER_PART = re.compile(r'^[^."]+$')


class MigrationDefinitionError(ValueError):
    """The migration's definition is invalid; the message names the argument and the fix."""


def _sql_tokens(text: str) -> Iterator[tuple[str, str]]:
    """Yield ``(kind, value)`` for each token of ``text``, as sqlparse's lexer reads it.

    ``kind`` is ``"comment"``, ``"literal"`` (a string, dollar-quoted or quoted identifier),
    ``"placeholder"`` (``%(name)s``) or ``"code"``. sqlparse reads ``# `` as a comment (MySQL's),
    but in PostgreSQL ``#`` is the XOR operator: the text after it is tokenized again.

    :param text: SQL text.
    """
    # imported here: DAG files import the operator, which imports this module, on every parse
    from sqlparse import lexer, tokens

    for ttype, value in lexer.tokenize(text):
        if ttype in tokens.Comment and value.startswith("#"):
            yield "code", "#"
            yield from _sql_tokens(value[1:])
        elif ttype in tokens.Comment:
            yield "comment", value
        elif ttype in tokens.Literal.String or ttype is tokens.Literal:
            yield "literal", value
        elif ttype in tokens.Name.Placeholder:
            yield "placeholder", value
        else:
            yield "code", value


def _read_alike(label: str, text: str) -> None:
    """Refuse the text where sqlparse's tokenizer reads it differently from PostgreSQL.

    sqlparse takes a backslash before a quote in a ``'...'`` string as an escape, while PostgreSQL
    (``standard_conforming_strings``, on by default) ends the string there; and PostgreSQL nests
    ``/* */`` comments, while sqlparse ends a comment at its first ``*/``.

    :param label: the parameter's name, for the message.
    :param text: its SQL.
    :raises MigrationDefinitionError: naming the parameter and the fix.
    """
    before = ""  # the token just before, upper-cased when it is code
    for kind, value in _sql_tokens(text):
        if kind == "comment" and "/*" in value[2:]:
            raise MigrationDefinitionError(
                f"{label} must not nest /* */ comments (PostgreSQL nests them, this check does not), "
                f"got {text!r}"
            )
        if kind == "literal" and value.startswith("'") and "\\'" in value and before != "E":
            raise MigrationDefinitionError(
                f"{label} must not put a backslash before a quote in a '...' string, where PostgreSQL "
                f"ends the string; write the quote as '' (or use E'...'), got {text!r}"
            )
        before = value.upper() if kind == "code" else ""


def check_scope(scope: str) -> None:
    """Check that ``scope`` is one condition that stays inside the ``AND (<scope>)`` it is wrapped in.

    The check reads the scope with a tokenizer, not with PostgreSQL's parser; the runner checks
    every range it plans as well (see
    :class:`~airflow_provider_walthrottle.migrations.state.RangeEscapedError`).

    :param scope: the DAG author's SQL condition.
    :raises MigrationDefinitionError: naming ``scope`` and the fix, for a parenthesis closed that the
        scope did not open, one left open, a ``;``, or a ``--`` comment that would swallow the
        wrapper's closing parenthesis.
    """
    _read_alike("scope", scope)
    depth = 0
    for kind, value in _sql_tokens(scope):
        if kind == "comment" and value.startswith("--") and not value.endswith(("\n", "\r")):
            raise MigrationDefinitionError(
                f"scope must not end in a -- comment, which would comment out the rest of the query; "
                f"end the comment with a newline or write it as /* ... */, got {scope!r}"
            )
        if kind != "code":
            continue
        if value == ";":
            raise MigrationDefinitionError(
                f"scope must be one condition, as after WHERE, without ';', got {scope!r}"
            )
        depth += value.count("(") - value.count(")")
        if depth < 0:
            raise MigrationDefinitionError(
                f"scope must be one condition, as after WHERE: a ')' in it closes a parenthesis it did "
                f"not open, which would take the condition out of AND (...); balance its parentheses, "
                f"got {scope!r}"
            )
    if depth > 0:
        raise MigrationDefinitionError(
            f"scope must be one condition, as after WHERE: a '(' in it is never closed; balance its "
            f"parentheses, got {scope!r}"
        )


def range_parameters_in_code(batch_sql: str) -> set[str]:
    """Return the names of the ``%(name)s`` placeholders of ``batch_sql`` outside comments and literals.

    :param batch_sql: the DAG author's statement.
    """
    return {
        value[2:-2]
        for kind, value in _sql_tokens(batch_sql)
        if kind == "placeholder" and value.startswith("%(")
    }


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
        for label, value in (
            ("migration_name", self.name),
            ("table", self.table),
            ("column", self.column),
            ("batch_sql", self.batch_sql),
            ("scope", self.scope),
        ):
            if label == "scope" and (value is None or value == ""):
                continue  # no scope
            if not isinstance(value, str) or not value:
                raise MigrationDefinitionError(f"{label} must be a non-empty string, got {value!r}")
            refuse_nul_bytes(label, value)
        parse_table_name(self.table)
        if not _IDENTIFIER_PART.match(self.column):
            raise MigrationDefinitionError(
                f"column must be a column name without quotes, got {self.column!r}"
            )
        _read_alike("batch_sql", self.batch_sql)
        used = range_parameters_in_code(self.batch_sql)
        missing = [name for name in RANGE_PARAMETERS if name not in used]
        if missing:
            raise MigrationDefinitionError(
                f"batch_sql must use the range parameters %(start)s and %(end)s (inclusive) outside "
                f"comments and string literals; missing {', '.join(f'%({name})s' for name in missing)} "
                f"in {self.batch_sql!r}"
            )
        # psycopg binds a placeholder wherever it is, even in a comment: the unknown ones are read
        # from the whole text, while the range must be bound where the statement really uses it
        unknown = sorted(set(_PLACEHOLDER.findall(self.batch_sql)) - set(RANGE_PARAMETERS))
        if unknown:
            raise MigrationDefinitionError(
                f"batch_sql may only use %(start)s and %(end)s, got {', '.join(f'%({n})s' for n in unknown)}"
            )
        if self.scope is not None and _PLACEHOLDER.search(self.scope):
            raise MigrationDefinitionError(f"scope takes no parameters, got {self.scope!r}")
        if self.scope:
            check_scope(self.scope)

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


def refuse_nul_bytes(label: str, value: object) -> None:
    """Refuse a string with a NUL byte, which PostgreSQL text cannot hold.

    :param label: the parameter's name, for the message.
    :param value: its value; anything but a string passes.
    :raises MigrationDefinitionError: naming the parameter.
    """
    if isinstance(value, str) and "\x00" in value:
        raise MigrationDefinitionError(
            f"{label} must not contain a NUL byte (\\x00), which PostgreSQL text cannot hold; got {value!r}"
        )


def validate_batch_sizes(batch_size: object, sub_batch_size: object) -> tuple[int, int | None]:
    """Check the sizes; return them as ints (``sub_batch_size`` may be ``None``: sized by time).

    :param batch_size: rows per batch (one task instance).
    :param sub_batch_size: rows per statement, or ``None`` to size each statement by time.
    :raises MigrationDefinitionError: for a size that is not a whole number above 0, or that does
        not fit the state tables' ``integer`` columns.
    """
    sizes: list[int | None] = []
    for label, value in (("batch_size", batch_size), ("sub_batch_size", sub_batch_size)):
        if value is None and label == "sub_batch_size":
            sizes.append(None)
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise MigrationDefinitionError(f"{label} must be a whole number of rows above 0, got {value!r}")
        sizes.append(_at_most_integer(label, value, "rows"))
    assert sizes[0] is not None
    return sizes[0], sizes[1]


def _at_most_integer(label: str, value: int, unit: str) -> int:
    if value > MAX_INTEGER:
        raise MigrationDefinitionError(
            f"{label} must be at most {MAX_INTEGER} {unit} (a PostgreSQL integer), got {value!r}"
        )
    return value


def whole_number(label: str, value: object, *, minimum: int, unit: str) -> int:
    """Return ``value`` if it is a whole number from ``minimum`` to :data:`MAX_INTEGER`.

    :param label: the parameter's name, for the message.
    :param value: the value given.
    :param minimum: the smallest value allowed.
    :param unit: what it counts, e.g. ``"rows"``.
    :raises MigrationDefinitionError: naming the parameter, otherwise.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise MigrationDefinitionError(
            f"{label} must be a whole number of {unit}, {minimum} or more, got {value!r}"
        )
    return _at_most_integer(label, value, unit)


def positive_seconds(label: str, value: object) -> float:
    """Return ``value`` as a float if it is a finite number of seconds above 0.

    :param label: the parameter's name, for the message.
    :param value: the value given.
    :raises MigrationDefinitionError: naming the parameter, otherwise.
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise MigrationDefinitionError(f"{label} must be a number of seconds above 0, got {value!r}")
    return float(value)


def validate_run_parameters(
    *,
    pause_ms: object,
    min_batch_size: object,
    max_batch_size: object,
    target_batch_seconds: object,
    max_attempts: object,
    statement_timeout_ms: object,
    wait_interval: object,
) -> None:
    """Check how a migration's batches run, so that a bad value fails when the DAG is parsed.

    :param pause_ms: milliseconds between sub-batches: 0 or more, or ``None`` (paced by the signals).
    :param min_batch_size: the optimizer's smallest batch: 1 or more.
    :param max_batch_size: its largest batch: at least ``min_batch_size``, or ``None`` (no cap).
    :param target_batch_seconds: the duration it aims a batch at: above 0.
    :param max_attempts: failed runs of ``batch_sql`` before the migration fails: 1 or more.
    :param statement_timeout_ms: ``None`` or 0 for none, else milliseconds.
    :param wait_interval: seconds between two checks while waiting: above 0.
    :raises MigrationDefinitionError: naming the first parameter that is out of bounds.
    """
    if pause_ms is not None:
        whole_number("pause_ms", pause_ms, minimum=0, unit="milliseconds")
    smallest = whole_number("min_batch_size", min_batch_size, minimum=1, unit="rows")
    if max_batch_size is None:
        largest = None
    else:
        largest = whole_number("max_batch_size", max_batch_size, minimum=1, unit="rows")
    if largest is not None and largest < smallest:
        raise MigrationDefinitionError(
            f"max_batch_size must be at least min_batch_size ({smallest}), got {largest}"
        )
    positive_seconds("target_batch_seconds", target_batch_seconds)
    whole_number("max_attempts", max_attempts, minimum=1, unit="attempts")
    if statement_timeout_ms is not None:
        whole_number("statement_timeout_ms", statement_timeout_ms, minimum=0, unit="milliseconds")
    positive_seconds("wait_interval", wait_interval)


#: What the task of a paused migration does: wait until it is resumed, or skip.
ON_PAUSED = ("wait", "skip")


def validate_operator_arguments(
    *,
    migration_name: object,
    table: object,
    column: object,
    batch_size: object,
    sub_batch_size: object,
    on_paused: object,
    **run_parameters: object,
) -> tuple[int, int | None]:
    """Check the operator's arguments that are known before templates render; return the batch sizes.

    A bad value then fails when the DAG is parsed, not in its first task. The rest of the
    definition is checked when it runs (:class:`MigrationDefinition`), once templates are rendered.

    :param migration_name: the migration's name: no NUL byte.
    :param table: its table: no NUL byte.
    :param column: its key column: no NUL byte.
    :param batch_size: as :func:`validate_batch_sizes`.
    :param sub_batch_size: as :func:`validate_batch_sizes`.
    :param on_paused: one of :data:`ON_PAUSED`.
    :param run_parameters: the keyword arguments of :func:`validate_run_parameters`.
    :raises MigrationDefinitionError: naming the first argument out of bounds.
    :raises ValueError: for an ``on_paused`` that is not in :data:`ON_PAUSED`.
    """
    sizes = validate_batch_sizes(batch_size, sub_batch_size)
    validate_run_parameters(**run_parameters)
    for label, value in (("migration_name", migration_name), ("table", table), ("column", column)):
        refuse_nul_bytes(label, value)
    if on_paused not in ON_PAUSED:
        raise ValueError(f"on_paused must be 'wait' or 'skip', got {on_paused!r}")
    return sizes

"""What a migration's definition and its run parameters may be: checked before anything runs."""

from __future__ import annotations

import math
import re

import pytest

from airflow_provider_walthrottle.migrations.definition import (
    MigrationDefinition,
    MigrationDefinitionError,
    validate_batch_sizes,
)
from airflow_provider_walthrottle.migrations.runner import RunSettings

GOOD_SQL = "UPDATE t SET counter = counter + 1 WHERE id BETWEEN %(start)s AND %(end)s"

#: Scopes that would leave their ``AND (...)`` or cut the query, and the words that refuse them.
REFUSED_SCOPES = [
    ("true) OR (true", "closes a parenthesis it did not open"),
    ("tenant = 1) OR (tenant = 2", "closes a parenthesis it did not open"),
    ("(tenant = 1", "is never closed"),
    ("tenant = 1; DELETE FROM t", "without ';'"),
    ("tenant = 1 -- only the first tenant", "must not end in a -- comment"),
    # PostgreSQL's XOR operator, which sqlparse alone reads as a MySQL comment
    ("flags # 4 = 0) OR (true", "closes a parenthesis it did not open"),
    # where sqlparse and PostgreSQL read the text differently
    ("'x\\' = 'x\\' ) OR ( true OR 'q' = 'q'", "backslash before a quote"),
    ("true /* /* */ ( */ ) OR ( true /* /* */ ) */", "must not nest /* */ comments"),
]

#: Scopes that stay inside their parentheses, however they look.
ACCEPTED_SCOPES = [
    "tenant %% 3 = 0",
    "(tenant = 1) OR (tenant = 2)",
    "note <> ')' AND note <> '('",
    '"odd)name" = 1',
    "tenant = 1 -- only the first tenant\n",
    "tenant = 1 /* ) */",
    "note = $$)$$",
    "note = E'it\\'s )'",
    "flags # 4 = 0",
]


def test_a_scope_must_stay_one_condition_inside_its_parentheses():
    wrong = []
    for scope, words in REFUSED_SCOPES:
        try:
            MigrationDefinition(name="m", table="t", column="id", batch_sql=GOOD_SQL, scope=scope)
        except MigrationDefinitionError as error:
            if (
                not str(error).startswith("scope ")
                or words not in str(error)
                or repr(scope) not in str(error)
            ):
                wrong.append(f"{scope!r}: {error}")
        else:
            wrong.append(f"{scope!r} was accepted")
    for scope in ACCEPTED_SCOPES:
        try:
            MigrationDefinition(name="m", table="t", column="id", batch_sql=GOOD_SQL, scope=scope)
        except MigrationDefinitionError as error:
            wrong.append(f"{scope!r} was refused: {error}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize(
    ("batch_sql", "missing"),
    [
        pytest.param(
            "UPDATE t SET counter = counter + 1 -- WHERE id BETWEEN %(start)s AND %(end)s",
            "%(start)s, %(end)s",
            id="line-comment",
        ),
        pytest.param(
            "UPDATE t SET counter = counter + 1 /* WHERE id BETWEEN %(start)s AND %(end)s */",
            "%(start)s, %(end)s",
            id="block-comment",
        ),
        pytest.param(
            "UPDATE t SET note = 'id BETWEEN %(start)s AND %(end)s'",
            "%(start)s, %(end)s",
            id="string",
        ),
        pytest.param(
            "UPDATE t SET note = $$ %(start)s $$ WHERE id <= %(end)s",
            "%(start)s",
            id="dollar-quoted",
        ),
        pytest.param(
            "UPDATE t SET counter = 1 WHERE id >= %(start)s -- AND id <= %(end)s",
            "%(end)s",
            id="end-in-comment",
        ),
    ],
)
def test_the_range_parameters_must_be_used_outside_comments_and_strings(batch_sql, missing):
    with pytest.raises(MigrationDefinitionError) as raised:
        MigrationDefinition(name="m", table="t", column="id", batch_sql=batch_sql)
    assert str(raised.value).startswith(
        "batch_sql must use the range parameters %(start)s and %(end)s (inclusive) outside comments and "
        f"string literals; missing {missing} in "
    )


@pytest.mark.parametrize("field", ["name", "table", "column", "batch_sql", "scope"])
def test_a_nul_byte_is_refused_naming_the_parameter(field):
    fields = {"name": "m", "table": "t", "column": "id", "batch_sql": GOOD_SQL, "scope": "id > 0"}
    fields[field] = (
        fields[field].replace(" ", " \x00 ", 1) if " " in fields[field] else fields[field] + "\x00"
    )
    label = "migration_name" if field == "name" else field
    with pytest.raises(MigrationDefinitionError, match=f"^{label} must not contain a NUL byte"):
        MigrationDefinition(**fields)


GOOD_RUN = {
    "pause_ms": 0,
    "min_batch_size": 1,
    "max_batch_size": 2**31 - 1,
    "target_batch_seconds": 0.5,
    "max_attempts": 1,
    "statement_timeout_ms": 0,
    "wait_interval": 0.1,
}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"pause_ms": -1}, "pause_ms must be a whole number of milliseconds, 0 or more, got -1"),
        ({"pause_ms": 0.5}, "pause_ms must be a whole number of milliseconds, 0 or more, got 0.5"),
        ({"min_batch_size": 0}, "min_batch_size must be a whole number of rows, 1 or more, got 0"),
        (
            {"max_batch_size": 2**31},
            "max_batch_size must be at most 2147483647 rows (a PostgreSQL integer), got 2147483648",
        ),
        (
            {"min_batch_size": 500, "max_batch_size": 100},
            "max_batch_size must be at least min_batch_size (500), got 100",
        ),
        ({"target_batch_seconds": 0}, "target_batch_seconds must be a number of seconds above 0, got 0"),
        (
            {"target_batch_seconds": math.inf},
            "target_batch_seconds must be a number of seconds above 0, got inf",
        ),
        ({"max_attempts": 0}, "max_attempts must be a whole number of attempts, 1 or more, got 0"),
        ({"max_attempts": True}, "max_attempts must be a whole number of attempts, 1 or more, got True"),
        (
            {"statement_timeout_ms": -1},
            "statement_timeout_ms must be a whole number of milliseconds, 0 or more, got -1",
        ),
        (
            {"statement_timeout_ms": 2**31},
            "statement_timeout_ms must be at most 2147483647 milliseconds (a PostgreSQL integer), "
            "got 2147483648",
        ),
        ({"wait_interval": -5}, "wait_interval must be a number of seconds above 0, got -5"),
        ({"wait_interval": "60"}, "wait_interval must be a number of seconds above 0, got '60'"),
    ],
)
def test_run_parameters_out_of_bounds_are_refused_naming_the_parameter(changes, message):
    from airflow_provider_walthrottle.migrations.definition import validate_run_parameters

    validate_run_parameters(**GOOD_RUN)
    validate_run_parameters(**{**GOOD_RUN, "statement_timeout_ms": None})
    with pytest.raises(MigrationDefinitionError, match="^" + re.escape(message) + "$"):
        validate_run_parameters(**{**GOOD_RUN, **changes})


@pytest.mark.parametrize("label", ["batch_size", "sub_batch_size"])
def test_batch_sizes_must_fit_the_state_tables(label):
    sizes = {"batch_size": 10, "sub_batch_size": 10, label: 2**31}
    message = f"{label} must be at most 2147483647 rows (a PostgreSQL integer), got 2147483648"
    with pytest.raises(MigrationDefinitionError, match="^" + re.escape(message) + "$"):
        validate_batch_sizes(sizes["batch_size"], sizes["sub_batch_size"])
    assert validate_batch_sizes(2**31 - 1, 2**31 - 1) == (2**31 - 1, 2**31 - 1)


@pytest.mark.parametrize(
    ("changes", "label"),
    [
        ({"pause_ms": -1}, "pause_ms"),
        ({"statement_timeout_ms": -100}, "statement_timeout_ms"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"sub_batch_size": 2**31}, "sub_batch_size"),
    ],
)
def test_run_settings_refuse_values_that_would_fail_later(changes, label):
    with pytest.raises(MigrationDefinitionError, match=f"^{label} must be"):
        RunSettings(**changes)

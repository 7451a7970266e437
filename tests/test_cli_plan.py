"""``walthrottle plan --save NAME``: the plan kept in the database, for the migrations page."""

from __future__ import annotations

import json

import psycopg

from airflow_provider_walthrottle.cli import EXIT_OK, EXIT_UNKNOWN, main
from airflow_provider_walthrottle.migrations.plan_store import load_plan
from tests.support.migration_tables import INCREMENT, SCOPE, in_scope_keys, increment_migration, make_table


def plan_argv(target: str, *more: str) -> list[str]:
    return [
        "plan",
        target,
        "--table",
        "public.cli_saved",
        "--column",
        "id",
        "--batch-sql",
        INCREMENT.format(table="cli_saved", scope=SCOPE),
        "--scope",
        SCOPE,
        "--archiver-window",
        "0",
        *more,
    ]


def test_save_keeps_the_plan_under_the_migration_name(migration_db, capsys):
    make_table(migration_db, "cli_saved", 6000)

    code = main(plan_argv(migration_db.uri(), "--json", "--save", "backfill_cli_saved"))

    captured = capsys.readouterr()
    assert code == EXIT_OK, captured.err
    printed = json.loads(captured.out)  # stdout stays the plan alone
    assert "walthrottle: plan saved as the plan of migration 'backfill_cli_saved'" in captured.err
    with psycopg.connect(migration_db.dsn(), autocommit=True) as conn:
        stored = load_plan(conn, "backfill_cli_saved")
        assert load_plan(conn, "plan of public.cli_saved") is None
    assert stored is not None
    assert stored.plan == printed
    assert stored.plan["rows"] == len(in_scope_keys(migration_db, "cli_saved"))
    # the fingerprint of the migration the operator will register under that name
    assert stored.fingerprint == increment_migration("backfill_cli_saved", "cli_saved").fingerprint


def test_without_save_nothing_is_kept(migration_db, capsys):
    make_table(migration_db, "cli_saved", 3000)

    code = main(plan_argv(migration_db.uri()))

    assert code == EXIT_OK
    assert "saved" not in capsys.readouterr().err
    # not even the state tables are created
    assert migration_db.execute("SELECT to_regnamespace('walthrottle')") == [(None,)]


def test_a_plan_that_cannot_be_saved_exits_unknown_with_one_line(migration_db, capsys):
    make_table(migration_db, "cli_saved", 3000)
    migration_db.execute("DROP ROLE IF EXISTS cli_saver")
    migration_db.execute("CREATE ROLE cli_saver LOGIN PASSWORD 'saver'")
    migration_db.execute("GRANT SELECT, UPDATE ON cli_saved TO cli_saver")
    try:
        code = main(plan_argv(migration_db.uri(user="cli_saver", password="saver"), "--save", "no_room"))
    finally:
        migration_db.execute("DROP OWNED BY cli_saver")
        migration_db.execute("DROP ROLE cli_saver")

    captured = capsys.readouterr()
    assert code == EXIT_UNKNOWN
    assert captured.out == ""
    assert captured.err.startswith("walthrottle: error: the plan was not saved as migration 'no_room': ")
    assert "permission denied" in captured.err
    assert captured.err.count("\n") == 1, captured.err

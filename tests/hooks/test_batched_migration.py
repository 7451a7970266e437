"""BatchedMigrationHook against a real PostgreSQL cluster: read, pause and resume migrations."""

from __future__ import annotations

import pytest

from airflow_provider_walthrottle.exceptions import InsufficientPrivilegeError
from airflow_provider_walthrottle.hooks.batched_migration import BatchedMigrationHook
from airflow_provider_walthrottle.hooks.wal_archival import WalArchivalHook
from airflow_provider_walthrottle.migrations.runner import prepare
from tests.support.migration_tables import increment_migration, make_table


@pytest.fixture
def registered(migration_db, monkeypatch):
    """A database with one registered migration, ``hook_orders``, and a connection ``hook_db`` to it."""
    make_table(migration_db, "hook_orders", 600)
    with migration_db.connect() as conn:
        prepare(conn, increment_migration("hook_orders", "hook_orders"), batch_size=100)
    monkeypatch.setenv("AIRFLOW_CONN_HOOK_DB", migration_db.uri())
    return migration_db


def test_reads_pauses_and_resumes_a_migration(registered):
    hook = BatchedMigrationHook(postgres_conn_id="hook_db")

    (migration,) = hook.get_migrations(name="hook_orders")
    assert (migration.name, migration.status) == ("hook_orders", "active")
    assert hook.set_migration_paused("hook_orders", True) == "paused"
    status, migrations = hook.get_archiver_status_and_migrations(name="hook_orders")
    assert status.pending_segments is not None
    assert [m.status for m in migrations] == ["paused"]
    assert hook.set_migration_paused("hook_orders", False) == "active"


def test_a_role_without_grants_on_the_state_tables_gets_the_grant_to_ask_for(registered, monkeypatch):
    registered.create_role("no_state_grants", "no-grants-pw", pg_monitor=True)
    monkeypatch.setenv(
        "AIRFLOW_CONN_NO_GRANTS", registered.uri(user="no_state_grants", password="no-grants-pw")
    )

    with pytest.raises(InsufficientPrivilegeError) as raised:
        BatchedMigrationHook(postgres_conn_id="no_grants").get_migrations()

    assert "grant USAGE on schema walthrottle and SELECT on its tables" in str(raised.value)
    assert "Role 'no_state_grants' of connection 'no_grants'" in str(raised.value)


def test_the_migration_methods_of_walarchivalhook_still_work_for_one_release(registered):
    hook = WalArchivalHook(postgres_conn_id="hook_db")

    with pytest.warns(DeprecationWarning, match=r"moved to BatchedMigrationHook\.get_migrations\(\)"):
        (migration,) = hook.get_migrations(name="hook_orders")
    assert migration.name == "hook_orders"
    with pytest.warns(DeprecationWarning, match="set_migration_paused"):
        assert hook.set_migration_paused("hook_orders", True) == "paused"
    with pytest.warns(DeprecationWarning, match="get_archiver_status_and_migrations"):
        _, migrations = hook.get_archiver_status_and_migrations(name="hook_orders")
    assert [m.status for m in migrations] == ["paused"]

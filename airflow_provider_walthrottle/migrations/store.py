"""One migration's state on one connection, in four parts a caller asks by name.

- ``registry`` (:class:`~.registry.MigrationRegistry`): creates the state tables, checks and
  registers the migration, reads its row;
- ``jobs`` (:class:`~.jobs.JobQueue`): claims, releases, splits and fails jobs, and holds their
  advisory locks;
- ``executor`` (:class:`~.executor.SubBatchExecutor`): runs the author's ``batch_sql`` over a
  job's next sub-batch;
- ``accounts`` (:class:`~.accounts.MigrationAccounts`): keeps the throughput, the time
  throttled, and the progress.

The connection is in autocommit mode, and the locking design depends on it: every change of
state commits in the transaction of the work it describes (a sub-batch and its progress commit
together), and the advisory lock of a claimed job is session-level, so it outlives those
transactions and ends with the session if the worker dies.

Before 0.2 this module held one class that did all of this; its flat method names still work for
one release (see :class:`MigrationStore`), and the names it exported are re-exported here.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from airflow_provider_walthrottle.migrations.accounts import MigrationAccounts
from airflow_provider_walthrottle.migrations.catalog import set_migration_paused
from airflow_provider_walthrottle.migrations.executor import SubBatchExecutor
from airflow_provider_walthrottle.migrations.jobs import SPLITTABLE_ERRORS as SPLITTABLE_ERRORS
from airflow_provider_walthrottle.migrations.jobs import JobQueue

# the names this module exported before 0.2, for one release
from airflow_provider_walthrottle.migrations.progress import Progress as Progress
from airflow_provider_walthrottle.migrations.registry import MigrationRegistry
from airflow_provider_walthrottle.migrations.state import KEY_TYPES as KEY_TYPES
from airflow_provider_walthrottle.migrations.state import Job as Job
from airflow_provider_walthrottle.migrations.state import Migration as Migration
from airflow_provider_walthrottle.migrations.state import MigrationStateError as MigrationStateError
from airflow_provider_walthrottle.migrations.state import RangeEscapedError as RangeEscapedError
from airflow_provider_walthrottle.migrations.state import SubBatchResult as SubBatchResult
from airflow_provider_walthrottle.migrations.state import attempts_used_up as attempts_used_up
from airflow_provider_walthrottle.migrations.table import TABLE_GONE_ERRORS as TABLE_GONE_ERRORS
from airflow_provider_walthrottle.migrations.table import MigrationTable

if TYPE_CHECKING:
    import psycopg

    from airflow_provider_walthrottle.migrations.definition import MigrationDefinition


class MigrationStore:
    """
    One migration's registry, job queue, sub-batch executor and accounts, on one connection.

    The flat names of 0.1 stay for one release, each the method of a part: ``ensure_state_tables``,
    ``inspect_key_column``, ``check_batch_sql``, ``register`` and ``load`` of :attr:`registry`;
    ``claim_job`` (:meth:`JobQueue.claim <.JobQueue.claim>`), ``release``, ``split``,
    ``fail_job`` and ``fail_migration`` of :attr:`jobs`; ``run_sub_batch``
    (:meth:`SubBatchExecutor.run <.SubBatchExecutor.run>`) of :attr:`executor`;
    ``record_batch`` (:meth:`MigrationAccounts.record_throughput
    <.MigrationAccounts.record_throughput>`), ``note_backlog``, ``begin_throttle``,
    ``end_throttle`` and ``progress`` of :attr:`accounts`; and ``set_paused``, which is
    :func:`~airflow_provider_walthrottle.migrations.catalog.set_migration_paused`.

    :param conn: a connection in autocommit mode; its session holds the advisory lock of the
        claimed job.
    :param definition: the migration.
    """

    def __init__(self, conn: psycopg.Connection[Any], definition: MigrationDefinition) -> None:
        self.conn = conn
        self.definition = definition
        #: The migration's table, with its key type once registered.
        self.table = MigrationTable(definition)
        #: Creates the state tables, checks and registers the migration, reads its row.
        self.registry = MigrationRegistry(conn, self.table)
        #: Runs ``batch_sql`` over a job's next sub-batch, with its progress, in one transaction.
        self.executor = SubBatchExecutor(conn, self.table)
        #: Claims, releases, splits and fails jobs; holds the claimed job's advisory lock. A claim's
        #: walk of a new job's keys plans its sub-batches' ranges for the executor.
        self.jobs = JobQueue(conn, self.table, self.registry, ranges_planned=self.executor.adopt)
        #: Keeps the throughput, the time throttled, and the progress.
        self.accounts = MigrationAccounts(conn, definition.name)
        # the flat names of 0.1, for one release
        self.ensure_state_tables = self.registry.ensure_state_tables
        self.inspect_key_column = self.registry.inspect_key_column
        self.check_batch_sql = self.registry.check_batch_sql
        self.register = self.registry.register
        self.load = self.registry.load
        self.claim_job = self.jobs.claim
        self.release = self.jobs.release
        self.split = self.jobs.split
        self.fail_job = self.jobs.fail_job
        self.fail_migration = self.jobs.fail_migration
        self.run_sub_batch = self.executor.run
        self.record_batch = self.accounts.record_throughput
        self.note_backlog = self.accounts.note_backlog
        self.begin_throttle = self.accounts.begin_throttle
        self.end_throttle = self.accounts.end_throttle
        self.progress = self.accounts.progress
        self.set_paused = functools.partial(set_migration_paused, conn, definition.name)

    @property
    def key_type(self) -> str | None:
        """The key column's type name, known once registered."""
        return self.table.key_type

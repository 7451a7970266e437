"""The batching core: definitions, state, the batch runner and the batch-size optimizer.

Plain Python over a psycopg connection, with no Airflow import, so that it can be read, tested and
benchmarked without a scheduler. The operator in
:mod:`airflow_provider_walthrottle.operators.batched_migration` is its Airflow face: it calls
:func:`~airflow_provider_walthrottle.migrations.batch.run_batch` once per task.

- :mod:`~.migrations.definition`: what a migration is, and the checks of its arguments;
- :mod:`~.migrations.batch`: one batch with its throttle accounting, and what to do next;
- :mod:`~.migrations.runner`: one batch itself: claim a job, walk it in sub-batches, check health;
- :mod:`~.migrations.store`: one migration's state on one connection, in four parts:
  :mod:`~.migrations.registry` (state tables, checks, registration), :mod:`~.migrations.jobs`
  (the job queue and its advisory locks), :mod:`~.migrations.executor` (the author's SQL per
  sub-batch) and :mod:`~.migrations.accounts` (throughput, time throttled, progress);
- :mod:`~.migrations.state`: the statuses (as enums), the rows, the progress, the errors;
- :mod:`~.migrations.table`: the migration's own table as the parts see it;
- :mod:`~.migrations.queries` and :mod:`~.migrations.table_queries`: every SQL statement;
- :mod:`~.migrations.optimizer` and :mod:`~.migrations.headroom`: the batch size, and the WAL
  headroom in numbers;
- :mod:`~.migrations.catalog`: every migration of a database, as the migrations page reads them.
"""

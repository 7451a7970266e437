"""The batching core: definitions, state store, runner and batch-size optimizer.

Plain Python over a psycopg connection, with no Airflow import, so that it can be read, tested and
benchmarked without a scheduler. The operator in
:mod:`airflow_provider_walthrottle.operators.batched_migration` is its Airflow face.
"""

"""pytest fixtures that start throwaway PostgreSQL 15 clusters (see ``postgres_cluster.py``).

Fixtures:

* ``pg_base_dir`` (session): a temporary directory the ``postgres`` user can use; every cluster still
  running is stopped and the directory removed at the end of the session. Set
  ``WALTHROTTLE_KEEP_PG_DIR=1`` to keep it for debugging.
* ``pg_cluster_factory`` (session): ``pg_cluster_factory(name=..., **create_kwargs)`` creates and starts
  a cluster; all of them are stopped at the end of the session.
* ``pg`` (session): a started cluster with 16 MB segments, ``archive_mode=on`` and the gate open, shared
  by many tests. Tests that make a backlog on it should use ``pg_drained``.
* ``pg_drained`` (function): ``pg``, drained (gate open, nothing ``.ready``) before and after the test.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import tests.support.airflow_env  # noqa: F401  (first: sets AIRFLOW_HOME before Airflow is imported)
from tests.support.postgres_cluster import PostgresCluster, make_base_dir, remove_base_dir, stop_all_clusters

# a new migration's first run plans it; not 10 s of watching the archiver each (tests of it set their own)
os.environ["AIRFLOW__WALTHROTTLE__PLAN_ARCHIVER_WINDOW_SECONDS"] = "0"

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.support.postgres_cluster import ClusterFactory


#: The slow tiers, by the folder a test lives in (see the markers in pyproject.toml).
SLOW_TIERS = {"e2e": "e2e", "plugins": "browser"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests of each slow tier, so that ``-m "not e2e and not browser"`` is the fast loop."""
    tests_dir = Path(__file__).parent
    for item in items:
        relative = item.path.relative_to(tests_dir) if item.path.is_relative_to(tests_dir) else None
        if relative is not None and relative.parts[0] in SLOW_TIERS:
            item.add_marker(SLOW_TIERS[relative.parts[0]])


@pytest.fixture(scope="session")
def pg_base_dir() -> Iterator[Path]:
    """Yield a temporary directory for clusters; stop every cluster and remove it at the end.

    :return: the directory (owned by ``postgres`` when the tests run as root).
    """
    base = make_base_dir()
    try:
        yield base
    finally:
        stop_all_clusters()
        if os.environ.get("WALTHROTTLE_KEEP_PG_DIR") != "1":
            remove_base_dir(base)


@pytest.fixture(scope="session")
def pg_cluster_factory(pg_base_dir: Path) -> Iterator[ClusterFactory]:
    """Yield a function that creates and starts a cluster; stop them all at the end of the session.

    A name already used in this session gets a numeric suffix (see ``cluster.name``).

    :param pg_base_dir: the session's cluster directory.
    :return: the factory.
    """
    clusters: list[PostgresCluster] = []

    def factory(
        *,
        name: str,
        wal_segsize_mb: int = 16,
        archive_mode: str = "on",
        start_wal_segment: str | None = None,
        extra_conf: dict[str, str] | None = None,
    ) -> PostgresCluster:
        unique = name
        suffix = 1
        while (pg_base_dir / unique).exists():
            suffix += 1
            unique = f"{name}-{suffix}"
        cluster = PostgresCluster.create(
            pg_base_dir,
            name=unique,
            wal_segsize_mb=wal_segsize_mb,
            archive_mode=archive_mode,
            start_wal_segment=start_wal_segment,
            extra_conf=extra_conf,
        )
        clusters.append(cluster)
        cluster.start()
        return cluster

    try:
        yield factory
    finally:
        errors: list[str] = []
        for cluster in reversed(clusters):
            try:
                cluster.close()
            except Exception as exc:  # keep stopping the others
                errors.append(f"{cluster.name}: {exc}")
        if errors:
            raise RuntimeError("could not stop every cluster:\n" + "\n".join(errors))


@pytest.fixture(scope="session")
def pg(pg_cluster_factory: ClusterFactory) -> PostgresCluster:
    """Return the shared cluster: 16 MB segments, ``archive_mode=on``, gate open.

    :param pg_cluster_factory: the session's cluster factory.
    :return: the started cluster.
    """
    return pg_cluster_factory(name="pg-main")


@pytest.fixture
def pg_drained(pg: PostgresCluster) -> Iterator[PostgresCluster]:
    """Yield the shared cluster with the gate open and nothing left to archive; drain it again after.

    :param pg: the shared cluster.
    :return: the same cluster.
    """
    pg.drain()
    yield pg
    pg.drain()


@pytest.fixture
def migration_db(pg_drained: PostgresCluster) -> PostgresCluster:
    """The shared cluster, drained, with a fresh state schema (``walthrottle``) for migrations."""
    pg_drained.execute("DROP SCHEMA IF EXISTS walthrottle CASCADE")
    return pg_drained

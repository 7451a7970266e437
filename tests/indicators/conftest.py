"""The indicator tests' clusters: one per test module, with a role without ``pg_monitor`` and one with it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.indicators.readings import MONITOR, MONITOR_PASSWORD, PLAIN, PLAIN_PASSWORD
from tests.support.postgres_cluster import PostgresCluster

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path


@pytest.fixture(scope="module")
def module_cluster(pg_base_dir: Path) -> Iterator[Callable[..., PostgresCluster]]:
    """Yield a function that creates and starts a cluster for this test module, with both roles.

    Every cluster it made is stopped at the end of the module (a standby made from one is its
    fixture's to stop).
    """
    made: list[PostgresCluster] = []

    def make(name: str, **create_kwargs: object) -> PostgresCluster:
        unique, suffix = name, 1
        while (pg_base_dir / unique).exists():
            suffix += 1
            unique = f"{name}-{suffix}"
        cluster = PostgresCluster.create(pg_base_dir, name=unique, **create_kwargs)  # type: ignore[arg-type]
        made.append(cluster)
        cluster.start()
        cluster.create_role(PLAIN, PLAIN_PASSWORD, pg_monitor=False)
        cluster.create_role(MONITOR, MONITOR_PASSWORD, pg_monitor=True)
        return cluster

    try:
        yield make
    finally:
        for cluster in reversed(made):
            cluster.close()

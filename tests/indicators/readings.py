"""Reading an indicator both ways, as a given role, for the indicator tests.

Each indicator is read through :func:`read_indicator` on a ``psycopg.Connection`` and through
:func:`aread_indicator` on a ``psycopg.AsyncConnection``, both in autocommit, as the tasks and the
trigger read them.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import psycopg

from airflow_provider_walthrottle.indicators.base import (
    IndicatorContext,
    Reading,
    aread_indicator,
    read_indicator,
)

if TYPE_CHECKING:
    from airflow_provider_walthrottle.indicators.base import HealthIndicator
    from tests.support.postgres_cluster import PostgresCluster

#: A role without ``pg_monitor``, and one with it (neither is a superuser).
PLAIN, PLAIN_PASSWORD = "plain_reader", "plain-pw"
MONITOR, MONITOR_PASSWORD = "monitor_reader", "monitor-pw"


def read(
    cluster: PostgresCluster,
    indicator: HealthIndicator,
    context: IndicatorContext | None = None,
    *,
    user: str | None = None,
    password: str | None = None,
) -> Reading:
    """Read ``indicator`` once on a new synchronous autocommit connection."""
    dsn = cluster.dsn(user or cluster.superuser, password)
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        return read_indicator(conn, indicator, context or IndicatorContext())


def aread(
    cluster: PostgresCluster,
    indicator: HealthIndicator,
    context: IndicatorContext | None = None,
    *,
    user: str | None = None,
    password: str | None = None,
) -> Reading:
    """Read ``indicator`` once on a new asynchronous autocommit connection."""
    dsn = cluster.dsn(user or cluster.superuser, password)

    async def go() -> Reading:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True, connect_timeout=10) as conn:
            return await aread_indicator(conn, indicator, context or IndicatorContext())

    return asyncio.run(go())


def read_both(
    cluster: PostgresCluster,
    indicator: HealthIndicator,
    context: IndicatorContext | None = None,
    *,
    user: str | None = None,
    password: str | None = None,
) -> Reading:
    """Read ``indicator`` synchronously and asynchronously; assert both give the same signal.

    Use it where the state holds still. The two readings' numbers may differ a little.

    :return: the synchronous reading.
    """
    sync = read(cluster, indicator, context, user=user, password=password)
    other = aread(cluster, indicator, context, user=user, password=password)
    assert (other.indicator, other.signal) == (sync.indicator, sync.signal), (sync.to_dict(), other.to_dict())
    return sync


#: Keyword arguments of :func:`read` for the role without ``pg_monitor``, and for the one with it.
AS_PLAIN = {"user": PLAIN, "password": PLAIN_PASSWORD}
AS_MONITOR = {"user": MONITOR, "password": MONITOR_PASSWORD}

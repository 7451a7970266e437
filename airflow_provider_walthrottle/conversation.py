"""Drive a query conversation on a synchronous or an asynchronous psycopg connection.

A measurement is written once, as a generator that yields each query, receives that query's rows
(as dicts) and returns its result: the WAL archiver's status
(:func:`~airflow_provider_walthrottle.wal.queries.archiver_status_conversation`) or an indicator's
reading (:meth:`HealthIndicator.conversation
<airflow_provider_walthrottle.indicators.base.HealthIndicator.conversation>`). These two functions
are the only places that run one, so a task and the trigger drive the very same steps.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql

__all__ = ["QueryConversation", "T", "aconverse", "converse"]

#: What a conversation returns.
T = TypeVar("T")

#: Yields queries, receives each one's rows, returns the result.
QueryConversation = Generator["sql.SQL | sql.Composed", list[dict[str, Any]], T]


def converse(conn: psycopg.Connection[Any], conversation: QueryConversation[T]) -> T:
    """Run a conversation's queries on ``conn``, in a transaction of its own; return its result.

    :param conn: a psycopg connection in autocommit mode (or with no transaction open).
    :param conversation: the generator, not started.
    """
    from psycopg.rows import dict_row

    with conn.transaction(), conn.cursor(row_factory=dict_row) as cursor:
        try:
            query = next(conversation)
            while True:
                cursor.execute(query)
                query = conversation.send(cursor.fetchall())
        except StopIteration as done:
            return done.value


async def aconverse(conn: psycopg.AsyncConnection[Any], conversation: QueryConversation[T]) -> T:
    """Run a conversation's queries on an asynchronous connection, as :func:`converse` does.

    :param conn: a psycopg async connection in autocommit mode (or with no transaction open).
    :param conversation: the generator, not started.
    """
    from psycopg.rows import dict_row

    async with conn.transaction(), conn.cursor(row_factory=dict_row) as cursor:
        try:
            query = next(conversation)
            while True:
                await cursor.execute(query)
                query = conversation.send(await cursor.fetchall())
        except StopIteration as done:
            return done.value

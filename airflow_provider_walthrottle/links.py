"""The extra link from a migration task to its migration on the "Batched migrations" page."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlencode, urlparse

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey

#: Where the provider's FastAPI app is mounted in the api-server.
UI_URL_PREFIX = "/walthrottle"


def migration_page_url(*, conn_id: str | None = None, migration: str | None = None) -> str:
    """Return the path of the migrations page, narrowed to one connection and migration if given.

    The path is relative to the api-server's origin and keeps the path of ``[api] base_url`` (an
    Airflow served under ``/airflow`` links to ``/airflow/walthrottle/``).

    :param conn_id: the Airflow connection of the migration's database.
    :param migration: the migration's name.
    """
    from airflow.configuration import conf

    base_path = urlparse(conf.get("api", "base_url", fallback="") or "").path.rstrip("/")
    query = {key: value for key, value in (("conn_id", conn_id), ("migration", migration)) if value}
    return f"{base_path}{UI_URL_PREFIX}/" + (f"?{urlencode(query)}" if query else "")


class BatchedMigrationLink(BaseOperatorLink):
    """ "Batched migration" on a task of :class:`~.BatchedMigrationOperator`: its migration's page."""

    name = "Batched migration"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        """Return the page of the task's migration (called where the task ran, templates rendered).

        :param operator: the task's operator.
        :param ti_key: the task instance.
        """
        return migration_page_url(
            conn_id=getattr(operator, "postgres_conn_id", None),
            migration=getattr(operator, "migration_name", None),
        )

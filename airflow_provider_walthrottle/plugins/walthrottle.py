"""The Airflow plugin that adds the "Batched migrations" page to the UI.

Airflow loads it through the package's ``airflow.plugins`` entry point. Its FastAPI
app is built on first use, in the api-server: other Airflow processes load plugins too (the
dag-processor while parsing), and should not pay for FastAPI and the page.
"""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin

from airflow_provider_walthrottle.links import UI_URL_PREFIX


class _FastAPIApps:
    """The ``fastapi_apps`` attribute, built when Airflow first reads it."""

    def __get__(self, instance: object, owner: type | None = None) -> list[dict[str, Any]]:
        from airflow_provider_walthrottle.plugins.app import create_app

        apps = [{"app": create_app(), "url_prefix": UI_URL_PREFIX, "name": "Batched migrations"}]
        # later reads get the same app
        type.__setattr__(owner or type(instance), "fastapi_apps", apps)
        return apps


class WalThrottlePlugin(AirflowPlugin):
    """The "Batched migrations" page: in the navigation, and on DAG and DAG-run pages."""

    name = "walthrottle"
    fastapi_apps = _FastAPIApps()
    external_views = [
        {
            "name": "Batched migrations",
            "href": f"{UI_URL_PREFIX}/",
            "destination": "nav",
            "category": "browse",
            "url_route": "batched-migrations",
        },
        {
            "name": "Batched migrations",
            "href": f"{UI_URL_PREFIX}/?dag_id={{DAG_ID}}",
            "destination": "dag",
            "url_route": "batched-migrations-dag",
        },
        {
            "name": "Batched migrations",
            "href": f"{UI_URL_PREFIX}/?dag_id={{DAG_ID}}&run_id={{RUN_ID}}",
            "destination": "dag_run",
            "url_route": "batched-migrations-dag-run",
        },
    ]

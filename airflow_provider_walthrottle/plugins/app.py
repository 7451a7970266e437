"""The plugin's FastAPI app in the api-server: the migrations page and its JSON endpoints.

Airflow mounts a plugin's app under its ``url_prefix`` without any authentication of its own, so
every route here depends on one of Airflow's authorization checks, the same ones its REST API uses
(a Bearer token, or the UI's session cookie):

- ``GET /`` (the page) and ``GET /api/overview`` (each connection's health indicators, read
  whatever their flags, its migrations, and the flags): read DAGs, the ``dag_id`` asked if any
  (SimpleAuthManager: Viewer);
- ``POST /api/connections/{conn_id}/migrations/{migration}/pause`` (or ``/resume``): edit DAGs
  (User); the migration's name may contain ``/``;
- ``PUT /api/flags/{variable_key}``: edit that Variable (Op); one of the four indicators' flags or
  the kill switch.

A connection's host, port, database and login appear in its errors only for people who may read
that Airflow connection (Op), as in Airflow's own connections API.

Changes take JSON bodies only (``Content-Type: application/json``), which a form on another site
cannot send with the session cookie.

The routes are asynchronous: the databases are read in the :class:`~.overview.ConnectionReader`'s
threads, each within ``[walthrottle] ui_read_timeout``, never in the api-server's threadpool, which
serves Airflow's own API.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import TYPE_CHECKING, Annotated, Any, Literal

from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.auth.managers.models.resource_details import ConnectionDetails, VariableDetails
from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_dag, requires_access_variable
from fastapi import Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, StrictBool
from starlette.concurrency import run_in_threadpool

from airflow_provider_walthrottle.exceptions import WalThrottleError
from airflow_provider_walthrottle.migrations.catalog import MigrationNotFoundError, MigrationStatusError
from airflow_provider_walthrottle.plugins import flag_variables, overview
from airflow_provider_walthrottle.plugins.page import (
    PAGE_TEMPLATE,
    content_security_policy,
    page_context,
    templates,
)

if TYPE_CHECKING:
    from airflow.api_fastapi.auth.managers.models.base_user import BaseUser

log = logging.getLogger(__name__)


class FlagChange(BaseModel):
    """The body of ``PUT /api/flags/{variable_key}``: a JSON boolean, not ``"yes"`` or ``1``."""

    enabled: StrictBool


@dataclasses.dataclass(frozen=True)
class _Permissions:
    """What the user may do and see on the page."""

    can_pause: bool
    can_toggle_flags: dict[str, bool]
    reads_connection: dict[str, bool]


def _permissions(user: BaseUser, conn_ids: list[str]) -> _Permissions:
    auth_manager = get_auth_manager()
    return _Permissions(
        can_pause=auth_manager.is_authorized_dag(method="PUT", user=user),
        can_toggle_flags={
            key: auth_manager.is_authorized_variable(
                method="PUT", details=VariableDetails(key=key), user=user
            )
            for key in flag_variables.FLAGS
        },
        reads_connection={
            conn_id: auth_manager.is_authorized_connection(
                method="GET", details=ConnectionDetails(conn_id=conn_id), user=user
            )
            for conn_id in conn_ids
        },
    )


def _as_seen_by(
    connections: list[overview.ConnectionOverview], permissions: _Permissions
) -> list[overview.ConnectionOverview]:
    """Hide the host, port, database and login of the connections the user may not read."""
    return [
        connection
        if permissions.reads_connection.get(connection.conn_id)
        else connection.without_connection_details()
        for connection in connections
    ]


def require_json(request: Request) -> None:
    """Refuse a change sent as anything but JSON (a cross-site form cannot send JSON)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, "send the request with Content-Type: application/json"
        )


def _known_connection(conn_id: str) -> str:
    if conn_id not in overview.configured_connection_ids():
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"connection {conn_id!r} is not in [walthrottle] ui_connection_ids",
        )
    return conn_id


def create_app() -> FastAPI:
    """Build the app Airflow mounts at ``/walthrottle``."""
    app = FastAPI(
        title="Batched migrations (airflow-provider-walthrottle)",
        description="The migrations page of the WAL throttle provider and its JSON API.",
    )
    reader = overview.ConnectionReader()

    async def read_overview_for(
        user: BaseUser, dag_id: str | None, run_id: str | None
    ) -> tuple[int, list[overview.ConnectionOverview], _Permissions]:
        threshold = overview.configured_threshold()
        conn_ids = overview.configured_connection_ids()
        connections = await reader.read_all(
            conn_ids,
            threshold,
            timeout=overview.configured_read_timeout(),
            dag_id=dag_id,
            run_id=run_id if dag_id else None,
        )
        permissions = await run_in_threadpool(_permissions, user, conn_ids)
        return threshold, _as_seen_by(connections, permissions), permissions

    @app.get(
        "/",
        response_class=HTMLResponse,
        dependencies=[Depends(requires_access_dag("GET"))],
        summary="The migrations page",
    )
    async def migrations_page(
        request: Request,
        user: GetUserDep,
        conn_id: Annotated[str | None, Query()] = None,
        migration: Annotated[str | None, Query()] = None,
        dag_id: Annotated[str | None, Query()] = None,
        run_id: Annotated[str | None, Query()] = None,
    ) -> HTMLResponse:
        threshold, connections, permissions = await read_overview_for(user, dag_id, run_id)
        flags = await run_in_threadpool(flag_variables.read_flags)
        context = page_context(
            connections,
            flags,
            threshold=threshold,
            api_base=f"{request.scope.get('root_path', '')}/api",
            can_pause=permissions.can_pause,
            can_toggle_flags=permissions.can_toggle_flags,
            highlight=(conn_id, migration),
            filters={"DAG": dag_id or "", "run": (run_id or "") if dag_id else ""},
        )
        return templates.TemplateResponse(
            request,
            PAGE_TEMPLATE,
            context,
            headers={"Cache-Control": "no-store", "Content-Security-Policy": content_security_policy()},
        )

    @app.get(
        "/api/overview",
        dependencies=[Depends(requires_access_dag("GET"))],
        summary="Health indicators, migrations and flags, as JSON",
    )
    async def read_overview(
        user: GetUserDep,
        dag_id: Annotated[str | None, Query()] = None,
        run_id: Annotated[str | None, Query()] = None,
    ) -> dict[str, Any]:
        threshold, connections, _ = await read_overview_for(user, dag_id, run_id)
        flags = await run_in_threadpool(flag_variables.read_flags)
        by_key = {flag.key: flag for flag in flags}
        return {
            "threshold": threshold,
            "flags": [flag.to_dict() for flag in flags],
            "connections": [connection.to_dict(by_key) for connection in connections],
        }

    @app.post(
        "/api/connections/{conn_id}/migrations/{migration:path}/{action}",
        dependencies=[Depends(requires_access_dag("PUT")), Depends(require_json)],
        summary="Pause a migration (its tasks wait or skip until it is resumed), or resume it",
    )
    async def pause_or_resume_migration(
        conn_id: str, migration: str, action: Literal["pause", "resume"], user: GetUserDep
    ) -> dict[str, Any]:
        from airflow_provider_walthrottle.hooks.batched_migration import BatchedMigrationHook

        hook = BatchedMigrationHook(postgres_conn_id=_known_connection(conn_id))
        timeout = overview.configured_read_timeout()
        try:
            new_status = await reader.call(
                hook.set_migration_paused, migration, action == "pause", timeout=timeout
            )
        except asyncio.TimeoutError:
            raise HTTPException(
                status.HTTP_504_GATEWAY_TIMEOUT,
                f"connection {conn_id!r} did not answer within {timeout:g} s; reload the page to see "
                f"whether migration {migration!r} changed",
            ) from None
        except MigrationNotFoundError as error:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(error)) from None
        except MigrationStatusError as error:
            raise HTTPException(status.HTTP_409_CONFLICT, str(error)) from None
        except WalThrottleError as error:
            permissions = await run_in_threadpool(_permissions, user, [conn_id])
            detail = str(error) if permissions.reads_connection[conn_id] else error.public_message
            raise HTTPException(status.HTTP_502_BAD_GATEWAY, detail) from None
        log.info("User %s: %s migration %s on %s", user.get_name(), action, migration, conn_id)
        return {"conn_id": conn_id, "migration": migration, "status": new_status}

    @app.put(
        "/api/flags/{variable_key}",
        dependencies=[Depends(requires_access_variable("PUT")), Depends(require_json)],
        summary="Turn a flag Variable on or off",
    )
    def set_flag(variable_key: str, change: FlagChange, user: GetUserDep) -> dict[str, Any]:
        if variable_key not in flag_variables.FLAGS:
            raise HTTPException(
                status.HTTP_404_NOT_FOUND,
                f"{variable_key!r} is not a flag of this page; it changes {', '.join(flag_variables.FLAGS)}",
            )
        try:
            flag = flag_variables.write_flag(variable_key, change.enabled)
        except flag_variables.FlagNotWritableError as error:
            raise HTTPException(status.HTTP_409_CONFLICT, str(error)) from None
        log.info("User %s set Variable %s to %s", user.get_name(), variable_key, flag.raw)
        return flag.to_dict()

    return app

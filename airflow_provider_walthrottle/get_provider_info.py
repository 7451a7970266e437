"""The provider metadata Airflow reads through the ``apache_airflow_provider`` entry point."""

from __future__ import annotations

from typing import Any

from airflow_provider_walthrottle import __version__

#: The distribution's name, as pip and Airflow's ``package-name`` know it.
DISTRIBUTION = "airflow-provider-walthrottle"


def get_provider_info() -> dict[str, Any]:
    """Return the provider's metadata, in the schema of Airflow's ``provider_info.schema.json``.

    Beyond the schema, it has the license and the project URLs of the installed distribution (see
    :func:`distribution_metadata`), so that ``airflow providers get --full`` shows them.
    """
    return {
        "package-name": DISTRIBUTION,
        "name": "WAL throttle",
        "description": (
            "Batched PostgreSQL data migrations throttled on the WAL archival backlog, "
            "behind a feature flag kept in an Airflow Variable."
        ),
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "PostgreSQL WAL archival",
                "external-doc-url": "https://www.postgresql.org/docs/current/continuous-archiving.html",
                "tags": ["software"],
            }
        ],
        "hooks": [
            {
                "integration-name": "PostgreSQL WAL archival",
                "python-modules": [
                    "airflow_provider_walthrottle.hooks.wal_archival",
                    "airflow_provider_walthrottle.hooks.batched_migration",
                ],
            }
        ],
        "operators": [
            {
                "integration-name": "PostgreSQL WAL archival",
                "python-modules": ["airflow_provider_walthrottle.operators.batched_migration"],
            }
        ],
        "sensors": [
            {
                "integration-name": "PostgreSQL WAL archival",
                "python-modules": ["airflow_provider_walthrottle.sensors.wal_archival"],
            }
        ],
        "triggers": [
            {
                "integration-name": "PostgreSQL WAL archival",
                "python-modules": ["airflow_provider_walthrottle.triggers.wal_archival"],
            }
        ],
        "extra-links": ["airflow_provider_walthrottle.links.BatchedMigrationLink"],
        # `airflow walthrottle status`; the standalone `walthrottle` script stays, for Nagios
        "cli": ["airflow_provider_walthrottle.cli.get_cli_commands"],
        "config": {
            "walthrottle": {
                "description": (
                    "The WAL throttle provider's migrations page in the Airflow UI, and the timeouts of "
                    "every PostgreSQL connection the provider opens."
                ),
                "options": {
                    "ui_connection_ids": {
                        "description": (
                            "Comma-separated Airflow connection ids whose backlog and batched migrations "
                            "the migrations page shows."
                        ),
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "warehouse_primary,billing_primary",
                        "default": "postgres_default",
                    },
                    "max_pending_segments": {
                        "description": "The threshold the migrations page compares each backlog with.",
                        "version_added": "0.1.0",
                        "type": "integer",
                        "example": "42",
                        "default": "42",
                    },
                    "ui_read_timeout": {
                        "description": (
                            "Seconds the migrations page waits for each connection's backlog and "
                            "migrations; a connection that has not answered by then shows as one red line."
                        ),
                        "version_added": "0.1.0",
                        "type": "float",
                        "example": "10",
                        "default": "10",
                    },
                    "connect_timeout": {
                        "description": (
                            "Seconds every connection the provider opens (the hook, the operator, the "
                            "sensor, the trigger, the CLI and the page) waits for the server to answer, "
                            "unless the Airflow connection's extra sets connect_timeout. 0 waits forever."
                        ),
                        "version_added": "0.1.0",
                        "type": "integer",
                        "example": "10",
                        "default": "10",
                    },
                    "read_only_statement_timeout": {
                        "description": (
                            "statement_timeout, in seconds, of the read-only connections (the checks of "
                            "the sensor, the trigger and the CLI, and the page); not of the operator's "
                            "migration. A statement_timeout in the connection's options extra wins. "
                            "0: none (for a pooler that refuses the options startup parameter)."
                        ),
                        "version_added": "0.1.0",
                        "type": "integer",
                        "example": "30",
                        "default": "30",
                    },
                    "first_run_plan": {
                        "description": (
                            "Whether the first run of a new batched migration plans it before its first "
                            "batch: the plan is logged as one block, pushed as the XCom 'plan' and kept in "
                            "the state tables. A plan that fails logs a warning and the batch goes on."
                        ),
                        "version_added": "0.1.0",
                        "type": "boolean",
                        "example": "False",
                        "default": "True",
                    },
                    "plan_archiver_window_seconds": {
                        "description": (
                            "Seconds the plan of a migration's first run watches pg_stat_archiver for the "
                            "archiver's pace (0 to 600); the first batch starts that much later, once. "
                            "0: not measured."
                        ),
                        "version_added": "0.1.0",
                        "type": "integer",
                        "example": "10",
                        "default": "10",
                    },
                },
            }
        },
        **distribution_metadata(),
    }


def distribution_metadata() -> dict[str, Any]:
    """Return the license and the project URLs that ``pyproject.toml`` gave the installed distribution.

    ``documentation-url`` repeats the ``Documentation`` URL: Airflow 3.2 and later fill that field
    from the same URL and show it on the Providers page. Empty when the package is imported from a
    source tree that is not installed.
    """
    from importlib.metadata import PackageNotFoundError, metadata

    try:
        installed = metadata(DISTRIBUTION)
    except PackageNotFoundError:
        return {}
    urls = {}
    for entry in installed.get_all("Project-URL") or []:
        label, _, url = entry.partition(",")
        urls[label.strip()] = url.strip()
    info: dict[str, Any] = {"project-urls": urls}
    if "Documentation" in urls:
        info["documentation-url"] = urls["Documentation"]
    for field in ("License-Expression", "License"):
        if field in installed:
            info["license"] = installed[field]
            break
    return info

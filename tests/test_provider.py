"""The package as Airflow and users see it: entry point, metadata, imports, no parse-time cost."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points, version
from pathlib import Path

import airflow_provider_walthrottle
from airflow_provider_walthrottle.get_provider_info import get_provider_info


def test_provider_info_is_registered_through_the_entry_point():
    (entry_point,) = [
        ep
        for ep in entry_points(group="apache_airflow_provider")
        if ep.value.startswith("airflow_provider_walthrottle")
    ]
    info = entry_point.load()()
    assert info == get_provider_info()
    assert info["package-name"] == "airflow-provider-walthrottle"
    assert (
        info["versions"]
        == [airflow_provider_walthrottle.__version__]
        == [version("airflow-provider-walthrottle")]
    )


def test_provider_info_validates_against_airflows_schema():
    import json

    import jsonschema
    from airflow import providers_manager

    schema = json.loads(
        (
            __import__("pathlib").Path(providers_manager.__file__).parent / "provider_info.schema.json"
        ).read_text()
    )
    jsonschema.validate(get_provider_info(), schema)


def test_every_module_named_in_the_provider_info_imports():
    import importlib

    info = get_provider_info()
    for kind in ("hooks", "operators", "sensors", "triggers"):
        for entry in info[kind]:
            for module in entry["python-modules"]:
                importlib.import_module(module)


def test_the_provider_info_has_the_license_and_urls_of_the_installed_distribution():
    from importlib.metadata import metadata

    info = get_provider_info()

    installed = metadata("airflow-provider-walthrottle")
    assert info["license"] == installed["License-Expression"] == "Apache-2.0"
    assert set(info["project-urls"]) == {"Documentation", "Changelog", "Source"}
    assert [f"{label}, {url}" for label, url in info["project-urls"].items()] == installed.get_all(
        "Project-URL"
    )
    assert info["documentation-url"] == info["project-urls"]["Documentation"]
    # Airflow 3.2.0 splits each Project-URL entry on every comma: one more would break its discovery
    assert not any("," in url for url in info["project-urls"].values())


def test_airflow_shows_the_documentation_url_of_the_provider_info():
    from airflow.providers_manager import ProvidersManager

    seen = ProvidersManager().providers["airflow-provider-walthrottle"].data

    # Airflow 3.2.0 keeps the space after the comma of "Documentation, https://…"
    assert seen["documentation-url"].strip() == get_provider_info()["documentation-url"]
    assert seen["cli"] == ["airflow_provider_walthrottle.cli.get_cli_commands"]


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_import_raises_no_deprecation_warning():
    result = run_python(
        "import airflow_provider_walthrottle as p\n"
        "from airflow_provider_walthrottle import WalArchivalHook, ArchiverStatus\n"
        "from airflow_provider_walthrottle import WalArchivalSensor, FeatureFlag\n"
        "from airflow_provider_walthrottle import WalArchivalTrigger, Signal, OnUnavailable\n"
        "from airflow_provider_walthrottle import BatchedMigrationOperator\n"
        "import airflow_provider_walthrottle.cli\n"
    )
    assert result.returncode == 0, result.stderr


def test_airflow_providers_list_shows_the_provider():
    result = subprocess.run(
        [sys.executable, "-m", "airflow", "providers", "list", "--output", "json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "airflow-provider-walthrottle" in result.stdout


def test_unknown_attribute_is_an_attribute_error():
    import pytest

    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        airflow_provider_walthrottle.Nope  # noqa: B018


def test_every_configuration_option_is_documented_with_its_default():
    page = (Path(__file__).parents[1] / "docs" / "configuration.md").read_text()
    options = get_provider_info()["config"]["walthrottle"]["options"]
    for name, option in options.items():
        assert f"| `{name}` | {option['type']}" in page, name
        assert f"| `{option['default']}` |" in page.split(f"| `{name}` |")[1].split("\n")[0], name

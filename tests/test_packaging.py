"""The package as a packager and a new user get it: the wheel, its metadata, and Airflow's view of it.

The slow test builds the sdist and the wheel, checks them with twine, installs the wheel next to the
main leg's Airflow in a new virtualenv, and asks that Airflow and that environment's metadata what
they see. The fast ones keep the floor leg's pins (``ci/floor-constraints.txt``) on the floors that
``pyproject.toml`` declares.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
import tomllib  # the standard library's from Python 3.11, which `./dev` and CI run the tests on
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
DISTRIBUTION = "airflow-provider-walthrottle"
FLOOR_CONSTRAINTS = ROOT / "ci" / "floor-constraints.txt"


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def floors() -> dict[str, str]:
    """Return ``{name: lowest version}`` of every runtime dependency ``pyproject.toml`` declares."""
    declared = {}
    for line in pyproject()["project"]["dependencies"]:
        requirement = Requirement(line)
        (lowest,) = [spec.version for spec in requirement.specifier if spec.operator == ">="]
        declared[canonicalize_name(requirement.name)] = lowest
    return declared


def pins(path: Path) -> dict[str, str]:
    pinned = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pinned[canonicalize_name(name)] = version.strip()
    return pinned


def test_every_runtime_dependency_declares_a_floor():
    for line in pyproject()["project"]["dependencies"]:
        assert [spec for spec in Requirement(line).specifier if spec.operator == ">="], line


def test_the_floor_leg_pins_the_declared_floors():
    pinned = pins(FLOOR_CONSTRAINTS)

    assert {name: pinned.get(name) for name in floors()} == floors()
    # the binary package of psycopg comes with the same version (pyproject asks for psycopg[binary])
    assert pinned["psycopg-binary"] == floors()["psycopg"]


def run(command: list[Any], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(part) for part in command], capture_output=True, text=True, timeout=600, **kwargs
    )
    assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.mark.slow
def test_the_wheel_installs_next_to_airflow_and_shows_every_field(tmp_path):
    from importlib.metadata import version

    from airflow_provider_walthrottle import __version__
    from airflow_provider_walthrottle.get_provider_info import get_provider_info

    project = pyproject()["project"]
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "build", "--outdir", dist, ROOT])
    (sdist,) = dist.glob("*.tar.gz")
    (wheel,) = dist.glob("*.whl")
    run([sys.executable, "-m", "twine", "check", "--strict", sdist, wheel])
    with tarfile.open(sdist) as archive:
        shipped = {Path(name).relative_to(Path(name).parts[0]).as_posix() for name in archive.getnames()}
    assert {"LICENSE", "README.md", "CHANGELOG.md", "pyproject.toml"} <= shipped

    # A clean virtualenv with the main leg's Airflow: the versions of this environment, as
    # constraints, leave the resolver nothing to choose (and pip's cache every wheel to reuse).
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv])
    constraints = tmp_path / "constraints.txt"
    frozen = run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"]).stdout
    constraints.write_text("\n".join(line for line in frozen.splitlines() if "==" in line))
    airflow = f"apache-airflow=={version('apache-airflow')}"
    pip = [venv / "bin" / "python", "-m", "pip", "install", "-q", "--only-binary", ":all:"]
    run([*pip, "-c", constraints, airflow, wheel])
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("AIRFLOW", "PYTHON", "VIRTUAL_ENV"))
    }
    env.update(AIRFLOW_HOME=str(tmp_path / "airflow-home"), AIRFLOW__CORE__LOAD_EXAMPLES="False")

    # Airflow's view: `airflow providers get --full`
    shown = run(
        [venv / "bin" / "airflow", "providers", "get", DISTRIBUTION, "--full", "--output", "json"],
        env=env,
        cwd=tmp_path,
    )
    (info,) = json.loads(shown.stdout)
    expected = get_provider_info()
    assert info["package-name"] == DISTRIBUTION
    assert info["name"] == expected["name"] == "WAL throttle"
    assert info["versions"] == [__version__]
    assert info["description"].rstrip(".") == expected["description"].rstrip(".")
    assert info["license"] == project["license"] == "Apache-2.0"
    assert info["project-urls"] == project["urls"]
    assert set(project["urls"]) == {"Documentation", "Changelog", "Source"}
    # Airflow 3.2.0 keeps the space after the comma of "Documentation, https://…"
    assert info["documentation-url"].strip() == project["urls"]["Documentation"]
    for kind in ("integrations", "hooks", "operators", "sensors", "triggers", "extra-links", "config"):
        assert info[kind] == expected[kind], kind
    assert info["cli"] == ["airflow_provider_walthrottle.cli.get_cli_commands"]
    registered = run([venv / "bin" / "airflow", "walthrottle", "--help"], env=env, cwd=tmp_path)
    assert "status" in registered.stdout

    # The installed metadata
    code = (
        "import json, importlib.metadata as m, airflow_provider_walthrottle as p\n"
        f"d = m.distribution({DISTRIBUTION!r})\n"
        "print(json.dumps({\n"
        "    'license': d.metadata['License-Expression'],\n"
        "    'license_files': d.metadata.get_all('License-File'),\n"
        "    'urls': d.metadata.get_all('Project-URL'),\n"
        "    'classifiers': d.metadata.get_all('Classifier'),\n"
        "    'requires': d.metadata.get_all('Requires-Dist'),\n"
        "    'files': [f.as_posix() for f in d.files],\n"
        "    'license_text': d.read_text('licenses/LICENSE'),\n"
        "    'module': p.__file__,\n"
        "}))\n"
    )
    metadata = json.loads(run([venv / "bin" / "python", "-c", code], env=env, cwd=tmp_path).stdout)
    assert metadata["module"].startswith(str(venv))
    assert metadata["license"] == "Apache-2.0"
    assert metadata["license_files"] == ["LICENSE"]
    assert metadata["license_text"] == (ROOT / "LICENSE").read_text()
    assert metadata["urls"] == [f"{label}, {url}" for label, url in project["urls"].items()]
    assert sorted(metadata["classifiers"]) == sorted(project["classifiers"])
    assert "Typing :: Typed" in metadata["classifiers"]
    assert any(c.startswith("Development Status :: ") for c in metadata["classifiers"])
    assert sorted(map(str, map(Requirement, metadata["requires"]))) == sorted(
        map(str, map(Requirement, project["dependencies"]))
    )
    assert "airflow_provider_walthrottle/py.typed" in metadata["files"]

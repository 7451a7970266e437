"""Sphinx configuration for the airflow-provider-walthrottle docs.

Build as `./dev test` does (fresh environment, warnings are errors, nitpicky cross-references):

    .venv/bin/sphinx-build -E -W --keep-going -n -q -b html docs docs/_build/html
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))

# Importing the provider's modules imports Airflow, which reads its configuration. Unless
# AIRFLOW_HOME is set, give it a throwaway home, removed at exit, so that the build needs no Airflow
# setup and writes nothing into the source tree. No module touches a database on import.
if "AIRFLOW_HOME" not in os.environ:
    os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="walthrottle-docs-airflow-home-")
    atexit.register(shutil.rmtree, os.environ["AIRFLOW_HOME"], ignore_errors=True)
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

import airflow_provider_walthrottle  # noqa: E402

project = "airflow-provider-walthrottle"
author = "airflow-provider-walthrottle contributors"
copyright = "the airflow-provider-walthrottle contributors"
version = release = airflow_provider_walthrottle.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# Markdown (MyST): `[text](page.md#section)` links resolve to headings' slugs, GitHub style.
myst_heading_anchors = 4

# autodoc
autodoc_default_options = {
    "members": True,
    "show-inheritance": True,
    "member-order": "bysource",
}
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_preserve_defaults = True
autoclass_content = "class"

# No intersphinx: the build runs without internet access, so there is no inventory to link the
# standard library's, Airflow's or psycopg's types to. Nitpicky mode is told not to look for those
# (and only those): a broken reference to this package's own names still fails the build.
nitpick_ignore_regex = [
    # Third-party libraries, by their qualified names.
    (r"py:.*", r"(airflow|psycopg|pendulum|sqlalchemy|jinja2|fastapi|pydantic|starlette)(\..*)?"),
    # The standard library.
    (r"py:.*", r"(datetime|enum|argparse|fractions|collections|typing|contextlib|pathlib|abc|functools)\..*"),
]
nitpick_ignore = [
    # Airflow classes in type hints that cannot be evaluated at build time (they name types
    # imported only under TYPE_CHECKING), so autodoc shows them as written, unqualified.
    ("py:class", "TaskGroup"),
    ("py:class", "DAG"),
    ("py:class", "PokeReturnValue"),
    ("py:class", "TriggerEvent"),
    ("py:class", "BaseOperator"),
    ("py:class", "TaskInstanceKey"),
    ("py:class", "CLICommand"),
    # the result type variable of airflow_provider_walthrottle.conversation's generic functions
    ("py:class", "T"),
]

html_theme = "alabaster"
html_title = f"{project} {release}"
html_static_path: list[str] = []

"""A private Airflow home for the test session, set before Airflow is first imported.

Imported at the top of ``conftest.py``. Connections and Variables come from ``AIRFLOW_CONN_*`` and
``AIRFLOW_VAR_*`` environment variables, so no test depends on another's metadata rows.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

AIRFLOW_HOME = tempfile.mkdtemp(prefix="walthrottle-airflow-")
atexit.register(shutil.rmtree, AIRFLOW_HOME, ignore_errors=True)

os.environ["AIRFLOW_HOME"] = AIRFLOW_HOME
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = os.path.join(AIRFLOW_HOME, "dags")
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{AIRFLOW_HOME}/airflow.db"
os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "INFO"
# The provider's variables must not leak in from the developer's shell.
for _name in list(os.environ):
    if _name.startswith(("AIRFLOW_VAR_", "AIRFLOW_CONN_")):
        del os.environ[_name]
os.makedirs(os.environ["AIRFLOW__CORE__DAGS_FOLDER"], exist_ok=True)

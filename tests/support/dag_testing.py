"""Running DAGs built inside tests with Airflow's own ``dag.test()``."""

from __future__ import annotations

import functools
import subprocess
import sys
import tempfile
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.sdk import DAG

_MIGRATED = False


def migrate_metadata_db() -> None:
    """Create the session's SQLite metadata database once (about 6 s)."""
    global _MIGRATED
    if not _MIGRATED:
        subprocess.run(
            [sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True, text=True
        )
        _MIGRATED = True


def run_dag(dag: DAG, **test_kwargs: Any) -> Any:
    """Serialize a DAG built in a test, then run it with ``dag.test()``; return the DagRun.

    :param dag: the DAG.
    :param test_kwargs: passed to ``dag.test()``.
    """
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db

    migrate_metadata_db()
    _pass_the_exception_to_failure_callbacks()
    DagBundlesManager().sync_bundles_to_db()
    bag = DagBag(dag_folder=tempfile.mkdtemp(prefix="walthrottle-dags-"), collect_dags=False)
    bag.bag_dag(dag)
    sync_bag_to_db(bag, "dags-folder", None)
    return dag.test(**test_kwargs)


def _pass_the_exception_to_failure_callbacks() -> None:
    """Make ``dag.test()`` give failure callbacks ``context["exception"]``, as a real task run does.

    The Task SDK before 1.3 (Airflow 3.2, the floor leg's) runs a task in-process for ``dag.test()``
    and calls ``finalize`` without setting it; 1.3 sets it, as the real task runner always did.
    """
    from importlib.metadata import version

    from airflow.sdk.execution_time import task_runner
    from packaging.version import Version

    if Version(version("apache-airflow-task-sdk")) >= Version("1.3") or hasattr(
        task_runner.finalize, "__wrapped__"
    ):
        return
    finalize = task_runner.finalize

    @functools.wraps(finalize)
    def finalize_with_the_exception(ti: Any, state: Any, context: Any, log: Any, error: Any = None) -> Any:
        context["exception"] = error
        return finalize(ti, state, context, log, error)

    task_runner.finalize = finalize_with_the_exception


def task_states(dag_run: Any) -> dict[str, str]:
    """Return ``{task_id: state}`` for a finished DagRun."""
    return {ti.task_id: str(getattr(ti.state, "value", ti.state)) for ti in dag_run.get_task_instances()}


def xcom_of(dag_run: Any, task_id: str) -> Any:
    """Return the ``return_value`` XCom a task of the run pushed."""
    (ti,) = [ti for ti in dag_run.get_task_instances() if ti.task_id == task_id]
    return ti.xcom_pull(task_ids=task_id)

"""Fixtures for the Airflow side: a throwaway Airflow home (SQLite) and a real local Ray head.

The Airflow environment is set before any test module imports Airflow, because Airflow reads its
configuration at import. The migrated SQLite database is cached per Airflow version in /tmp so
only the first session pays for ``airflow db migrate``. The DAGs folder holds this directory's
test DAGs and the repo's example DAG (``dag.test()`` syncs the DAG bundle from it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="kgops-airflow-"))
DAGS = AIRFLOW_HOME / "dags"

os.environ.update({
    "AIRFLOW_HOME": str(AIRFLOW_HOME),
    "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{AIRFLOW_HOME / 'airflow.db'}",
    "AIRFLOW__CORE__PLUGINS_FOLDER": str(AIRFLOW_HOME / "plugins"),
    "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
    "KGOPS_RAY_PYTHON": sys.executable,
})
DAGS.mkdir(parents=True, exist_ok=True)
for src in (HERE / "dags" / "ray_test_dags.py", REPO / "dags" / "example_ray_job.py"):
    (DAGS / src.name).symlink_to(src)


def _airflow_db_cache() -> Path:
    return Path(tempfile.gettempdir()) / f"kgops-airflow-{metadata.version('apache-airflow')}.db"


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated SQLite metadata DB in this session's AIRFLOW_HOME."""
    db = AIRFLOW_HOME / "airflow.db"
    cache = _airflow_db_cache()
    if not cache.exists():
        subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"],
                       check=True, capture_output=True, env=dict(os.environ))
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        shutil.copy(db, tmp)
        tmp.replace(cache)
    elif not db.exists():
        shutil.copy(cache, db)
    return db


@pytest.fixture(scope="session")
def ray_head():
    """A real local Ray head (127.0.0.1, token auth, private ports and temp dir) for the
    session, wired in as the Airflow connection ``ray_default``."""
    from kg_ops.devcluster import LocalRayHead

    with LocalRayHead(num_cpus=2) as head:
        old = os.environ.get("AIRFLOW_CONN_RAY_DEFAULT")
        os.environ["AIRFLOW_CONN_RAY_DEFAULT"] = json.dumps(
            {"conn_type": "ray", "host": head.dashboard_url, "password": head.token})
        yield head
        if old is None:
            os.environ.pop("AIRFLOW_CONN_RAY_DEFAULT", None)
        else:
            os.environ["AIRFLOW_CONN_RAY_DEFAULT"] = old


@pytest.fixture(scope="session")
def ray_hook(ray_head):
    """A hook bound to the session's cluster without going through Airflow connections."""
    from kg_ops.airflow.hooks.ray import RayHook, RaySettings

    return RayHook(settings=RaySettings(conn_id="test", url=ray_head.dashboard_url,
                                        token=ray_head.token))


@pytest.fixture(scope="session")
def test_dags(airflow_db, ray_head):
    """The test DAG module, imported from the DAGs folder."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ray_test_dags", DAGS / "ray_test_dags.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def example_dag(test_dags):
    """``dags/example_ray_job.py``, imported from the DAGs folder."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("example_ray_job", DAGS / "example_ray_job.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dag


class DagResult:
    """A finished ``dag.test()`` run: task states and XComs, read from the metadata DB."""

    def __init__(self, dag_run):
        from airflow.models.xcom import XComModel
        from airflow.utils.session import create_session

        self.run = dag_run
        self.run_id = dag_run.run_id
        self.state = str(dag_run.state)
        with create_session() as session:
            tis = dag_run.get_task_instances(session=session)
            self.states = {ti.task_id: str(ti.state) for ti in tis}
            self.tries = {ti.task_id: ti.try_number for ti in tis}
            rows = session.query(XComModel).filter_by(dag_id=dag_run.dag_id,
                                                      run_id=dag_run.run_id).all()
            self.xcom = {(r.task_id, r.key): XComModel.deserialize_value(r) for r in rows}


@pytest.fixture
def run_dag(test_dags):
    """Run a DAG with ``dag.test()`` and return a ``DagResult``."""

    def run(dag, conf: dict | None = None, **kwargs) -> DagResult:
        return DagResult(dag.test(run_conf=conf, **kwargs))

    return run


@pytest.fixture
def ray_jobs(ray_hook):
    """Ray jobs submitted for one DAG run (matched on their Airflow metadata)."""

    def jobs(dag_id: str, run_id: str, task_id: str | None = None) -> list[dict]:
        out = []
        for job in ray_hook.list_jobs():
            meta = job.get("metadata") or {}
            if meta.get("airflow_dag_id") == dag_id and meta.get("airflow_run_id") == run_id \
                    and (task_id is None or meta.get("airflow_task_id") == task_id):
                out.append(job)
        return out

    return jobs

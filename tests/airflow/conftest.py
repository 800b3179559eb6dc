"""Fixtures for the Airflow-side tests. The Airflow home, metadata DB and the local Ray head
(``airflow_db``, ``ray_head``, ``ray_hook``) are shared by the whole suite: see
tests/conftest.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DAGS = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])  # set up by tests/conftest.py


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

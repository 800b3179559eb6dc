"""Example: Ray jobs from Airflow 3 with kg_ops (doubles as a system test).

``cluster_check`` runs a small kg_ops stage as a Ray job, waiting in the triggerer: the job starts
Ray tasks, writes a stage manifest and prints ``KGOPS_MANIFEST <uri>``; the task returns the
manifest's URI and metrics. ``background`` submits a job without waiting and ``wait_background``
waits for it with a deferrable sensor. ``check`` fails the run if any result is wrong.

Needs an Airflow connection ``ray_default`` (type ``ray``): host = the Ray dashboard URL,
password = the cluster's auth token. ``KGOPS_RAY_PYTHON`` names the Python on the Ray cluster
that has kg_ops installed (default ``python``).

    airflow dags test example_ray_job
"""

from __future__ import annotations

import os
import shlex
from datetime import datetime, timedelta

from airflow.sdk import DAG, Param, task

from kg_ops.airflow import RayJobSensor, SubmitRayJobOperator

RAY_CONN_ID = os.environ.get("KGOPS_RAY_CONN_ID", "ray_default")
PYTHON = os.environ.get("KGOPS_RAY_PYTHON", "python")
ARTIFACT_ROOT = os.environ.get("KGOPS_ARTIFACT_ROOT", "/tmp/kgops-artifacts")

# A minimal kg_ops stage run on the cluster: Ray tasks, a manifest, the KGOPS_MANIFEST line.
CLUSTER_CHECK = """
import sys
import ray
from kg_ops.manifest import Stage
from kg_ops.raycluster import init_ray

@ray.remote(num_cpus=0.5)
def square(x):
    return x * x

init_ray()
with Stage("cluster_check", sys.argv[1], config={"tasks": 4}) as st:
    values = ray.get([square.remote(i) for i in range(4)])
    st.counts["tasks"] = len(values)
    st.metrics["sum_of_squares"] = sum(values)
    st.metrics["cluster_cpus"] = ray.cluster_resources().get("CPU", 0)
"""
RUN_DIR = ("{{ params.artifact_root }}/{{ dag.dag_id }}/"
           "{{ run_id | replace(':', '-') | replace('+', '_') }}")

with DAG(
    dag_id="example_ray_job",
    description="Submit, follow and sense Ray jobs (kg_ops example and system test)",
    schedule=None,
    start_date=datetime(2026, 11, 1),
    catchup=False,
    default_args={"retries": 1, "retry_delay": timedelta(seconds=10)},
    params={"artifact_root": Param(ARTIFACT_ROOT, type="string")},
    tags=["kg_ops", "example"],
    doc_md=__doc__,
) as dag:
    cluster_check = SubmitRayJobOperator(
        task_id="cluster_check",
        ray_conn_id=RAY_CONN_ID,
        entrypoint=f"{PYTHON} -c {shlex.quote(CLUSTER_CHECK)} {RUN_DIR}/cluster_check",
        metadata={"purpose": "example"},
        deferrable=True,
        poll_interval=1,
        job_timeout=600,
    )
    background = SubmitRayJobOperator(
        task_id="background",
        ray_conn_id=RAY_CONN_ID,
        entrypoint="echo background job running; sleep 2; echo background job done",
        wait_for_completion=False,
    )
    wait_background = RayJobSensor(
        task_id="wait_background",
        ray_conn_id=RAY_CONN_ID,
        submission_id=background.output["submission_id"],
        deferrable=True,
        poke_interval=1,
        timeout=600,
    )

    @task
    def check(stage: dict, waited: dict) -> dict:
        """Fail the run unless the stage's manifest and the sensed job look right."""
        if stage.get("stage") != "cluster_check" or stage["metrics"].get("sum_of_squares") != 14:
            raise ValueError(f"unexpected cluster_check result: {stage}")
        if waited.get("status") != "SUCCEEDED":
            raise ValueError(f"background job did not succeed: {waited}")
        return {"manifest_uri": stage["manifest_uri"], **stage["metrics"]}

    background >> wait_background
    check(cluster_check.output, wait_background.output)

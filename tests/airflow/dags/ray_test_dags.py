"""DAGs driven by tests/airflow: one small DAG per behaviour, each job a shell one-liner.

Entry points come from the run's conf (``params.cmd``) so one DAG serves several scenarios.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, Param

from kg_ops.airflow import RayJobSensor, SubmitRayJobOperator

CONN = "ray_default"


def _dag(dag_id: str, retries: int = 0) -> DAG:
    return DAG(dag_id, schedule=None, start_date=datetime(2026, 1, 1), catchup=False,
               params={"cmd": Param("echo ok", type="string"),
                       "force": Param(False, type="boolean")},
               default_args={"retries": retries}, tags=["kg_ops-test"])


for mode in ("sync", "deferred"):
    deferrable = mode == "deferred"
    with _dag(f"ray_submit_{mode}") as dag:
        SubmitRayJobOperator(task_id="job", entrypoint="{{ params.cmd }}", ray_conn_id=CONN,
                             deferrable=deferrable, poll_interval=0.5, log_tail_lines=20,
                             force="{{ params.force }}")
    globals()[dag.dag_id] = dag

    with _dag(f"ray_timeout_{mode}") as dag:
        SubmitRayJobOperator(task_id="job", entrypoint="echo started; sleep 120",
                             ray_conn_id=CONN, deferrable=deferrable, poll_interval=0.5,
                             job_timeout=4, stop_deadline=30)
    globals()[dag.dag_id] = dag

for mode in ("reschedule", "deferred"):
    with _dag(f"ray_sensor_{mode}") as dag:
        submit = SubmitRayJobOperator(task_id="submit", entrypoint="{{ params.cmd }}",
                                      ray_conn_id=CONN, wait_for_completion=False)
        wait = RayJobSensor(
            task_id="wait", ray_conn_id=CONN,
            submission_id="{{ ti.xcom_pull(task_ids='submit', key='submission_id') }}",
            mode="reschedule" if mode == "reschedule" else "poke",
            deferrable=mode == "deferred", poke_interval=1, timeout=120)
        submit >> wait
    globals()[dag.dag_id] = dag

# Try 1 times out and stops its job, which is slow to stop (it ignores SIGTERM; Ray kills it after
# RAY_JOB_STOP_WAIT_TIME_S): try 2 starts while the job is still RUNNING and re-attaches to it.
# The job submitted afresh (id ``...-r2``) finishes at once.
SLOW_TO_STOP = ('case "$KGOPS_RAY_SUBMISSION_ID" in *-r2) echo fresh job;; '
                '*) trap "" TERM; echo slow to stop; sleep 120;; esac')
for mode in ("sync", "deferred"):
    with _dag(f"ray_retry_while_stopping_{mode}", retries=1) as dag:
        SubmitRayJobOperator(task_id="job", entrypoint=SLOW_TO_STOP, ray_conn_id=CONN,
                             runtime_env={"env_vars": {"RAY_JOB_STOP_WAIT_TIME_S": "12"}},
                             deferrable=mode == "deferred", poll_interval=0.5, job_timeout=20,
                             stop_deadline=1, retry_delay=timedelta(0))
    globals()[dag.dag_id] = dag

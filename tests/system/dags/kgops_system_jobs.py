"""Who stops a Ray job when a user acts on a deferred task (system tier).

``owned``: a job submitted and waited for by the same deferrable task (it owns the job, like the
refresh DAG's ``train``). ``submit`` + ``watch``: a job submitted without waiting and a deferred
sensor watching it (the sensor does not own the job).
"""

from __future__ import annotations

from airflow.sdk import DAG

from kg_ops.airflow import RayJobSensor, SubmitRayJobOperator

with DAG(dag_id="kgops_system_jobs", schedule=None, catchup=False,
         params={"seconds": 300}) as dag:
    owned = SubmitRayJobOperator(task_id="owned",
                                 entrypoint="echo job started && sleep {{ params.seconds }}",
                                 deferrable=True, poll_interval=1)
    submit = SubmitRayJobOperator(task_id="submit",
                                  entrypoint="echo job started && sleep {{ params.seconds }}",
                                  wait_for_completion=False)
    watch = RayJobSensor(task_id="watch", deferrable=True, poke_interval=1,
                         submission_id="{{ ti.xcom_pull(task_ids='submit', "
                                       "key='submission_id') }}")
    after = SubmitRayJobOperator(task_id="after", entrypoint="true")
    submit >> watch
    owned >> after

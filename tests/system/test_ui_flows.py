"""What users do in the Airflow 3 UI, through the same REST calls the UI makes, against the real
api-server, scheduler, dag-processor and triggerer (LocalExecutor, SQLite) and a private Ray head.
"""

from __future__ import annotations

from urllib.parse import quote

import pytest

# Each test drives real services through whole DAG runs on a loaded machine.
pytestmark = [pytest.mark.system, pytest.mark.slow, pytest.mark.timeout(1800)]

JOBS = "kgops_system_jobs"


def trigger(stack, dag_id: str, conf: dict | None = None) -> str:
    """Unpause and trigger as the UI's "Trigger" button does (no logical date: a manual run)."""
    stack.api("PATCH", f"/dags/{dag_id}", json={"is_paused": False})
    body = {"logical_date": None}
    if conf is not None:
        body["conf"] = conf
    return stack.api("POST", f"/dags/{dag_id}/dagRuns", json=body)["dag_run_id"]


def xcom(stack, dag_id: str, run_id: str, task_id: str, key: str):
    return stack.api("GET", f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/"
                            f"{task_id}/xcomEntries/{key}")["value"]


def ti_path(dag_id: str, run_id: str, task_id: str) -> str:
    return f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/{task_id}"


def wait_deferred(stack, dag_id: str, run_id: str, *task_ids: str, timeout: float = 300):
    stack.wait(f"{task_ids} deferred", lambda: all(
        stack.task_states(dag_id, run_id).get(t) == "deferred" for t in task_ids), timeout)


def test_plugin_routes_need_airflow_login(airflow_stack):
    """Finding 5: /kgops pages and JSON answer only to an authenticated user; the auto docs
    (which would be unauthenticated) are off."""
    for path in ("/kgops/versions", "/kgops/versions.json",
                 "/kgops/reports/kg_embedding_refresh/some-run/evaluate"):
        assert airflow_stack.call("GET", path, auth=False).status_code == 401, path
        bad = airflow_stack.call("GET", path, auth=False,
                                 headers={"Authorization": "Bearer not-a-token"})
        assert bad.status_code in (401, 403), path
    page = airflow_stack.call("GET", "/kgops/versions")
    assert page.status_code == 200 and "Published KG embedding versions" in page.text
    assert isinstance(airflow_stack.call("GET", "/kgops/versions.json").json(), list)
    missing = airflow_stack.call("GET", "/kgops/reports/kg_embedding_refresh/no-run/evaluate")
    assert missing.status_code == 404 and "no result yet" in missing.text
    for path in ("/kgops/docs", "/kgops/openapi.json"):
        assert airflow_stack.call("GET", path).status_code == 404, path


def test_marking_a_deferred_task_failed_stops_only_an_owned_job(airflow_stack, ray_hook):
    """Finding 1 (semantics): marking the *sensor* failed never stops the job it watches (it
    does not own it); marking the *owner* failed stops its job."""
    stack = airflow_stack
    stack.wait_for_dag(JOBS)
    run_id = trigger(stack, JOBS)
    wait_deferred(stack, JOBS, run_id, "owned", "watch")
    watched = xcom(stack, JOBS, run_id, "submit", "submission_id")
    owned = xcom(stack, JOBS, run_id, "owned", "submission_id")
    stack.wait("both jobs running", lambda: all(
        ray_hook.get_job(j)["status"] == "RUNNING" for j in (watched, owned)), 300)

    stack.api("PATCH", ti_path(JOBS, run_id, "watch"), json={"new_state": "failed"})
    stack.wait("the sensor's trigger to be cancelled", lambda: "does not own the job" in
               stack.task_log(JOBS, run_id, "watch", 1), 90)
    assert ray_hook.get_job(watched)["status"] == "RUNNING"

    stack.api("PATCH", ti_path(JOBS, run_id, "owned"), json={"new_state": "failed"})
    stack.wait("the owned job to stop", lambda: ray_hook.get_job(owned)["status"] == "STOPPED",
               90)
    assert "stopping Ray job" in stack.task_log(JOBS, run_id, "owned", 1)
    ray_hook.stop_job(watched)  # ours to clean up: nobody owns it any more

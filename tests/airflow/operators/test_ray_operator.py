"""SubmitRayJobOperator against a real local Ray head, run by real Airflow (``dag.test()``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime

import pytest

from kg_ops.manifest import Stage, manifest_uri

pytestmark = pytest.mark.timeout(300)


def write_manifest(out) -> str:
    """A real stage manifest (what a kgops command leaves behind), for a job to announce."""
    with Stage("toy", str(out), config={"k": 1}, announce=False) as st:
        st.counts["rows"] = 7
        st.metrics["mrr"] = 0.25
        st.outputs["table"] = st.uri("table.parquet")
    return manifest_uri(str(out))


def wait_for_status(ray_hook, find, statuses, timeout=60.0) -> dict:
    """Poll until ``find()`` returns a job in one of ``statuses``."""
    end = time.monotonic() + timeout
    job = None
    while time.monotonic() < end:
        job = find()
        if job and job["status"] in statuses:
            return job
        time.sleep(0.3)
    raise AssertionError(f"job not in {statuses} after {timeout}s: {job}")


@pytest.mark.parametrize("mode", ["sync", "deferred"])
def test_success_returns_manifest_result(mode, test_dags, run_dag, ray_jobs, tmp_path):
    uri = write_manifest(tmp_path / "toy")
    dag = getattr(test_dags, f"ray_submit_{mode}")
    res = run_dag(dag, {"cmd": f"echo computing; echo KGOPS_MANIFEST {uri}"})

    assert res.states == {"job": "success"}
    result = res.xcom[("job", "return_value")]
    assert result["manifest_uri"] == uri
    assert result["stage"] == "toy"
    assert result["metrics"] == {"mrr": 0.25}
    assert result["counts"] == {"rows": 7}
    assert result["outputs"]["table"].endswith("table.parquet")
    assert result["status"] == "SUCCEEDED"
    jobs = ray_jobs(dag.dag_id, res.run_id)
    assert [j["submission_id"] for j in jobs] == [result["submission_id"]]
    # Identifiers pushed before waiting, and the operator link points at the job's page.
    assert res.xcom[("job", "submission_id")] == result["submission_id"]
    assert res.xcom[("job", "ray_dashboard_url")].endswith(f"/#/jobs/{result['submission_id']}")
    assert res.xcom[("job", "_link_RayJobLink")] == res.xcom[("job", "ray_dashboard_url")]
    meta = jobs[0]["metadata"]
    assert meta["airflow_task_id"] == "job" and meta["airflow_try_number"] == "1"
    assert not any(ray_head_token_in(v) for v in meta.values())


def ray_head_token_in(value: str) -> bool:
    return len(value) >= 64 and all(c in "0123456789abcdef" for c in value)


def test_success_without_manifest_returns_status(test_dags, run_dag):
    res = run_dag(test_dags.ray_submit_sync, {"cmd": "echo just a command"})
    result = res.xcom[("job", "return_value")]
    assert result["status"] == "SUCCEEDED" and "manifest_uri" not in result


@pytest.mark.parametrize("mode", ["sync", "deferred"])
def test_nonzero_exit_fails_with_error_type_and_log_tail(mode, test_dags, run_dag, ray_jobs,
                                                         capfd):
    dag = getattr(test_dags, f"ray_submit_{mode}")
    res = run_dag(dag, {"cmd": "echo last-words-before-dying; exit 3"})

    assert res.states == {"job": "failed"}
    [job] = ray_jobs(dag.dag_id, res.run_id)
    assert job["status"] == "FAILED"
    out = capfd.readouterr()
    text = out.out + out.err
    assert f"Ray job {job['submission_id']} ended FAILED" in text
    assert "JOB_ENTRYPOINT_COMMAND_ERROR" in text
    assert "last-words-before-dying" in text


def test_job_stopped_outside_airflow_fails_task(test_dags, run_dag, ray_hook, ray_jobs, capfd):
    dag = test_dags.ray_submit_deferred
    stopper_done = threading.Event()

    def stop_when_running():
        try:
            job = wait_for_status(ray_hook, lambda: next(
                (j for j in ray_hook.list_jobs()
                 if (j.get("metadata") or {}).get("airflow_dag_id") == dag.dag_id
                 and "stop-me" in j["entrypoint"] and j["status"] == "RUNNING"), None),
                {"RUNNING"})
            ray_hook.stop_job(job["submission_id"])
        finally:
            stopper_done.set()

    threading.Thread(target=stop_when_running, daemon=True).start()
    res = run_dag(dag, {"cmd": "echo stop-me; sleep 120"})
    stopper_done.wait(10)

    assert res.states == {"job": "failed"}
    [job] = ray_jobs(dag.dag_id, res.run_id)
    assert job["status"] == "STOPPED"
    out = capfd.readouterr()
    assert f"Ray job {job['submission_id']} ended STOPPED" in out.out + out.err


@pytest.mark.parametrize("mode", ["sync", "deferred"])
def test_job_timeout_stops_job_then_fails(mode, test_dags, run_dag, ray_jobs):
    dag = getattr(test_dags, f"ray_timeout_{mode}")
    t0 = time.monotonic()
    res = run_dag(dag)
    took = time.monotonic() - t0

    assert res.states == {"job": "failed"}
    [job] = ray_jobs(dag.dag_id, res.run_id)
    assert job["status"] == "STOPPED"  # not left running
    assert took < 100  # the job itself sleeps 120 s


def test_kill_running_task_stops_ray_job(test_dags, run_dag, ray_hook):
    """SIGTERM to the task process (what Airflow sends on kill): the task runner calls
    on_kill, which stops the Ray job and waits until Ray reports it stopped."""
    dag = test_dags.ray_submit_sync
    marker = f"kill-me-{os.getpid()}-{time.time_ns()}"
    seen: dict = {}

    def kill_when_running():
        job = wait_for_status(ray_hook, lambda: next(
            (j for j in ray_hook.list_jobs() if marker in j["entrypoint"]), None), {"RUNNING"})
        seen["sid"] = job["submission_id"]
        seen["t_kill"] = time.time()
        os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=kill_when_running, daemon=True)
    thread.start()
    try:
        res = run_dag(dag, {"cmd": f"echo {marker}; sleep 120"})
    finally:
        signal.signal(signal.SIGTERM, previous)
    thread.join(5)

    info = ray_hook.get_job(seen["sid"])
    assert info["status"] == "STOPPED"
    assert info["end_time"] / 1000 - seen["t_kill"] < 30  # stopped within the deadline
    assert res.states == {"job": "failed"}


def test_retry_after_worker_death_reattaches(test_dags, run_dag, ray_hook, ray_jobs):
    """Try 1 runs in a worker process that is SIGKILLed while waiting; the next attempt for
    the same task instance (same dag/run/task/map index) re-attaches to the running job.
    Afterwards a rerun reuses the succeeded job. Ray holds exactly one job throughout."""
    dag = test_dags.ray_submit_sync
    when = datetime.now(UTC).replace(microsecond=0)
    marker = f"reattach-{time.time_ns()}"
    conf = {"cmd": f"echo {marker}; sleep 8; echo finished"}
    code = (
        "import importlib.util, json, sys, datetime;"
        "spec = importlib.util.spec_from_file_location('d', sys.argv[1]);"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m);"
        "when = datetime.datetime.fromisoformat(sys.argv[2]);"
        "m.ray_submit_sync.test(logical_date=when, run_after=when, run_conf=json.loads(sys.argv[3]))"
    )
    import json

    worker = subprocess.Popen([sys.executable, "-c", code, test_dags.__file__, when.isoformat(),
                               json.dumps(conf)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        first = wait_for_status(ray_hook, lambda: next(
            (j for j in ray_hook.list_jobs() if marker in j["entrypoint"]), None),
            {"RUNNING"}, timeout=150)
    finally:
        worker.kill()  # the worker dies mid-wait; its Ray job keeps running
        worker.wait()

    res = run_dag(dag, conf, logical_date=when, run_after=when)
    assert res.states == {"job": "success"}
    assert res.xcom[("job", "return_value")]["submission_id"] == first["submission_id"]
    jobs = ray_jobs(dag.dag_id, res.run_id)
    assert [j["submission_id"] for j in jobs] == [first["submission_id"]]
    assert jobs[0]["status"] == "SUCCEEDED"

    again = run_dag(dag, conf, logical_date=when, run_after=when)
    assert again.states == {"job": "success"}
    assert len(ray_jobs(dag.dag_id, res.run_id)) == 1


def test_force_reruns_a_succeeded_job_under_a_new_id(test_dags, run_dag, ray_jobs):
    dag = test_dags.ray_submit_sync
    when = datetime(2026, 2, 3, 4, 5, 6, tzinfo=UTC)
    first = run_dag(dag, {"cmd": "echo once"}, logical_date=when, run_after=when)
    forced = run_dag(dag, {"cmd": "echo once", "force": True}, logical_date=when, run_after=when)

    assert first.states == forced.states == {"job": "success"}
    sid = first.xcom[("job", "return_value")]["submission_id"]
    assert forced.xcom[("job", "return_value")]["submission_id"] == f"{sid}-r2"
    assert sorted(j["submission_id"] for j in ray_jobs(dag.dag_id, first.run_id)) == \
        [sid, f"{sid}-r2"]


@pytest.mark.parametrize("mode", ["sync", "deferred"])
def test_retry_that_attached_to_a_job_being_stopped_submits_it_afresh(mode, test_dags, run_dag,
                                                                      ray_jobs, capfd):
    """The clear race, produced for real: try 1 stops its job (here at its job_timeout; a clear
    does the same through on_kill) but Ray is slow to finish stopping it, so try 2 re-attaches
    to the still-RUNNING job, which then ends STOPPED. That stop belonged to try 1: try 2 submits
    the job afresh and succeeds, instead of failing with "ended STOPPED"."""
    dag = getattr(test_dags, f"ray_retry_while_stopping_{mode}")
    res = run_dag(dag)

    text = "".join(capfd.readouterr())
    jobs = {j["submission_id"]: j for j in ray_jobs(dag.dag_id, res.run_id)}
    first = min(jobs, key=len)
    assert f"Ray job {first} of this task instance is RUNNING: re-attaching" in text  # the race
    assert res.states == {"job": "success"} and res.tries == {"job": 2}
    assert {sid: (j["status"], j["metadata"]["airflow_try_number"]) for sid, j in jobs.items()} \
        == {first: ("STOPPED", "1"), f"{first}-r2": ("SUCCEEDED", "2")}
    assert res.xcom[("job", "return_value")]["submission_id"] == f"{first}-r2"
    assert res.xcom[("job", "submission_id")] == f"{first}-r2"

"""RayJobSensor in reschedule and deferrable modes, and the example DAG as a system test."""

from __future__ import annotations

import pytest

from kg_ops.manifest import Stage, manifest_uri

pytestmark = pytest.mark.timeout(300)


@pytest.mark.parametrize("mode", ["reschedule", "deferred"])
def test_sensor_waits_for_job_submitted_without_waiting(mode, test_dags, run_dag, ray_jobs,
                                                        tmp_path):
    with Stage("later", str(tmp_path / "later"), announce=False) as st:
        st.metrics["auc"] = 0.9
    uri = manifest_uri(str(tmp_path / "later"))
    dag = getattr(test_dags, f"ray_sensor_{mode}")
    res = run_dag(dag, {"cmd": f"sleep 3; echo KGOPS_MANIFEST {uri}"})

    assert res.states == {"submit": "success", "wait": "success"}
    submitted = res.xcom[("submit", "return_value")]
    assert submitted["status"] in ("PENDING", "RUNNING")  # returned without waiting
    result = res.xcom[("wait", "return_value")]
    assert result["submission_id"] == submitted["submission_id"]
    assert result["manifest_uri"] == uri and result["metrics"] == {"auc": 0.9}
    assert [j["status"] for j in ray_jobs(dag.dag_id, res.run_id)] == ["SUCCEEDED"]
    if mode == "reschedule":
        assert res.tries["wait"] == 1  # reschedules do not count as tries


@pytest.mark.parametrize("mode", ["reschedule", "deferred"])
def test_sensor_fails_on_failed_job_with_log_tail(mode, test_dags, run_dag, capfd):
    dag = getattr(test_dags, f"ray_sensor_{mode}")
    res = run_dag(dag, {"cmd": "sleep 2; echo sensor-saw-this; exit 5"})

    assert res.states == {"submit": "success", "wait": "failed"}
    sid = res.xcom[("submit", "submission_id")]
    out = capfd.readouterr()
    text = out.out + out.err
    assert f"Ray job {sid} ended FAILED" in text and "sensor-saw-this" in text


def test_example_dag_runs_end_to_end(example_dag, run_dag, ray_jobs, tmp_path):
    """dags/example_ray_job.py against the local cluster: a kg_ops stage calling ray.init()
    inside the job (token auth), a background job and a deferrable sensor."""
    res = run_dag(example_dag, {"artifact_root": str(tmp_path)})

    assert res.states == {"cluster_check": "success", "background": "success",
                          "wait_background": "success", "check": "success"}
    checked = res.xcom[("check", "return_value")]
    assert checked["sum_of_squares"] == 14 and checked["cluster_cpus"] == 2
    assert checked["manifest_uri"].startswith(str(tmp_path))
    assert len(ray_jobs(example_dag.dag_id, res.run_id)) == 2

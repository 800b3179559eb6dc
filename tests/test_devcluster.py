"""LocalRayHead: token auth on, private ports, and stopping only the cluster it started."""

from __future__ import annotations

import os
import time

import pytest
import requests

from kg_ops.devcluster import LocalRayHead, _names_dir

pytestmark = pytest.mark.timeout(420)


def _procs_running(text: str) -> list:
    import psutil

    return [p for p in psutil.process_iter(["cmdline"])
            if text in " ".join(p.info["cmdline"] or [])]


def _wait_for_procs(text: str, timeout: float = 30.0) -> list:
    """Ray marks a job RUNNING just before its supervisor spawns the entrypoint, so the process
    can lag the status by a moment on a loaded machine: poll for it."""
    end = time.monotonic() + timeout
    while not (found := _procs_running(text)) and time.monotonic() < end:
        time.sleep(0.2)
    return found


def test_names_dir_matches_only_that_directory():
    assert _names_dir(["raylet", "--temp_dir=/tmp/kgray-ab"], "/tmp/kgray-ab")
    assert _names_dir(["x", "--log-dir", "/tmp/kgray-ab/session_1/logs"], "/tmp/kgray-ab")
    assert not _names_dir(["x", "--temp-dir=/tmp/kgray-abc"], "/tmp/kgray-ab")


def test_second_cluster_coexists_and_stops_alone(ray_head, ray_hook):
    """Two heads on one machine: different ports and tokens; stopping the second one (and its
    running job) leaves the session's cluster and its job untouched."""
    keep = f"keep-{os.getpid()}-{time.time_ns()}"
    doomed = f"sleep 300.{time.time_ns() % 10**6:06d}"  # unique: find its process later
    ray_hook.submit_job("sleep 90", submission_id=keep)
    with LocalRayHead(num_cpus=1) as other:
        assert other.dashboard_url != ray_head.dashboard_url and other.token != ray_head.token
        auth = {"Authorization": f"Bearer {other.token}"}
        # token auth is on: no token -> 401, the other cluster's token -> 403
        assert requests.get(f"{other.dashboard_url}/api/jobs/", timeout=10).status_code == 401
        wrong = {"Authorization": f"Bearer {ray_head.token}"}
        assert requests.get(f"{other.dashboard_url}/api/jobs/", headers=wrong,
                            timeout=10).status_code == 403
        r = requests.post(f"{other.dashboard_url}/api/jobs/", headers=auth, timeout=30,
                          json={"entrypoint": doomed, "submission_id": "doomed"})
        assert r.status_code == 200, r.text
        end = time.monotonic() + 60
        while time.monotonic() < end and requests.get(
                f"{other.dashboard_url}/api/jobs/doomed", headers=auth,
                timeout=10).json()["status"] != "RUNNING":
            time.sleep(0.3)
        assert _wait_for_procs(doomed)  # the job driver runs, in its own session
        temp_dir = other.temp_dir
    # the other cluster is gone (dashboard down, temp dir removed, job driver killed)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{other.dashboard_url}/api/version", timeout=5)
    assert not os.path.exists(temp_dir)
    assert not _procs_running(doomed)
    # ours still answers and its job still runs
    assert ray_hook.get_job(keep)["status"] in ("PENDING", "RUNNING")
    ray_hook.stop_job(keep)

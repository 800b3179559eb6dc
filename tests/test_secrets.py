"""No secret leaves its machine: encode, partition and train run as Ray jobs on ``s3://``
(the local S3 server) against a private Ray head whose *own* environment holds the credentials,
as a production cluster's nodes do. The jobs are submitted without any credentials; afterwards
the access key and secret appear nowhere in the head's temp dir (every Ray log) nor in the State
API (actors, tasks, workers, placement groups, jobs, nodes, in detail), nor in the manifests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import boto3
import pytest
import requests

from kg_ops.devcluster import LocalRayHead

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

KGOPS = str(Path(sys.executable).parent / "kgops")
STATE_API = ("actors", "tasks", "workers", "placement_groups", "nodes", "jobs")


def _run_job(head: LocalRayHead, entrypoint: str, timeout: float = 600) -> dict:
    auth = {"Authorization": f"Bearer {head.token}"}
    sid = f"secret-test-{uuid.uuid4().hex[:8]}"
    r = requests.post(f"{head.dashboard_url}/api/jobs/", headers=auth, timeout=30,
                      json={"entrypoint": entrypoint, "submission_id": sid})
    assert r.status_code == 200, r.text
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        job = requests.get(f"{head.dashboard_url}/api/jobs/{sid}", headers=auth,
                           timeout=10).json()
        if job["status"] in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        time.sleep(1)
    logs = requests.get(f"{head.dashboard_url}/api/jobs/{sid}/logs", headers=auth,
                        timeout=30).json()["logs"]
    assert job["status"] == "SUCCEEDED", logs[-3000:]
    return job


def _state_api_text(head: LocalRayHead) -> str:
    auth = {"Authorization": f"Bearer {head.token}"}
    texts = []
    for kind in STATE_API:
        r = requests.get(f"{head.dashboard_url}/api/v0/{kind}",
                         params={"detail": "1", "limit": "10000"}, headers=auth, timeout=60)
        assert r.status_code == 200, (kind, r.text[:500])
        texts.append(r.text)
    texts.append(requests.get(f"{head.dashboard_url}/api/jobs/", headers=auth, timeout=30).text)
    return "\n".join(texts)


def _files_holding(root: str, needles: list[bytes]) -> list[str]:
    found = []
    for path in Path(root).rglob("*"):
        if path.is_file() and not path.is_symlink():
            try:
                data = path.read_bytes()
            except OSError:
                continue
            found += [f"{path}: {n!r}" for n in needles if n in data]
    return found


def test_credentials_never_reach_ray_logs_state_api_or_manifests(s3_server, tmp_path,
                                                                monkeypatch):
    key_id = "AKIAKGOPS" + uuid.uuid4().hex[:11].upper()
    secret = "kgopsSecret" + uuid.uuid4().hex
    creds = {"AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret}
    for k, v in creds.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)   # drop credentials cached earlier
    bucket = f"kgops-secret-{uuid.uuid4().hex[:8]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    root = f"s3://{bucket}"
    subprocess.run([KGOPS, "synth", "--nodes", "300", "--edges", "1500", "--out",
                    f"{root}/graph"], check=True, capture_output=True, timeout=300)

    # The head gets the S3 settings in its environment (the cluster's own credential chain);
    # the jobs below carry none: no runtime_env, no env in the entrypoint.
    cluster_env = {**creds, "AWS_ENDPOINT_URL": s3_server, "AWS_DEFAULT_REGION": "us-east-1"}
    with LocalRayHead(num_cpus=2, env=cluster_env, keep_temp_dir=True) as head:
        _run_job(head, f"kgops encode --graph {root}/graph --out {root}/features --workers 1")
        _run_job(head, f"kgops partition --graph {root}/graph --parts 1 --fanout 5,5 "
                       f"--features {root}/features --out {root}/parts")
        _run_job(head, f"kgops train --partitions {root}/parts --out {root}/model --epochs 1 "
                       "--loss softmax --negatives 8 --valid-triples 20")
        state = _state_api_text(head)
        temp_dir = head.temp_dir
    try:
        assert "actor_id" in state and "placement_group_id" in state   # real State API data
        assert key_id not in state and secret not in state
        leaks = _files_holding(temp_dir, [key_id.encode(), secret.encode()])
        logs = list(Path(temp_dir).rglob("*.log"))
        assert len(logs) > 10 and any("runtime_env_agent" in p.name for p in logs)
        assert leaks == []
    finally:
        import shutil

        shutil.rmtree(temp_dir, ignore_errors=True)
    s3 = boto3.client("s3")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    manifests = [k for k in keys if k.endswith("_manifest.json")]
    assert {k.split("/")[0] for k in manifests} >= {"graph", "features", "parts", "model"}
    for k in manifests + [k for k in keys if k.endswith(".json")]:
        body = s3.get_object(Bucket=bucket, Key=k)["Body"].read().decode()
        assert key_id not in body and secret not in body, k
        json.loads(body)
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == secret   # the test really used this secret

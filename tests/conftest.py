"""Shared test fixtures: a real S3-compatible server (moto) on 127.0.0.1, dataset paths.

The S3 server is a real HTTP server speaking the S3 protocol; boto3 talks to it over loopback,
exactly as it would to MinIO or AWS. Credentials are throwaway values for that server only.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("KGOPS_SHARED", REPO.parent / "shared"))
DATASETS = SHARED / "datasets"

# Airflow reads its configuration when first imported: point it at a throwaway home with a
# SQLite DB and this repo's dags/ before any test module imports it.
_AIRFLOW_HOME = tempfile.mkdtemp(prefix="kgops-airflow-")
os.environ.update({
    "AIRFLOW_HOME": _AIRFLOW_HOME,
    "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
    "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_AIRFLOW_HOME}/airflow.db",
    "HF_HUB_OFFLINE": "1",
})
os.environ.pop("RAY_ADDRESS", None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """Start ``moto_server`` on 127.0.0.1 and point boto3 at it through the environment."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        raise RuntimeError("moto S3 server did not start")
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield endpoint
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def s3_bucket(s3_server) -> str:
    """A fresh bucket on the local S3 server; returns ``s3://<bucket>``."""
    import boto3

    name = f"kgops-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(params=["local", "s3"])
def artifact_root(request, tmp_path) -> str:
    """The same test against a local directory and the local S3 server."""
    if request.param == "local":
        return str(tmp_path / "artifacts")
    return request.getfixturevalue("s3_bucket") + "/artifacts"


@pytest.fixture(scope="session")
def datasets() -> Path:
    if not DATASETS.is_dir():
        pytest.skip(f"shared datasets not found at {DATASETS} (set KGOPS_SHARED)")
    return DATASETS


@pytest.fixture(scope="session")
def airflow_db() -> str:
    """A migrated SQLite Airflow metadata DB for the session (``airflow db migrate``)."""
    airflow = str(Path(sys.executable).parent / "airflow")
    proc = subprocess.run([airflow, "db", "migrate"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"airflow db migrate failed:\n{proc.stdout[-2000:]}"
                           f"\n{proc.stderr[-2000:]}")
    return _AIRFLOW_HOME


@pytest.fixture(scope="session")
def ray_head():
    """A private local Ray head (127.0.0.1, token auth, own temp dir and ports) for the
    session; only this cluster is stopped at the end."""
    from kg_ops.devcluster import LocalRayHead

    with LocalRayHead(num_cpus=2) as head:
        yield head


@pytest.fixture
def ray_conn(ray_head, monkeypatch) -> str:
    """The ``ray_default`` Airflow connection pointing at the session's Ray head."""
    monkeypatch.setenv("AIRFLOW_CONN_RAY_DEFAULT", json.dumps({
        "conn_type": "ray", "host": ray_head.dashboard_url, "password": ray_head.token}))
    return "ray_default"

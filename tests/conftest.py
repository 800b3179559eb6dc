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
# SQLite DB before any test module imports it. Its DAGs folder links the repo's DAGs and the test
# DAGs (``dag.test()`` syncs the DAG bundle from it); plugins come from the repo.
AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="kgops-airflow-"))
DAGS = AIRFLOW_HOME / "dags"
os.environ.update({
    "AIRFLOW_HOME": str(AIRFLOW_HOME),
    "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
    "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{AIRFLOW_HOME / 'airflow.db'}",
    "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
    "KGOPS_RAY_PYTHON": sys.executable,
    "HF_HUB_OFFLINE": "1",
})
os.environ.pop("RAY_ADDRESS", None)
DAGS.mkdir(parents=True, exist_ok=True)
for _src in [*sorted((REPO / "dags").glob("*.py")),
             *sorted((REPO / "tests" / "airflow" / "dags").glob("*.py"))]:
    (DAGS / _src.name).symlink_to(_src)


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


def _airflow_db_cache() -> Path:
    from importlib import metadata

    return Path(tempfile.gettempdir()) / f"kgops-airflow-{metadata.version('apache-airflow')}.db"


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated SQLite metadata DB in this session's AIRFLOW_HOME. The migrated file is cached
    per Airflow version in /tmp, so only the first session pays for ``airflow db migrate``."""
    import shutil

    db = AIRFLOW_HOME / "airflow.db"
    cache = _airflow_db_cache()
    if not cache.exists():
        proc = subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"],
                              capture_output=True, text=True, env=dict(os.environ))
        if proc.returncode != 0:
            raise RuntimeError(f"airflow db migrate failed:\n{proc.stdout[-2000:]}"
                               f"\n{proc.stderr[-2000:]}")
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        shutil.copy(db, tmp)
        tmp.replace(cache)
    elif not db.exists():
        shutil.copy(cache, db)
    return db


@pytest.fixture(scope="session")
def migrated_db_template(airflow_db) -> Path:
    """A freshly migrated, empty metadata DB file to copy (for other Airflow homes)."""
    return _airflow_db_cache()


@pytest.fixture(scope="session")
def ray_head():
    """A private local Ray head (127.0.0.1, token auth, own temp dir and ports) for the
    session, wired in as the Airflow connection ``ray_default``; only this cluster is stopped
    at the end."""
    from kg_ops.devcluster import LocalRayHead

    with LocalRayHead(num_cpus=2) as head:
        old = os.environ.get("AIRFLOW_CONN_RAY_DEFAULT")
        os.environ["AIRFLOW_CONN_RAY_DEFAULT"] = json.dumps(
            {"conn_type": "ray", "host": head.dashboard_url, "password": head.token})
        yield head
        if old is None:
            os.environ.pop("AIRFLOW_CONN_RAY_DEFAULT", None)
        else:
            os.environ["AIRFLOW_CONN_RAY_DEFAULT"] = old


@pytest.fixture(scope="session")
def ray_hook(ray_head):
    """A hook bound to the session's cluster without going through Airflow connections."""
    from kg_ops.airflow.hooks.ray import RayHook, RaySettings

    return RayHook(settings=RaySettings(conn_id="test", url=ray_head.dashboard_url,
                                        token=ray_head.token))


@pytest.fixture(scope="session")
def ray_local(s3_server):
    """A real local in-process Ray instance with 2 CPUs (auth off: a private cluster of this
    process) for stage tests that run Ray code directly. Started after the S3 server, so its
    workers hold the S3 settings in their own environment, as the nodes of a real cluster do
    (kg_ops never ships credentials to workers)."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


def pytest_collection_modifyitems(config, items):
    """``KGOPS_FAST=1`` skips tests marked ``slow`` (for quick local iterations; CI runs all)."""
    if os.environ.get("KGOPS_FAST") != "1":
        return
    skip = pytest.mark.skip(reason="KGOPS_FAST=1 skips slow tests")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)

"""The refresh DAG's ``deploy`` task: real Airflow (``dag.test()``), real local Ray head, the
deploy a real Ray job running ``kgops serve``, answers read over HTTP from Ray Serve.

Serve is started on the cluster first (HTTP on a free 127.0.0.1 port), as a cluster's admin
would: the deploy binds where the cluster's Serve config says.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests

from kg_ops.devcluster import free_ports

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

REPO = Path(__file__).resolve().parents[2]
DAY1 = datetime(2026, 11, 11, tzinfo=UTC)
DAY2 = datetime(2026, 11, 12, tzinfo=UTC)


def _on_cluster(head, code: str) -> None:
    env = {**os.environ, **head.env()}
    subprocess.run([sys.executable, "-c", "import ray; from ray import serve; "
                    f"ray.init(address={head.address!r}); {code}"], env=env, check=True,
                   capture_output=True, timeout=180)


@pytest.fixture(scope="module")
def serve_on_cluster(ray_head):
    port = free_ports(1)[0]
    _on_cluster(ray_head, f"serve.start(http_options={{'host': '127.0.0.1', 'port': {port}}})")
    yield port
    _on_cluster(ray_head, "serve.shutdown()")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("deploy-artifacts")


def load_dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}, bag.import_errors
    return bag.get_dag("kg_embedding_refresh")


def _run_dir(root: Path, day: datetime) -> Path:
    return root / "kg_embedding_refresh" / day.strftime("%Y%m%dT%H%M%SZ")


def test_deploy_serves_the_published_version_and_a_gate_failure_keeps_it(
        airflow_db, ray_head, serve_on_cluster, root):
    from airflow.utils.state import DagRunState

    from kg_ops.airflow.published import (
        live_deployment,
        published_versions,
        render_versions_page,
    )
    from kg_ops.manifest import read_manifest
    from kg_ops.serve.version import open_version

    conf = {"source": "synth", "synth_nodes": 300, "synth_edges": 1800, "workers": 1,
            "epochs": 1, "encode_attributes": False, "artifact_root": str(root),
            "min_mrr": 0.0, "max_mrr_drop": 1.0, "deploy": True}
    dag = load_dag()
    dr = dag.test(logical_date=DAY1, run_conf=conf)
    states = {ti.task_id: ti.state for ti in dr.get_task_instances()}
    assert dr.state == DagRunState.SUCCESS, states
    assert states["deploy"] == "success"

    run1 = _run_dir(root, DAY1)
    version = open_version(str(run1 / "evaluation"))
    deployed = read_manifest(str(run1 / "deploy"))
    assert deployed["stage"] == "serve" and deployed["ray_job_id"]
    assert deployed["outputs"]["version"] == version.id
    url = deployed["outputs"]["url"]
    assert url.startswith(f"http://127.0.0.1:{serve_on_cluster}/kg")
    info = requests.get(f"{url}/version", timeout=10).json()
    assert info["id"] == version.id and info["metrics"]["mrr"] == pytest.approx(
        read_manifest(str(run1 / "evaluation"))["metrics"]["mrr"])
    # A top-k query answers with entity keys of the graph.
    schema = json.loads((run1 / "graph" / "schema.json").read_text())
    rel = schema["relations"][0]
    head_key = f"{rel['head']}:0"
    answer = requests.post(f"{url}/predict", json={"head": head_key, "relation": rel["name"],
                                                   "k": 3}, timeout=30)
    assert answer.status_code == 200, answer.text
    assert [a["type"] for a in answer.json()["answers"]] == [rel["tail"]] * 3

    # The versions page marks this version live.
    assert live_deployment()["version"] == version.id
    rows = published_versions()
    assert [r["live"] for r in rows if r["run_id"] == dr.run_id] == [True]
    assert "<strong>live</strong>" in render_versions_page(rows)

    # Another day's run fails the gate: nothing is published or deployed, the live version
    # is still day 1's (over HTTP and on the versions page).
    dr2 = dag.test(logical_date=DAY2, run_conf={**conf, "min_mrr": 0.99})
    states2 = {ti.task_id: ti.state for ti in dr2.get_task_instances()}
    assert dr2.state == DagRunState.FAILED
    assert states2["quality_gate"] == "failed"
    assert states2["deploy"] in ("upstream_failed", None)
    assert read_manifest(str(_run_dir(root, DAY2) / "evaluation")) is not None
    assert open_version(str(_run_dir(root, DAY2) / "evaluation")).id != version.id
    assert requests.get(f"{url}/version", timeout=10).json()["id"] == version.id
    assert live_deployment()["version"] == version.id
    assert [r["live"] for r in published_versions() if r["run_id"] == dr.run_id] == [True]


def test_deploy_param_off_skips_the_task(airflow_db, ray_head, serve_on_cluster, root):
    """Day 1 again (its stages are reused when the test above ran) with deployment off."""
    from airflow.utils.state import DagRunState

    conf = {"source": "synth", "synth_nodes": 300, "synth_edges": 1800, "workers": 1,
            "epochs": 1, "encode_attributes": False, "artifact_root": str(root),
            "min_mrr": 0.0, "max_mrr_drop": 1.0, "deploy": False}
    dr = load_dag().test(logical_date=DAY1, run_conf=conf)
    states = {ti.task_id: ti.state for ti in dr.get_task_instances()}
    assert dr.state == DagRunState.SUCCESS
    assert states["publish"] == "success" and states["deploy"] == "skipped"

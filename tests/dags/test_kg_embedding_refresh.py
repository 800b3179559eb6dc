"""The refresh DAG end to end: real Airflow (``dag.test()`` on SQLite), real local Ray head,
every stage a real Ray job, on a small synthetic graph."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kg_ops.manifest import read_manifest

REPO = Path(__file__).resolve().parents[2]
STAGES = ("graph", "features", "partitions", "model", "evaluation")
DAY1 = datetime(2026, 11, 1, tzinfo=UTC)
DAY2 = datetime(2026, 11, 2, tzinfo=UTC)


def load_dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}, bag.import_errors
    return bag.get_dag("kg_embedding_refresh")


def test_dag_files_import_fast_and_without_torch(airflow_db):
    """The scheduler parses DAG files every few seconds: no torch/PyG/Ray Train, < 1 s."""
    code = (
        "import sys, time, importlib.util, airflow.sdk\n"
        "out = {}\n"
        "for path in sys.argv[1:]:\n"
        "    t = time.perf_counter()\n"
        "    spec = importlib.util.spec_from_file_location('d', path)\n"
        "    spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "    out[path] = time.perf_counter() - t\n"
        "heavy = [m for m in ('torch', 'torch_geometric', 'ray.train', 'sklearn', 'transformers')"
        " if m in sys.modules]\n"
        "import json; print(json.dumps({'seconds': out, 'heavy': heavy}))\n"
    )
    dag_files = sorted(str(p) for p in (REPO / "dags").glob("*.py"))
    assert dag_files
    proc = subprocess.run([sys.executable, "-c", code, *dag_files], capture_output=True,
                          text=True, check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["heavy"] == []
    for path, seconds in result["seconds"].items():
        assert seconds < 1.0, f"{path} took {seconds:.2f}s to import"
    load_dag()  # and no import errors in a DagBag


def test_trigger_form_submits_with_its_defaults(airflow_db):
    """The Airflow 3 UI makes a param whose default is empty and whose type is not nullable a
    required field, and keeps "Trigger" disabled until it is filled: no default may be such a
    field, and every default validates."""
    dag = load_dag()
    for name, param in dag.params.items():
        schema = param.schema
        types = schema.get("type") if isinstance(schema.get("type"), list) else [schema.get("type")]
        assert param.value not in ("", None) or "null" in types, \
            f"param {name!r} would be a required, empty field in the trigger form"
    dag.params.validate()
    assert dag.params["source"] == "codex-s"


def run_dag(dag, logical_date, conf):
    dr = dag.test(logical_date=logical_date, run_conf=conf)
    return dr


def tree(root: Path, day: datetime) -> Path:
    return root / "kg_embedding_refresh" / day.strftime("%Y%m%dT%H%M%SZ")


@pytest.fixture(scope="module")
def small_conf(tmp_path_factory):
    root = tmp_path_factory.mktemp("artifacts")
    return {"source": "synth", "synth_nodes": 400, "synth_edges": 2400, "workers": 2,
            "epochs": 2, "artifact_root": str(root), "min_mrr": 0.0, "max_mrr_drop": 1.0,
            "deploy": False}  # the deploy task has its own test (test_deploy_task.py)


def forget_published_versions() -> None:
    """Other tests (test_deploy_task.py, test_tune_dag.py) publish into the same session
    database; a test that checks the version order or a warm start's source starts from none."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import delete, select

    from kg_ops.airflow.published import EMBEDDINGS_ASSET_NAME, PAST_EMBEDDINGS_ASSET_NAME

    with create_session() as session:
        ids = select(AssetModel.id).where(
            AssetModel.name.in_([EMBEDDINGS_ASSET_NAME, PAST_EMBEDDINGS_ASSET_NAME]))
        session.execute(delete(AssetEvent).where(AssetEvent.asset_id.in_(ids)))


def test_full_dag_backfill_and_rerun(airflow_db, ray_head, small_conf):
    from airflow.utils.state import DagRunState

    from kg_ops.airflow.published import published_versions

    dag = load_dag()
    forget_published_versions()
    root = Path(small_conf["artifact_root"])

    dr1 = run_dag(dag, DAY1, small_conf)
    assert dr1.state == DagRunState.SUCCESS
    manifests1 = {s: read_manifest(str(tree(root, DAY1) / s)) for s in STAGES}
    assert all(manifests1.values()), {s: m is None for s, m in manifests1.items()}
    metrics = manifests1["evaluation"]["metrics"]
    assert 0.0 < metrics["mrr"] <= 1.0 and "hits@10" in metrics and "auc" in metrics
    assert (tree(root, DAY1) / "evaluation" / "report.html").exists()
    # Each stage ran as a Ray job whose id is recorded in its manifest.
    assert all(m.get("ray_job_id") for m in manifests1.values())

    # Published: an asset event carrying the metrics and the embeddings' URI.
    # (Other tests publish into the same Airflow database: look up this run's own version.)
    versions = [v for v in published_versions() if v["run_id"] == dr1.run_id]
    assert len(versions) == 1 and versions[0]["mrr"] == pytest.approx(metrics["mrr"])
    assert versions[0]["embeddings_uri"].endswith("embeddings.parquet")
    from kg_ops.airflow.published import render_versions_page

    page = render_versions_page(versions)
    assert f"{metrics['mrr']:.4f}" in page and "embeddings.parquet" in page

    # A backfill of another date writes its own tree and leaves the first untouched. (Without
    # the attribute encoder, to keep the test short: the tree layout is what is checked.)
    dr2 = run_dag(dag, DAY2, {**small_conf, "encode_attributes": False})
    assert dr2.state == DagRunState.SUCCESS
    trees = sorted(p.name for p in (root / "kg_embedding_refresh").iterdir())
    assert trees == [DAY1.strftime("%Y%m%dT%H%M%SZ"), DAY2.strftime("%Y%m%dT%H%M%SZ")]
    assert read_manifest(str(tree(root, DAY2) / "evaluation")) is not None
    for stage in STAGES:
        assert read_manifest(str(tree(root, DAY1) / stage)) == manifests1[stage]

    # Re-running day 1 with unchanged inputs reuses every finished stage: no manifest is
    # rewritten (same creation time, same Ray job).
    dr1b = run_dag(dag, DAY1, small_conf)
    assert dr1b.state == DagRunState.SUCCESS
    for stage in STAGES:
        again = read_manifest(str(tree(root, DAY1) / stage))
        assert again["created_at"] == manifests1[stage]["created_at"], stage
        assert again["ray_job_id"] == manifests1[stage]["ray_job_id"], stage

    # Version history: one version per date, ordered by date. Day 1's re-run replaced its
    # version and, being older than day 2, went to the history asset only (not "current").
    versions = published_versions()
    assert [v["date"][:10] for v in versions[:2]] == ["2026-11-02", "2026-11-01"]
    assert [v["current"] for v in versions[:2]] == [True, False]
    assert versions[1]["run_id"] == dr1b.run_id


def test_quality_gate_blocks_publishing(airflow_db, ray_head, small_conf):
    """An impossible MRR floor fails the run at the gate and publishes nothing new. (Day 1's
    stages are reused when the backfill test ran first: the gate is not a stage config.)"""
    from airflow.utils.state import DagRunState

    from kg_ops.airflow.published import published_versions

    dag = load_dag()
    before = len(published_versions())
    dr = run_dag(dag, DAY1, {**small_conf, "min_mrr": 0.99})
    assert dr.state == DagRunState.FAILED
    states = {ti.task_id: ti.state for ti in dr.get_task_instances()}
    assert states["evaluate"] == "success"
    assert states["quality_gate"] == "failed"
    assert states["publish"] in ("upstream_failed", None)
    assert len(published_versions()) == before

"""The refresh DAG's warm start, end to end: real Airflow (``dag.test()``), real Ray jobs.

Day A publishes a version; day B (same graph, warm_start on) trains from day A's published
model with day A's encoders, visible in the train and encode manifests and on the versions
page; day C's graph has different edges (past the drift threshold), so it retrains from
scratch and says why."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from test_kg_embedding_refresh import forget_published_versions, load_dag, run_dag, tree

from kg_ops.airflow.runs import NOTHING_TO_WARM_START
from kg_ops.manifest import read_manifest

pytestmark = pytest.mark.slow
DAY_A = datetime(2026, 11, 20, tzinfo=UTC)
DAY_B = datetime(2026, 11, 21, tzinfo=UTC)
DAY_C = datetime(2026, 11, 22, tzinfo=UTC)


def test_second_run_warm_starts_and_drift_forces_full_retrain(airflow_db, ray_head,
                                                              tmp_path_factory):
    from airflow.utils.state import DagRunState

    from kg_ops.airflow.published import published_versions, render_versions_page

    root = Path(tmp_path_factory.mktemp("warm-artifacts"))
    conf = {"source": "synth", "synth_nodes": 400, "synth_edges": 2400, "workers": 1,
            "epochs": 2, "artifact_root": str(root), "min_mrr": 0.0, "max_mrr_drop": 1.0,
            "warm_start": True, "deploy": False}
    dag = load_dag()
    forget_published_versions()   # other tests (test_tune_dag.py: 11-25) publish later dates
    assert run_dag(dag, DAY_A, conf).state == DagRunState.SUCCESS
    first = published_versions()[0]
    assert first["model_uri"] == str(tree(root, DAY_A) / "model")
    assert first["warm_start"] == NOTHING_TO_WARM_START

    assert run_dag(dag, DAY_B, conf).state == DagRunState.SUCCESS
    ws = read_manifest(str(tree(root, DAY_B) / "model"))["warm_start"]
    assert ws["used"] and ws["from"] == first["model_uri"] and ws["chain"] == 1
    assert ws["entities"]["new"] == ws["entities"]["removed"] == 0
    enc = read_manifest(str(tree(root, DAY_B) / "features"))
    assert enc["inputs"]["encoders"]["uri"] == first["features_uri"]   # encoders reused
    second = published_versions()[0]
    assert second["warm_start"].startswith(f"from {first['model_uri']}")
    page = render_versions_page(published_versions())
    assert f"from {first['model_uri']}" in page

    changed = {**conf, "synth_edges": 3200}
    assert run_dag(dag, DAY_C, changed).state == DagRunState.SUCCESS
    ws = read_manifest(str(tree(root, DAY_C) / "model"))["warm_start"]
    assert not ws["used"] and "training edges changed" in ws["reason"]
    assert ws["from"] == second["model_uri"]
    assert published_versions()[0]["warm_start"].startswith("full retrain: ")

"""The refresh DAG's recipe search, end to end: real Airflow (``dag.test()``), real Ray jobs.

With ``tune`` on, the ``tune`` task runs ``kgops tune`` on the run's partitions and ``train``
trains with the best recipe it found; a later run with ``tune`` off and ``tuned_recipe``
naming that search trains with the same recipe (the train stage is reused unchanged). With
``tune`` off (the default) the task skips without a Ray job."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from test_kg_embedding_refresh import load_dag, run_dag, tree

from kg_ops.manifest import read_manifest

pytestmark = pytest.mark.slow
DAY = datetime(2026, 11, 25, tzinfo=UTC)


def test_tune_then_train_with_the_winner(airflow_db, ray_head, tmp_path_factory):
    from airflow.utils.state import DagRunState

    root = Path(tmp_path_factory.mktemp("tune-artifacts"))
    conf = {"source": "synth", "synth_nodes": 400, "synth_edges": 2400, "workers": 1,
            "epochs": 2, "encode_attributes": False, "artifact_root": str(root),
            "min_mrr": 0.0, "max_mrr_drop": 1.0, "deploy": False, "tune": True,
            "tune_trials": 2, "tune_budget_s": 900}
    dag = load_dag()
    assert dag.params["tune"] is False                     # off by default
    assert "partition_graph" in dag.get_task("tune").upstream_task_ids
    assert "tune" in dag.get_task("train").upstream_task_ids

    assert run_dag(dag, DAY, conf).state == DagRunState.SUCCESS
    tuned = str(tree(root, DAY) / "tune")
    search = read_manifest(tuned)
    assert search is not None and search["ray_job_id"]
    assert len(search["trials"]) == 2 and search["best"]["valid_mrr"] is not None
    model = read_manifest(str(tree(root, DAY) / "model"))
    assert model["inputs"]["tuned"]["uri"] == tuned
    recipe = search["best"]["config"]
    for name in ("lr", "batch_size", "embedding_dim", "dropout"):
        assert model["config"][name] == recipe[name], name

    # Nightly with the winner: tune off, the search named by tuned_recipe. Same recipe, same
    # inputs: the train stage is reused as it is.
    nightly = {**conf, "tune": False, "tuned_recipe": tuned}
    assert run_dag(dag, DAY, nightly).state == DagRunState.SUCCESS
    again = read_manifest(str(tree(root, DAY) / "model"))
    assert again["created_at"] == model["created_at"]
    assert read_manifest(tuned)["created_at"] == search["created_at"]

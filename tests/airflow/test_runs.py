"""The refresh DAG's run plan and quality gate (kg_ops.airflow.runs) as plain functions: the
context is the part of Airflow's task context they read (params, the dag run, inlet events),
built by hand; tests/dags/ runs them inside the real DAG. Version dating and the baseline
choice: tests/dags/test_versions.py."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from kg_ops.airflow.runs import (
    NOTHING_TO_WARM_START,
    STAGES,
    check_quality_gate,
    plan_run,
    run_key,
    warm_start_source,
)

WHEN = datetime(2026, 11, 1, 2, tzinfo=UTC)


def dag_run(run_id: str = "scheduled__2026-11-01", logical_date=WHEN):
    return SimpleNamespace(dag_id="kg_embedding_refresh", run_id=run_id,
                           logical_date=logical_date, run_after=WHEN)


def test_plan_puts_every_stage_under_the_run_key():
    plan = plan_run({"params": {"artifact_root": "s3://kg/runs/", "source": "codex-s"},
                     "dag_run": dag_run()})
    base = "s3://kg/runs/kg_embedding_refresh/20261101T020000Z"
    assert plan == {**{stage: f"{base}/{stage}" for stage in STAGES},
                    "run_key": "20261101T020000Z", "base": base, "deploy": f"{base}/deploy",
                    "tune": f"{base}/tune", "tuned": ""}


@pytest.mark.parametrize(("params", "tuned"), [
    ({"tune": True, "tuned_recipe": "s3://kg/old/tune"}, "/a/kg_embedding_refresh/"
                                                         "20261101T020000Z/tune"),
    ({"tune": False, "tuned_recipe": "s3://kg/old/tune"}, "s3://kg/old/tune"),
    ({"tune": False, "tuned_recipe": None}, ""),
])
def test_train_starts_from_this_runs_search_else_the_given_recipe(params, tuned):
    plan = plan_run({"params": {"artifact_root": "/a", **params}, "dag_run": dag_run()})
    assert plan["tuned"] == tuned


def test_runs_without_a_logical_date_are_keyed_by_a_path_safe_run_id():
    assert run_key(dag_run("manual run/#1", logical_date=None)) == "manual-run-1"
    long_id = "manual__" + "x" * 60
    key = run_key(dag_run(long_id, logical_date=None))
    assert len(key) == 40 and key.startswith("manual__xxx")
    assert key == run_key(dag_run(long_id, logical_date=None))              # stable
    assert key != run_key(dag_run(long_id + "y", logical_date=None))        # and distinct


def test_an_imported_graph_is_used_in_place():
    params = {"artifact_root": "/a", "source": "graph", "graph_uri": "s3://kg/graph"}
    plan = plan_run({"params": params, "dag_run": dag_run()})
    assert plan["graph"] == "s3://kg/graph"
    assert plan["model"] == "/a/kg_embedding_refresh/20261101T020000Z/model"
    with pytest.raises(ValueError, match="params.graph_uri is empty"):
        plan_run({"params": {**params, "graph_uri": ""}, "dag_run": dag_run()})


def released(mrr: float, date: str = "2026-10-31T02:00:00+00:00") -> SimpleNamespace:
    """A version published by an earlier run, as the embeddings asset's inlet event."""
    return SimpleNamespace(extra={"mrr": mrr, "logical_date": date, "run_id": "scheduled__old"},
                           timestamp=WHEN)


def gate(mrr: float | None, previous: float | None = None, min_mrr: float = 0.1,
         max_mrr_drop: float = 0.05, warm: dict | None = None) -> dict:
    context = {"params": {"min_mrr": min_mrr, "max_mrr_drop": max_mrr_drop, "model": "rgcn"},
               "dag_run": dag_run(),
               "inlet_events": {"emb": [released(previous)] if previous is not None else []}}
    result = {"metrics": {"mrr": mrr, "hits@10": 0.5, "auc": 0.9} if mrr is not None else {},
              "outputs": {"embeddings": "/e/embeddings.parquet", "report": "/e/report.html"}}
    plan = {"run_key": "20261101T020000Z", "graph": "/g", "model": "/m", "features": "/f",
            "evaluation": "/e"}
    return check_quality_gate(context, "emb", result, plan, warm)


def test_gate_passes_and_returns_the_version_record():
    record = gate(0.31, previous=0.33)
    assert record == {"mrr": 0.31, "hits@10": 0.5, "auc": 0.9, "model": "rgcn",
                      "run_key": "20261101T020000Z", "run_id": "scheduled__2026-11-01",
                      "logical_date": "2026-11-01T02:00:00+00:00", "graph_uri": "/g",
                      "model_uri": "/m", "features_uri": "/f", "warm_start": "off",
                      "evaluation_uri": "/e", "embeddings_uri": "/e/embeddings.parquet",
                      "report_uri": "/e/report.html", "previous_mrr": 0.33}
    assert "previous_mrr" not in gate(0.31)                 # a first release has no baseline


@pytest.mark.parametrize(("mrr", "previous", "message"), [
    (None, None, "the evaluate task returned no MRR"),
    (0.05, None, "filtered test MRR 0.0500 is below min_mrr 0.1000"),
    (0.25, 0.33, r"MRR 0.2500 is 0.0800 below the last published version \(0.3300, "
                 r"2026-10-31T02:00:00\+00:00\), more than max_mrr_drop 0.0500"),
])
def test_gate_fails_the_run_and_says_why(mrr, previous, message):
    from airflow.sdk.exceptions import AirflowFailException

    with pytest.raises(AirflowFailException, match=message):
        gate(mrr, previous=previous)


def test_a_drop_within_max_mrr_drop_passes():
    assert gate(0.29, previous=0.33)["mrr"] == 0.29        # 0.04 below, limit 0.05


def _artifact(path, **files) -> str:
    """A finished stage's directory as far as the warm start looks: its manifest and files."""
    import json

    path.mkdir(parents=True)
    (path / "_manifest.json").write_text(json.dumps({"stage": "x"}))
    for name, doc in files.items():
        (path / f"{name}.json").write_text(json.dumps(doc))
    return str(path)


def warm_context(tmp_path, warm_start=True, published=True) -> dict:
    event = SimpleNamespace(extra={"mrr": 0.3, "logical_date": "2026-10-31T02:00:00+00:00",
                                   "run_id": "scheduled__old",
                                   "model_uri": str(tmp_path / "model"),
                                   "features_uri": str(tmp_path / "features")},
                            timestamp=WHEN)
    return {"params": {"warm_start": warm_start}, "dag_run": dag_run(),
            "inlet_events": {"emb": [event] if published else []}}


def test_warm_start_source_plans_from_the_last_published_version(tmp_path):
    graph = _artifact(tmp_path / "graph")
    model = _artifact(tmp_path / "model", model_config={"graph": graph})
    features = _artifact(tmp_path / "features")
    assert warm_start_source(warm_context(tmp_path), "emb") == {
        "model_uri": model, "features_uri": features, "run_id": "scheduled__old", "reason": ""}


def test_warm_start_source_says_why_it_trains_from_scratch(tmp_path):
    empty = {"model_uri": "", "features_uri": "", "run_id": ""}
    assert warm_start_source(warm_context(tmp_path, warm_start=False), "emb") == {
        **empty, "reason": "off"}
    assert warm_start_source(warm_context(tmp_path, published=False), "emb") == {
        **empty, "reason": NOTHING_TO_WARM_START}
    # artifact retention removed the published model, then only its graph: retrain, never fail
    gone = warm_start_source(warm_context(tmp_path), "emb")
    assert gone["model_uri"] == "" and "model" in gone["reason"] and "is gone" in gone["reason"]
    _artifact(tmp_path / "model", model_config={"graph": str(tmp_path / "graph")})
    gone = warm_start_source(warm_context(tmp_path), "emb")
    assert gone["model_uri"] == "" and f"the graph {tmp_path / 'graph'}" in gone["reason"]
    # the version record carries the reason
    assert gate(0.3, warm=gone)["warm_start"] == gone["reason"]
    assert gate(0.3)["warm_start"] == "off"

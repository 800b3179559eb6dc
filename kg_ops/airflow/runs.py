"""Per-run planning and the evaluation gate of the refresh DAG.

Kept out of the DAG file so they can be unit-tested and reused in other teams' DAGs.
"""

from __future__ import annotations

import hashlib
import logging
import re
from datetime import UTC
from typing import Any

from kg_ops.store import join

log = logging.getLogger(__name__)

STAGES = ("graph", "features", "partitions", "model", "evaluation")
HEADLINE = ("mrr", "hits@1", "hits@3", "hits@10", "auc")


def run_key(dag_run: Any) -> str:
    """Short, stable, path-safe key of an Airflow run.

    Runs with a logical date (scheduled runs, backfills, dated manual runs) are keyed by that
    date, so a backfill of one day writes only that day's tree and re-running a day reuses its
    finished stages. Runs without a logical date are keyed by their run id.
    """
    logical = getattr(dag_run, "logical_date", None)
    if logical is not None:
        return logical.strftime("%Y%m%dT%H%M%SZ")
    run_id = str(dag_run.run_id)
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", run_id).strip("-")
    if len(safe) > 40:
        safe = safe[:31] + "-" + hashlib.sha1(run_id.encode()).hexdigest()[:8]
    return safe


def plan_run(context: dict) -> dict[str, str]:
    """This run's artifact URIs: ``{artifact_root}/{dag_id}/{run_key}/{stage}``."""
    params = context["params"]
    dag_run = context["dag_run"]
    key = run_key(dag_run)
    base = join(str(params["artifact_root"]), dag_run.dag_id, key)
    plan = {stage: join(base, stage) for stage in STAGES}
    if params.get("source") == "graph":
        if not params.get("graph_uri"):
            raise ValueError("params.source is 'graph' but params.graph_uri is empty: give the "
                             "URI of a graph imported with `kgops import`")
        plan["graph"] = str(params["graph_uri"])
    plan["run_key"] = key
    plan["base"] = base
    plan["deploy"] = join(base, "deploy")     # the serving deployment's record (not a stage)
    plan["tune"] = join(base, "tune")         # the recipe search, when params.tune is on
    # the recipe train starts from: this run's search, else a given earlier one, else none
    plan["tuned"] = plan["tune"] if params.get("tune") else str(params.get("tuned_recipe") or "")
    return plan


def version_date(dag_run: Any) -> str:
    """The date a run's embeddings are a version *of*: its logical date (a backfill of 11-01
    is the 11-01 version, whenever it ran), else when it was due to run."""
    when = getattr(dag_run, "logical_date", None) or getattr(dag_run, "run_after", None)
    return when.astimezone(UTC).isoformat(timespec="seconds") if when is not None else ""


def _event_date(event: Any) -> str:
    """Version date of a published event (events published before it was recorded: when)."""
    extra = dict(getattr(event, "extra", None) or {})
    if extra.get("logical_date"):
        return str(extra["logical_date"])
    ts = getattr(event, "timestamp", None)
    return ts.astimezone(UTC).isoformat(timespec="seconds") if ts is not None else ""


def _events(inlet_events: Any, asset: Any) -> list:
    try:
        return list(inlet_events[asset])
    except LookupError:
        return []


def _previous_release(inlet_events: Any, asset: Any, run_id: str, date: str) -> dict | None:
    """The baseline of the gate: the newest *current* version dated before this run's date.
    Past dates published by backfills are not on this asset, so they never become a newer
    date's baseline; a re-run of a date never compares with itself."""
    best, best_date = None, ""
    for event in _events(inlet_events, asset):
        extra = dict(getattr(event, "extra", None) or {})
        when = _event_date(event)
        if ("mrr" in extra and extra.get("run_id") != run_id and (not date or when < date)
                and when >= best_date):
            best, best_date = extra, when
    return best


def publish_version(context: dict, record: dict, current: Any, past: Any, alias: Any) -> dict:
    """Emit the version's asset event through ``alias``: on ``current`` (what downstream DAGs
    schedule on) when its date is not older than the newest current version, else on ``past``
    (history only: a backfilled past date is listed but never announced as new)."""
    dates = [_event_date(e) for e in _events(context.get("inlet_events", {}), current)]
    newest = max(dates, default="")
    is_current = record.get("logical_date", "") >= newest
    record = {**record, "current": is_current}
    context["outlet_events"][alias].add(current if is_current else past, extra=record)
    return record


NOTHING_TO_WARM_START = "from scratch: no earlier published version"


def warm_start_source(context: dict, asset: Any) -> dict[str, str]:
    """With ``params.warm_start``: the model and features of the last published version (the
    embeddings asset's newest event dated before this run, as the gate's baseline), for
    ``kgops train --init-from`` and ``kgops encode --encoders``. Empty URIs (train from
    scratch, fit new encoders) when it is off, nothing was published yet, or that version's
    model or graph is gone (artifact retention): a nightly run then retrains instead of
    failing. ``reason`` says why ("" when a warm start is planned; the train stage's drift
    guard may still decide against it). Features only if that run encoded attributes."""
    from kg_ops.manifest import read_manifest

    none = {"model_uri": "", "features_uri": "", "run_id": ""}
    if not context["params"].get("warm_start"):
        return {**none, "reason": "off"}
    previous = _previous_release(context.get("inlet_events", {}), asset,
                                 context["dag_run"].run_id, version_date(context["dag_run"]))
    if previous is None or not previous.get("model_uri"):
        return {**none, "reason": NOTHING_TO_WARM_START}
    gone = _gone(previous["model_uri"])
    if gone:
        log.warning("warm start: %s; training from scratch", gone)
        return {**none, "reason": f"from scratch: {gone}"}
    features = previous.get("features_uri") or ""
    if features and read_manifest(features) is None:
        features = ""
    return {"model_uri": previous["model_uri"], "features_uri": features,
            "run_id": previous.get("run_id", ""), "reason": ""}


def _gone(model_uri: str) -> str:
    """What of a published model a warm start needs is missing ("" when nothing): its train
    manifest and the graph it was trained on (entities are matched against it)."""
    from kg_ops.manifest import read_manifest
    from kg_ops.store import get_store

    if read_manifest(model_uri) is None:
        return f"the last published version's model {model_uri} is gone"
    graph = get_store(model_uri).read_json(join(model_uri, "model_config.json")).get("graph")
    if not graph or read_manifest(graph) is None:
        return f"the graph {graph} of the last published version's model {model_uri} is gone"
    return ""


def _warm_start_summary(model_uri: str | None, planned: str) -> str:
    """What the train stage's drift guard decided, else why no warm start was planned
    (:func:`warm_start_source`'s ``reason``), for the version record."""
    from kg_ops.manifest import read_manifest

    ws = (read_manifest(model_uri) or {}).get("warm_start") if model_uri else None
    if not ws:
        return planned or "off"
    if ws.get("used"):
        return f"from {ws['from']} (chain {ws.get('chain')})"
    return f"full retrain: {ws.get('reason')}"


def check_quality_gate(context: dict, asset: Any, result: dict | None,
                       plan: dict | None, warm: dict | None = None) -> dict[str, Any]:
    """Fail the run (``AirflowFailException``: no retry) when the new embeddings are not good
    enough; otherwise return the version record that publish attaches to the asset event.
    ``result``: the evaluate task's result; ``plan``: :func:`plan_run`'s; ``warm``:
    :func:`warm_start_source`'s."""
    from airflow.sdk.exceptions import AirflowFailException

    params = context["params"]
    result, plan = result or {}, plan or {}
    metrics = result.get("metrics") or {}
    if "mrr" not in metrics:
        raise AirflowFailException(
            f"quality gate: the evaluate task returned no MRR (result: {result!r}); "
            "check the evaluate task log")
    mrr = float(metrics["mrr"])
    outputs = result.get("outputs") or {}
    record = {
        **{k: float(metrics[k]) for k in HEADLINE if k in metrics},
        "model": params.get("model"),
        "run_key": plan.get("run_key"),
        "run_id": context["dag_run"].run_id,
        "logical_date": version_date(context["dag_run"]),
        "graph_uri": plan.get("graph"),
        "model_uri": plan.get("model"),
        "features_uri": plan.get("features"),
        "warm_start": _warm_start_summary(plan.get("model"), (warm or {}).get("reason", "")),
        "evaluation_uri": plan.get("evaluation"),
        "embeddings_uri": outputs.get("embeddings"),
        "report_uri": outputs.get("report"),
    }
    floor = float(params.get("min_mrr", 0.0))
    if mrr < floor:
        raise AirflowFailException(
            f"quality gate: filtered test MRR {mrr:.4f} is below min_mrr {floor:.4f}; the "
            f"embeddings were not published. Report: {record['report_uri']}")
    previous = _previous_release(context.get("inlet_events", {}), asset,
                                 context["dag_run"].run_id, record["logical_date"])
    if previous is not None:
        record["previous_mrr"] = float(previous["mrr"])
        drop = float(previous["mrr"]) - mrr
        max_drop = float(params.get("max_mrr_drop", 1.0))
        if drop > max_drop:
            raise AirflowFailException(
                f"quality gate: MRR {mrr:.4f} is {drop:.4f} below the last published version "
                f"({previous['mrr']:.4f}, {previous.get('logical_date') or previous.get('run_id')}"
                f"), more than max_mrr_drop "
                f"{max_drop:.4f}; not published. Report: {record['report_uri']}")
    return record

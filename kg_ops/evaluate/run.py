"""The evaluate stage: embed every entity, rank, score AUC, write report + artifacts + manifest.

Outputs under ``out``: ``metrics.json`` (headline metrics, protocol, per-relation rows),
``per_relation.parquet``, ``embeddings.parquet``, ``report.html`` with its PNGs, and
``_manifest.json`` last.
"""

from __future__ import annotations

import logging
import math
import sys
from typing import Any

import numpy as np

from kg_ops.config import EvaluateConfig
from kg_ops.errors import KGOpsError
from kg_ops.evaluate.auc import evaluate_auc, negatives_policy, roc_auc
from kg_ops.evaluate.filters import FilterIndex
from kg_ops.evaluate.ranking import (
    COLD_DEGREE,
    KS,
    TIE_POLICY,
    candidate_ranges,
    cold_metrics,
    overall_metrics,
    per_relation_metrics,
    rank_queries,
)
from kg_ops.graph.kg import load_edges, load_schema, table_to_edges
from kg_ops.graph.schema import SPLITS
from kg_ops.manifest import Stage, require_manifest
from kg_ops.store import get_store, join, normalize

log = logging.getLogger(__name__)

MANIFEST_METRICS = ("mrr", "hits@1", "hits@3", "hits@10", "auc", "mean_rank", "mrr_tail",
                    "mrr_head", "mrr_optimistic", "mrr_pessimistic", "tc_mrr", "tc_hits@1",
                    "tc_hits@3", "tc_hits@10", "auc_hard_negatives", "cold_mrr",
                    "cold_hits@1", "cold_hits@10", "cold_queries")


_OPTION_NAMES = {"model_uri": "model", "graph_uri": "graph"}


def pair_scorer(trained, emb):
    """``(B, 3)`` id triples -> scores, through the model's own ``score`` on embeddings."""
    import torch

    def score(trip: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(trip))
        with torch.inference_mode():
            return trained.score(emb[t[:, 0]], t[:, 1], emb[t[:, 2]]).float().numpy()
    return score


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    return obj


def _hard_negatives_auc(graph_uri: str, split: str, score, positives: np.ndarray,
                        ) -> dict | None:
    """ROC-AUC against the dataset's own negatives (CoDEx ships hard negatives for valid/test,
    imported to ``negatives/<split>.parquet``); None when the graph has none."""
    uri = join(graph_uri, "negatives", f"{split}.parquet")
    store = get_store(uri)
    if not store.exists(uri):
        return None
    neg = table_to_edges(store.read_parquet(uri))
    return {"auc": roc_auc(score(positives), score(neg)),
            "policy": f"ROC-AUC of the evaluated positives vs the dataset's {len(neg)} shipped "
                      f"negatives ({uri})"}


def _neighbourhoods(trained) -> str:
    """How the embeddings aggregated neighbours (models other than ours: not recorded)."""
    nb = trained.neighbourhoods() if hasattr(trained, "neighbourhoods") else None
    if nb is None:
        return "as the model computes them"
    if nb["fanouts"] is None:
        return "exact: every neighbour in the training edges"
    return (f"sampled as in training: fanouts {nb['fanouts']}, sampling seed {nb['seed']} "
            "(the model never saw other neighbourhoods)")


def evaluate_model(trained: Any, config: EvaluateConfig | None = None, *, force: bool = False,
                   **options: Any) -> dict:
    """Evaluate ``trained`` (anything with ``embed_all``, ``score_tails``, ``score_heads``,
    ``score`` and ``history``) on ``config.graph``'s ``config.split``; returns the manifest.
    Without ``config``, ``options`` are its options by name (``model_uri`` and ``graph_uri``
    for ``model`` and ``graph``, as the benchmarks call it)."""
    if config is None:
        config = EvaluateConfig(**{_OPTION_NAMES.get(k, k): v for k, v in options.items()})
    elif options:
        raise TypeError(f"evaluate_model: config and options {sorted(options)}; give one")
    require_manifest(config.graph, "import")  # a clearer message than the fingerprint's
    recorded = {"split": config.split, "max_queries": config.max_queries, "seed": config.seed,
                "auc_negatives_per_positive": config.auc_negatives, "ks": list(KS)}
    with Stage("evaluate", config.out, config=recorded,
               inputs={"model": config.model, "graph": config.graph}, force=force) as st:
        if st.reused:
            return st.manifest
        schema = load_schema(config.graph)
        _warn_if_another_graph(trained, config.graph)
        edges, filters, triples = _queries(st, config, schema)
        with st.phase("embed"):
            emb = trained.embed_all(batch_size=config.embed_batch_size)
        if tuple(emb.shape)[:1] != (schema.num_nodes,):
            raise KGOpsError(f"{config.model}: the model embeds {emb.shape[0]} entities but "
                             f"{config.graph} has {schema.num_nodes}; evaluate against the "
                             "graph the model was trained on")
        metrics, per_rel, auc, hard = _score(st, trained, emb, edges, triples, filters, schema,
                                             config)
        protocol = _protocol(config, trained, schema, edges, filters, triples, auc, hard)
        _write(st, config, trained, schema, emb, metrics, protocol, per_rel)
        st.metrics.update({k: metrics[k] for k in MANIFEST_METRICS if k in metrics})
        st.counts.update({"queries": metrics["queries"], "triples": int(len(triples)),
                          "entities": schema.num_nodes, "relations": schema.num_relations,
                          "auc_negatives": auc.negatives})
        st.extra["protocol"] = protocol
        st.extra["per_relation"] = per_rel
    print_table(st.manifest)
    return st.manifest


def _trained_on(trained: Any) -> str | None:
    """The graph the model says it was trained on (models other than ours: None)."""
    return (getattr(trained, "config", None) or {}).get("graph")


def _warn_if_another_graph(trained: Any, graph_uri: str) -> None:
    trained_on = _trained_on(trained)
    if trained_on and normalize(trained_on) != normalize(graph_uri):
        log.warning("the model was trained on %s but is evaluated on %s; the numbers only mean "
                    "something if that is a copy of the same graph", trained_on, graph_uri)


def _queries(st, config: EvaluateConfig, schema):
    """Every split's edges, the filter index over all of them, and the triples to rank."""
    with st.phase("filters"):
        edges = {s: load_edges(config.graph, s) for s in SPLITS}
        filters = FilterIndex(np.concatenate([edges[s] for s in SPLITS]), schema.num_nodes,
                              schema.num_relations)
    triples = edges[config.split]
    if not len(triples):
        raise KGOpsError(f"{config.graph}: the '{config.split}' split has no edges to evaluate")
    if config.max_queries and config.max_queries < len(triples):
        pick = np.sort(np.random.default_rng(config.seed).choice(
            len(triples), config.max_queries, replace=False))
        triples = triples[pick]
    return edges, filters, triples


def _score(st, trained, emb, edges: dict, triples: np.ndarray, filters, schema,
           config: EvaluateConfig):
    """Filtered ranking metrics (overall, cold entities, per relation) and ROC-AUC."""
    typed = len(schema.node_types) > 1
    ranges = candidate_ranges(schema)
    with st.phase("rank"):
        res = rank_queries(emb, trained, triples, filters, ranges=ranges if typed else None,
                           batch_size=config.batch_size, memory_mib=config.memory_mib)
    metrics = overall_metrics(res) | cold_metrics(res, triples, edges["train"],
                                                  schema.num_nodes)
    per_rel = per_relation_metrics(res, [r.name for r in schema.relations],
                                   labels=[r.label for r in schema.relations])
    with st.phase("auc"):
        auc = evaluate_auc(pair_scorer(trained, emb), triples, filters, ranges,
                           schema.num_relations, k=config.auc_negatives, seed=config.seed)
    metrics["auc"] = auc.auc
    hard = _hard_negatives_auc(config.graph, config.split, pair_scorer(trained, emb), triples)
    if hard is not None:
        metrics["auc_hard_negatives"] = hard["auc"]
    for row in per_rel:
        row["auc"] = float(auc.per_relation[row["relation_id"]])
    # Undefined numbers (a relation without test triples) are null, not NaN: strict JSON.
    return _nan_to_none(metrics), _nan_to_none(per_rel), auc, hard


def _protocol(config: EvaluateConfig, trained, schema, edges: dict, filters,
              triples: np.ndarray, auc, hard: dict | None) -> dict:
    """Everything needed to reproduce the numbers."""
    split, seed, typed = config.split, config.seed, len(schema.node_types) > 1
    protocol = {
        "split": split,
        "model_trained_on": _trained_on(trained),
        "queries": "both directions of every triple: tail (h, r, ?) and head (?, r, t)",
        "triples_evaluated": int(len(triples)),
        "subsample": (f"{len(triples)} of {len(edges[split])} triples, seeded (seed {seed})"
                      if len(triples) < len(edges[split]) else "none"),
        "candidates": f"all {schema.num_nodes} entities",
        "neighbourhoods": _neighbourhoods(trained),
        "filter": "known true triples of train+valid+test removed from the candidates "
                  "(the query's own answer is kept)",
        "filter_triples": {s: int(len(edges[s])) for s in SPLITS}
        | {"unique": filters.num_triples},
        "ties": TIE_POLICY,
        "hits_at": list(KS),
        "cold": f"cold_* metrics: the triples whose head or tail has at most {COLD_DEGREE} "
                "training edges, both directions",
        "type_constrained": ("tc_* metrics rank among entities of the node type the relation "
                             "expects on the query side" if typed else
                             "not computed: the graph has one node type"),
        "auc_negatives": negatives_policy(config.auc_negatives, seed, 50)
        | {"positives": auc.positives, "negatives": auc.negatives, "dropped": auc.dropped},
    }
    if hard is not None:
        protocol["auc_hard_negatives"] = hard["policy"]
    inductive = (getattr(trained, "config", None) or {}).get("inductive")
    if inductive:
        protocol["inductive"] = inductive | {
            "embeddings": "entities matched by key to the model's graph; new ones embedded "
                          "from their attributes and neighbours (kgops embed)"}
    return protocol


def _write(st, config: EvaluateConfig, trained, schema, emb, metrics: dict, protocol: dict,
           per_rel: list[dict]) -> None:
    """metrics.json, per_relation.parquet, embeddings.parquet and the HTML report."""
    import pyarrow as pa

    from kg_ops.evaluate.export import export_embeddings
    from kg_ops.evaluate.report import write_report

    with st.phase("write"):
        st.outputs["metrics"] = st.uri("metrics.json")
        st.store.write_json(st.outputs["metrics"], {"metrics": metrics, "protocol": protocol,
                                                     "per_relation": per_rel})
        st.outputs["per_relation"] = st.uri("per_relation.parquet")
        st.store.write_parquet(st.outputs["per_relation"], pa.Table.from_pylist(per_rel))
        st.outputs["embeddings"] = st.uri("embeddings.parquet")
        export_embeddings(st.outputs["embeddings"], config.graph, schema,
                          emb.detach().cpu().numpy())
        context = {"model": config.model, "graph": f"{config.graph} ({schema.name})",
                   "split": config.split, "entities": schema.num_nodes,
                   "relations": schema.num_relations}
        st.outputs.update(write_report(config.out, metrics=metrics, protocol=protocol,
                                       per_relation=per_rel,
                                       history=list(getattr(trained, "history", []) or []),
                                       context=context,
                                       model_config=getattr(trained, "config", None)))


def _num(v: float | None, digits: int) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def print_table(manifest: dict, file=None, max_relations: int = 60) -> None:
    """Headline metrics, then per-relation rows (worst first when there are many)."""
    file = file or sys.stdout
    m = manifest["metrics"]
    print(f"\nevaluation of {manifest['inputs']['model']['uri']} on "
          f"{manifest['config']['split']} ({manifest['counts']['queries']} queries)", file=file)
    for k in MANIFEST_METRICS:
        if k in m:
            print(f"  {k:<18} {_num(m[k], 4)}", file=file)
    rows = [r for r in manifest.get("per_relation", []) if r["queries"]]
    if not rows:
        return
    shown = sorted(rows, key=lambda r: r["mrr"])[:max_relations]  # rows with queries have an MRR
    title = "per relation" + (f" (worst {max_relations} of {len(rows)})"
                              if len(rows) > max_relations else "")
    print(f"\n{title}:\n  {'relation':<40} {'n':>6} {'mrr':>7} {'h@1':>6} {'h@10':>6} "
          f"{'auc':>6}", file=file)
    for r in shown:
        name = f"{r['relation']} {r['label']}".strip()
        print(f"  {name[:40]:<40} {r['queries']:>6} {_num(r['mrr'], 4):>7} "
              f"{_num(r['hits@1'], 3):>6} {_num(r['hits@10'], 3):>6} {_num(r['auc'], 3):>6}",
              file=file)
    print(f"\nreport: {manifest['outputs'].get('report')}", file=file)

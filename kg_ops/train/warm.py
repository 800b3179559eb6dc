"""Warm start: begin training from an earlier graph version's model, mapped by entity key.

``kgops train --init-from MODEL`` copies every parameter of ``MODEL`` and re-indexes its entity
table to this graph by key (:func:`kg_ops.models.inductive.remap_state`: kept entities keep
their rows, new ones start at their node type's mean row, removed ones are dropped). On request
(``--warm-fold-in-steps``) the new entities' rows are then fitted to their edges, everything
else frozen, as ``kgops embed`` does (:mod:`kg_ops.models.fold_in`); off by default: measured on
the Debian graph, training starts as well from the mean rows (see ``bench_warm_start``). The
optimiser's state comes along from ``MODEL``'s best-epoch checkpoint, its entity rows re-indexed
the same way (new entities start with none): Adagrad's accumulated squares are what keep the
steps of a trained table small, and fresh ones would move every row by ~lr (0.1, a third of a
trained coordinate) in the first steps, undoing the warm start. The learning rates are this
run's. Everything else (epochs, early stopping, validation) is as from scratch.

The drift guard falls back to training from scratch (recorded, with the reason, in the
manifest's ``warm_start``) when a warm start would not be worth it or not be sound:

* the entity set changed by more than ``max_drift`` ((new + removed) / old entities), or the
  training edges did ((added + removed) / old edges);
* the model has been warm-started ``retrain_every - 1`` times in a row (``chain``): a periodic
  full retrain bounds how far a chain of warm starts can drift from what training from scratch
  would give;
* the model options differ from ``MODEL``'s, or the features were not encoded with the
  encoders of ``MODEL``'s run (``kgops encode --encoders``): the weights would not fit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from kg_ops.config import TrainConfig
from kg_ops.config.fold_in import FoldIn
from kg_ops.errors import KGOpsError

log = logging.getLogger(__name__)

# The drift guard's defaults live with the other training options (kg_ops.config).
DEFAULT_MAX_DRIFT = TrainConfig.option("max_drift").default
DEFAULT_RETRAIN_EVERY = TrainConfig.option("retrain_every").default


@dataclass
class WarmStart:
    """The guard's decision: ``state`` (re-indexed weights) is None when training starts from
    scratch; ``optimizer`` is the re-indexed optimiser state (None: the optimiser starts
    fresh); ``info`` goes to the manifest; ``entity_map`` is the mapping's table."""

    info: dict[str, Any]
    state: dict | None = None
    entity_map: Any = None
    optimizer: dict | None = None


def _optimizer_state(init_from: str, previous: dict, mapping, optimizer: str | None
                     ) -> tuple[dict | None, str]:
    """The optimiser state of ``init_from``'s best epoch with its entity rows re-indexed by
    ``mapping`` (new entities: zeros, as a fresh optimiser has), and where it came from; or
    None and why not."""
    import torch

    from kg_ops.train.checkpoints import CheckpointError, checkpoint_uri, load_torch

    best = (previous.get("metrics") or {}).get("best_epoch")
    if best is None:
        return None, "fresh: the previous run recorded no best epoch"
    uri = checkpoint_uri(init_from, int(best))
    try:
        state = load_torch(uri, what="checkpoint")["optimizer"]
    except (CheckpointError, KeyError) as exc:
        return None, f"fresh: no optimiser state in {uri} ({exc})"
    if state.get("name") != optimizer or "parts" not in state:
        return None, (f"fresh: the previous run used --optimizer {state.get('name')}, this "
                      f"run {optimizer}")
    kept = torch.from_numpy((~mapping.is_new).nonzero()[0])
    old_rows = torch.from_numpy(mapping.new_to_old[kept.numpy()])
    for per_param in state["parts"].get("table", {}).get("state", {}).values():
        for key, value in per_param.items():
            if torch.is_tensor(value) and value.dim() == 2 \
                    and value.shape[0] == mapping.old_num_nodes:
                rows = value.new_zeros(mapping.new_num_nodes, value.shape[1])
                rows[kept] = value[old_rows]
                per_param[key] = rows
    return state, uri


def _model_difference(old: dict, new: dict) -> list[str]:
    from kg_ops.models.link_predictor import ModelConfig

    a = ModelConfig.from_dict(old).to_dict()
    b = new
    return sorted(f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in set(a) | set(b)
                  if k != "num_nodes" and a.get(k) != b.get(k))


def _encoders_sha(features_uri: str | None) -> str | None:
    if not features_uri:
        return None
    from kg_ops.encode.features import read_index

    return read_index(features_uri).get("encoders_sha256")


def plan_warm_start(init_from: str, graph_uri: str, model_config: dict,
                    features_uri: str | None, max_drift: float = DEFAULT_MAX_DRIFT,
                    retrain_every: int = DEFAULT_RETRAIN_EVERY,
                    optimizer: str | None = None,
                    fold: FoldIn = FoldIn(steps=0)) -> WarmStart:
    """Decide whether this run warm-starts from ``init_from`` (see the module docstring)."""
    from kg_ops.graph.kg import load_schema
    from kg_ops.graph.versions import edge_drift, match_graphs
    from kg_ops.manifest import require_manifest
    from kg_ops.models.inductive import NEW_ROW_INIT, InductiveModel
    from kg_ops.models.trained import load_trained
    from kg_ops.store import normalize

    if not max_drift >= 0 or retrain_every < 0:
        raise KGOpsError("--max-drift and --retrain-every must not be negative")
    init_from = normalize(init_from)
    previous = require_manifest(init_from, "train")
    trained = load_trained(init_from)
    old_graph = trained.config["graph"]
    mapping, table = match_graphs(old_graph, graph_uri)
    edges = edge_drift(old_graph, graph_uri, mapping)
    chain = int((previous.get("warm_start") or {}).get("chain", 0))
    info = {"from": init_from, "previous_graph": old_graph, "entities": mapping.counts(),
            "entity_change": round(mapping.changed_fraction(), 6), "edges": edges,
            "max_drift": max_drift, "retrain_every": retrain_every,
            "new_entity_initial_row": NEW_ROW_INIT}
    reasons = []
    if mapping.changed_fraction() > max_drift:
        reasons.append(f"entities changed by {mapping.changed_fraction():.1%} > {max_drift:.0%}")
    if edges["changed_fraction"] > max_drift:
        reasons.append(f"training edges changed by {edges['changed_fraction']:.1%} > "
                       f"{max_drift:.0%}")
    if retrain_every and chain + 1 >= retrain_every:
        reasons.append(f"{chain} warm starts in a row: full retrain every {retrain_every} runs")
    diff = _model_difference(trained.config, model_config)
    if diff:
        reasons.append(f"model options differ from the previous run's: {', '.join(diff)}")
    if _encoders_sha(features_uri) != _encoders_sha(trained.config.get("features")):
        reasons.append("the features were not encoded with the previous run's encoders (run "
                       f"`kgops encode --encoders {trained.config.get('features')}`)")
    if reasons:
        log.warning("warm start from %s not used, training from scratch: %s", init_from,
                    "; ".join(reasons))
        return WarmStart({**info, "used": False, "reason": "; ".join(reasons), "chain": 0},
                         entity_map=table)
    mapped = InductiveModel(trained, graph_uri, mapping, load_schema(old_graph),
                            load_schema(graph_uri), features_uri, fold)
    info["fold_in"] = mapped.fold_in() or {**fold.to_dict(), "steps": 0}
    state = mapped.model.state_dict()
    opt_state, opt_source = _optimizer_state(init_from, previous, mapping, optimizer)
    if opt_state is None:
        log.warning("warm start: optimiser state not carried over (%s)", opt_source)
    c = mapping.counts()
    log.info("warm start from %s: %d entities kept, %d new, %d removed; %d/%d/%d training "
             "edges kept/added/removed", init_from, c["kept"], c["new"], c["removed"],
             edges["kept"], edges["added"], edges["removed"])
    return WarmStart({**info, "used": True, "reason": None, "chain": chain + 1,
                      "optimizer_state": opt_source}, state, table, opt_state)

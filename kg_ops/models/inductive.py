"""A trained model applied to another version of its graph, without training.

Entities are matched to the model's graph by key (:mod:`kg_ops.graph.versions`). The model's
parameters are reused unchanged except the learned-embedding table, whose rows are re-indexed:

* a **kept** entity keeps its learned row;
* a **new** entity's row starts at ``NEW_ROW_INIT``: the mean learned row of its node type in
  the trained model (the mean of all rows for a node type the model never saw). The mean is the
  "typical entity" of that type: it has the scale of the rows the GNN was trained on and no
  information about any particular entity. A new entity with attributes adds its own encoded
  attributes to that row (``attribute_input`` ``add``, the default) or is embedded from them
  alone (``replace``), and then its neighbours' through the trained GNN;
* a **removed** entity's row is dropped.

By default (``kgops embed --fold-in-steps``) the new entities' rows are then fitted to the edges
they arrive with, everything else frozen (:mod:`kg_ops.models.fold_in`): the mean row is where
that fit starts.

Features of the new graph come from the encoders fitted for the model's run, never refitted:
``features_uri`` (an encode output made with ``kgops encode --encoders <the model's
features>``, checked by the encoders' sha256), else the model's own features when the graph is
the one they were encoded from, else the model's encoders applied in this process. The message
graph is the new graph's training edges cleaned exactly as the partition stage cleans them, and
neighbourhoods are sampled as in training (same fanouts and seed). On the model's own graph this
computes what ``kgops evaluate`` computes, bit for bit.
"""

from __future__ import annotations

import logging
from functools import cached_property
from typing import Any

import numpy as np
import torch

from kg_ops.config.fold_in import FoldIn
from kg_ops.errors import KGOpsError
from kg_ops.graph.schema import GraphSchema
from kg_ops.graph.versions import EntityMapping
from kg_ops.models.fold_in import fold_in
from kg_ops.sampling import CSRGraph

log = logging.getLogger(__name__)

NEW_ROW_INIT = "mean learned row of the entity's node type in the trained model"
EMBEDDING_KEY = "inputs.embedding.weight"


def remap_rows(weight: torch.Tensor, mapping: EntityMapping, old: GraphSchema,
               new: GraphSchema) -> torch.Tensor:
    """The learned-embedding table for the new graph's ids (see the module docstring)."""
    out = torch.empty(mapping.new_num_nodes, weight.shape[1], dtype=weight.dtype)
    old_types = {t.name: t for t in old.node_types}
    overall = weight.mean(0) if len(weight) else torch.zeros(weight.shape[1])
    for t in new.node_types:
        o = old_types.get(t.name)
        out[t.offset:t.offset + t.count] = (weight[o.offset:o.offset + o.count].mean(0)
                                            if o is not None and o.count else overall)
    kept = torch.from_numpy(np.flatnonzero(~mapping.is_new))
    out[kept] = weight[torch.from_numpy(mapping.new_to_old[kept.numpy()])]
    return out


def remap_state(state: dict[str, torch.Tensor], mapping: EntityMapping, old: GraphSchema,
                new: GraphSchema) -> dict[str, torch.Tensor]:
    """A copy of ``state`` whose entity table is re-indexed for the new graph."""
    out = dict(state)
    out[EMBEDDING_KEY] = remap_rows(state[EMBEDDING_KEY], mapping, old, new)
    return out


def model_for_graph(trained, mapping: EntityMapping, old: GraphSchema, new: GraphSchema):
    """A copy of ``trained.model`` for the new graph's entities (eval mode, no gradients)."""
    from kg_ops.models.link_predictor import LinkPredictor, ModelConfig

    cfg = ModelConfig.from_dict({**trained.model.cfg.to_dict(), "num_nodes": new.num_nodes})
    model = LinkPredictor(cfg)
    model.load_state_dict(remap_state(trained.model.state_dict(), mapping, old, new))
    model.eval()
    model.requires_grad_(False)
    return model


def message_edges(graph_uri: str, schema: GraphSchema) -> np.ndarray:
    """The graph's training edges as the partition stage keeps them (unique, none that is also
    a valid/test triple)."""
    from kg_ops.graph.kg import load_edges
    from kg_ops.partition.cli import training_edges

    held = np.concatenate([load_edges(graph_uri, s) for s in ("valid", "test")])
    edges, _ = training_edges(load_edges(graph_uri, "train"), held, schema.num_nodes,
                              schema.num_relations)
    return edges


def _encoders_sha(features_uri: str) -> str | None:
    from kg_ops.encode.features import read_index

    return read_index(features_uri).get("encoders_sha256")


def graph_features(trained, graph_uri: str, schema: GraphSchema,
                   features_uri: str | None = None):
    """NodeFeatures of the new graph from the model's encoders (see the module docstring), or
    None for a model trained without attributes."""
    from kg_ops.encode.features import FeatureBlock, load_feature_blocks, read_index
    from kg_ops.models.attributes import NodeFeatures
    from kg_ops.store import normalize

    model_features = trained.config.get("features")
    if not model_features:
        if features_uri:
            raise KGOpsError(f"--features {features_uri}: the model {trained.uri} was trained "
                             "without attributes")
        return None
    ids = np.arange(schema.num_nodes)
    if features_uri:
        if _encoders_sha(features_uri) != _encoders_sha(model_features):
            raise KGOpsError(f"--features {features_uri} was not encoded with the encoders of "
                             f"the model's run ({model_features}); run `kgops encode --encoders "
                             f"{model_features}` on the graph")
        blocks = load_feature_blocks(features_uri)
    elif normalize(read_index(model_features)["graph"]) == normalize(graph_uri):
        blocks = load_feature_blocks(model_features)
    else:
        blocks = [FeatureBlock(enc.node_type, enc.attribute, enc.kind, enc.dim, *vals)
                  for enc, vals in _encode_in_process(model_features, graph_uri, schema)]
    if any(len(b.node_ids) and b.node_ids.max() >= schema.num_nodes for b in blocks):
        raise KGOpsError(f"{features_uri}: features have node ids beyond {graph_uri}'s "
                         f"{schema.num_nodes} nodes; encode this graph")
    feats = NodeFeatures.from_blocks(blocks, ids, source=features_uri or model_features)
    trained.model.inputs.check(feats)
    return feats


def _encode_in_process(model_features: str, graph_uri: str, schema: GraphSchema):
    """The model run's fitted encoders applied to ``graph_uri`` here (no refit): one
    ``(encoder, (node_ids, values))`` per block the model was built for."""
    from kg_ops.encode.features import read_index
    from kg_ops.encode.fit import load_encoders
    from kg_ops.encode.transform import encode_in_process

    index = read_index(model_features)
    wanted = {(b["node_type"], b["attribute"]) for b in index["blocks"]}
    encoders, settings = load_encoders(model_features, index.get("encoders_sha256"))
    attrs = {(t.name, a.name): a.kind for t in schema.node_types for a in t.attributes}
    used = []
    for enc in encoders:
        if (enc.node_type, enc.attribute) not in wanted:
            continue
        if attrs.get((enc.node_type, enc.attribute)) != enc.kind:
            raise KGOpsError(f"{graph_uri} has no {enc.kind} attribute {enc.name}, which the "
                             f"model was trained on ({model_features}); it cannot be embedded "
                             "with this model")
        used.append(enc)
    log.info("embed: encoding %s's attributes with the model's %d fitted encoders", graph_uri,
             len(used))
    out = encode_in_process(graph_uri, schema, used, on_bad=settings.on_bad)
    empty = (np.empty(0, np.int64), None)
    return [(e, (out.get(e.name, empty)[0],
                 out[e.name][1] if e.name in out else np.empty((0, e.dim), np.float32)))
            for e in used]


class InductiveModel:
    """A trained model re-indexed for another graph version: the interface ``kgops evaluate``
    uses (``embed_all``, ``score*``, ``config``, ``history``, ``neighbourhoods``).

    ``fold``: the new entities' rows are fitted to their edges before embedding (see
    :mod:`kg_ops.models.fold_in`); ``None`` or 0 steps keeps :data:`NEW_ROW_INIT`."""

    def __init__(self, trained, graph_uri: str, mapping: EntityMapping, old: GraphSchema,
                 new: GraphSchema, features_uri: str | None = None,
                 fold: FoldIn | None = None):
        self.trained, self.graph_uri, self.mapping = trained, graph_uri, mapping
        self.schema = new
        self.model = model_for_graph(trained, mapping, old, new)
        self.features_uri = features_uri
        self.fold = fold if fold is not None and fold.steps > 0 else None
        self.fold_report: dict | None = None
        self.uri, self.history = trained.uri, trained.history
        self.config = {**trained.config, "num_nodes": new.num_nodes, "graph": graph_uri,
                       "inductive": {"trained_on": trained.config["graph"],
                                     "entities": mapping.counts(),
                                     "new_entity_initial_row": NEW_ROW_INIT,
                                     "fold_in": self.fold.to_dict() if self.fold else None}}
        self._embeddings: torch.Tensor | None = None

    def neighbourhoods(self) -> dict[str, Any]:
        return self.trained.neighbourhoods()

    def fold_in(self) -> dict | None:
        """Fit the new entities' rows (once; see :mod:`kg_ops.models.fold_in`); the report, or
        None without a fold-in."""
        if self.fold and self.fold_report is None:
            nb = self.neighbourhoods()
            edges, csr = self._message_graph
            self.fold_report = fold_in(
                self.model, csr, self._features, self.schema, self.mapping.is_new, edges,
                self.fold, fanouts=nb["fanouts"], seed=nb["seed"] or 0)
            self.config["inductive"]["fold_in"] = self.fold_report
        return self.fold_report

    def embed_all(self, batch_size: int = 65536) -> torch.Tensor:
        if self._embeddings is None:
            self.fold_in()
            nb = self.neighbourhoods()
            self._embeddings = self.model.encode_full(self._message_graph[1], self._features,
                                                      batch_size=batch_size,
                                                      fanouts=nb["fanouts"], seed=nb["seed"])
        return self._embeddings

    @cached_property
    def _message_graph(self) -> tuple[np.ndarray, CSRGraph]:
        """The new graph's training edges and their CSR (read once)."""
        edges = message_edges(self.graph_uri, self.schema)
        return edges, CSRGraph.from_edges(edges, self.schema.num_nodes,
                                          self.schema.num_relations,
                                          seed=self.neighbourhoods()["seed"] or 0)

    @cached_property
    def _features(self):
        return graph_features(self.trained, self.graph_uri, self.schema, self.features_uri)

    def score(self, h, rel, t):
        return self.model.decoder.score(h, rel, t)

    def score_tails(self, h, rel, cand):
        return self.model.decoder.score_tails(h, rel, cand)

    def score_heads(self, t, rel, cand):
        return self.model.decoder.score_heads(t, rel, cand)


def for_graph(trained, graph_uri: str, features_uri: str | None = None,
              fold: FoldIn | None = None):
    """``trained`` re-indexed for ``graph_uri`` (matched by key to the model's graph), and the
    mapping's table (``entity_map.parquet``). ``fold``: see :class:`InductiveModel`."""
    from kg_ops.graph.kg import load_schema
    from kg_ops.graph.versions import match_graphs

    old_uri = trained.config["graph"]
    mapping, table = match_graphs(old_uri, graph_uri)
    return InductiveModel(trained, graph_uri, mapping, load_schema(old_uri),
                          load_schema(graph_uri), features_uri, fold), table

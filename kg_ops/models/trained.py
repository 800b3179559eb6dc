"""Load a ``kgops train`` artifact for inference and evaluation.

``load_trained(uri)`` reads ``model_config.json``, ``history.json`` and ``model.pt`` (with
``torch.load(weights_only=True)``) and returns a :class:`TrainedModel`:

* ``embed_all(batch_size)`` -> ``[num_nodes, d]``: full-graph inference, every entity's
  embedding from its K-hop neighbourhood in the training edges, sampled exactly as training
  sampled it (see :meth:`TrainedModel.neighbourhoods`), layer by layer in chunks of target
  nodes;
* ``score_tails(h[B,d], rel[B], cand[N,d]) -> [B,N]``, ``score_heads(t[B,d], rel[B],
  cand[N,d]) -> [B,N]``, ``score(h[B,d], rel[B], t[B,d]) -> [B]``: the decoder.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from kg_ops.errors import KGOpsError
from kg_ops.models.link_predictor import LinkPredictor, ModelConfig
from kg_ops.store import get_store, join, normalize

log = logging.getLogger(__name__)


class TrainedModelError(KGOpsError):
    pass


class TrainedModel:
    def __init__(self, uri: str, config: dict[str, Any], history: list[dict],
                 model: LinkPredictor):
        self.uri, self.config, self.history, self.model = uri, config, history, model
        self._embeddings: torch.Tensor | None = None

    @property
    def num_nodes(self) -> int:
        return int(self.config["num_nodes"])

    def message_graph(self):
        """The training message graph: the training edges of the partitions the model was
        trained on (each owned by exactly one partition; duplicates and triples also in
        valid/test were removed by the partition stage). Without partitions (or if they are
        gone), the graph's unique train edges."""
        from kg_ops.graph.kg import load_edges
        from kg_ops.sampling import CSRGraph
        from kg_ops.store import get_store, join

        parts = self.config.get("partitions")
        if parts and get_store(parts).exists(join(parts, "_manifest.json")):
            from kg_ops.partition.io import load_partition, load_partitions_manifest

            count = int(load_partitions_manifest(parts)["outputs"]["parts"])
            edges = np.concatenate([load_partition(parts, p).global_core_edges()
                                    for p in range(count)])
        else:
            if parts:
                log.warning("%s: partitions %s are gone; using the graph's train edges as the "
                            "message graph", self.uri, parts)
            edges = np.unique(load_edges(self.config["graph"], "train"), axis=0)
        return CSRGraph.from_edges(edges, self.num_nodes, self.config["num_relations"],
                                   seed=self.neighbourhoods()["seed"] or 0)

    def features(self):
        from kg_ops.models.attributes import NodeFeatures

        uri = self.config.get("features")
        if not uri:
            feats = None
        else:
            from kg_ops.encode.features import load_feature_blocks

            feats = NodeFeatures.from_blocks(load_feature_blocks(uri),
                                             np.arange(self.num_nodes), source=uri)
        self.model.inputs.check(feats)
        return feats

    def neighbourhoods(self) -> dict[str, Any]:
        """How inference aggregates neighbours: the way the model was trained. A model trained
        on capped fanouts has only ever averaged over each node's sampled neighbours (the
        globally deterministic sample of :mod:`kg_ops.sampling`); averaging over every
        neighbour at inference shifts every mean it learned (CoDEx-S, RGCN: filtered
        validation MRR 0.28 exact vs 0.34 sampled, same weights). Models trained on exact
        neighbourhoods (fanouts -1), or before this was recorded, use every neighbour."""
        training = self.config.get("training") or {}
        fanouts, seed = training.get("fanouts"), training.get("sample_seed")
        if not fanouts or seed is None or all(int(f) < 0 for f in fanouts):
            return {"mode": "exact", "fanouts": None, "seed": None}
        return {"mode": "sampled as in training", "fanouts": [int(f) for f in fanouts],
                "seed": int(seed)}

    @torch.no_grad()
    def embed_all(self, batch_size: int = 65536) -> torch.Tensor:
        """Embeddings of every entity (cached after the first call), over the neighbourhoods
        of :meth:`neighbourhoods`."""
        if self._embeddings is None:
            self.model.eval()
            nb = self.neighbourhoods()
            self._embeddings = self.model.encode_full(self.message_graph(), self.features(),
                                                      batch_size=batch_size,
                                                      fanouts=nb["fanouts"], seed=nb["seed"])
        return self._embeddings

    def score(self, h: torch.Tensor, rel: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.model.decoder.score(h, rel, t)

    def score_tails(self, h: torch.Tensor, rel: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        return self.model.decoder.score_tails(h, rel, cand)

    def score_heads(self, t: torch.Tensor, rel: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        return self.model.decoder.score_heads(t, rel, cand)


def load_trained(model_uri: str) -> TrainedModel:
    """Load the training artifact at ``model_uri`` (see the module docstring)."""
    from kg_ops.manifest import require_manifest
    from kg_ops.train.checkpoints import load_torch

    uri = normalize(model_uri)
    require_manifest(uri, "train")
    store = get_store(uri)
    try:
        config = store.read_json(join(uri, "model_config.json"))
        history = store.read_json(join(uri, "history.json"))
    except FileNotFoundError as exc:
        raise TrainedModelError(f"{uri}: incomplete training artifact ({exc}); rerun "
                                "`kgops --force train`") from exc
    state = load_torch(join(uri, "model.pt"), what="model checkpoint")
    try:
        model = LinkPredictor(ModelConfig.from_dict(config))
    except (TypeError, ValueError) as exc:
        raise TrainedModelError(f"{uri}/model_config.json: not a valid model config ({exc})") \
            from exc
    if not isinstance(state, dict):
        raise TrainedModelError(f"{uri}/model.pt: expected a state_dict, found "
                                f"{type(state).__name__}")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise TrainedModelError(f"{uri}/model.pt does not match model_config.json "
                                f"({str(exc).splitlines()[0]} ...); the files come from "
                                "different runs. Retrain.") from exc
    model.eval()
    model.requires_grad_(False)
    return TrainedModel(uri, config, history, model)


def load_decoder(model_uri: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Only the decoder of the training artifact at ``model_uri`` (and its model config): what
    scoring precomputed embeddings needs. The encoder is never built, so a serving replica does
    not hold a second copy of an entity table it already has as embeddings."""
    from kg_ops.manifest import require_manifest
    from kg_ops.models.decoders import DECODERS
    from kg_ops.train.checkpoints import load_torch

    uri = normalize(model_uri)
    require_manifest(uri, "train")
    try:
        config = get_store(uri).read_json(join(uri, "model_config.json"))
    except FileNotFoundError as exc:
        raise TrainedModelError(f"{uri}: incomplete training artifact ({exc}); rerun "
                                "`kgops --force train`") from exc
    try:
        cfg = ModelConfig.from_dict(config)
    except (TypeError, ValueError) as exc:
        raise TrainedModelError(f"{uri}/model_config.json: not a valid model config ({exc})") \
            from exc
    state = load_torch(join(uri, "model.pt"), what="model checkpoint")
    if not isinstance(state, dict):
        raise TrainedModelError(f"{uri}/model.pt: expected a state_dict, found "
                                f"{type(state).__name__}")
    decoder = DECODERS[cfg.decoder](cfg.num_relations, cfg.out_dim, reciprocal=cfg.reciprocal)
    prefix = "decoder."
    try:
        decoder.load_state_dict({k[len(prefix):]: v for k, v in state.items()
                                 if k.startswith(prefix)})
    except RuntimeError as exc:
        raise TrainedModelError(f"{uri}/model.pt: its decoder does not match "
                                f"model_config.json ({str(exc).splitlines()[0]} ...)") from exc
    decoder.eval()
    decoder.requires_grad_(False)
    return decoder, config

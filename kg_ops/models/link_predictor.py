"""Encoder + decoder for link prediction, and the two ways of running the encoder.

* :meth:`LinkPredictor.encode_sampled` runs a K-layer encoder on a layer-wise sampled
  computation graph (:func:`kg_ops.sampling.sample_computation_graph`): training.
* :meth:`LinkPredictor.encode_full` runs it layer by layer over the whole message graph in
  chunks of target nodes, with every incoming message (exact neighbourhoods): inference.
  Memory is bounded by the chunk, not by the K-hop neighbourhood size.

Two losses, both plus an L2 penalty on the embeddings involved and the relation weights (as in
PyG's ``rgcn_link_pred`` recipe):

* ``bce`` (:meth:`LinkPredictor.loss`): binary cross-entropy over positive triples (label 1)
  and a few corrupted triples per positive (label 0): the published system's loss.
* ``softmax`` (:meth:`LinkPredictor.softmax_loss`): every positive ``(h, r, t)`` is ranked
  against a set of candidate entities shared by the whole batch, both ways (``(h, r, ?)`` and
  ``(?, r, t)``), with cross-entropy over ``[true, candidates]``: the "1-vs-all" objective
  that tuned KGE baselines use (Ruffinelli et al., ICLR 2020), restricted to the candidates
  so a batch costs one ``[B, M]`` product. It optimises ranking directly, which is what MRR
  measures, and sees hundreds of negatives per positive for the price of a few.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kg_ops.config.train import MODELS, SHALLOW_MODELS
from kg_ops.models.attributes import ATTRIBUTE_INPUTS, AttributeEmbedding, NodeFeatures
from kg_ops.models.decoders import DECODERS
from kg_ops.models.objective import candidate_cross_entropy, n3_penalty, table_cross_entropy


@dataclass
class ModelConfig:
    """Everything needed to rebuild the model's modules (saved as part of model_config.json)."""

    model: str
    num_nodes: int
    num_relations: int
    embedding_dim: int = 64
    hidden_dim: int = 64
    out_dim: int = 32
    num_layers: int = 2
    num_bases: int | None = 4
    num_blocks: int | None = None
    dropout: float = 0.2
    heads: int = 2
    rel_dim: int = 32
    decoder: str = "distmult"
    regularization: float = 0.01
    feature_dims: dict[str, int] = field(default_factory=dict)
    # How encoded attributes enter: added to the entity's learned row, or replacing it
    # (kg_ops.models.attributes). Configs saved before this field existed mean "replace".
    attribute_input: str = "add"
    # Add each node's input representation to the encoder's output (a skip connection around
    # the whole encoder): the decoder then sees the node's own embedding as well as its
    # neighbourhood's, as a shallow KGE model would. Needs embedding_dim == out_dim.
    residual: bool = False
    # With residual: scale the encoder's output by a learned scalar that starts at 0
    # (ReZero, Bachlechner et al. 2021), so training starts from the shallow model the
    # residual network contains and adds message passing as far as it helps.
    residual_gate: bool = False
    # Tuned-KGE techniques (see kg_ops.train.objective): a second vector per relation for
    # head queries; dropout on the entity embeddings the decoder scores and on relation
    # vectors; the N3 penalty (Lacroix et al. 2018) and label smoothing of the softmax loss.
    reciprocal: bool = False
    entity_dropout: float = 0.0
    relation_dropout: float = 0.0
    n3: float = 0.0
    label_smoothing: float = 0.0
    # Weight of the relation-prediction term (Chen et al., AKBC 2021): each positive's
    # relation ranked against every relation for its (head, tail) pair, both directions.
    relation_prediction: float = 0.0
    # Initial entity rows and relation vectors: uniform in [-init_scale, init_scale]; 0 keeps
    # Xavier-uniform (about +-0.05 for 256 dims over CoDEx-S). LibKGE's tuned CoDEx ComplEx
    # starts from uniform +-0.81. Configs saved before this field existed mean 0.
    init_scale: float = 0.0

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, not {self.model!r}")
        if self.shallow:
            self.decoder, self.num_layers, self.residual = self.model, 0, False
            self.residual_gate = False
            self.out_dim = self.embedding_dim
        if self.residual and self.embedding_dim != self.out_dim:
            raise ValueError(f"residual needs embedding_dim == out_dim, got "
                             f"{self.embedding_dim} and {self.out_dim}")
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {tuple(DECODERS)}, not {self.decoder!r}")
        if self.attribute_input not in ATTRIBUTE_INPUTS:
            raise ValueError(f"attribute_input must be one of {ATTRIBUTE_INPUTS}, "
                             f"not {self.attribute_input!r}")

    @property
    def shallow(self) -> bool:
        return self.model in SHALLOW_MODELS

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{"attribute_input": "replace", **{k: v for k, v in d.items() if k in names}})


def build_encoder(cfg: ModelConfig) -> nn.Module | None:
    if cfg.shallow:
        return None
    if cfg.model == "rgcn":
        from kg_ops.models.rgcn import RGCNEncoder

        return RGCNEncoder(cfg.embedding_dim, cfg.num_relations, cfg.hidden_dim, cfg.out_dim,
                           cfg.num_layers, cfg.num_bases, cfg.num_blocks, cfg.dropout)
    from kg_ops.models.relgnn import RelationAttentionGCN

    return RelationAttentionGCN(cfg.embedding_dim, cfg.num_relations, cfg.hidden_dim,
                                cfg.out_dim, cfg.num_layers, cfg.rel_dim, cfg.heads, cfg.dropout)


class LinkPredictor(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.inputs = AttributeEmbedding(cfg.num_nodes, cfg.embedding_dim, cfg.feature_dims,
                                         cfg.attribute_input)
        self.encoder = build_encoder(cfg)
        self.decoder = DECODERS[cfg.decoder](cfg.num_relations, cfg.out_dim,
                                             reciprocal=cfg.reciprocal,
                                             relation_dropout=cfg.relation_dropout)
        self.entity_drop = nn.Dropout(cfg.entity_dropout)
        self.gate = nn.Parameter(torch.zeros(1)) if cfg.residual and cfg.residual_gate else None
        if cfg.init_scale:
            nn.init.uniform_(self.inputs.embedding.weight, -cfg.init_scale, cfg.init_scale)
            nn.init.uniform_(self.decoder.rel, -cfg.init_scale, cfg.init_scale)

    # --- encoding ---------------------------------------------------------------------------
    def encode_sampled(self, cg, features: NodeFeatures | None = None,
                       layers: list | None = None) -> torch.Tensor:
        """Embeddings of ``cg.nodes[:cg.sizes[0]]`` (the seeds) from a sampled computation
        graph whose node ids index ``features``' id space. ``layers``: the graph's
        ``(edge_index, edge_type, n_src, n_dst)`` per GNN layer when already built (a
        prefetched :class:`kg_ops.train.batches.Batch`)."""
        n = cg.sizes[-1]
        x = self.inputs(torch.from_numpy(cg.nodes[:n]), torch.from_numpy(cg.global_nodes[:n]),
                        features)
        if self.encoder is None:
            return x[:cg.sizes[0]]
        if layers is None:
            layers = [(hop.edge_index, hop.edge_type, n_src, n_dst)
                      for hop, n_src, n_dst in cg.gnn_layers()]
        h = x
        for i, (edge_index, edge_type, n_src, n_dst) in enumerate(layers):
            h = self.encoder.layer(i, h[:n_src], h[:n_dst], edge_index, edge_type)
        return self.skip(h, x[:len(h)])

    @torch.no_grad()
    def encode_full(self, csr, features: NodeFeatures | None = None,
                    batch_size: int = 65536, fanouts: list[int] | None = None,
                    seed: int | None = None) -> torch.Tensor:
        """Embeddings of all ``csr.num_nodes`` nodes (whose ids are the features' id space),
        computed layer by layer in chunks of ``batch_size`` target nodes, over every message
        of ``csr`` or, with ``fanouts``, over the messages training's sampler gives each node
        at that layer (layer ``i`` of ``K`` uses ``fanouts[K-1-i]``, with ``seed``)."""
        from kg_ops.sampling import sample_messages

        n = csr.num_nodes
        chunks = [np.arange(a, min(a + batch_size, n), dtype=np.int64)
                  for a in range(0, n, batch_size)]
        x = torch.cat([self.inputs(torch.from_numpy(c), torch.from_numpy(csr.to_global(c)),
                                   features) for c in chunks]) if n else \
            torch.empty(0, self.cfg.embedding_dim)
        if self.encoder is None:
            return x
        h = x
        for i in range(self.encoder.num_layers):
            out = []
            for c in chunks:
                fanout = -1 if fanouts is None else int(fanouts[len(fanouts) - 1 - i])
                pos, seg = sample_messages(csr, c, fanout,
                                           csr.seed if seed is None else int(seed))
                edge_index = torch.from_numpy(np.stack([csr.src[pos], seg]))
                edge_type = torch.from_numpy(csr.rel[pos])
                out.append(self.encoder.layer(i, h, h[torch.from_numpy(c)], edge_index,
                                              edge_type))
            h = torch.cat(out) if out else torch.empty(0, self.cfg.out_dim)
        return self.skip(h, x)

    def skip(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The encoder output ``h`` of nodes whose inputs are ``x``, with the residual."""
        if not self.cfg.residual:
            return h
        return x + (h if self.gate is None else self.gate * h)

    # --- scoring and loss -------------------------------------------------------------------
    def score(self, h: torch.Tensor, rel: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.decoder.score(h, rel, t)

    def loss(self, z: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        """BCE over positive triples ``pos`` and negatives ``neg`` (``[B, 3]`` rows of
        ``z``-positions and relation ids) plus the L2 penalty."""
        z = self.entity_drop(z)
        trip = torch.cat([pos, neg])
        scores = self.decoder.score(z[trip[:, 0]], trip[:, 1], z[trip[:, 2]])
        labels = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))])
        bce = F.binary_cross_entropy_with_logits(scores, labels)
        return (bce + self.cfg.regularization * self._l2(z)
                + self.relation_loss(z[pos[:, 0]], pos[:, 1], z[pos[:, 2]]))

    def softmax_loss(self, z: torch.Tensor, pos: torch.Tensor, cand: torch.Tensor,
                     tail_ok: torch.Tensor, head_ok: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of each positive against shared candidates, both directions (the
        head query through the reciprocal relation when the decoder has one), plus the L2 and
        N3 penalties.

        ``pos``: ``[B, 3]`` rows of ``z``-positions and relation ids; ``cand``: ``[M]``
        ``z``-positions; ``tail_ok`` / ``head_ok``: ``[B, M]``, candidate ``j`` is a valid
        corruption of positive ``i``'s tail / head (the type the relation expects, and not the
        true entity itself)."""
        z = self.entity_drop(z)
        return self._candidate_loss(z, pos, z[cand], tail_ok, head_ok)

    def candidate_loss(self, z: torch.Tensor, pos: torch.Tensor, c: torch.Tensor,
                       tail_ok: torch.Tensor, head_ok: torch.Tensor) -> torch.Tensor:
        """:meth:`softmax_loss` with the candidates' embeddings ``c [M, d]`` given (they may
        come from other workers: :mod:`kg_ops.train.candidates`)."""
        return self._candidate_loss(self.entity_drop(z), pos, self.entity_drop(c), tail_ok,
                                    head_ok)

    def _candidate_loss(self, z: torch.Tensor, pos: torch.Tensor, c: torch.Tensor,
                        tail_ok: torch.Tensor, head_ok: torch.Tensor) -> torch.Tensor:
        h, rel, t = z[pos[:, 0]], pos[:, 1], z[pos[:, 2]]
        loss = 0.0
        for anchor, answer, ok, tail_side in ((h, t, tail_ok, True), (t, h, head_ok, False)):
            q = self.decoder.query(anchor, rel, tail_side)
            loss = loss + candidate_cross_entropy((q * answer).sum(-1), q @ c.t(), ok,
                                                  self.cfg.label_smoothing)
        return loss / 2 + self._penalties(z, h, rel, t) + self.relation_loss(h, rel, t)

    def table_loss(self, table: torch.Tensor, pos: torch.Tensor,
                   tail_ok: torch.Tensor | None = None,
                   head_ok: torch.Tensor | None = None) -> torch.Tensor:
        """1-vs-all against every row of ``table [N, d]`` (each entity once): the loss of
        :meth:`softmax_loss` with every entity a candidate. ``pos``: ``[B, 3]`` rows of the
        table and relation ids; ``tail_ok`` / ``head_ok``: ``[B, N]``, row ``j`` has the type
        positive ``i``'s relation expects at its tail / head (the answer included), ``None``
        when every row does. One entity dropout over the table, as :meth:`softmax_loss`
        drops the encoded batch once."""
        z = self.entity_drop(table)
        h, rel, t = z[pos[:, 0]], pos[:, 1], z[pos[:, 2]]
        loss = 0.0
        for anchor, answer, ok, tail_side in ((h, pos[:, 2], tail_ok, True),
                                              (t, pos[:, 0], head_ok, False)):
            q = self.decoder.query(anchor, rel, tail_side)
            loss = loss + table_cross_entropy(q @ z.t(), answer, ok, self.cfg.label_smoothing)
        return loss / 2 + self._penalties(z, h, rel, t) + self.relation_loss(h, rel, t)

    def _penalties(self, z: torch.Tensor, h: torch.Tensor, rel: torch.Tensor,
                   t: torch.Tensor) -> torch.Tensor | float:
        """The L2 penalty over the encoded ``z`` and the N3 penalty of the batch's triples."""
        out = 0.0
        if self.cfg.regularization:
            out = self.cfg.regularization * self._l2(z)
        if self.cfg.n3:
            out = out + self.cfg.n3 * self.n3(h, rel, t)
        return out

    def n3(self, h: torch.Tensor, rel: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """N3 over both queries of each triple: ``(h, r, t)`` and ``(t, r^-1, h)`` (``r``
        again without reciprocal relations), averaged over the 2B queries."""
        dec = self.decoder
        inv = rel + dec.num_relations if dec.reciprocal else rel
        return (n3_penalty(dec.magnitudes, h, dec.rel[rel], t)
                + n3_penalty(dec.magnitudes, t, dec.rel[inv], h)) / 2

    def relation_loss(self, h: torch.Tensor, rel: torch.Tensor,
                      t: torch.Tensor) -> torch.Tensor | float:
        """``relation_prediction`` times the cross-entropy of each triple's relation against
        every relation vector for its ``(h, t)`` pair (Chen et al., AKBC 2021); with
        reciprocal relations also of ``r^-1`` for ``(t, h)``, the two averaged as the entity
        queries are. Every relation is a candidate: there are tens to hundreds."""
        w = self.cfg.relation_prediction
        if not w or not len(rel):
            return 0.0
        dec = self.decoder
        loss = F.cross_entropy(dec.score_relations(h, t).float(), rel)
        if dec.reciprocal:
            inverse = F.cross_entropy(dec.score_relations(t, h).float(), rel + dec.num_relations)
            loss = (loss + inverse) / 2
        return w * loss

    def _l2(self, z: torch.Tensor) -> torch.Tensor:
        return z.pow(2).mean() + self.decoder.rel.pow(2).mean()

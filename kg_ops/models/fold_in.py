"""Fold-in: fit each new entity's learned row to the edges it arrives with, the model frozen.

A new entity starts at its type's mean learned row (:data:`kg_ops.models.inductive.
NEW_ROW_INIT`) and is embedded from that, its attributes and its neighbours through the trained
GNN. Measured on the Debian graph (``benchmarks/bench_warm_start.py --sections inductive``),
that alone ranks a held-out entity's edges far worse than a trained one's: the trained model
leans on the learned row, which a new entity lacks.

Fold-in (the name comes from matrix factorisation, where a new user's factors are fitted with
the item factors fixed) optimises **only the new entities' rows**, by the training objective
itself: the model's 1-vs-all cross-entropy of the graph's training edges, both directions,
against every entity of the type the relation expects, with the model's label smoothing and
N3/L2 penalties; dropout off. Every edge touching a new entity is in it; the other edges are
represented by a seeded sample (``context`` per new entity's edge, weighted to stand for all of
them). Without them a new entity's row only learns to answer its own edges' queries and grows
into a wrong answer for everyone else's: on the Debian split, 10 steps on the own edges alone
took the old entities' test MRR from 0.274 to 0.189. Every other parameter, and every kept entity's row,
stays as trained, so the kept entities' embeddings change only where a new neighbour sends
them messages. Each step is one full-batch Adagrad step (the gradient is accumulated over
chunks of edges so that a chunk's ``[edges, entities]`` score matrix stays small); candidates
are every entity's embedding recomputed at the start of the step, with the chunk's own entities
recomputed with gradients. After the last step the caller re-encodes every entity exactly.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from kg_ops.config.fold_in import FoldIn
from kg_ops.graph.schema import GraphSchema
from kg_ops.progress import Progress
from kg_ops.sampling import sample_computation_graph
from kg_ops.train.candidates import CandidateShards

log = logging.getLogger(__name__)

SCORE_CELLS = 1 << 24    # scores per chunk (edges x entities): 64 MiB of float32


def fold_in(model, csr, features, schema: GraphSchema, is_new: np.ndarray,
            edges: np.ndarray, settings: FoldIn, *, fanouts, seed: int) -> dict:
    """Fit the rows of ``model.inputs.embedding`` where ``is_new`` to the training ``edges``
    (see the module docstring) in place; returns what was done (for the manifest)."""
    new_rows = np.flatnonzero(is_new)
    own, context, weights = fold_in_edges(edges, is_new, settings.context, seed)
    report = {**settings.to_dict(), "entities": int(len(new_rows)), "edges": int(len(own)),
              "context_edges": int(len(context))}
    if settings.steps <= 0 or not len(new_rows) or not len(own):
        return report | {"steps": 0, "seconds": 0.0}
    weight = model.inputs.embedding.weight
    keep = torch.from_numpy(np.asarray(is_new, dtype=bool))
    both = np.concatenate([own, context])
    seeds = np.unique(both[:, [0, 2]])
    cg = sample_computation_graph(csr, seeds, fanouts, seed)   # the same every step
    queries = _Queries(schema, seeds, [(own, weights[0]), (context, weights[1])])
    was_training = model.training
    model.eval()
    weight.requires_grad_(True)
    opt = torch.optim.Adagrad([weight], lr=settings.lr)
    caps = (None if settings.norm_quantile is None
            else _norm_caps(weight, queries.node_type.numpy(), is_new, new_rows,
                            settings.norm_quantile))
    progress = Progress("embed/fold-in", total=settings.steps, unit="steps", logger=log)
    losses = []
    t0 = time.perf_counter()
    try:
        for _ in range(settings.steps):
            opt.zero_grad()
            losses.append(_step_gradient(model, csr, features, cg, queries, fanouts, seed))
            weight.grad = _only_rows(weight.grad, keep)     # only the new rows move
            opt.step()
            if caps is not None:
                _cap_norms(weight, new_rows, caps)
            progress.update(1, loss=losses[-1])
    finally:
        weight.requires_grad_(False)
        weight.grad = None
        model.train(was_training)
    progress.done(loss=losses[-1])
    return report | {"seconds": round(time.perf_counter() - t0, 2),
                     "loss_first": round(losses[0], 6), "loss_last": round(losses[-1], 6)}


def fold_in_edges(edges: np.ndarray, is_new: np.ndarray, context: float, seed: int
                  ) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """The new entities' own edges, a seeded sample of ``context`` other edges per own edge,
    and the per-edge weights of both: the objective is the mean loss over **all** ``edges``,
    the sample standing for the edges it was drawn from (each weighted by their number over
    the sample's)."""
    touching = is_new[edges[:, 0]] | is_new[edges[:, 2]]
    own, others = edges[touching], edges[~touching]
    k = min(len(others), int(round(context * len(own))))
    pick = np.sort(np.random.default_rng(seed).choice(len(others), k, replace=False))
    total = len(own) + (len(others) if k else 0)
    return own, others[pick], (1.0 / max(total, 1), len(others) / max(k, 1) / max(total, 1))


class _Queries:
    """The fold-in edges as rows of the seeds' embeddings, in chunks whose score matrix
    (``chunk`` edges x every entity) stays under :data:`SCORE_CELLS`; ``groups``: ``(edges,
    weight of each)``."""

    def __init__(self, schema: GraphSchema, seeds: np.ndarray,
                 groups: list[tuple[np.ndarray, float]]):
        self.seeds = torch.from_numpy(seeds)
        self.groups = [(e, w, torch.from_numpy(np.stack(
            [np.searchsorted(seeds, e[:, 0]), e[:, 1], np.searchsorted(seeds, e[:, 2])], 1)))
            for e, w in groups if len(e)]
        self.node_type = torch.from_numpy(schema.type_of(np.arange(schema.num_nodes)))
        head_type, tail_type = (torch.from_numpy(x) for x in schema.relation_head_tail_types())
        # training's candidate masks, over one "shard" holding every entity
        self.shards = CandidateShards(1, 0, schema.num_nodes, head_type, tail_type)
        self.chunk = max(1, SCORE_CELLS // max(schema.num_nodes, 1))

    def chunks(self):
        """``(weight, pos, tail_ok, head_ok)`` per chunk: ``weight`` times the chunk's mean
        loss is its share of the objective."""
        entity = torch.arange(len(self.node_type))
        for edges, w, positions in self.groups:
            for a in range(0, len(edges), self.chunk):
                pos, part = positions[a:a + self.chunk], edges[a:a + self.chunk]
                tail_ok, head_ok = self.shards.masks(
                    pos[:, 1], torch.from_numpy(part[:, 0]), torch.from_numpy(part[:, 2]),
                    entity, self.node_type)
                yield w * len(part), pos, tail_ok, head_ok


def _step_gradient(model, csr, features, cg, queries: _Queries, fanouts, seed: int) -> float:
    """Accumulate the gradient of the full-batch loss; returns the loss.

    Every entity is a candidate: its embedding recomputed now, without gradients, except the
    fold-in edges' own entities (``seeds``), encoded with gradients, so the loss reads a new
    entity's row both where it asks and where it answers. Each chunk's backward keeps the
    encoder's graph for the next chunk, so chunking does not change the gradient."""
    with torch.no_grad():
        everyone = model.encode_full(csr, features, fanouts=fanouts, seed=seed)
    z = model.encode_sampled(cg, features)                 # rows in ``seeds`` order
    cand = everyone.index_put((queries.seeds,), z)         # a copy: gradients flow through z
    total = 0.0
    for weight, pos, tail_ok, head_ok in queries.chunks():
        loss = model.candidate_loss(z, pos, cand, tail_ok, head_ok) * weight
        loss.backward(retain_graph=True)
        total += float(loss.detach())
    return total


def _norm_caps(weight: torch.Tensor, types: np.ndarray, is_new: np.ndarray,
               new_rows: np.ndarray, quantile: float) -> torch.Tensor:
    """Per new row, the ``quantile`` of the trained (kept) rows' norms of its node type
    (``types``: each entity's; of all kept rows for a type with none)."""
    norms = weight.detach().norm(dim=1)
    kept = torch.from_numpy(~np.asarray(is_new, dtype=bool))
    overall = torch.quantile(norms[kept], quantile) if kept.any() else norms.max()
    caps = torch.empty(len(new_rows))
    new_types = types[new_rows]
    for t in np.unique(new_types):
        mask = kept & torch.from_numpy(types == t)
        caps[torch.from_numpy(new_types == t)] = (torch.quantile(norms[mask], quantile)
                                                   if mask.any() else overall)
    return caps


@torch.no_grad()
def _cap_norms(weight: torch.Tensor, new_rows: np.ndarray, caps: torch.Tensor) -> None:
    idx = torch.from_numpy(new_rows)
    rows = weight[idx]
    scale = (caps / rows.norm(dim=1).clamp_min(1e-12)).clamp(max=1.0)
    weight[idx] = rows * scale[:, None]


def _only_rows(grad: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``grad`` with every row outside the boolean mask ``rows`` removed (the table's gradient
    is sparse: :class:`kg_ops.models.attributes.AttributeEmbedding`), so Adagrad touches no
    other row."""
    if not grad.is_sparse:
        return grad * rows[:, None]
    grad = grad.coalesce()
    sel = rows[grad.indices()[0]]
    return torch.sparse_coo_tensor(grad.indices()[:, sel], grad.values()[sel], grad.shape,
                                   is_coalesced=True)

"""What it costs to make node ``v`` a core node of partition ``q``: the halo edges it adds.

A cut edge makes one of its ends a core node of the other end's partition, and a core node
needs its whole sampled computation graph there. What that adds depends on what the
partition already stores: a node whose sampled neighbours are already expanded in ``q`` costs
a few edges, one whose neighbours all live elsewhere costs its full two-hop tree. Measured on
CoDEx-M (P=4, fanout 25,10) pricing replications this way instead of by degree takes the edge
replication factor from 2.30 to 2.14 (a degree-priced cover gives 2.37): halo edges follow
the sampled computation graph, not the degree.

The price is estimated against each partition's *home* computation graph (the sampled
computation graph of the nodes METIS put there, :func:`home_coverage`): for ``v``'s sampled
first-hop messages ``u -> v``, the message's edge if ``q`` does not store it, plus ``u``'s
sampled messages (up to the second fanout) if ``u`` is not expanded in ``q``. Deeper hops
are left out: they are mostly shared.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kg_ops.sampling import CSRGraph, computation_graph_messages, segment_arange


@dataclass
class HomeCoverage:
    """Per partition: which training edges its home computation graph stores (``stored``,
    bool[P, E]) and which nodes it expands to at least the second fanout (``expanded``,
    bool[P, N]: reached at depth < K)."""

    stored: np.ndarray
    expanded: np.ndarray


def home_coverage(csr: CSRGraph, node_part: np.ndarray, parts: int, fanouts: Sequence[int],
                  num_edges: int) -> HomeCoverage:
    stored = np.zeros((parts, num_edges), dtype=bool)
    expanded = np.zeros((parts, csr.num_nodes), dtype=bool)
    home = node_part[:csr.num_nodes]
    for p in range(parts):
        seeds = np.flatnonzero((home == p) & (csr.degree > 0))
        pos, depth = computation_graph_messages(csr, seeds, fanouts)
        stored[p, csr.eid[pos]] = True
        expanded[p] = (depth >= 0) & (depth < len(fanouts))
    return HomeCoverage(stored, expanded)


def replication_cost(csr: CSRGraph, cover: HomeCoverage, fanouts: Sequence[int],
                     v: np.ndarray, q: np.ndarray, chunk: int = 1 << 22) -> np.ndarray:
    """Estimated halo edges added by making each ``v[i]`` a core node of part ``q[i]``, plus
    one for the node itself (float64, >= 1)."""
    f1 = -1 if any(f < 0 for f in fanouts) else max(fanouts)
    f2 = (0 if len(fanouts) < 2 else
          -1 if any(f < 0 for f in fanouts[1:]) else max(fanouts[1:]))
    deg = csr.degree
    take1 = deg[v] if f1 < 0 else np.minimum(deg[v], f1)
    out = np.ones(len(v), dtype=np.float64)
    # Chunks of candidates whose first-hop messages total about ``chunk``.
    bounds = np.searchsorted(np.cumsum(take1), np.arange(chunk, int(take1.sum()), chunk))
    bounds = np.unique(np.concatenate([[0], bounds, [len(v)]]))
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        pos, seg = segment_arange(csr.indptr[v[a:b]], take1[a:b])
        qs = q[a:b][seg]
        u = csr.src[pos]
        missing = (~cover.stored[qs, csr.eid[pos]]).astype(np.float64)
        if f2:
            below = deg[u] if f2 < 0 else np.minimum(deg[u], f2)
            missing += ~cover.expanded[qs, u] * below
        out[a:b] += np.bincount(seg, weights=missing, minlength=b - a)
    return out

"""K-hop expansion: turn a set of owned (core) edges into a self-sufficient partition.

A partition must let a K-layer GNN compute, for every one of its core nodes (the ends of its
core edges, which are also its negative candidates), exactly the representation the full graph
would give with the same sampling. So it stores every training edge the sampled K-hop
computation graph of its core nodes uses (:func:`kg_ops.sampling.computation_graph_messages`
on the full training graph, seeds = the core nodes: boolean masks over nodes and edges, no
relabelling). Because the sampler's choices depend only on global ids and the seed, sampling
the stored subgraph gives the same messages; a batch's computation graph is a subgraph of the
all-core-nodes one, so any batch is covered too. Capped fanouts are what keep this small:
exact (``-1``) 2-hop expansion pulls most of a dense graph into every partition.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kg_ops.partition.io import Partition
from kg_ops.sampling import (
    CSRGraph,
    computation_graph_messages,
    segment_arange,
    unique_int,
)


@dataclass
class ExpandContext:
    """What every partition's expansion shares: the full training graph and node typing."""

    edges: np.ndarray            # (E, 3) global training edges (unique)
    csr: CSRGraph                # full training graph, inverse messages included
    type_offsets: np.ndarray     # start id of each node type + total (schema.offsets())
    num_relations: int
    fanouts: list[int]
    seed: int
    feature_bytes_per_type: np.ndarray | None = None   # bytes of feature rows per node type

    def __post_init__(self) -> None:
        self._to_local = np.full(self.csr.num_nodes, -1, dtype=np.int64)   # reused buffer

    def node_types(self, ids: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.type_offsets, ids, side="right") - 1


def expand_partition(ctx: ExpandContext, part_id: int, core_eids: np.ndarray,
                     ) -> tuple[Partition, dict]:
    """Build partition ``part_id`` from the rows ``core_eids`` of ``ctx.edges`` it owns."""
    core = ctx.edges[core_eids]
    core_nodes = unique_int(core[:, [0, 2]])
    pos, depth = computation_graph_messages(ctx.csr, core_nodes, ctx.fanouts)
    stored = np.zeros(len(ctx.edges), dtype=bool)
    stored[ctx.csr.eid[pos]] = True
    stored[core_eids] = False
    halo = ctx.edges[stored]
    # Halo edges among the core nodes' own sampled messages (their first hop); the rest only
    # serve later hops (for the manifest's breakdown of the replication factor).
    first = -1 if any(f < 0 for f in ctx.fanouts) else max(ctx.fanouts)
    deg = ctx.csr.degree[core_nodes]
    pos1, _ = segment_arange(ctx.csr.indptr[core_nodes],
                              deg if first < 0 else np.minimum(deg, first))
    halo_hop1 = int(np.count_nonzero(stored[unique_int(ctx.csr.eid[pos1])]))
    depth[core_nodes] = -1
    halo_nodes = np.flatnonzero(depth >= 0)     # reached, not core: ascending global id
    global_ids = np.concatenate([core_nodes, halo_nodes])

    to_local = ctx._to_local
    to_local[global_ids] = np.arange(len(global_ids), dtype=np.int64)
    try:
        def local(e: np.ndarray) -> np.ndarray:
            return np.stack([to_local[e[:, 0]], e[:, 1], to_local[e[:, 2]]], axis=1)

        core_local, halo_local = local(core), local(halo)
    finally:
        to_local[global_ids] = -1

    # Core nodes are sorted by global id and ids are contiguous per type, so each type's
    # negative candidates are one local range.
    bounds = np.searchsorted(core_nodes, ctx.type_offsets)
    pool = {t: np.arange(bounds[t], bounds[t + 1], dtype=np.int64)
            for t in range(len(ctx.type_offsets) - 1) if bounds[t + 1] > bounds[t]}
    part = Partition(
        part_id=part_id, global_ids=global_ids, num_core_nodes=len(core_nodes),
        node_type=ctx.node_types(global_ids), core_edges=core_local, halo_edges=halo_local,
        num_relations=ctx.num_relations, negative_pool=pool,
        sampling={"seed": ctx.seed, "fanouts": list(ctx.fanouts), "hops": len(ctx.fanouts)},
        num_global_nodes=ctx.csr.num_nodes)
    stats = {
        "part": part_id,
        "core_edges": int(len(core_local)),
        "halo_edges": int(len(halo_local)),
        "halo_edges_hop1": halo_hop1,
        "core_nodes": int(len(core_nodes)),
        "halo_nodes": int(len(halo_nodes)),
        "sampled_messages": int(len(pos)),
        "est_worker_memory_bytes": estimate_worker_bytes(
            len(global_ids), len(core_local) + len(halo_local),
            0 if ctx.feature_bytes_per_type is None
            else int(ctx.feature_bytes_per_type[part.node_type].sum())),
    }
    return part, stats


def estimate_worker_bytes(num_nodes: int, num_edges: int, feature_bytes: int = 0) -> int:
    """Memory a training worker needs for this partition's data (not the model): local edges
    (24 B each), the CSR with inverse messages (2 messages x src/rel/eid = 48 B per edge, plus
    sort temporaries of the same size), node arrays (24 B per node) and the feature rows."""
    return int(num_edges * (24 + 48 * 2) + num_nodes * 24 + feature_bytes)

"""CSR graph and a vectorised K-hop neighbour sampler, shared by partitioning and training.

Message direction. ``CSRGraph.from_edges`` stores, for every node, its *incoming* messages. A
triple ``[h, r, t]`` sends a message ``h -> t`` with relation ``r`` and, with
``add_inverse=True`` (the default), also ``t -> h`` with relation ``r + R`` (R = number of base
relations), so message passing runs both ways and a conv sees ``2R`` relation types.

Globally deterministic sampling. At hop ``k`` a node ``v`` keeps the ``fanouts[k-1]`` incoming
messages with the smallest random key, where the key is a function of
``(seed, global id of the sender, relation)`` only, ranked among v's messages -- not of the
position of the edge in some array, not of the batch, not of the hop. So any graph that holds a node's sampled
messages (a partition holding part of the full graph, with local ids mapped to global ids through
``node_ids``) draws exactly the same sample as the full graph. That is what makes partitions
self-sufficient and testable. Because the key does not depend on the hop, a smaller fanout
draws a subset of a larger one (the hop-2 sample of a node is inside its hop-1 sample when
``fanouts[1] <= fanouts[0]``): partitions stay small, and training may use fanouts up to the
partition's. ``fanout = -1`` keeps every message.

The key is ``rank(seed, sender) * 2^24 + relation``, where ``rank`` is a seeded random
permutation of the 40-bit node id space: every node ranks its senders by one shared random order
of all nodes, as in LABOR sampling (Balin & Catalyurek, "Layer-Neighbor Sampling", NeurIPS 2023).
Each node's sample is still a uniformly random subset of its senders, but different nodes pick
overlapping senders, so computation graphs and partitions touch far fewer distinct nodes than
with independent per-edge keys. A sender's messages to one node (several relations, both
directions) rank together, ordered by relation. Keys are unique within a node's messages (the
permutation is a bijection), so the sample never depends on the order edges were given in.

Speed. ``CSRGraph.from_edges(..., seed=s)`` sorts each node's messages by the key of seed ``s``;
sampling with that seed then takes the first ``fanout`` messages of each segment, with no
hashing or sorting at all. Any other seed works too (keys are hashed and ranked per call). The
sampled sets never depend on the CSR's seed; the order of messages within a hop does, so two
CSRs built with the same seed give identical arrays (global ids), not just identical sets.

Layer-wise (GraphSAGE-style) computation graph. ``nodes_0`` are the seeds; hop ``k`` samples
the incoming messages of *every* node in ``nodes_{k-1}`` and ``nodes_k`` adds their senders. A
K-layer GNN then computes exactly what the full graph would with the same samples: its layer
``l`` (1 = the first, applied to input features) uses ``hops[K - l]`` and maps the first
``sizes[K-l+1]`` nodes to the first ``sizes[K-l]`` nodes (see :meth:`ComputationGraph.gnn_layers`).
With all fanouts ``-1`` this is the exact K-hop neighbourhood.

Everything is numpy over CSR arrays; the frontier is processed in chunks of edges to bound
memory; there is no Python loop per node or edge.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, elementwise on uint64 (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


NODE_BITS, REL_BITS = 40, 24
_MASK40 = np.uint64((1 << NODE_BITS) - 1)
_ODD = (np.uint64(0x9E3779B97F4B), np.uint64(0xC2B2AE3D27D5), np.uint64(0x165667B19E37))


def node_rank(seed: int, nodes: np.ndarray) -> np.ndarray:
    """A seeded random bijection of ``[0, 2^40)``: odd multiplications and xor-shifts modulo
    2^40 are each invertible, so distinct nodes never tie."""
    with np.errstate(over="ignore"):
        salt = _mix(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64) + _GOLDEN)
        x = (np.asarray(nodes).astype(np.uint64) + salt) & _MASK40
        for i, odd in enumerate(_ODD):
            x = (x * odd) & _MASK40
            x ^= x >> np.uint64(19 + 2 * i)
            x ^= (salt >> np.uint64(8 * (i + 1))) & _MASK40
        return x


def edge_keys(seed: int, dst: np.ndarray, src: np.ndarray, rel: np.ndarray) -> np.ndarray:
    """The sampling key of each message ``src -rel-> dst`` (global ids, relation incl. the
    inverse offset): ``node_rank(seed, src) << 24 | rel``. ``dst`` does not enter: a node ranks
    its senders by the shared order (see the module docstring)."""
    del dst
    return (node_rank(seed, src) << np.uint64(REL_BITS)) | np.asarray(rel).astype(np.uint64)


@dataclass
class CSRGraph:
    """Incoming messages per node: for node ``v``, positions ``indptr[v]:indptr[v+1]`` of
    ``src`` (sender), ``rel`` (relation, ``+R`` for inverse messages) and ``eid`` (row of the
    triple in the ``edges`` passed to :meth:`from_edges`). Inside a segment messages are sorted
    by their sampling key for ``seed``, which depends only on global ids, so the order never
    depends on local numbering or input order."""

    indptr: np.ndarray
    src: np.ndarray
    rel: np.ndarray
    eid: np.ndarray
    num_nodes: int
    num_relations: int
    node_ids: np.ndarray | None = None   # local -> global id; None means ids are global
    inverse: bool = True
    seed: int = 0                         # segments are sorted by this seed's keys

    @classmethod
    def from_edges(cls, edges: np.ndarray, num_nodes: int, num_relations: int | None = None,
                   add_inverse: bool = True, node_ids: np.ndarray | None = None,
                   seed: int = 0) -> CSRGraph:
        """Build from ``(E, 3)`` ``[h, r, t]`` triples. ``num_relations`` is the number of base
        relations R (default ``max(r) + 1``; pass it so inverse ids are ``r + R`` for the whole
        graph's R). ``node_ids`` maps these (local) ids to global ids for hashing and ordering.
        ``seed``: the sampling seed this CSR is fastest for. Give unique triples."""
        edges = np.asarray(edges, dtype=np.int64).reshape(-1, 3)
        if num_relations is None:
            num_relations = int(edges[:, 1].max()) + 1 if len(edges) else 0
        if len(edges) and (edges[:, [0, 2]].min() < 0 or edges[:, [0, 2]].max() >= num_nodes):
            raise ValueError(f"edge endpoints must be in [0, {num_nodes})")
        gmax = num_nodes if node_ids is None or not len(node_ids) else int(np.max(node_ids)) + 1
        if gmax > 1 << NODE_BITS or 2 * num_relations > 1 << REL_BITS:
            raise ValueError(f"the sampler supports < 2^{NODE_BITS} nodes and "
                             f"< 2^{REL_BITS - 1} relations")
        eid = np.arange(len(edges), dtype=np.int64)
        src, dst, rel = edges[:, 0], edges[:, 2], edges[:, 1]
        if add_inverse:
            src = np.concatenate([src, edges[:, 2]])
            dst = np.concatenate([dst, edges[:, 0]])
            rel = np.concatenate([rel, edges[:, 1] + num_relations])
            eid = np.concatenate([eid, eid])
        gsrc = src if node_ids is None else np.asarray(node_ids, dtype=np.int64)[src]
        order = segment_key_order(dst, gsrc, rel, num_nodes, seed)
        counts = np.bincount(dst, minlength=num_nodes)
        indptr = np.zeros(num_nodes + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        return cls(indptr=indptr, src=src[order], rel=rel[order], eid=eid[order],
                   num_nodes=int(num_nodes), num_relations=int(num_relations),
                   node_ids=None if node_ids is None else np.asarray(node_ids, dtype=np.int64),
                   inverse=add_inverse, seed=int(seed))

    @property
    def degree(self) -> np.ndarray:
        return np.diff(self.indptr)

    @property
    def num_messages(self) -> int:
        return int(self.indptr[-1])

    def to_global(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        return ids if self.node_ids is None else self.node_ids[ids]


def unique_int(a: np.ndarray, return_counts: bool = False):
    """Sorted unique integers by sorting: numpy 2's hash-based ``np.unique`` is 10-30x slower
    on large int64 arrays."""
    a = np.sort(np.asarray(a).ravel())
    first = np.r_[True, a[1:] != a[:-1]] if len(a) else np.zeros(0, bool)
    if not return_counts:
        return a[first]
    starts = np.flatnonzero(first)
    return a[starts], np.diff(np.r_[starts, len(a)])


def first_occurrences(a: np.ndarray) -> np.ndarray:
    """Distinct values of ``a`` in order of first appearance."""
    order = np.argsort(a, kind="stable")
    s = a[order]
    first = order[np.r_[True, s[1:] != s[:-1]]] if len(a) else order
    return a[np.sort(first)]


def segment_key_order(dst: np.ndarray, gsrc: np.ndarray, rel: np.ndarray, num_nodes: int,
                      seed: int) -> np.ndarray:
    """Message order by (receiver, key): one sort of ``receiver << 40 | node_rank(sender)``
    when receivers fit in 22 bits, then the rare ties (one sender, several relations) ordered
    by relation; otherwise a key sort followed by a stable regrouping."""
    if int(num_nodes - 1).bit_length() + NODE_BITS > 62 or not len(dst):
        return group_by(dst, np.argsort(edge_keys(seed, None, gsrc, rel)), num_nodes)
    packed = (dst.astype(np.int64) << NODE_BITS) | node_rank(seed, gsrc).astype(np.int64)
    order = np.argsort(packed)
    p = packed[order]
    tie = np.flatnonzero(p[1:] == p[:-1])
    if len(tie):
        members = unique_int(np.concatenate([tie, tie + 1]))  # small: only tied messages
        run = np.cumsum(np.r_[True, p[members][1:] != p[members][:-1]]) - 1
        members = members[np.lexsort((rel[order[members]], run))]
        order[np.sort(members)] = order[members]
    return order


def group_by(groups: np.ndarray, order: np.ndarray, num_groups: int) -> np.ndarray:
    """``order`` stably regrouped by ``groups[order]`` (a stable sort by group). Packs
    (group, position) into one int64 when it fits, because an unstable integer sort of unique
    keys is several times faster than numpy's stable sort of int64."""
    n = len(order)
    pos_bits = max(int(n).bit_length(), 1)
    if int(num_groups).bit_length() + pos_bits <= 62:
        packed = (groups[order].astype(np.int64) << pos_bits) | np.arange(n, dtype=np.int64)
        return order[np.argsort(packed)]
    return order[np.argsort(groups[order], kind="stable")]


@dataclass
class Hop:
    """Messages sampled at one hop, as positions into ``ComputationGraph.nodes``."""

    src: np.ndarray   # int64 local (computation-graph) index of the sender
    dst: np.ndarray   # int64 local index of the receiver (always < sizes[k-1])
    rel: np.ndarray   # int64 relation id (r or r + R)
    eid: np.ndarray   # int64 row of the triple in the CSR's input edges

    def __len__(self) -> int:
        return len(self.src)

    @property
    def edge_index(self):
        """``torch.LongTensor [2, E]`` (row 0 = source, row 1 = target), PyG convention."""
        import torch

        return torch.from_numpy(np.stack([self.src, self.dst]))

    @property
    def edge_type(self):
        import torch

        return torch.from_numpy(self.rel)


@dataclass
class ComputationGraph:
    """What a K-layer GNN needs to embed ``seeds``. ``nodes`` are CSR ids: seeds first
    (deduplicated, first appearance order), then the nodes first reached at hop 1, hop 2, ...
    (each group sorted by global id); ``sizes[k]`` = number of nodes reached within k hops."""

    nodes: np.ndarray
    sizes: list[int]
    hops: list[Hop]
    seed_index: np.ndarray            # position in ``nodes`` of each input seed
    global_nodes: np.ndarray = field(repr=False, default=None)

    def gnn_layers(self) -> list[tuple[Hop, int, int]]:
        """``(hop, n_src, n_dst)`` in the order a GNN applies them: first layer first. Layer l
        reads features of ``nodes[:n_src]`` and produces ``nodes[:n_dst]``."""
        k = len(self.hops)
        return [(self.hops[k - 1 - i], self.sizes[k - i], self.sizes[k - 1 - i])
                for i in range(k)]

    def edge_index(self):
        """All hops' messages together (``edge_index, edge_type``) for a GNN that runs every
        layer on the whole sampled subgraph instead of layer by layer; duplicates removed."""
        import torch

        src = np.concatenate([h.src for h in self.hops])
        dst = np.concatenate([h.dst for h in self.hops])
        rel = np.concatenate([h.rel for h in self.hops])
        n, r = len(self.nodes), int(rel.max()) + 1 if len(rel) else 1
        key = unique_int((dst * n + src) * r + rel)
        return (torch.from_numpy(np.stack([key // r % n, key // r // n])),
                torch.from_numpy(key % r))

    def global_triples(self, hop: int) -> np.ndarray:
        """Hop ``hop`` (1-based) as ``(E, 3)`` global ``[src, rel, dst]``, for comparisons."""
        h = self.hops[hop - 1]
        return np.stack([self.global_nodes[h.src], h.rel, self.global_nodes[h.dst]], axis=1)


def segment_arange(starts: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated ``arange(starts[i], starts[i] + counts[i])`` and the segment of each item."""
    total = int(counts.sum())
    seg = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    offsets = np.zeros(len(counts), dtype=np.int64)
    np.cumsum(counts[:-1], out=offsets[1:])
    pos = np.arange(total, dtype=np.int64) - offsets[seg] + starts[seg]
    return pos, seg


def sample_messages(csr: CSRGraph, frontier: np.ndarray, fanout: int, seed: int,
                    chunk_messages: int = 1 << 22) -> tuple[np.ndarray, np.ndarray]:
    """For each node of ``frontier`` (CSR ids), its sampled incoming messages: returns
    ``(positions into csr.src/rel/eid, index into frontier of the receiver)``, ordered by
    receiver then CSR order. ``fanout = -1`` keeps all; else the ``fanout`` smallest keys."""
    frontier = np.asarray(frontier, dtype=np.int64)
    deg = csr.indptr[frontier + 1] - csr.indptr[frontier]
    keep_n = deg if fanout < 0 else np.minimum(deg, fanout)
    if seed == csr.seed or fanout < 0:      # segments already in key order: take a prefix
        pos, seg = segment_arange(csr.indptr[frontier], keep_n)
        return pos, seg
    # Another seed: rank the messages of over-full segments by key, chunk by chunk.
    cum = np.cumsum(deg)
    bounds = np.searchsorted(cum, np.arange(chunk_messages, int(cum[-1]) if len(cum) else 0,
                                            chunk_messages), side="left") + 1
    bounds = np.unique(np.concatenate([[0], bounds, [len(frontier)]]))
    out_pos, out_seg = [], []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        pos, seg = segment_arange(csr.indptr[frontier[a:b]], deg[a:b])
        seg += a
        capped = deg[seg] > keep_n[seg]          # only segments over the fanout need keys
        if capped.any():
            cpos, cseg = pos[capped], seg[capped]
            key = edge_keys(seed, None, csr.to_global(csr.src[cpos]), csr.rel[cpos])
            order = np.argsort(key)
            order = order[np.argsort(cseg[order], kind="stable")]
            first = np.searchsorted(cseg, cseg[order], side="left")   # cseg is sorted
            rank = np.empty(len(order), dtype=np.int64)
            rank[order] = np.arange(len(order), dtype=np.int64) - first
            keep = np.ones(len(pos), dtype=bool)
            keep[np.flatnonzero(capped)] = rank < keep_n[cseg]
            pos, seg = pos[keep], seg[keep]
        out_pos.append(pos)
        out_seg.append(seg)
    if not out_pos:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(out_pos), np.concatenate(out_seg)


def parse_fanouts(text: str | Sequence[int]) -> list[int]:
    """``"25,10"`` -> ``[25, 10]``; ``-1`` means all neighbours."""
    vals = [int(x) for x in (text.split(",") if isinstance(text, str) else text)]
    if not vals or any(v == 0 or v < -1 for v in vals):
        raise ValueError(f"fanouts must be positive integers or -1 (all), got {text!r}")
    return vals


def sample_computation_graph(csr: CSRGraph, seeds: np.ndarray, fanouts: Sequence[int],
                             seed: int | None = None, chunk_messages: int = 1 << 22,
                             workspace: np.ndarray | None = None) -> ComputationGraph:
    """The layer-wise sampled K-hop computation graph of ``seeds`` (CSR ids), K = len(fanouts).
    ``seed`` selects the sample (default: the CSR's own seed, the fast path); see the module
    docstring for what is guaranteed. ``workspace``: an int64 array of ``csr.num_nodes``
    entries, all -1, reused across calls (returned all -1 again) so a small batch on a large
    graph does not allocate and fill a table of every node."""
    seed = csr.seed if seed is None else int(seed)
    seeds = np.asarray(seeds, dtype=np.int64).ravel()
    nodes = first_occurrences(seeds)
    if workspace is None:
        workspace = np.full(csr.num_nodes, -1, dtype=np.int64)
    position = workspace                                      # CSR id -> index in ``nodes``
    position[nodes] = np.arange(len(nodes))
    sizes = [len(nodes)]
    hops: list[Hop] = []
    for fanout in fanouts:
        frontier = nodes  # every node reached so far gets this layer's messages
        pos, seg = sample_messages(csr, frontier, int(fanout), seed, chunk_messages)
        src_ids = csr.src[pos]
        new = unique_int(src_ids[position[src_ids] < 0])
        if len(new):
            if csr.node_ids is not None:
                new = new[np.argsort(csr.node_ids[new], kind="stable")]
            position[new] = np.arange(len(nodes), len(nodes) + len(new))
            nodes = np.concatenate([nodes, new])
        hops.append(Hop(src=position[src_ids], dst=seg, rel=csr.rel[pos], eid=csr.eid[pos]))
        sizes.append(len(nodes))
    seed_index = position[seeds]
    position[nodes] = -1
    return ComputationGraph(nodes=nodes, sizes=sizes, hops=hops, seed_index=seed_index,
                            global_nodes=csr.to_global(nodes))


def computation_graph_messages(csr: CSRGraph, seeds: np.ndarray, fanouts: Sequence[int],
                               ) -> tuple[np.ndarray, np.ndarray]:
    """Every message the computation graph of ``seeds`` uses (sampled with the CSR's own
    seed), without building the graph: returns (message positions, depth of every node: the
    hop at which it is first reached, -1 if never). Equal to the union over hops of
    :func:`sample_computation_graph`'s messages, but with boolean masks instead of sorting:
    because samples are nested prefixes of each node's key-sorted messages, a node reached at
    hop d contributes its first ``max(fanouts[d:])`` messages (all for -1)."""
    depth = np.full(csr.num_nodes, -1, dtype=np.int64)
    depth[np.asarray(seeds, dtype=np.int64)] = 0
    deg = csr.degree
    for k, fanout in enumerate(fanouts):
        frontier = np.flatnonzero(depth >= 0)
        take = deg[frontier] if fanout < 0 else np.minimum(deg[frontier], fanout)
        pos, _ = segment_arange(csr.indptr[frontier], take)
        senders = csr.src[pos]
        depth[senders[depth[senders] < 0]] = k + 1
    # Prefix length per node: the largest fanout of the hops it is expanded in.
    caps = [(-1 if any(f < 0 for f in fanouts[d:]) else max(fanouts[d:]))
            for d in range(len(fanouts))]
    expanded = np.flatnonzero((depth >= 0) & (depth < len(fanouts)))
    cap = np.asarray(caps, dtype=np.int64)[depth[expanded]]
    take = np.where(cap < 0, deg[expanded], np.minimum(deg[expanded], cap))
    pos, _ = segment_arange(csr.indptr[expanded], take)
    return pos, depth

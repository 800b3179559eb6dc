"""Edge partitioning: which partition owns each training edge.

``metis`` works in three steps, chosen to make the K-hop expanded partitions small:

1. Hubs (degree > 4 x mean degree) are left out of the METIS graph. Every partition touches
   them anyway, and with them in, METIS contorts the parts around them (on CoDEx-M the cut
   falls from 36% to 6% of edges without the 2% highest-degree nodes).
2. METIS (pymetis, k-way: about twice as fast as recursive bisection at P=8, same cut) splits
   the remaining undirected node graph into P parts, vertex weights = the edges a node is
   expected to own, so parts are balanced in edges, not nodes.
3. Owner rule: an edge inside a part belongs to it. A cut edge makes one end a core node of the
   other end's partition, and a core node costs about ``min(fanout_1, degree)`` stored edges
   plus their expansion -- paid once per partition however many edges bring it there. So the
   edge goes where the replicated end is cheapest per edge: ``cost(v) / n(v, part)``, with
   ``n(v, part)`` = v's edges into that part (a hub with 300 edges into part A is replicated into
   A once, instead of 300 leaves into the hub's part: "high-degree replicated first", as in
   HDRF). Then overloaded partitions (> 5% above the mean) hand their cut edges with the least
   cost difference to the other end's partition, vectorised per pair of parts. Edges between
   two hubs cost nothing anywhere (hubs are core nodes of every partition) and are dealt last
   to the least loaded partitions.

``random``: a seeded random permutation dealt round-robin (perfect balance, no locality), the
baseline that shows what METIS buys.
"""

from __future__ import annotations

import logging

import numpy as np

from kg_ops.errors import KGOpsError
from kg_ops.sampling import unique_int

log = logging.getLogger(__name__)

METHODS = ("metis", "random")
HUB_FACTOR = 4.0       # hubs: degree above this multiple of the mean degree
BALANCE_SLACK = 0.05   # a partition may own this much more than the mean number of edges


def undirected_adjacency(edges: np.ndarray, num_nodes: int,
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """METIS input from ``[h, r, t]`` edges: ``xadj``, ``adjncy`` and edge weights (number of
    triples between the two nodes, any relation and direction). Self-loops are left out."""
    h, t = edges[:, 0], edges[:, 2]
    lo, hi = np.minimum(h, t), np.maximum(h, t)
    pair = lo[lo != hi] * np.int64(num_nodes) + hi[lo != hi]
    pair, weight = unique_int(pair, return_counts=True)
    a, b = pair // num_nodes, pair % num_nodes
    src = np.concatenate([a, b])
    dst = np.concatenate([b, a])
    w = np.concatenate([weight, weight]).astype(np.int64)
    order = np.argsort(src * np.int64(num_nodes) + dst)     # unique keys: any sort will do
    xadj = np.zeros(num_nodes + 1, dtype=np.int64)
    np.cumsum(np.bincount(src, minlength=num_nodes), out=xadj[1:])
    return xadj, dst[order].astype(np.int64), w[order]


def degrees(edges: np.ndarray, num_nodes: int) -> np.ndarray:
    return (np.bincount(edges[:, 0], minlength=num_nodes)
            + np.bincount(edges[:, 2], minlength=num_nodes)).astype(np.int64)


def metis_node_parts(edges: np.ndarray, num_nodes: int, parts: int, seed: int,
                     hub: np.ndarray | None = None) -> np.ndarray:
    """Part of every node (int64[num_nodes]) from METIS on the graph without ``hub`` nodes'
    edges; vertex weights = edges each node is expected to own (its non-hub edges count half,
    as they are shared with another node; its edges to hubs count fully)."""
    import pymetis

    if parts == 1:
        return np.zeros(num_nodes, dtype=np.int64)
    hub = np.zeros(num_nodes, dtype=bool) if hub is None else hub
    to_hub = hub[edges[:, 0]] | hub[edges[:, 2]]
    plain = edges[~to_hub]
    xadj, adjncy, eweights = undirected_adjacency(plain, num_nodes)
    vweights = degrees(plain, num_nodes) + 2 * degrees(edges[to_hub], num_nodes) * ~hub + 1
    log.info("partition: METIS on %d nodes (%d hubs left out), %d undirected node pairs into "
             "%d parts", num_nodes, int(hub.sum()), len(adjncy) // 2, parts)
    cuts, membership = pymetis.part_graph(
        parts, pymetis.CSRAdjacency(xadj, adjncy), vweights=vweights.astype(np.int64),
        eweights=eweights, options=pymetis.Options(seed=int(seed)), recursive=False)
    log.info("partition: METIS cut %d node pairs (weighted)", cuts)
    node_part = np.frombuffer(membership, dtype=np.int64).copy()
    # Hubs are isolated in METIS's graph, so it would put them anywhere (often all in one
    # part); deal them round-robin, largest first, so their edges spread evenly.
    deg = degrees(edges, num_nodes)
    hubs = np.flatnonzero(hub)
    hubs = hubs[np.argsort(-deg[hubs], kind="stable")]
    node_part[hubs] = np.arange(len(hubs)) % parts
    return node_part


def owners_from_node_parts(edges: np.ndarray, node_part: np.ndarray, parts: int,
                           node_cost: np.ndarray, slack: float = BALANCE_SLACK,
                           free: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """Owner of every edge: its ends' part if they agree, else the part into which replicating
    the other end is cheapest per edge; then rebalance (see the module docstring). ``free``
    edges (between two hubs, which are core nodes of every partition anyway) cost nothing
    anywhere: they are dealt last to the least loaded partitions."""
    h, t = edges[:, 0], edges[:, 2]
    ph, pt = node_part[h], node_part[t]
    free = np.zeros(len(edges), dtype=bool) if free is None else free
    cut = (ph != pt) & ~free
    # n(v, q): how many of v's edges have their other end in part q.
    pair = np.concatenate([h * parts + pt, t * parts + ph])
    size = (int(max(h.max(), t.max())) + 1) * parts if len(edges) else 0
    if size <= 1 << 28:                     # a dense table: one bincount, no sort
        table = np.bincount(pair, minlength=size)

        def n(v: np.ndarray, q: np.ndarray) -> np.ndarray:
            return table[v * parts + q]
    else:
        keys, counts = unique_int(pair, return_counts=True)

        def n(v: np.ndarray, q: np.ndarray) -> np.ndarray:
            return counts[np.searchsorted(keys, v * parts + q)]

    cost_tail = node_cost[t] / n(t, ph)     # owner = head's part: the tail is replicated
    cost_head = node_cost[h] / n(h, pt)
    to_head = cost_tail <= cost_head
    owner = np.where(to_head, ph, pt)
    other = np.where(to_head, pt, ph)
    regret = np.abs(np.log(cost_tail) - np.log(cost_head))   # what moving an edge would cost
    owner[free] = -1
    cap = int(np.ceil(len(edges) / parts * (1.0 + slack)))
    for _ in range(3):
        load = np.bincount(owner[~free], minlength=parts)
        for p in np.argsort(-load):
            excess = int(load[p] - cap)
            if excess <= 0:
                continue
            movable = np.flatnonzero(cut & (owner == p))
            movable = movable[np.argsort(regret[movable], kind="stable")]
            dest = other[movable]
            # Rank each movable edge among those heading to the same part; keep within spare.
            order = np.argsort(dest, kind="stable")
            rank = np.empty(len(dest), dtype=np.int64)
            rank[order] = np.arange(len(dest)) - np.searchsorted(dest[order], dest[order])
            spare = np.maximum(cap - load, 0)
            chosen = movable[rank < spare[dest]][:excess]
            owner[chosen] = other[chosen]
            load = np.bincount(owner[~free], minlength=parts)
    idx = np.flatnonzero(free)
    if len(idx):
        quota = water_fill(np.bincount(owner[~free], minlength=parts), len(idx))
        idx = idx[np.random.default_rng(seed).permutation(len(idx))]
        owner[idx] = np.repeat(np.arange(parts), quota)
    return owner


def water_fill(load: np.ndarray, n: int) -> np.ndarray:
    """How many of ``n`` extra items each part gets so the loads end as even as possible."""
    order = np.argsort(load, kind="stable")
    sorted_load = load[order].astype(np.int64)
    quota = np.zeros(len(load), dtype=np.int64)
    # Raise the k lowest parts to the level of part k (k = 1, 2, ...) while items last.
    for k in range(1, len(load) + 1):
        level_next = sorted_load[k] if k < len(load) else None
        need = None if level_next is None else int((level_next - sorted_load[:k]).sum())
        if need is None or need >= n:
            base = sorted_load[:k].sum() + n
            level, rest = divmod(int(base), k)
            fill = level - sorted_load[:k]
            fill[:rest] += 1
            quota[order[:k]] = fill
            return quota
    return quota


def random_owners(num_edges: int, parts: int, seed: int) -> np.ndarray:
    owner = np.empty(num_edges, dtype=np.int64)
    owner[np.random.default_rng(seed).permutation(num_edges)] = np.arange(num_edges) % parts
    return owner


def partition_edges(edges: np.ndarray, num_nodes: int, parts: int, method: str, seed: int,
                    first_fanout: int = -1) -> tuple[np.ndarray, dict]:
    """Owner partition of every edge and facts about the split for the manifest."""
    if parts < 1:
        raise KGOpsError(f"--parts must be at least 1, got {parts}")
    if parts > max(len(edges), 1):
        raise KGOpsError(f"--parts {parts} is more than the {len(edges)} training edges; "
                         "use fewer partitions")
    info: dict = {}
    if method == "metis":
        deg = degrees(edges, num_nodes)
        hub = deg > HUB_FACTOR * max(float(deg[deg > 0].mean()), 1.0)
        node_part = metis_node_parts(edges, num_nodes, parts, seed, hub)
        cost = (deg if first_fanout < 0 else np.minimum(deg, first_fanout)).astype(np.float64)
        free = hub[edges[:, 0]] & hub[edges[:, 2]]
        owner = owners_from_node_parts(edges, node_part, parts, np.maximum(cost, 1.0),
                                       free=free, seed=seed)
        plain = ~(hub[edges[:, 0]] | hub[edges[:, 2]])
        info["metis_hubs_left_out"] = int(hub.sum())
        info["metis_cut_edge_fraction"] = round(float(np.mean(
            (node_part[edges[:, 0]] != node_part[edges[:, 2]])[plain])), 4)
    elif method == "random":
        owner = random_owners(len(edges), parts, seed)
    else:
        raise KGOpsError(f"unknown --method {method!r}; use one of {', '.join(METHODS)}")
    return owner, info

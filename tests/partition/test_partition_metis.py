"""Edge-ownership rules against hand-built graphs and brute force."""

from __future__ import annotations

import numpy as np

from kg_ops.partition.metis import (
    owners_from_node_parts,
    partition_edges,
    random_owners,
    undirected_adjacency,
)


def test_undirected_adjacency_matches_brute_force():
    edges = np.array([[0, 0, 1], [1, 1, 0], [1, 0, 2], [2, 0, 2], [3, 1, 0], [0, 1, 1]])
    xadj, adjncy, w = undirected_adjacency(edges, 5)
    got = {}
    for v in range(5):
        for j in range(xadj[v], xadj[v + 1]):
            got[(v, int(adjncy[j]))] = int(w[j])
    # pairs {0,1} x3 (any relation/direction), {1,2} x1, {0,3} x1; the self-loop is left out
    want = {(0, 1): 3, (1, 0): 3, (1, 2): 1, (2, 1): 1, (0, 3): 1, (3, 0): 1}
    assert got == want
    assert xadj[-1] == len(adjncy) == 6


def test_cut_edges_replicate_the_end_that_is_cheapest_per_edge():
    """A hub in part 1 with 30 leaves in part 0: its edges go to part 0 (the hub is replicated
    once) rather than replicating 30 leaves into part 1."""
    hub, leaves = 0, np.arange(1, 31)
    edges = np.stack([leaves, np.zeros(30, int), np.full(30, hub)], 1)
    extra = np.stack([np.arange(31, 61), np.zeros(30, int), np.arange(32, 62) % 30 + 31], 1)
    edges = np.concatenate([edges, extra])
    node_part = np.zeros(62, dtype=np.int64)
    node_part[hub] = 1
    node_part[31:] = 1
    deg = np.bincount(edges[:, 0], minlength=62) + np.bincount(edges[:, 2], minlength=62)
    cost = np.minimum(deg, 25).astype(float)
    owner = owners_from_node_parts(edges, node_part, 2, lambda v, q: cost[v], slack=1.0)
    assert (owner[:30] == 0).all()                # hub edges stay with the leaves
    assert (owner[30:] == 1).all()                # internal edges stay home


def test_owner_rule_keeps_partitions_balanced():
    """Every edge is cut and the cost rule prefers part 1 for all of them; rebalancing must
    hand edges back to part 0 until no part exceeds the mean by more than the slack."""
    rng = np.random.default_rng(0)
    edges = np.stack([rng.integers(0, 100, 3000), np.zeros(3000, int),
                      rng.integers(100, 200, 3000)], 1)
    node_part = (np.arange(200) >= 100).astype(np.int64)
    cost = np.where(np.arange(200) >= 100, 1000.0, 1.0)   # replicating part-1 nodes is dear
    unbalanced = owners_from_node_parts(edges, node_part, 2, lambda v, q: cost[v], slack=10.0)
    assert (unbalanced == 1).all()
    owner = owners_from_node_parts(edges, node_part, 2, lambda v, q: cost[v])
    assert np.bincount(owner, minlength=2).max() <= np.ceil(len(edges) / 2 * 1.05)
    ends = node_part[edges[:, [0, 2]]]
    assert (ends == owner[:, None]).any(1).all()          # always the part of one end


def test_random_owners_balanced_and_seeded():
    a, b, c = random_owners(1001, 4, 0), random_owners(1001, 4, 0), random_owners(1001, 4, 1)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert sorted(np.bincount(a).tolist()) == [250, 250, 250, 251]


def test_metis_beats_random_on_a_clustered_graph():
    """Four planted clusters: METIS ownership cuts far fewer clusters per edge end."""
    rng = np.random.default_rng(1)
    cluster = np.repeat(np.arange(4), 50)
    h = rng.integers(0, 200, 4000)
    same = rng.random(4000) < 0.95
    t = np.where(same, cluster[h] * 50 + rng.integers(0, 50, 4000), rng.integers(0, 200, 4000))
    edges = np.stack([h, np.zeros(4000, int), t], 1)
    owner, info = partition_edges(edges, 200, 4, "metis", seed=0, fanouts=[10, 5])
    # Each partition's core nodes mostly come from one cluster.
    core_nodes = sum(len(np.unique(edges[owner == p][:, [0, 2]])) for p in range(4))
    rnd = random_owners(len(edges), 4, 0)
    core_nodes_random = sum(len(np.unique(edges[rnd == p][:, [0, 2]])) for p in range(4))
    assert core_nodes < 0.5 * core_nodes_random
    assert info["metis_cut_edge_fraction"] < 0.15


def test_water_fill_evens_out_loads():
    from kg_ops.partition.metis import water_fill

    assert water_fill(np.array([10, 0, 5]), 8).tolist() == [0, 7, 1]
    assert water_fill(np.array([3, 3]), 5).tolist() == [3, 2]
    q = water_fill(np.array([4, 9, 1, 7]), 100)
    assert q.sum() == 100 and np.ptp(np.array([4, 9, 1, 7]) + q) <= 1


def test_hub_heavy_graph_stays_balanced():
    """Edges among a few dozen hubs are most of this graph; METIS never sees them (hubs are
    left out), so they must be dealt to keep partitions balanced."""
    rng = np.random.default_rng(3)
    hubs = rng.integers(0, 40, (6000, 2))
    leaves = np.stack([rng.integers(40, 2000, 2000), rng.integers(0, 2000, 2000)], 1)
    pairs = np.concatenate([hubs, leaves])
    edges = np.stack([pairs[:, 0], np.zeros(len(pairs), int), pairs[:, 1]], 1)
    edges = np.unique(edges[edges[:, 0] != edges[:, 2]], axis=0)
    owner, info = partition_edges(edges, 2000, 4, "metis", seed=0, fanouts=[10, 5])
    assert info["metis_hubs_left_out"] >= 30
    load = np.bincount(owner, minlength=4)
    assert load.max() / load.mean() <= 1.06


def test_replication_cover_is_the_minimum_weight_vertex_cover():
    """Brute force over every set of replications: the cover covers each cut edge and costs
    no more than the cheapest one."""
    import itertools

    from kg_ops.partition.metis import replication_cover

    rng = np.random.default_rng(4)
    for trial in range(20):
        n, parts = 9, 3
        node_part = rng.integers(0, parts, n)
        pairs = rng.integers(0, n, (14, 2))
        pairs = pairs[node_part[pairs[:, 0]] != node_part[pairs[:, 1]]]
        if not len(pairs):
            continue
        h, t = pairs[:, 0], pairs[:, 1]
        ph, pt = node_part[h], node_part[t]
        weight = rng.integers(1, 20, (n, parts)).astype(float)
        to_tail, _, _, both = replication_cover(h, t, ph, pt, parts,
                                                lambda v, q, w=weight: w[v, q])
        # The chosen replications: h into pt where the edge goes to pt, else t into ph.
        chosen = {(int(a), int(q)) for a, q in zip(h[to_tail], pt[to_tail], strict=True)}
        chosen |= {(int(b), int(q)) for b, q in zip(t[~to_tail], ph[~to_tail], strict=True)}
        chosen |= {(int(a), int(q)) for a, q in zip(h[both], pt[both], strict=True)}
        chosen |= {(int(b), int(q)) for b, q in zip(t[both], ph[both], strict=True)}
        got = sum(weight[v, q] for v, q in chosen)
        cands = sorted({(int(a), int(q)) for a, q in zip(h, pt, strict=True)}
                       | {(int(b), int(q)) for b, q in zip(t, ph, strict=True)})
        best = np.inf
        for k in range(len(cands) + 1):
            for subset in itertools.combinations(cands, k):
                s = set(subset)
                if all((a, qb) in s or (b, qa) in s
                       for a, b, qa, qb in zip(h, t, ph, pt, strict=True)):
                    best = min(best, sum(weight[v, q] for v, q in s))
            if best < np.inf and k > 6:
                break
        assert got == best, trial


def test_replication_cost_matches_a_brute_force_count():
    """Cost of making v a core node of q = 1 + for each of v's sampled first-hop messages
    u -> v: the edge if q's home computation graph lacks it, plus u's second-hop sample if q
    does not expand u. Checked against the layer-wise sampler and plain loops."""
    from kg_ops.partition.halo_cost import home_coverage, replication_cost
    from kg_ops.sampling import CSRGraph, sample_computation_graph

    rng = np.random.default_rng(2)
    n, parts, fanouts = 40, 3, [3, 2]
    edges = np.unique(np.stack([rng.integers(0, n, 150), rng.integers(0, 2, 150),
                                rng.integers(0, n, 150)], 1), axis=0)
    edges = edges[edges[:, 0] != edges[:, 2]]
    csr = CSRGraph.from_edges(edges, n, 2, seed=1)
    node_part = rng.integers(0, parts, n)
    cover = home_coverage(csr, node_part, parts, fanouts, len(edges))
    stored, expanded = [], []
    for p in range(parts):
        seeds = np.flatnonzero((node_part == p) & (csr.degree > 0))
        cg = sample_computation_graph(csr, seeds, fanouts)
        stored.append({int(e) for hop in cg.hops for e in hop.eid})
        expanded.append(set(cg.nodes[:cg.sizes[1]].tolist()))
        assert stored[p] == set(np.flatnonzero(cover.stored[p]).tolist())
        assert expanded[p] == set(np.flatnonzero(cover.expanded[p]).tolist())
    v = np.repeat(np.arange(n), parts)
    q = np.tile(np.arange(parts), n)
    got = replication_cost(csr, cover, fanouts, v, q)
    for i in range(len(v)):
        one = sample_computation_graph(csr, np.array([v[i]]), [fanouts[0]])
        want = 1.0
        for u, e in zip(one.nodes[one.hops[0].src], one.hops[0].eid, strict=True):
            want += int(e) not in stored[q[i]]
            if int(u) not in expanded[q[i]]:
                want += min(int(csr.degree[u]), fanouts[1])
        assert got[i] == want, i


def test_metis_owner_rule_owns_each_edge_once_within_the_balance_bound():
    """On a skewed random graph: one owner per edge, always the part of one of its ends (or
    any part for an edge between two hubs), and no part above the mean by more than the
    slack."""
    from kg_ops.partition.metis import BALANCE_SLACK, HUB_FACTOR, degrees, metis_node_parts

    rng = np.random.default_rng(5)
    w = rng.pareto(1.2, 3000) + 1
    pairs = rng.choice(3000, (20000, 2), p=w / w.sum())
    edges = np.unique(np.stack([pairs[:, 0], rng.integers(0, 3, len(pairs)), pairs[:, 1]], 1),
                      axis=0)
    edges = edges[edges[:, 0] != edges[:, 2]]
    for parts in (2, 4, 8):
        owner, _ = partition_edges(edges, 3000, parts, "metis", seed=0, fanouts=[25, 10])
        assert owner.shape == (len(edges),) and owner.min() >= 0 and owner.max() < parts
        load = np.bincount(owner, minlength=parts)
        assert load.max() <= np.ceil(len(edges) / parts * (1 + BALANCE_SLACK)) + 1
        deg = degrees(edges, 3000)
        hub = deg > HUB_FACTOR * deg[deg > 0].mean()
        node_part = metis_node_parts(edges, 3000, parts, 0, hub)
        at_an_end = (node_part[edges[:, [0, 2]]] == owner[:, None]).any(1)
        assert (at_an_end | (hub[edges[:, 0]] & hub[edges[:, 2]])).all()


def test_free_edges_go_where_both_hubs_are_core_and_even_out_loads():
    """Hubs 0 and 1 are core nodes of part 2 only, hubs 2 and 3 of part 0 only (through their
    other edges); their mutual edges go there, and the loads end even."""
    from kg_ops.partition.metis import deal_free_edges

    h = np.array([0, 1, 2, 3, 20, 21] + [0, 1, 0, 2, 3, 2])
    t = np.array([9, 9, 10, 10, 22, 23] + [1, 0, 1, 3, 2, 3])
    owner = np.array([2, 2, 0, 0, 1, 1] + [-1] * 6)
    free = np.r_[np.zeros(6, bool), np.ones(6, bool)]
    got = deal_free_edges(h, t, owner, free, 3, seed=0)
    assert np.bincount(np.r_[owner[:6], got], minlength=3).tolist() == [4, 4, 4]
    hubs01 = np.isin(h[6:], [0, 1])
    assert (got[hubs01] == 2).sum() == 2 and (got[~hubs01] == 0).sum() == 2
    assert set(got.tolist()) == {0, 1, 2}

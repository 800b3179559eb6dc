"""The shared neighbour sampler against brute-force references on tiny graphs."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from kg_ops.sampling import CSRGraph, edge_keys, parse_fanouts, sample_computation_graph


def random_graph(n=40, e=300, r=4, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    edges = np.stack([rng.integers(0, n, e), rng.integers(0, r, e), rng.integers(0, n, e)], 1)
    return np.unique(edges, axis=0)


def incoming(edges: np.ndarray, num_rel: int) -> dict[int, set[tuple[int, int]]]:
    """Brute force: node -> {(sender, relation)} with inverse messages, from the triples."""
    inc: dict[int, set[tuple[int, int]]] = defaultdict(set)
    for h, r, t in edges.tolist():
        inc[t].add((h, r))
        inc[h].add((t, r + num_rel))
    return inc


def brute_force_sample(edges, num_rel, seeds, fanouts, seed):
    """Layer-wise sample by the documented rule, one node at a time (reference only)."""
    inc = incoming(edges, num_rel)
    reached = list(dict.fromkeys(int(s) for s in seeds))
    hops = []
    for f in fanouts:
        msgs = set()
        for v in reached:
            cand = sorted(inc[v])
            if f >= 0 and len(cand) > f:
                keys = [int(edge_keys(seed, np.array([v]), np.array([u]), np.array([r]))[0])
                        for u, r in cand]
                cand = [c for _, c in sorted(zip(keys, cand, strict=True))[:f]]
            msgs.update((u, r, v) for u, r in cand)
        hops.append(msgs)
        reached += sorted({u for u, _, _ in msgs} - set(reached))
    return hops, reached


def as_set(cg, hop):
    return {tuple(x) for x in cg.global_triples(hop).tolist()}


@pytest.mark.parametrize("csr_seed", [7, 0])   # 7: presorted fast path; 0: keys per call
@pytest.mark.parametrize("fanouts", [[-1, -1], [3, 2], [2], [1, -1, 2]])
def test_matches_brute_force(fanouts, csr_seed):
    edges = random_graph()
    csr = CSRGraph.from_edges(edges, 40, num_relations=4, seed=csr_seed)
    seeds = np.array([5, 17, 5, 33])
    cg = sample_computation_graph(csr, seeds, fanouts, seed=7)
    ref_hops, ref_nodes = brute_force_sample(edges, 4, seeds, fanouts, seed=7)
    assert len(cg.hops) == len(fanouts)
    for k in range(len(fanouts)):
        assert as_set(cg, k + 1) == ref_hops[k]
        assert len(cg.hops[k]) == len(ref_hops[k])     # no duplicate messages
    assert cg.nodes.tolist() == ref_nodes          # seeds, then new nodes by id, per hop
    assert cg.nodes[:3].tolist() == [5, 17, 33]          # seeds first, deduplicated
    assert cg.nodes[cg.seed_index].tolist() == seeds.tolist()


def test_exact_mode_is_the_full_neighbourhood():
    edges = np.array([[0, 0, 1], [1, 1, 2], [2, 0, 3], [4, 1, 0], [3, 0, 5], [6, 1, 6]])
    csr = CSRGraph.from_edges(edges, 7, num_relations=2)
    cg = sample_computation_graph(csr, [0], [-1, -1], seed=1)
    assert as_set(cg, 1) == {(1, 2, 0), (4, 1, 0)}           # 0<-1 inverse of r0, 0<-4 r1
    assert as_set(cg, 2) == {(1, 2, 0), (4, 1, 0), (0, 0, 1), (2, 3, 1), (0, 3, 4)}
    assert cg.sizes == [1, 3, 4]
    assert cg.nodes.tolist() == [0, 1, 4, 2]


def test_fanout_gives_min_k_deg_distinct_neighbours():
    edges = random_graph(n=30, e=400, r=3, seed=3)
    csr = CSRGraph.from_edges(edges, 30, num_relations=3)
    seeds = np.arange(30)
    for k in (1, 4, 10, 1000):
        hop = sample_computation_graph(csr, seeds, [k], seed=11).hops[0]
        counts = np.bincount(hop.dst, minlength=30)
        assert (counts == np.minimum(k, csr.degree)).all()
        msgs = np.stack([hop.dst, hop.src, hop.rel], 1)
        assert len(np.unique(msgs, axis=0)) == len(msgs)


def test_deterministic_and_seed_dependent():
    edges = random_graph(n=20, e=300, seed=5)
    csr = CSRGraph.from_edges(edges, 20, num_relations=4)
    a = sample_computation_graph(csr, [1, 2], [3, 3], seed=0)
    b = sample_computation_graph(csr, [1, 2], [3, 3], seed=0)
    c = sample_computation_graph(csr, [1, 2], [3, 3], seed=1)
    for k in (1, 2):
        assert np.array_equal(a.global_triples(k), b.global_triples(k))
    assert as_set(a, 1) != as_set(c, 1)


def test_smaller_fanout_is_nested_in_larger():
    edges = random_graph(n=20, e=300, seed=6)
    csr = CSRGraph.from_edges(edges, 20, num_relations=4)
    big = sample_computation_graph(csr, [3], [6], seed=2)
    small = sample_computation_graph(csr, [3], [2], seed=2)
    assert as_set(small, 1) < as_set(big, 1)


def test_subgraph_with_local_ids_reproduces_the_full_sample():
    """A graph holding only the sampled triples (+ unrelated ones), renumbered locally, with
    node_ids mapping back to global ids, draws exactly the same computation graph."""
    edges = random_graph(n=60, e=900, r=5, seed=8)
    csr = CSRGraph.from_edges(edges, 60, num_relations=5)
    seeds = np.array([3, 9, 41])
    full = sample_computation_graph(csr, seeds, [4, 3], seed=13)
    used = np.unique(np.concatenate([h.eid for h in full.hops]))
    rng = np.random.default_rng(0)
    extra = rng.choice(len(edges), 50, replace=False)
    keep = np.union1d(used, extra)
    sub = edges[keep]
    ids = np.unique(sub[:, [0, 2]])
    ids = rng.permutation(np.union1d(ids, seeds))          # arbitrary local numbering
    to_local = np.full(60, -1)
    to_local[ids] = np.arange(len(ids))
    local = np.stack([to_local[sub[:, 0]], sub[:, 1], to_local[sub[:, 2]]], 1)
    part = CSRGraph.from_edges(local, len(ids), num_relations=5, node_ids=ids)
    cg = sample_computation_graph(part, to_local[seeds], [4, 3], seed=13)
    assert np.array_equal(cg.global_nodes, full.global_nodes)
    for k in (1, 2):
        assert np.array_equal(cg.global_triples(k), full.global_triples(k))


def test_chunking_does_not_change_the_sample():
    edges = random_graph(n=50, e=600, seed=9)
    csr = CSRGraph.from_edges(edges, 50, num_relations=4)
    a = sample_computation_graph(csr, np.arange(50), [5, 2], seed=4)
    b = sample_computation_graph(csr, np.arange(50), [5, 2], seed=4, chunk_messages=7)
    for k in (1, 2):
        assert np.array_equal(a.global_triples(k), b.global_triples(k))


def test_layerwise_rgcn_equals_full_graph_rgcn():
    """Exact mode: a 2-layer RGCN run layer by layer on the computation graph gives the seeds
    the same output as the same RGCN on the whole graph."""
    import torch
    from torch_geometric.nn import RGCNConv

    torch.manual_seed(0)
    edges = random_graph(n=30, e=120, r=3, seed=10)
    csr = CSRGraph.from_edges(edges, 30, num_relations=3)
    x = torch.randn(30, 8)
    convs = [RGCNConv(8, 8, 6), RGCNConv(8, 4, 6)]
    ei = torch.from_numpy(np.concatenate([edges[:, [0, 2]].T, edges[:, [2, 0]].T], 1))
    et = torch.from_numpy(np.concatenate([edges[:, 1], edges[:, 1] + 3]))
    full = convs[1](torch.relu(convs[0](x, ei, et)), ei, et)
    seeds = np.array([4, 0, 22])
    cg = sample_computation_graph(csr, seeds, [-1, -1], seed=0)
    h = x[torch.from_numpy(cg.nodes)]
    for i, (hop, n_src, n_dst) in enumerate(cg.gnn_layers()):
        h = convs[i]((h[:n_src], h[:n_dst]), hop.edge_index, hop.edge_type)
        if i == 0:
            h = torch.relu(h)
    assert torch.allclose(h[torch.from_numpy(cg.seed_index)], full[torch.from_numpy(seeds)],
                          atol=1e-5)


def test_parse_fanouts():
    assert parse_fanouts("25,10") == [25, 10]
    assert parse_fanouts("-1") == [-1]
    with pytest.raises(ValueError):
        parse_fanouts("0,3")


def test_nodes_with_the_same_neighbours_pick_the_same_senders():
    """Keys rank senders by one shared random order (LABOR-style), so two nodes with identical
    neighbourhoods draw identical senders, while each sample stays a k-subset."""
    hubs = np.arange(2)
    leaves = np.arange(2, 52)
    edges = np.concatenate([np.stack([leaves, np.zeros(50, int), np.full(50, h)], 1)
                            for h in hubs])
    csr = CSRGraph.from_edges(edges, 52, num_relations=1)
    cg = sample_computation_graph(csr, hubs, [5], seed=3)
    hop = cg.hops[0]
    picked = [set(cg.nodes[hop.src[hop.dst == i]].tolist()) for i in range(2)]
    assert len(picked[0]) == 5 and picked[0] == picked[1]
    other = sample_computation_graph(csr, hubs, [5], seed=4)
    assert set(other.nodes[other.hops[0].src[other.hops[0].dst == 0]].tolist()) != picked[0]


def test_fast_and_keyed_paths_agree_exactly():
    edges = random_graph(n=80, e=1500, r=5, seed=12)
    fast = CSRGraph.from_edges(edges, 80, num_relations=5, seed=21)
    other = CSRGraph.from_edges(edges[::-1], 80, num_relations=5, seed=3)   # other input order
    seeds = np.array([4, 50, 61, 4])
    a = sample_computation_graph(fast, seeds, [4, 2])                        # fast path
    b = sample_computation_graph(other, seeds, [4, 2], seed=21)             # keyed path
    assert np.array_equal(a.nodes, b.nodes)
    for k in (1, 2):
        assert as_set(a, k) == as_set(b, k)


def test_keys_are_unique_per_receiver():
    edges = random_graph(n=30, e=600, r=3, seed=2)
    csr = CSRGraph.from_edges(edges, 30, num_relations=3, seed=9)
    keys = edge_keys(9, None, csr.src, csr.rel)
    dst = np.repeat(np.arange(30), csr.degree)
    assert len(np.unique(np.stack([dst, keys.astype(np.int64)], 1), axis=0)) == len(keys)
    for v in range(30):        # segments are sorted by key
        seg = keys[csr.indptr[v]:csr.indptr[v + 1]]
        assert (np.diff(seg.astype(np.float64)) >= 0).all() and (seg[1:] > seg[:-1]).all()


@pytest.mark.parametrize("fanouts", [[4, 2], [2, 5], [-1, 3], [3, -1], [2, 2, 2]])
def test_computation_graph_messages_is_the_union_of_the_hops(fanouts):
    from kg_ops.sampling import computation_graph_messages

    edges = random_graph(n=70, e=700, r=4, seed=14)
    csr = CSRGraph.from_edges(edges, 70, num_relations=4, seed=6)
    seeds = np.array([1, 8, 30, 31])
    cg = sample_computation_graph(csr, seeds, fanouts)
    pos, depth = computation_graph_messages(csr, seeds, fanouts)
    msgs = {(int(csr.src[p]), int(csr.rel[p]), int(np.searchsorted(csr.indptr, p, "right") - 1))
            for p in pos}
    assert len(msgs) == len(pos)
    assert msgs == set().union(*(as_set(cg, k + 1) for k in range(len(fanouts))))
    want = np.full(70, -1)
    for d in range(len(cg.sizes)):
        lo = 0 if d == 0 else cg.sizes[d - 1]
        want[cg.nodes[lo:cg.sizes[d]]] = d
    assert np.array_equal(depth, want)


def test_segment_order_matches_the_two_sort_reference():
    """The packed single sort (with relation tie-breaks for multi-relation pairs) orders every
    segment exactly like sorting by the full key."""
    from kg_ops.sampling import group_by, segment_key_order

    rng = np.random.default_rng(4)
    n = 50
    pairs = rng.integers(0, n, (400, 2))
    rel = rng.integers(0, 6, 400)
    rel = np.concatenate([rel, rel])                      # same pairs again with other rels
    pairs = np.concatenate([pairs, pairs])
    rel[400:] = (rel[400:] + 1 + rng.integers(0, 4, 400)) % 6
    msgs = np.unique(np.stack([pairs[:, 1], pairs[:, 0], rel], 1), axis=0)
    msgs = msgs[rng.permutation(len(msgs))]
    dst, src, r = msgs[:, 0], msgs[:, 1], msgs[:, 2]
    got = segment_key_order(dst, src, r, n, seed=3)
    want = group_by(dst, np.argsort(edge_keys(3, None, src, r), kind="stable"), n)
    assert np.array_equal(msgs[got], msgs[want])


def test_union_edge_index_has_every_hop_message_once():
    edges = random_graph(n=40, e=300, seed=15)
    cg = sample_computation_graph(CSRGraph.from_edges(edges, 40, num_relations=4), [2, 9], [3, 2])
    ei, et = cg.edge_index()
    got = set(zip(ei[0].tolist(), et.tolist(), ei[1].tolist(), strict=True))
    want = {(int(s), int(r), int(d)) for h in cg.hops
            for s, r, d in zip(h.src, h.rel, h.dst, strict=True)}
    assert got == want and len(got) == ei.shape[1]


def test_reused_workspace_gives_the_same_graphs_and_is_left_clean():
    edges = random_graph(n=60, e=500, seed=3)
    csr = CSRGraph.from_edges(edges, 60, num_relations=4, seed=2)
    work = np.full(60, -1, dtype=np.int64)
    rng = np.random.default_rng(0)
    for _ in range(5):
        seeds = rng.integers(0, 60, 12)
        a = sample_computation_graph(csr, seeds, [3, 2])
        b = sample_computation_graph(csr, seeds, [3, 2], workspace=work)
        assert (work == -1).all()
        np.testing.assert_array_equal(a.nodes, b.nodes)
        np.testing.assert_array_equal(a.seed_index, b.seed_index)
        for ha, hb in zip(a.hops, b.hops, strict=True):
            for x, y in ((ha.src, hb.src), (ha.dst, hb.dst), (ha.rel, hb.rel)):
                np.testing.assert_array_equal(x, y)

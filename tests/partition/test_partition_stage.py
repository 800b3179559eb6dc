"""``kgops partition`` end to end on small graphs: ownership, held-out edges, self-sufficiency,
determinism, storage on local disk and S3."""

from __future__ import annotations

import numpy as np
import pytest

from kg_ops.cli import main
from kg_ops.config import PartitionConfig
from kg_ops.errors import KGOpsError
from kg_ops.graph.kg import KnowledgeGraph, load_edges
from kg_ops.graph.schema import GraphSchema, NodeType, Relation
from kg_ops.manifest import Stage, StageInputError
from kg_ops.partition.cli import partition
from kg_ops.partition.io import PartitionError, load_partition, load_partitions_manifest
from kg_ops.sampling import CSRGraph, sample_computation_graph

N_PERSON, N_ITEM = 120, 80


def make_graph(uri: str, seed: int = 0, n_edges: int = 1500) -> dict[str, np.ndarray]:
    """Two node types, three relations with typed ends, a skewed degree distribution, one
    duplicated training triple and one training triple that leaks into test."""
    rng = np.random.default_rng(seed)
    schema = GraphSchema("tiny", [NodeType("person", N_PERSON, 0),
                                  NodeType("item", N_ITEM, N_PERSON)],
                         [Relation("knows", "person", "person"),
                          Relation("likes", "person", "item"),
                          Relation("similar", "item", "item")])
    w = rng.pareto(1.5, N_PERSON + N_ITEM) + 1
    person = lambda n: rng.choice(N_PERSON, n, p=w[:N_PERSON] / w[:N_PERSON].sum())  # noqa: E731
    item = lambda n: N_PERSON + rng.choice(N_ITEM, n, p=w[N_PERSON:] / w[N_PERSON:].sum())  # noqa: E731
    k = n_edges // 3
    e = np.concatenate([np.stack([person(k), np.zeros(k, int), person(k)], 1),
                        np.stack([person(k), np.ones(k, int), item(k)], 1),
                        np.stack([item(k), np.full(k, 2), item(k)], 1)])
    e = np.unique(e, axis=0)
    e = e[rng.permutation(len(e))]
    n_eval = len(e) // 10
    splits = {"valid": e[:n_eval], "test": e[n_eval:2 * n_eval], "train": e[2 * n_eval:]}
    splits["train"] = np.concatenate([splits["train"], splits["train"][:1], splits["test"][:1]])
    with Stage("import", uri, announce=False):
        KnowledgeGraph(schema, splits).save(uri)
    return splits


def clean_train(splits) -> set[tuple[int, int, int]]:
    held = {tuple(x) for x in np.concatenate([splits["valid"], splits["test"]]).tolist()}
    return {tuple(x) for x in splits["train"].tolist()} - held


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    uri = str(tmp_path_factory.mktemp("g") / "graph")
    return uri, make_graph(uri)


def parts_of(uri: str) -> list:
    m = load_partitions_manifest(uri)
    return [load_partition(uri, p) for p in range(m["outputs"]["parts"])]


def triples(edges: np.ndarray, ids: np.ndarray) -> set[tuple[int, int, int]]:
    return {tuple(x) for x in
            np.stack([ids[edges[:, 0]], edges[:, 1], ids[edges[:, 2]]], 1).tolist()}


@pytest.mark.parametrize("method", ["metis", "random"])
def test_every_training_edge_owned_once_and_no_held_out_edge(graph, tmp_path, method):
    uri, splits = graph
    m = partition(PartitionConfig(graph=uri, parts=3, out=str(tmp_path / "p"), fanout="4,3",
                                  method=method, seed=1))
    parts = parts_of(str(tmp_path / "p"))
    owned = [p.global_core_edges() for p in parts]
    all_owned = np.concatenate(owned)
    assert len(all_owned) == len({tuple(x) for x in all_owned.tolist()})   # exactly once
    assert {tuple(x) for x in all_owned.tolist()} == clean_train(splits)
    held = {tuple(x) for x in np.concatenate([splits["valid"], splits["test"]]).tolist()}
    for p in parts:
        stored = triples(p.edges, p.global_ids)
        assert not stored & held
    assert m["counts"]["train_duplicates_removed"] == 1
    assert m["counts"]["train_in_valid_or_test_removed"] == 1
    assert m["counts"]["train_edges"] == len(clean_train(splits))


@pytest.mark.parametrize("fanout", ["-1,-1", "4,3"])
@pytest.mark.parametrize("method", ["metis", "random"])
def test_partitions_are_self_sufficient(graph, tmp_path, method, fanout):
    """For sampled core edges (plus negatives from the pool), the K-hop computation graph drawn
    inside the partition equals the one drawn from the full training graph."""
    uri, _ = graph
    out = str(tmp_path / "p")
    partition(PartitionConfig(graph=uri, parts=3, out=out, fanout=fanout, method=method, seed=5))
    m = load_partitions_manifest(out)
    full_edges = np.unique(load_edges(uri, "train"), axis=0)
    held = np.concatenate([load_edges(uri, "valid"), load_edges(uri, "test")])
    keep = ~(full_edges[:, None, :] == held[None, :, :]).all(-1).any(1)
    full = CSRGraph.from_edges(full_edges[keep], N_PERSON + N_ITEM, num_relations=3,
                               seed=5)
    fanouts = m["config"]["fanouts"]
    rng = np.random.default_rng(0)
    for part in parts_of(out):
        assert part.sampling == {"seed": 5, "fanouts": fanouts, "hops": 2}
        local = part.graph()
        batch = part.core_edges[rng.choice(len(part.core_edges), 10, replace=False)]
        negatives = rng.choice(part.negative_pool[1], 5)
        seeds = np.concatenate([batch[:, 0], batch[:, 2], negatives])
        a = sample_computation_graph(local, seeds, fanouts, seed=5)
        b = sample_computation_graph(full, part.global_ids[seeds], fanouts, seed=5)
        assert np.array_equal(a.global_nodes, b.global_nodes)
        for k in (1, 2):
            assert len(a.global_triples(k)) > 0
            assert np.array_equal(a.global_triples(k), b.global_triples(k))
        if fanout == "-1,-1":   # exact mode: the whole 2-hop neighbourhood is there
            hop2 = {tuple(x) for x in b.global_triples(2).tolist()}
            nbrs = {(h, r, t) for h, r, t in full_edges[keep].tolist()
                    if t in set(b.nodes[:b.sizes[1]].tolist())}
            assert {(h, r, t) for h, r, t in nbrs} <= {(s, r, d) for s, r, d in hop2}


def test_partition_contents_are_consistent(graph, tmp_path):
    uri, _ = graph
    out = str(tmp_path / "p")
    m = partition(PartitionConfig(graph=uri, parts=4, out=out, fanout="5,2", seed=3))
    parts = parts_of(out)
    offsets = np.array([0, N_PERSON, N_PERSON + N_ITEM])
    stored = 0
    for p in parts:
        assert len(np.unique(p.global_ids)) == p.num_nodes
        core_nodes = np.unique(p.core_edges[:, [0, 2]])
        assert np.array_equal(core_nodes, np.arange(p.num_core_nodes))      # core first
        assert np.array_equal(p.node_type, np.searchsorted(offsets, p.global_ids, "right") - 1)
        for t, pool in p.negative_pool.items():
            assert (pool < p.num_core_nodes).all() and (p.node_type[pool] == t).all()
        assert sum(len(v) for v in p.negative_pool.values()) == p.num_core_nodes
        # Halo edges are training edges not owned here, and never duplicate a core edge; a
        # halo edge needed at both hops (or by several core nodes) is stored once.
        assert not triples(p.halo_edges, p.global_ids) & triples(p.core_edges, p.global_ids)
        assert len(triples(p.halo_edges, p.global_ids)) == len(p.halo_edges)
        assert p.relation_tail_type.tolist() == [0, 1, 1]
        stored += len(p.core_edges) + len(p.halo_edges)
    train = m["counts"]["train_edges"]
    assert m["metrics"]["edge_replication_factor"] == pytest.approx(stored / train, abs=1e-3)
    core = np.array([len(p.core_edges) for p in parts])
    assert m["metrics"]["balance"] == pytest.approx(core.max() / core.mean(), abs=1e-3)
    assert m["metrics"]["speedup_bound"] == pytest.approx(4 * train / stored, abs=1e-3)
    parts_ = m["metrics"]["edge_replication_breakdown"]
    assert parts_["core"] + parts_["halo_hop1"] + parts_["halo_later_hops"] == pytest.approx(
        m["metrics"]["edge_replication_factor"], abs=2e-3)
    # Brute force for the first hop: halo edges incident to a core node among that node's
    # first 5 (= max fanout) messages in the full graph's key order.
    full = CSRGraph.from_edges(np.unique(np.concatenate([p.global_core_edges() for p in parts]),
                                         axis=0), N_PERSON + N_ITEM, 3, seed=3)
    want = 0
    for p in parts:
        halo = triples(p.halo_edges, p.global_ids)
        hop1 = set()
        for v in p.global_ids[:p.num_core_nodes]:
            for j in range(full.indptr[v], min(full.indptr[v + 1], full.indptr[v] + 5)):
                s, r = int(full.src[j]), int(full.rel[j])
                hop1.add((s, r, int(v)) if r < 3 else (int(v), r - 3, s))
        want += len(halo & hop1)
    assert parts_["halo_hop1"] == pytest.approx(want / train, abs=1e-3)
    for key in ("node_replication_factor", "halo_edges", "halo_nodes", "bytes_per_partition",
                "est_peak_worker_memory_bytes"):
        assert key in m["metrics"]


@pytest.mark.parametrize("method", ["metis", "random"])
def test_deterministic_for_a_fixed_seed(graph, tmp_path, method):
    uri, _ = graph
    runs = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        partition(PartitionConfig(graph=uri, parts=3, out=str(tmp_path / name), fanout="3,2",
                                  method=method, seed=seed))
        runs[name] = parts_of(str(tmp_path / name))
    for pa, pb in zip(runs["a"], runs["b"], strict=True):
        assert np.array_equal(pa.global_ids, pb.global_ids)
        assert np.array_equal(pa.core_edges, pb.core_edges)
        assert np.array_equal(pa.halo_edges, pb.halo_edges)
    assert any(not np.array_equal(pa.global_core_edges(), pc.global_core_edges())
               for pa, pc in zip(runs["a"], runs["c"], strict=True))


def test_s3_output(graph, s3_bucket):
    uri, splits = graph
    out = s3_bucket + "/runs/partition"
    m = partition(PartitionConfig(graph=uri, parts=2, out=out, fanout="3,3", seed=0))
    assert m["uri"] == out
    parts = parts_of(out)
    owned = np.concatenate([p.global_core_edges() for p in parts])
    assert {tuple(x) for x in owned.tolist()} == clean_train(splits)
    assert parts[1].uri == out + "/part-00001"


def test_cli_and_clear_errors(graph, tmp_path, capsys):
    uri, _ = graph
    out = str(tmp_path / "p")
    assert main(["partition", "--graph", uri, "--parts", "2", "--hops", "2", "--fanout", "3,2",
                 "--method", "metis", "--seed", "1", "--out", out]) == 0
    assert f"KGOPS_MANIFEST {out}/_manifest.json" in capsys.readouterr().out
    with pytest.raises(PartitionError, match="has 2 partitions"):
        load_partition(out, 2)
    with pytest.raises(StageInputError, match="no _manifest.json"):
        load_partition(str(tmp_path / "nothing"), 0)
    assert main(["partition", "--graph", uri, "--parts", "2", "--hops", "3",
                 "--fanout", "3,2", "--out", str(tmp_path / "q")]) == 2
    assert "--fanout '3,2' gives 2 values for --hops 3" in capsys.readouterr().err
    with pytest.raises(KGOpsError, match="no _manifest.json"):
        partition(PartitionConfig(graph=str(tmp_path / "no-graph"), parts=2,
                                  out=str(tmp_path / "r")))
    with pytest.raises(PartitionError, match="--features"):
        load_partition(out, 0).load_features()


def test_codex_s_import_then_partition(datasets, tmp_path):
    """A real import: CoDEx-S into 4 METIS partitions with fanout 25,10; every training edge
    owned once, and batches drawn inside a partition match the full graph."""
    graph = str(tmp_path / "codex-s")
    assert main(["import", "codex", "--root", str(datasets / "codex"), "--size", "s",
                 "--out", graph]) == 0
    out = str(tmp_path / "p")
    m = partition(PartitionConfig(graph=graph, parts=4, out=out, fanout="25,10", seed=0))
    train = np.unique(load_edges(graph, "train"), axis=0)
    assert m["counts"]["train_edges"] == len(train) == 32888
    parts = parts_of(out)
    owned = np.concatenate([p.global_core_edges() for p in parts])
    assert len(owned) == len(train)
    assert np.array_equal(np.unique(owned, axis=0), train)
    full = CSRGraph.from_edges(train, m["counts"]["nodes"], m["counts"]["relations"])
    rng = np.random.default_rng(1)
    for part in parts:
        batch = part.core_edges[rng.choice(len(part.core_edges), 64, replace=False)]
        seeds = np.concatenate([batch[:, 0], batch[:, 2]])
        a = sample_computation_graph(part.graph(), seeds, [25, 10], seed=0)
        b = sample_computation_graph(full, part.global_ids[seeds], [25, 10], seed=0)
        for k in (1, 2):
            assert np.array_equal(a.global_triples(k), b.global_triples(k))
    assert m["metrics"]["edge_replication_factor"] < 4.0


def write_features(uri: str, graph_uri: str) -> dict[str, np.ndarray]:
    """A features artifact in the encode stage's format, written with its own shard writer
    (running ``kgops encode`` needs Ray and attributes; the format is what matters here)."""
    from kg_ops.encode import features as F

    rng = np.random.default_rng(0)
    blocks, index = {}, []
    for node_type, attr, first, count, dim in (("person", "age", 0, N_PERSON, 2),
                                               ("item", "tags", N_PERSON, N_ITEM, 3)):
        ids = np.arange(first, first + count)[rng.random(count) < 0.8]   # some rows missing
        vals = rng.random((len(ids), dim)).astype(np.float32)
        blocks[attr] = (ids, vals)
        shard = F.write_shard(uri, F.shard_path(node_type, attr, 0),
                              F.dense_table(ids, vals, dim))
        index.append({"node_type": node_type, "attribute": attr, "kind": "numeric",
                      "dim": dim, "rows": len(ids), "shards": [shard["path"]],
                      "shard_rows": [shard["rows"]], "shard_id_ranges": [shard["id_range"]]})
    with Stage("encode", uri, announce=False) as st:
        st.store.write_json(st.uri(F.INDEX_NAME), {
            "format": F.FORMAT, "graph": graph_uri, "num_nodes": N_PERSON + N_ITEM,
            "blocks": index})
    return blocks


def test_features_reference_gives_each_partition_its_rows(graph, tmp_path):
    uri, _ = graph
    features = str(tmp_path / "features")
    blocks = write_features(features, uri)
    out = str(tmp_path / "p")
    m = partition(PartitionConfig(graph=uri, parts=2, out=out, fanout="3,2", features=features))
    assert m["inputs"]["features"]["uri"] == features
    for part in parts_of(out):
        assert part.features_uri == features
        got = {b.attribute: b for b in part.load_features()}
        assert set(got) == {"age", "tags"}
        for attr, (ids, vals) in blocks.items():
            mine = np.isin(ids, part.global_ids)
            assert np.array_equal(got[attr].node_ids, ids[mine])
            assert np.array_equal(got[attr].values, vals[mine])
            local = part.to_local(got[attr].node_ids)
            assert (local >= 0).all()
            assert np.array_equal(part.global_ids[local], got[attr].node_ids)
        assert part.to_local(np.array([10**9])).tolist() == [-1]
    est = m["metrics"]["est_peak_worker_memory_bytes"]["per_part"]
    plain = partition(PartitionConfig(graph=uri, parts=2, out=str(tmp_path / "q"), fanout="3,2"))
    assert all(a > b for a, b in zip(est, plain["metrics"]["est_peak_worker_memory_bytes"]
                                     ["per_part"], strict=True))


def test_more_parts_than_nodes_with_edges_is_refused(graph, tmp_path, capsys):
    uri, splits = graph
    train = np.concatenate([splits["train"]])
    owners = len(np.unique(train[:, [0, 2]]))     # every node of this graph has an edge
    assert main(["partition", "--graph", uri, "--parts", "500", "--fanout", "3,2",
                 "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert f"--parts 500 but only {owners} nodes of {uri} have training edges" in err
    assert f"Use --parts {owners} or fewer" in err
    assert not (tmp_path / "p" / "_manifest.json").exists()
    assert main(["partition", "--graph", uri, "--parts", "0", "--out", str(tmp_path / "q")]) == 2
    assert "--parts must be >= 1, got 0" in capsys.readouterr().err

"""``kgops synth``: determinism, schema coverage, split, sizes, and structure a GNN can learn.

Learnability is measured on the written files against the true communities
(``truth/communities.parquet``), each time next to a baseline computed independently of the
generator (random pairing, permuted communities), never assumed from the generator's settings.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from kg_ops.cli import main
from kg_ops.graph.kg import KnowledgeGraph
from kg_ops.graph.schema import ATTRIBUTE_KINDS
from kg_ops.graph.synth import NODE_TYPES, RELATIONS, generate, synthesize
from kg_ops.manifest import read_manifest
from kg_ops.store import get_store, join

NODES, EDGES, SEED, COMMUNITIES = 2000, 16000, 7, 8


def synth(out: str, *extra: str, nodes: int = NODES, edges: int = EDGES, seed: int = SEED) -> str:
    rc = main(["synth", "--nodes", str(nodes), "--edges", str(edges), "--seed", str(seed),
               "--communities", str(COMMUNITIES), "--out", out, *extra])
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> str:
    """One CLI run shared by the read-only tests below."""
    return synth(str(tmp_path_factory.mktemp("synth") / "graph"))


@pytest.fixture(scope="module")
def kg(small) -> KnowledgeGraph:
    return KnowledgeGraph.load(small)


@pytest.fixture(scope="module")
def community(small) -> np.ndarray:
    t = pq.read_table(Path(small) / "truth" / "communities.parquet")
    assert np.array_equal(t.column("id").to_numpy(), np.arange(NODES))
    return t.column("community").to_numpy()


def all_edges(kg: KnowledgeGraph) -> np.ndarray:
    return np.concatenate([kg.edges[s] for s in ("train", "valid", "test")])


def file_hashes(uri: str) -> dict[str, str]:
    store = get_store(uri)
    return {u[len(uri):]: store.sha256(u) for u in store.list(uri)
            if not u.endswith("_manifest.json")}


# --- determinism ----------------------------------------------------------------------------
def test_same_seed_same_files_other_seed_differs(small, tmp_path):
    again = synth(str(tmp_path / "again"))
    assert file_hashes(again) == file_hashes(small)
    assert read_manifest(again)["counts"] == read_manifest(small)["counts"]

    other = KnowledgeGraph.load(synth(str(tmp_path / "other"), seed=SEED + 1))
    mine = KnowledgeGraph.load(small)
    assert not np.array_equal(all_edges(other), all_edges(mine))
    assert not other.nodes["person"].column("bio").equals(mine.nodes["person"].column("bio"))


def test_generate_is_a_deterministic_library_call():
    a, b, c = generate(600, 3000, 3), generate(600, 3000, 3), generate(600, 3000, 4)
    for s in ("train", "valid", "test"):
        assert np.array_equal(a.edges[s], b.edges[s])
    assert all(a.nodes[t].equals(b.nodes[t]) for t in a.nodes)
    assert not np.array_equal(a.edges["train"], c.edges["train"])
    assert not a.nodes["document"].equals(c.nodes["document"])


# --- schema and storage ---------------------------------------------------------------------
def test_schema_covers_all_kinds_with_different_schemas_per_type(kg, small):
    schema = kg.schema
    kinds = {a.kind for t in schema.node_types for a in t.attributes}
    assert kinds == set(ATTRIBUTE_KINDS)
    per_type = [frozenset(a.kind for a in t.attributes) for t in schema.node_types]
    assert len(set(per_type)) >= 3, "node types should not all share one attribute schema"
    assert schema.source["source"] == "synth"
    manifest = read_manifest(small)
    assert manifest["stage"] == "import" and manifest["config"]["source"] == "synth"
    assert manifest["validation"]["ok"] is True

    storage = {"text": pa.types.is_string, "categorical": pa.types.is_string,
               "numeric": pa.types.is_float64,
               "multilabel": lambda ty: pa.types.is_list(ty) and pa.types.is_string(ty.value_type),
               # Parquet has no seconds unit: timestamp[s] comes back as timestamp[ms]
               "date": lambda ty: pa.types.is_timestamp(ty) and ty.tz == "UTC"}
    missing_by_kind = dict.fromkeys(ATTRIBUTE_KINDS, 0)
    for t in schema.node_types:
        table = kg.nodes[t.name]
        assert table.column_names == ["id", "key"] + [a.name for a in t.attributes]
        assert np.array_equal(table.column("id").to_numpy(), np.arange(t.offset,
                                                                       t.offset + t.count))
        assert table.column("key").null_count == 0
        assert len(set(table.column("key").to_pylist())) == t.count
        for a in t.attributes:
            assert storage[a.kind](table.schema.field(a.name).type), (t.name, a.name)
            missing_by_kind[a.kind] += table.column(a.name).null_count
            assert table.column(a.name).null_count < 0.1 * t.count
            if a.kind == "multilabel":  # a null list hides no labels in the child array
                col = table.column(a.name).combine_chunks()
                lengths = np.diff(col.offsets.to_numpy())
                assert not lengths[col.is_null().to_numpy(zero_copy_only=False)].any()
    # a small share of missing values, of every kind, for the encoders' missing-value policy
    assert all(n > 0 for n in missing_by_kind.values()), missing_by_kind


def test_five_relations_and_every_edge_respects_head_tail_types(kg):
    schema = kg.schema
    assert [(r.name, r.head, r.tail) for r in schema.relations] == \
        [(n, h, t) for n, h, t, _, _ in RELATIONS]
    head_t, tail_t = schema.relation_head_tail_types()
    e = all_edges(kg)
    assert e.min() >= 0 and e[:, [0, 2]].max() < schema.num_nodes
    assert set(np.unique(e[:, 1])) == set(range(5))
    assert np.array_equal(schema.type_of(e[:, 0]), head_t[e[:, 1]])
    assert np.array_equal(schema.type_of(e[:, 2]), tail_t[e[:, 1]])
    assert not np.any(e[:, 0] == e[:, 2]), "no self-loops"


# --- split and sizes ------------------------------------------------------------------------
def test_split_is_80_10_10_with_valid_test_entities_in_train(kg, small):
    e = all_edges(kg)
    key = (e[:, 0] * 5 + e[:, 1]) * NODES + e[:, 2]
    assert len(set(key.tolist())) == len(e) == EDGES, "distinct edges, no overlap of splits"
    moved = read_manifest(small)["counts"]["moved_to_train"]
    assert len(kg.edges["train"]) == round(0.8 * EDGES) + moved
    assert len(kg.edges["valid"]) + len(kg.edges["test"]) == round(0.2 * EDGES) - moved
    assert abs(len(kg.edges["valid"]) - len(kg.edges["test"])) <= moved + 1
    seen = np.zeros(NODES, dtype=bool)
    seen[kg.edges["train"][:, [0, 2]].ravel()] = True
    for s in ("valid", "test"):
        assert seen[kg.edges[s][:, [0, 2]]].all()


def test_requested_sizes_are_met(kg, small):
    """Node count is exact. Edge sampling draws duplicates and self-loops, which are redrawn in
    top-up rounds, so the edge count is exact too unless a relation runs out of allowed pairs
    (next test): the tolerance here is zero."""
    assert kg.schema.num_nodes == NODES
    counts = {t.name: t.count for t in kg.schema.node_types}
    for t in NODE_TYPES:
        assert abs(counts[t.name] - t.share * NODES) <= 1
    per_rel = np.bincount(all_edges(kg)[:, 1], minlength=5)
    for (name, _, _, share, _), n in zip(RELATIONS, per_rel, strict=True):
        assert abs(n - share * EDGES) <= 1, name
    c = read_manifest(small)["counts"]
    assert c["edges_total"] == EDGES and c["edges_shortfall"] == 0
    assert c["edges"] == {s: len(kg.edges[s]) for s in ("train", "valid", "test")}


def test_a_shortfall_is_reported_not_hidden(caplog):
    # 200 communities of ~2 persons and within=1.0: collaborates_with runs out of pairs
    with caplog.at_level(logging.WARNING):
        res = synthesize(1000, 10000, 1, communities=200, within=1.0)
    c = res.counts
    assert c["edges_shortfall"] > 0
    assert c["edges_total"] + c["edges_shortfall"] == 10000
    assert sum(c["relation_types"].values()) == c["edges_total"] == sum(c["edges"].values())
    assert "collaborates_with reached" in caplog.text


@pytest.mark.parametrize("argv, words", [
    (["--nodes", "100", "--edges", "100000"], ["too dense", "works_in", "fewer edges"]),
    (["--nodes", "10", "--edges", "10"], ["--nodes must be >= 50, got 10"]),
    (["--nodes", "1000", "--edges", "100", "--text-fraction", "1.5"],
     ["--text-fraction must be <= 1, got 1.5"]),
    (["--nodes", "1000", "--edges", "100", "--communities", "0"],
     ["--communities must be >= 1, got 0"]),
    (["--nodes", "100", "--edges", "100", "--communities", "101"],
     ["--communities 101: must be between 1 and --nodes (100)"]),
])
def test_bad_requests_are_clear_errors(tmp_path, capsys, argv, words):
    out = tmp_path / "g"
    assert main(["synth", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words), err
    assert not (out / "_manifest.json").exists()


# --- learnable structure --------------------------------------------------------------------
def test_edges_stay_mostly_inside_communities(kg, small, community):
    e = all_edges(kg)
    inside = float(np.mean(community[e[:, 0]] == community[e[:, 2]]))
    rng = np.random.default_rng(0)
    random_pairing = []
    for _ in range(20):  # same heads, same tails per relation, paired at random
        t = e[:, 2].copy()
        for r in range(5):
            sel = np.flatnonzero(e[:, 1] == r)
            t[sel] = t[rng.permutation(sel)]
        random_pairing.append(np.mean(community[e[:, 0]] == community[t]))
    baseline = float(np.mean(random_pairing))
    assert inside > 0.7 and inside > 3 * baseline, (inside, baseline)
    m = read_manifest(small)["metrics"]
    assert m["within_community_edge_fraction"] == pytest.approx(inside, abs=1e-6)
    assert m["within_community_random_baseline"] == pytest.approx(baseline, abs=0.02)


def test_degrees_are_heavy_tailed(kg):
    """Per node type, the degree variance/mean ratio is far above a Poisson sample's (~1), the
    ratio the same number of edges would give if every node were equally likely."""
    degree = np.bincount(all_edges(kg)[:, [0, 2]].ravel(), minlength=NODES)
    rng = np.random.default_rng(0)
    for t in kg.schema.node_types:
        d = degree[t.offset:t.offset + t.count]
        poisson = rng.poisson(d.mean(), size=(20, t.count))
        baseline = (poisson.var(axis=1) / poisson.mean(axis=1)).max()
        assert d.var() / d.mean() > 3 * baseline, (t.name, d.var() / d.mean(), baseline)


def _mutual_information(c: np.ndarray, v: np.ndarray) -> float:
    """MI (nats) between two integer-coded variables, from their contingency table."""
    _, v = np.unique(v, return_inverse=True)
    joint = np.bincount(c * (v.max() + 1) + v, minlength=(c.max() + 1) * (v.max() + 1))
    joint = joint.reshape(c.max() + 1, v.max() + 1) / len(c)
    pc_, pv = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    nz = joint > 0
    return float((joint[nz] * np.log(joint[nz] / (pc_ @ pv)[nz])).sum())


def _codes(column: pa.ChunkedArray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(row, integer code) pairs of the non-missing values; text and multilabel give one pair
    per word/label, numeric and date values are binned into deciles."""
    if kind in ("text", "multilabel"):
        lists = pc.split_pattern(column, " ") if kind == "text" else column
        lists = lists.combine_chunks()
        rows = pc.list_parent_indices(lists).to_numpy()
        values = pc.list_flatten(lists)
        return rows, pc.dictionary_encode(values).indices.to_numpy()
    valid = np.flatnonzero(column.is_valid().to_numpy(zero_copy_only=False))
    values = column.take(pa.array(valid))
    if kind == "categorical":
        return valid, pc.dictionary_encode(values).combine_chunks().indices.to_numpy()
    x = values.cast(pa.int64() if kind == "date" else pa.float64()).to_numpy()
    return valid, np.searchsorted(np.quantile(x, np.linspace(0.1, 0.9, 9)), x)


def test_every_attribute_depends_on_the_community(kg, community):
    """Mutual information between a node's community and each attribute's values (words and
    labels one by one; numbers and dates in deciles), against shuffled communities."""
    rng = np.random.default_rng(0)
    for t in kg.schema.node_types:
        comm = community[t.offset:t.offset + t.count]
        for a in t.attributes:
            rows, codes = _codes(kg.nodes[t.name].column(a.name), a.kind)
            real = _mutual_information(comm[rows], codes)
            # plug-in MI is biased upwards on small samples (40 departments): compare with
            # the same estimate under 20 random community assignments
            shuffled = [_mutual_information(rng.permutation(comm)[rows], codes)
                        for _ in range(20)]
            assert real > max(shuffled), (t.name, a.name, real, max(shuffled))
            assert real - np.mean(shuffled) > 0.15, (t.name, a.name, real, np.mean(shuffled))


# --- object storage -------------------------------------------------------------------------
def test_writes_to_s3(s3_bucket, small):
    uri = join(s3_bucket, "graphs", "synth")
    synth(uri)
    store = get_store(uri)
    assert store.exists(join(uri, "_manifest.json"))
    remote, local = KnowledgeGraph.load(uri), KnowledgeGraph.load(small)
    for s in ("train", "valid", "test"):
        assert np.array_equal(remote.edges[s], local.edges[s])
    assert all(remote.nodes[t].equals(local.nodes[t]) for t in local.nodes)
    assert store.exists(join(uri, "truth", "communities.parquet"))

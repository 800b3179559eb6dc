"""The evaluate stage end to end on a tiny two-type graph with a hand-set model: every number in
the manifest equals the brute force, every output exists with the expected content, locally and
on the S3 server."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from kg_ops.config import EvaluateConfig
from kg_ops.errors import KGOpsError
from kg_ops.evaluate.auc import sample_negatives
from kg_ops.evaluate.filters import FilterIndex
from kg_ops.evaluate.ranking import TAIL, candidate_ranges
from kg_ops.evaluate.run import evaluate_model
from kg_ops.graph.kg import KnowledgeGraph, edges_to_table
from kg_ops.graph.schema import GraphSchema, NodeType, Relation
from kg_ops.manifest import Stage, read_manifest
from kg_ops.store import get_store, join

from .test_ranking import Bilinear, brute_ranks

torch.set_num_threads(1)
EVIL = "<script>alert(1)</script> & co"


class HandModel:
    """The trained-model interface over hand-set embeddings and relation matrices."""

    def __init__(self, emb, mats, history=()):
        self.emb, self.bil, self.history = emb, Bilinear(mats), list(history)
        self.config = {"model": "hand-set bilinear", "dim": int(emb.shape[1])}

    def embed_all(self, batch_size=1024):
        return self.emb

    def score_tails(self, h_emb, rel, cand):
        return self.bil.score_tails(h_emb, rel, cand)

    def score_heads(self, t_emb, rel, cand):
        return self.bil.score_heads(t_emb, rel, cand)

    def score(self, h_emb, rel, t_emb):
        return torch.einsum("bd,bde,be->b", h_emb, self.bil.mats[rel], t_emb)


def tiny_graph(root: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    schema = GraphSchema(
        name="tiny", node_types=[NodeType("person", 12, 0), NodeType("city", 6, 12)],
        relations=[Relation("lives_in", "person", "city"), Relation("knows", "person", "person"),
                   Relation(EVIL, "city", "city")])
    m = 150
    r = rng.integers(0, 3, m)
    h = np.where(r == 2, rng.integers(12, 18, m), rng.integers(0, 12, m))
    t = np.where(r == 1, rng.integers(0, 12, m), rng.integers(12, 18, m))
    trip = np.unique(np.stack([h, r, t], 1), axis=0)
    trip = trip[rng.permutation(len(trip))]
    edges = {"test": trip[:25], "valid": trip[25:40], "train": trip[40:]}
    nodes = {"person": pa.table({"id": np.arange(12), "key": [f"Q{i}" for i in range(12)]}),
             "city": pa.table({"id": np.arange(12, 18)[::-1].copy(),   # stored out of order
                               "key": [f"city-{i}" for i in range(17, 11, -1)]})}
    uri = join(root, "graph")
    hard = np.array([[0, 0, 12], [1, 1, 2], [13, 2, 14], [3, 0, 17], [4, 1, 5]])
    with Stage("import", uri, announce=False) as st:  # hard negatives as CoDEx ships them
        KnowledgeGraph(schema, edges, nodes).save(uri)
        st.store.write_parquet(join(uri, "negatives", "test.parquet"), edges_to_table(hard))
    emb = torch.from_numpy(rng.integers(-1, 2, (18, 3)).astype(np.float32))
    mats = torch.from_numpy(rng.integers(-1, 2, (3, 3, 3)).astype(np.float32))
    history = [{"epoch": e, "loss": 1 / (e + 1), "valid_mrr_sampled": 0.1 * e,
                "edges_per_s": 1000.0 + e, "epoch_s": 1.0} for e in range(1, 5)]
    model_uri = join(root, "model")
    with Stage("train", model_uri, announce=False) as st:  # provenance only: a hand-set model
        st.store.write_json(st.uri("history.json"), history)
    return uri, model_uri, schema, edges, HandModel(emb, mats, history)


def test_stage_numbers_equal_brute_force_and_outputs_are_complete(artifact_root, capsys):
    graph_uri, model_uri, schema, edges, model = tiny_graph(artifact_root)
    out = join(artifact_root, "eval")
    man = evaluate_model(model, EvaluateConfig(model=model_uri, graph=graph_uri, out=out,
                                               batch_size=4, auc_negatives=3, seed=5))

    # Ranking numbers against the brute force (all entities and type-constrained).
    alltrip = np.concatenate([edges[s] for s in ("train", "valid", "test")])
    known = {tuple(map(int, x)) for x in alltrip}
    test = [tuple(map(int, x)) for x in edges["test"]]
    emb = model.emb

    def score(h, r, t):
        return model.bil.one(emb, h, r, t)

    rows = brute_ranks(score, 18, test, known)
    real = np.array([(o + p) / 2 for *_, o, p in rows])
    met = man["metrics"]
    assert met["mrr"] == pytest.approx(np.mean(1 / real))
    for k in (1, 3, 10):
        assert met[f"hits@{k}"] == pytest.approx(np.mean(real <= k))
    ranges = candidate_ranges(schema)
    tc = brute_ranks(score, 18, test, known, lo_hi=lambda r, side: tuple(ranges[r, side]))
    assert met["tc_mrr"] == pytest.approx(np.mean([2 / (o + p) for *_, o, p in tc]))
    assert ranges[0, TAIL].tolist() == [12, 18]

    # AUC against the pairwise definition on the same seeded negatives.
    neg = sample_negatives(edges["test"], FilterIndex(alltrip, 18, 3), ranges, k=3, seed=5)
    s_pos = [score(*x) for x in test]
    s_neg = [score(*map(int, x)) for x in neg.triples]
    pairs = [1.0 if p > q else 0.5 if p == q else 0.0 for p in s_pos for q in s_neg]
    assert met["auc"] == pytest.approx(np.mean(pairs))
    s_hard = [score(0, 0, 12), score(1, 1, 2), score(13, 2, 14), score(3, 0, 17), score(4, 1, 5)]
    pairs = [1.0 if p > q else 0.5 if p == q else 0.0 for p in s_pos for q in s_hard]
    assert met["auc_hard_negatives"] == pytest.approx(np.mean(pairs))
    assert "5 shipped negatives" in man["protocol"]["auc_hard_negatives"]

    # Per-relation table: manifest, metrics.json and Parquet agree with the brute force.
    store = get_store(out)
    table = pq.read_table(io.BytesIO(store.read_bytes(join(out, "per_relation.parquet"))))
    assert table.column("relation").to_pylist() == ["lives_in", "knows", EVIL]
    for r in range(3):
        mine = [2 / (o + p) for _, _, rr, _, o, p in rows if rr == r]
        assert table.column("queries")[r].as_py() == len(mine)
        if mine:
            assert table.column("mrr")[r].as_py() == pytest.approx(np.mean(mine))
    doc = json.loads(store.read_bytes(join(out, "metrics.json")))
    assert doc["metrics"]["mrr"] == met["mrr"]
    assert doc["per_relation"] == man["per_relation"]

    # Protocol record.
    proto = man["protocol"]
    assert proto["split"] == "test" and proto["triples_evaluated"] == 25
    assert proto["filter_triples"]["unique"] == len(alltrip)
    assert "optimistic + pessimistic" in proto["ties"]
    assert proto["auc_negatives"]["seed"] == 5 and proto["auc_negatives"]["per_positive"] == 3
    assert man["inputs"]["model"]["uri"].endswith("model")

    # Embedding export: one row per node in id order with its own key and type.
    emb_t = pq.read_table(io.BytesIO(store.read_bytes(join(out, "embeddings.parquet"))))
    assert emb_t.column_names == ["id", "key", "node_type", "embedding"]
    assert emb_t.column("id").to_pylist() == list(range(18))
    assert emb_t.column("key").to_pylist()[10:14] == ["Q10", "Q11", "city-12", "city-13"]
    assert emb_t.column("node_type").to_pylist() == ["person"] * 12 + ["city"] * 6
    vec = np.stack(emb_t.column("embedding").to_numpy(zero_copy_only=False))
    assert np.array_equal(vec, emb.numpy())

    # Report: self-contained, the expected sections, user text escaped, PNGs written.
    page = store.read_bytes(join(out, "report.html")).decode()
    for section in ("<h2>Metrics</h2>", "<h2>Protocol</h2>", "<h2>Model</h2>",
                    "<h2>Training curves</h2>",
                    "<h2>Per-relation MRR</h2>", "data:image/png;base64,"):
        assert section in page
    assert page.count("data:image/png;base64,") == 2
    assert EVIL not in page and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in page
    for png in ("training_curves.png", "per_relation_mrr.png"):
        assert store.read_bytes(join(out, png)).startswith(b"\x89PNG")

    printed = capsys.readouterr().out
    assert f"mrr                {met['mrr']:.4f}" in printed
    assert "KGOPS_MANIFEST" in printed and "lives_in" in printed
    assert read_manifest(out)["stage"] == "evaluate"

    # Same inputs and config: the complete run is reused, not recomputed.
    # (the options as keywords, as the benchmarks call it, are the same config)
    again = evaluate_model(model, model_uri=model_uri, graph_uri=graph_uri, out=out,
                           batch_size=4, auc_negatives=3, seed=5)
    assert again["created_at"] == man["created_at"] and again["metrics"] == met


def test_subsample_valid_split_and_no_history(tmp_path):
    graph_uri, model_uri, _, edges, model = tiny_graph(str(tmp_path), seed=1)
    model.history = []
    man = evaluate_model(model, EvaluateConfig(model=model_uri, graph=graph_uri,
                                               out=str(tmp_path / "eval"), split="valid",
                                               max_queries=1))
    assert man["counts"]["triples"] == 1 and man["counts"]["queries"] == 2
    assert man["protocol"]["subsample"].startswith("1 of 15 triples")
    assert "auc_hard_negatives" not in man["metrics"]  # the graph ships none for valid
    # One triple covers one relation: the others have no metrics, stored as null (strict JSON).
    empty = [r for r in man["per_relation"] if r["queries"] == 0]
    assert len(empty) == 2 and all(r["mrr"] is None and r["auc"] is None for r in empty)

    def no_nan(c):
        raise AssertionError(f"non-standard JSON constant {c}")

    json.loads((tmp_path / "eval" / "metrics.json").read_text(), parse_constant=no_nan)
    json.loads((tmp_path / "eval" / "_manifest.json").read_text(), parse_constant=no_nan)
    page = (tmp_path / "eval" / "report.html").read_text()
    assert "recorded no per-epoch history" in page
    assert not (tmp_path / "eval" / "training_curves.png").exists()


def test_bad_inputs_fail_clearly_without_a_manifest(tmp_path):
    graph_uri, model_uri, _, _, model = tiny_graph(str(tmp_path))
    small = HandModel(model.emb[:10], model.bil.mats)
    out = str(tmp_path / "eval")
    with pytest.raises(KGOpsError, match="embeds 10 entities but .* has 18"):
        evaluate_model(small, EvaluateConfig(model=model_uri, graph=graph_uri, out=out))
    assert read_manifest(out) is None
    with pytest.raises(KGOpsError, match="has no _manifest.json"):
        evaluate_model(model, EvaluateConfig(model=model_uri, graph=str(tmp_path / "nograph"),
                                             out=out))

"""``kgops embed``: a trained model applied to other versions of its graph.

The model's weights are seeded random, not trained: what is tested is how embeddings are
computed (which rows, which features, which neighbours), which does not depend on training.
The graph, its encoders, features and partitions come from the real stages."""

from __future__ import annotations

import copy

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from kg_ops.config import EncodeConfig, EvaluateConfig, PartitionConfig
from kg_ops.config.fold_in import FoldIn
from kg_ops.embed.cli import embed
from kg_ops.encode.cli import encode
from kg_ops.evaluate.run import evaluate_model
from kg_ops.manifest import Stage
from kg_ops.models.link_predictor import LinkPredictor, ModelConfig
from kg_ops.models.trained import load_trained
from kg_ops.partition.cli import partition
from kg_ops.store import join
from kg_ops.train.checkpoints import save_torch
from kg_ops.train.cli import feature_dims

from .conftest import base_items, save_version

torch.set_num_threads(1)


def write_model(uri: str, graph: str, parts: str, features: str, num_nodes: int,
                fanouts=(3, 2), seed: int = 0) -> str:
    """A `kgops train`-format artifact holding seeded random RGCN weights."""
    cfg = ModelConfig(model="rgcn", num_nodes=num_nodes, num_relations=2, embedding_dim=8,
                      hidden_dim=8, out_dim=8, num_layers=len(fanouts),
                      feature_dims=feature_dims(features))
    torch.manual_seed(seed)
    model = LinkPredictor(cfg)
    with torch.no_grad():   # non-zero biases: a zero input must not give a zero output
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    with Stage("train", uri, announce=False) as st:
        save_torch(st.uri("model.pt"), model.state_dict())
        st.store.write_json(st.uri("model_config.json"), {
            **cfg.to_dict(), "graph": graph, "partitions": parts, "features": features,
            "training": {"fanouts": list(fanouts), "sample_seed": 0}})
        st.store.write_json(st.uri("history.json"), [])
    return uri


@pytest.fixture(scope="module")
def setup(ray_local, tmp_path_factory):
    root = str(tmp_path_factory.mktemp("embed"))
    v1 = base_items()
    graph = save_version(join(root, "v1"), v1)
    features = join(root, "features")
    encode(EncodeConfig(graph=graph, out=features, workers=1, threads_per_worker=1, bins=4,
                        tabular_min_cells=1))
    parts = join(root, "parts")
    partition(PartitionConfig(graph=graph, parts=2, out=parts, fanout="3,2", seed=0,
                              features=features))
    model = write_model(join(root, "model"), graph, parts, features, len(v1["keys"]))
    return {"root": root, "v1": v1, "graph": graph, "features": features, "model": model}


def _emb(out: str) -> dict:
    t = pq.read_table(join(out, "embeddings.parquet")).to_pylist()
    return {r["key"]: r for r in t}


def test_unchanged_graph_equals_evaluate_export(setup):
    ev = join(setup["root"], "evaluation")
    evaluate_model(load_trained(setup["model"]),
                   EvaluateConfig(model=setup["model"], graph=setup["graph"], out=ev))
    out = join(setup["root"], "embed-same")
    manifest = embed(setup["model"], setup["graph"], out)
    a = pq.read_table(join(ev, "embeddings.parquet"))
    b = pq.read_table(join(out, "embeddings.parquet"))
    assert b.column_names == a.column_names + ["inductive"]
    assert b.drop_columns(["inductive"]).equals(a)      # row for row, bit for bit
    assert not any(b.column("inductive").to_pylist())
    assert manifest["counts"]["kept"] == 60 and manifest["counts"]["new"] == 0


def _version_with_new(v1: dict, color="green", size=7.5, neighbours=("item-3", "item-4"),
                      unrelated=None) -> dict:
    """v1 plus two new items: 'new-a' (attributes, edges to ``neighbours``) and 'new-b' (no
    attributes, edges to item-5); ``unrelated`` changes a far item's attributes."""
    v = copy.deepcopy(v1)
    v["keys"] += ["new-a", "new-b"]
    v["color"] += [color, None]
    v["size"] += [size, None]
    v["edges"] += [("new-a", "near", n) for n in neighbours] + [("new-b", "like", "item-5")]
    if unrelated is not None:
        v["color"][unrelated], v["size"][unrelated] = "black", 99.0
    return v


def _far_item(setup, v: dict, new=("new-a",)) -> int:
    """An old item more than 2 hops (the GNN's depth) from the ``new`` items in ``v``'s train
    edges."""
    train = v["edges"][20:]
    near = set(new)
    for _ in range(3):
        near |= {t for h, _, t in train if h in near} | {h for h, _, t in train if t in near}
    return next(i for i, k in enumerate(v["keys"]) if k not in near and v["color"][i])


def test_new_entities_from_attributes_and_neighbours(setup):
    """Through the GNN alone (no fold-in, which reads every entity as a candidate)."""
    root, v1, model = setup["root"], setup["v1"], setup["model"]

    def run(name, v):
        g = save_version(join(root, name), v)
        out = join(root, f"embed-{name}")
        return embed(model, g, out, fold=FoldIn(0)), _emb(out)

    base_v = _version_with_new(v1)
    m, base = run("v2", base_v)
    assert m["counts"] == {"old_entities": 60, "new_entities": 62, "kept": 60, "new": 2,
                           "removed": 0}
    assert base["new-a"]["inductive"] and base["new-b"]["inductive"]
    assert not base["item-3"]["inductive"]
    ea = np.array(base["new-a"]["embedding"])
    changed_attr = run("v3", _version_with_new(v1, color="red", size=15.0))[1]
    assert not np.allclose(changed_attr["new-a"]["embedding"], ea)
    changed_nb = run("v4", _version_with_new(v1, neighbours=("item-3", "item-8")))[1]
    assert not np.allclose(changed_nb["new-a"]["embedding"], ea)
    far = _far_item(setup, base_v)
    unrelated = run("v5", _version_with_new(v1, unrelated=far))[1]
    assert not np.allclose(unrelated[f"item-{far}"]["embedding"],
                           base[f"item-{far}"]["embedding"])      # the change is real
    assert np.array_equal(unrelated["new-a"]["embedding"], ea)   # and does not reach new-a


def test_fold_in_fits_new_entities_and_keeps_the_rest(setup):
    """The default embed fits the new rows to their edges: new entities move, and an old item
    beyond the GNN's reach of every new entity keeps its embedding bit for bit."""
    root, v1, model = setup["root"], setup["v1"], setup["model"]
    v = _version_with_new(v1)
    g = save_version(join(root, "v8"), v)
    plain, folded = join(root, "embed-v8-plain"), join(root, "embed-v8-folded")
    embed(model, g, plain, fold=FoldIn(0))
    manifest = embed(model, g, folded)
    a, b = _emb(plain), _emb(folded)
    for key in ("new-a", "new-b"):
        assert not np.allclose(a[key]["embedding"], b[key]["embedding"]), key
    far = _far_item(setup, v, new=("new-a", "new-b"))
    assert np.array_equal(a[f"item-{far}"]["embedding"], b[f"item-{far}"]["embedding"])
    fold = manifest["fold_in"]
    assert fold["steps"] == FoldIn.steps and fold["entities"] == 2
    assert fold["edges"] == 3 and fold["loss_last"] < fold["loss_first"]


def test_new_entity_without_attributes_starts_at_type_mean(setup):
    from kg_ops.models.inductive import for_graph

    trained = load_trained(setup["model"])
    g = save_version(join(setup["root"], "v6"), _version_with_new(setup["v1"]))
    inductive, table = for_graph(trained, g)
    rows = inductive.model.inputs.embedding.weight
    old = trained.model.inputs.embedding.weight
    assert torch.equal(rows[61], old.mean(0))                    # new-b: the type's mean row
    keys = table.column("key").to_pylist()
    for new_id, old_id in zip(table.column("new_id").to_pylist(),
                              table.column("old_id").to_pylist(), strict=True):
        if old_id >= 0:
            assert torch.equal(rows[new_id], old[old_id]), keys[new_id]


def test_evaluate_inductive_cli(setup):
    """``kgops evaluate --inductive`` ranks a newer version's test edges through embed's path
    and records it in the protocol."""
    import json

    from kg_ops.cli import main

    v = _version_with_new(setup["v1"])
    g = save_version(join(setup["root"], "v7"), v)
    out = join(setup["root"], "eval-v7")
    assert main(["evaluate", "--model", setup["model"], "--graph", g, "--out", out]) == 2
    assert main(["evaluate", "--model", setup["model"], "--graph", g, "--out", out,
                 "--inductive"]) == 0
    with open(join(out, "metrics.json")) as fh:
        protocol = json.load(fh)["protocol"]
    assert protocol["inductive"]["entities"]["new"] == 2
    assert protocol["inductive"]["trained_on"] == setup["graph"]

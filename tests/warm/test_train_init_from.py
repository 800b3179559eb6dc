"""``kgops train --init-from``: real Ray Train runs on two versions of a keyed graph.

With ``lr=dense_lr=1e-9`` (the row optimisers refuse 0) training cannot move a weight by more than ~1e-9 per
step, so the trained model is its initial state to 1e-6: that shows exactly what the warm start
loaded (rows mapped by key, new rows at the type mean, every other weight copied)."""

from __future__ import annotations

import copy

import pytest
import torch

from kg_ops.config import PartitionConfig, TrainConfig
from kg_ops.config.fold_in import FoldIn
from kg_ops.graph.versions import match_graphs
from kg_ops.models.trained import load_trained
from kg_ops.partition.cli import partition
from kg_ops.store import join
from kg_ops.train.cli import train

from .conftest import base_items, save_version

pytestmark = pytest.mark.slow
COMMON = {"model": "rgcn", "batch_size": 64, "patience": 0, "embedding_dim": 8,
          "hidden_dim": 8, "out_dim": 8, "valid_triples": 0}


def config(root: str, version: str, out: str, **options) -> TrainConfig:
    return TrainConfig(partitions=join(root, f"parts-{version}"), out=join(root, out),
                       **COMMON, **options)


@pytest.fixture(scope="module")
def versions(ray_local, tmp_path_factory):
    root = str(tmp_path_factory.mktemp("warm"))
    v1 = base_items()
    v2 = copy.deepcopy(v1)           # today: item-7 removed, two items added, keys reordered
    drop = v2["keys"].index("item-7")
    for k in ("keys", "color", "size"):
        del v2[k][drop]
    v2["edges"] = [e for e in v2["edges"] if "item-7" not in (e[0], e[2])]
    v2["keys"] = ["new-1"] + v2["keys"][::-1] + ["new-2"]
    v2["color"] = ["red"] + v2["color"][::-1] + [None]
    v2["size"] = [1.0] + v2["size"][::-1] + [None]
    v2["edges"] += [("new-1", "near", "item-3"), ("new-2", "like", "item-4")]
    out = {}
    for name, v in (("v1", v1), ("v2", v2)):
        g = save_version(join(root, name), v)
        partition(PartitionConfig(graph=g, parts=1, out=join(root, f"parts-{name}"),
                                  fanout="3,2", seed=0))
        out[name] = g
    first = train(config(root, "v1", "m1", epochs=2))
    warm = train(config(root, "v2", "m2", epochs=3, lr=1e-9, dense_lr=1e-9, warm_patience=1,
                        init_from=first["uri"]))
    folded = train(config(root, "v2", "m4", epochs=1, lr=1e-9, dense_lr=1e-9,
                          init_from=first["uri"], warm_fold_in_steps=FoldIn.steps))
    forced = train(config(root, "v2", "m3", epochs=1, lr=1e-9, dense_lr=1e-9, init_from=first["uri"],
                          max_drift=0.01))
    return {"root": root, **out, "first": first, "warm": warm, "forced": forced,
            "folded": folded}


def test_warm_start_maps_weights_by_key(versions):
    ws = versions["warm"]["warm_start"]
    assert ws["used"] and ws["chain"] == 1 and ws["reason"] is None
    assert ws["entities"] == {"old_entities": 60, "new_entities": 61, "kept": 59, "new": 2,
                              "removed": 1}
    assert versions["warm"]["counts"]["entities_new"] == 2
    old, new = load_trained(versions["first"]["uri"]), load_trained(versions["warm"]["uri"])
    mapping, _ = match_graphs(versions["v1"], versions["v2"])
    w_old = old.model.inputs.embedding.weight
    w_new = new.model.inputs.embedding.weight
    for i, j in enumerate(mapping.new_to_old.tolist()):
        assert torch.allclose(w_new[i], w_old[j] if j >= 0 else w_old.mean(0), atol=1e-6)
    for name, p in old.model.state_dict().items():       # every other weight copied as is
        if name != "inputs.embedding.weight":
            assert torch.allclose(new.model.state_dict()[name], p, atol=1e-6), name


def test_warm_start_folds_in_the_new_entities_on_request(versions):
    """``--warm-fold-in-steps`` fits the new rows to their edges before training (as `kgops
    embed` does; the default keeps the mean rows); the kept rows are loaded as they were."""
    fold = versions["folded"]["warm_start"]["fold_in"]
    assert fold["steps"] == FoldIn.steps and fold["entities"] == 2 and fold["edges"] == 2
    assert fold["loss_last"] < fold["loss_first"]
    assert versions["warm"]["warm_start"]["fold_in"]["steps"] == 0
    old, new = load_trained(versions["first"]["uri"]), load_trained(versions["folded"]["uri"])
    mapping, _ = match_graphs(versions["v1"], versions["v2"])
    w_old = old.model.inputs.embedding.weight
    w_new = new.model.inputs.embedding.weight
    for i, j in enumerate(mapping.new_to_old.tolist()):
        if j >= 0:
            assert torch.allclose(w_new[i], w_old[j], atol=1e-6)
        else:
            assert not torch.allclose(w_new[i], w_old.mean(0), atol=1e-3)


def test_drift_guard_trains_from_scratch(versions):
    ws = versions["forced"]["warm_start"]
    assert not ws["used"] and ws["chain"] == 0
    assert "entities changed by 5.0% > 1%" in ws["reason"]
    assert "training edges changed" in ws["reason"]
    old = load_trained(versions["first"]["uri"]).model.state_dict()
    new = load_trained(versions["forced"]["uri"]).model.state_dict()
    assert not torch.allclose(new["decoder.rel"], old["decoder.rel"], atol=1e-3)   # fresh


def test_periodic_full_retrain(versions):
    from kg_ops.train.warm import plan_warm_start

    cfg = load_trained(versions["warm"]["uri"]).model.cfg.to_dict()
    ws = plan_warm_start(versions["warm"]["uri"], versions["v2"], cfg, None, retrain_every=2)
    assert ws.state is None and not ws.info["used"]
    assert "1 warm starts in a row: full retrain every 2 runs" in ws.info["reason"]
    again = plan_warm_start(versions["warm"]["uri"], versions["v2"], cfg, None,
                            retrain_every=3)
    assert again.info["used"] and again.info["chain"] == 2


def test_warm_start_carries_the_optimizer_state_by_key(versions):
    """Adagrad's accumulated squares come from the previous run's best epoch, rows mapped by
    key (new entities start with none, as a fresh optimiser), and the warm run continues them
    (squares only grow), at this run's learning rate."""
    from kg_ops.train.checkpoints import checkpoint_uri, load_torch
    from kg_ops.train.warm import plan_warm_start

    first = versions["first"]
    best = first["metrics"]["best_epoch"]
    old_sum = load_torch(checkpoint_uri(first["uri"], best))["optimizer"]["parts"]["table"][
        "state"][0]["sum"]
    mapping, _ = match_graphs(versions["v1"], versions["v2"])
    cfg = load_trained(first["uri"]).model.cfg.to_dict()
    ws = plan_warm_start(first["uri"], versions["v2"], cfg, None, optimizer="adagrad")
    assert ws.info["optimizer_state"] == checkpoint_uri(first["uri"], best)
    carried = ws.optimizer["parts"]["table"]["state"][0]["sum"]
    for i, j in enumerate(mapping.new_to_old.tolist()):
        expected = old_sum[j] if j >= 0 else torch.zeros(old_sum.shape[1])
        assert torch.equal(carried[i], expected), i
    assert versions["warm"]["warm_start"]["optimizer_state"] == ws.info["optimizer_state"]

    warm = versions["warm"]
    after = load_torch(checkpoint_uri(warm["uri"], 1))["optimizer"]
    assert (after["parts"]["table"]["state"][0]["sum"] >= carried).all()
    assert after["parts"]["table"]["param_groups"][0]["lr"] == pytest.approx(1e-9)
    adam = plan_warm_start(first["uri"], versions["v2"], cfg, None, optimizer="adam")
    assert adam.optimizer is None and "used --optimizer adagrad" in adam.info["optimizer_state"]


def test_warm_start_validates_its_start_and_stops_after_warm_patience(versions):
    """Epoch 0 is the mapped model validated before any training: its MRR is `kgops
    evaluate`'s filtered ranking of the validation triples by those weights (its checkpoint).
    The best epoch may be 0 (then model.pt is the start), and --warm-patience 1 ends the run
    one epoch after the best."""
    import numpy as np

    from kg_ops.evaluate.filters import FilterIndex
    from kg_ops.evaluate.ranking import overall_metrics, rank_queries
    from kg_ops.graph.kg import load_edges, load_schema
    from kg_ops.store import get_store
    from kg_ops.train.checkpoints import checkpoint_uri, load_torch

    warm = versions["warm"]
    history = get_store(warm["uri"]).read_json(join(warm["uri"], "history.json"))
    assert history[0]["epoch"] == 0 and history[0]["loss"] is None
    assert all(h["loss"] > 0 for h in history[1:])
    mrrs = [h["valid_mrr_sampled"] for h in history]
    best = int(np.argmax(mrrs))                     # the first of the best
    assert warm["metrics"]["best_epoch"] == best
    assert warm["metrics"]["epochs"] == len(history) - 1 == min(3, best + 1)
    assert warm["metrics"]["stopped_early"] == (best + 1 < 3)
    assert warm["config"]["warm_start"]["warm_patience"] == 1

    graph = versions["v2"]
    schema = load_schema(graph)
    edges = {s: load_edges(graph, s) for s in ("train", "valid", "test")}
    filters = FilterIndex(np.concatenate(list(edges.values())), schema.num_nodes,
                          schema.num_relations)
    trained = load_trained(warm["uri"])
    trained.model.load_state_dict(load_torch(checkpoint_uri(warm["uri"], 0))["model"])
    trained.model.eval()
    with torch.inference_mode():
        res = rank_queries(trained.embed_all(), trained, edges["valid"], filters)
    assert mrrs[0] == pytest.approx(overall_metrics(res)["mrr"], abs=1e-6)

"""A recipe's known memory, added up before anything is allocated: the terms match what a real
model and optimiser hold, a recipe that cannot fit stops with the terms and what to change
(in the worker, before the partition is read; in the planner, before calibrating), and the
default recipe on the published system's 2.8M-entity graph is one of them."""

from __future__ import annotations

import pathlib
import re

import pytest
import torch

from kg_ops.config import TrainConfig
from kg_ops.errors import KGOpsError
from kg_ops.models.link_predictor import LinkPredictor, ModelConfig
from kg_ops.train.memory import RecipeTooLarge, available_bytes, check_fits, footprint, local_batch
from kg_ops.train.optim import TrainingOptimizer, sparse_parameters

TINY = {"model": "rgcn", "num_nodes": 50, "num_relations": 3, "embedding_dim": 8,
        "hidden_dim": 6, "out_dim": 10, "num_layers": 2, "num_bases": 2}
DEFAULTS = TrainConfig(partitions="-", out="-").resolved()
GIB = 2**30


def _held_bytes(model_config: dict, optimizer: str) -> int:
    """Independently: a real model and optimiser after one step on a gradient for every
    parameter (every table row), counted tensor by tensor."""
    torch.manual_seed(0)
    model = LinkPredictor(ModelConfig.from_dict(model_config))
    opt = TrainingOptimizer(model, lr=0.1, optimizer=optimizer)
    sparse = {id(p) for p in sparse_parameters(model)}
    for p in model.parameters():
        if id(p) in sparse:
            rows = torch.arange(p.shape[0])
            p.grad = torch.sparse_coo_tensor(rows[None], torch.ones_like(p.detach()), p.shape)
        else:
            p.grad = torch.ones_like(p)
    opt.step()
    params = sum(p.nbytes for p in model.parameters())
    dense_grads = sum(p.grad.nbytes for p in model.parameters() if id(p) not in sparse)
    state = sum(t.nbytes for o in opt.parts.values() for s in o.state.values()
                for t in s.values() if torch.is_tensor(t) and t.dim() > 0)
    return params + dense_grads + state


@pytest.mark.parametrize("optimizer", ["adagrad", "adam"])
@pytest.mark.parametrize("model", ["rgcn", "complex"])
def test_footprint_counts_what_a_real_model_and_optimiser_hold(optimizer, model):
    cfg = {**TINY, "model": model}
    terms = footprint(cfg, "softmax", optimizer, batch=16)
    assert sum(terms.values()) == _held_bytes(cfg, optimizer)
    assert not any("1vsall" in k for k in terms)


def test_1vsall_adds_the_encoded_table_and_the_scores():
    softmax = footprint(TINY, "softmax", "adagrad", batch=16)
    one_vs_all = footprint(TINY, "1vsall", "adagrad", batch=16)
    extra = {k: v for k, v in one_vs_all.items() if k not in softmax}
    # every entity encoded at out_dim, with its gradient; 16 queries x 50 scores, both sides
    assert sorted(extra.values()) == sorted([2 * 4 * 50 * 10, 2 * 4 * 16 * 50])


def test_sharded_1vsall_holds_a_share_of_the_entities_and_every_workers_queries():
    softmax = footprint(TINY, "softmax", "adagrad", batch=16)
    sharded = footprint(TINY, "1vsall", "adagrad", batch=16, workers=3)
    extra = {k: v for k, v in sharded.items() if k not in softmax}
    # ceil(50 / 3) = 17 entities encoded at out_dim with their gradient; 3 x 16 queries x 17
    # scores, both sides; the 2 x 48 anchors and query vectors, with their gradients
    assert sorted(extra.values()) == sorted([2 * 4 * 17 * 10, 2 * 4 * 48 * 17,
                                             4 * 4 * 2 * 48 * 10])


def test_a_recipe_that_does_not_fit_names_its_terms_and_what_to_change():
    terms = {"entity table (9 x 9)": 3 * GIB, "its adagrad state": 3 * GIB}
    check_fits(terms, 6 * GIB)                       # exactly fits
    check_fits(terms, 12 * GIB, workers_here=2)
    with pytest.raises(RecipeTooLarge) as err:
        check_fits(terms, 8 * GIB, workers_here=2, where="worker 1's node")
    msg = str(err.value)
    assert msg.startswith("the training recipe needs at least 6.00 GiB per worker, and worker "
                          "1's node has 4.00 GiB available for each of its 2 workers:")
    assert re.search(r"3\.00 GiB\s+entity table \(9 x 9\)", msg)
    assert "--embedding-dim" in msg and "--loss softmax" in msg
    assert isinstance(err.value, KGOpsError)          # settled as a deterministic error


def test_the_default_recipe_fits_codex_m_but_not_the_papers_graph():
    def default(num_nodes: int, workers: int) -> dict[str, int]:
        model = {"model": DEFAULTS.model, "num_nodes": num_nodes, "num_relations": 51,
                 "embedding_dim": DEFAULTS.embedding_dim, "hidden_dim": DEFAULTS.hidden_dim,
                 "out_dim": DEFAULTS.out_dim, "num_layers": 2, "num_bases": DEFAULTS.num_bases,
                 "decoder": DEFAULTS.decoder}
        return footprint(model, DEFAULTS.loss, DEFAULTS.optimizer,
                         local_batch(DEFAULTS.batch_size, workers), workers)
    check_fits(default(17_050, 2), 1 * GIB, workers_here=2)      # CoDEx-M: ~0.3 GiB each
    papers = default(2_800_000, 8)
    assert sum(papers.values()) > 24 * GIB        # the entity table and its state: 21 GiB
    with pytest.raises(RecipeTooLarge):
        check_fits(papers, 24 * GIB)


def test_available_memory_is_this_machines():
    meminfo = dict(line.split(":", 1)
                   for line in pathlib.Path("/proc/meminfo").read_text().splitlines())
    total = int(meminfo["MemTotal"].split()[0]) * 1024
    avail = available_bytes()
    assert 0 < avail <= total
    block = torch.ones(2 * GIB // 4)                # 2 GiB touched: less is available
    assert available_bytes() < avail - GIB
    del block


def test_training_stops_before_allocating_when_the_recipe_cannot_fit(planted, ray_local,
                                                                      tmp_path):
    """A real run whose tables would take terabytes: every worker stops before it reads its
    partition, and the driver says why once (a blind allocation would be killed)."""
    huge = 10**9
    with pytest.raises(KGOpsError) as err:
        from kg_ops.train.cli import train

        train(TrainConfig(partitions=planted["parts"][2], out=str(tmp_path / "model"),
                          epochs=1, embedding_dim=huge, out_dim=huge, workers=2))
    msg = str(err.value)
    assert re.match(r"training stopped: worker [01]: the training recipe needs at least "
                    r"\d+\.\d\d GiB per worker, and worker [01]'s node has", msg)
    assert "entity table (132 x 1000000000)" in msg and "Traceback" not in msg
    assert not (tmp_path / "model" / "_manifest.json").exists()


def test_the_planner_does_not_calibrate_a_recipe_that_cannot_fit(planted):
    from kg_ops.graph.kg import load_schema
    from kg_ops.partition.io import load_partitions_manifest
    from kg_ops.train.plan import describe, for_run, plan_partitions

    pm = load_partitions_manifest(planted["parts"][2])
    stats = pm["outputs"]["partitions"]
    plan = plan_partitions(stats, load_schema(planted["graph"]), [10, 5], 0,
                           available=2**20)
    assert plan["fits"] is False and "workers" not in plan
    assert plan["reason"].startswith("the training recipe needs at least")
    assert "the machine of the partition stage has 0.00 GiB available" in plan["reason"]
    assert describe(plan).startswith("plan: not measured, the training recipe needs")
    assert for_run(plan, 512, "1vsall", "rgcn") == describe(plan)


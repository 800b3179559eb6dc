"""The training optimiser: sparse embedding rows a batch did not touch stay exactly as they
were (lazy Adam), everything else moves; its state round-trips; an old dense-only state is
refused with a clear message."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kg_ops.errors import KGOpsError
from kg_ops.models.link_predictor import LinkPredictor, ModelConfig
from kg_ops.sampling import CSRGraph, sample_computation_graph
from kg_ops.train.optim import TrainingOptimizer, sparse_parameters


def _step(model, opt, csr, seeds):
    cg = sample_computation_graph(csr, seeds, [5, 5], seed=0)
    opt.zero_grad()
    z = model.encode_sampled(cg)
    z.pow(2).sum().backward()
    opt.step()
    return cg


def test_untouched_embedding_rows_stay_put_and_the_rest_moves():
    torch.manual_seed(0)
    edges = np.array([[0, 0, 1], [1, 1, 2], [2, 0, 3], [5, 1, 6], [6, 0, 7]])
    csr = CSRGraph.from_edges(edges, 10, 2)
    model = LinkPredictor(ModelConfig(model="rgcn", num_nodes=10, num_relations=2))
    assert [p.shape for p in sparse_parameters(model)] == [(10, 64)]
    opt = TrainingOptimizer(model, lr=0.1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cg = _step(model, opt, csr, np.array([1]))
    touched = np.sort(cg.nodes)                                       # 1's 2-hop: 0, 1, 2, 3
    emb = model.inputs.embedding.weight.detach()
    moved = (emb != before["inputs.embedding.weight"]).any(1).numpy()
    assert np.flatnonzero(moved).tolist() == touched.tolist() == [0, 1, 2, 3]
    root = model.encoder.convs[0].root
    assert not torch.equal(root, before["encoder.convs.0.root"])


def test_state_round_trips_and_old_dense_state_is_refused():
    torch.manual_seed(0)
    csr = CSRGraph.from_edges(np.array([[0, 0, 1], [1, 0, 2]]), 3, 1)
    model = LinkPredictor(ModelConfig(model="rgcn", num_nodes=3, num_relations=1))
    opt = TrainingOptimizer(model, lr=0.1, optimizer="adam")
    _step(model, opt, csr, np.array([0, 2]))
    state = opt.state_dict()
    again = TrainingOptimizer(model, lr=0.1, optimizer="adam")
    again.load_state_dict(state)
    assert set(state["parts"]) == {"table", "decoder", "encoder"}
    assert torch.equal(again.parts["table"].state_dict()["state"][0]["exp_avg"],
                       state["parts"]["table"]["state"][0]["exp_avg"])
    old = {"dense": torch.optim.Adam(model.parameters()).state_dict(), "sparse": None}
    with pytest.raises(KGOpsError, match="older kg_ops version"):
        again.load_state_dict(old, source="ckpt.pt")


@pytest.mark.parametrize(("ours", "torchs", "state_keys"), [
    ("RowAdam", torch.optim.SparseAdam, ("exp_avg", "exp_avg_sq")),
    ("RowAdagrad", torch.optim.Adagrad, ("sum",))])
def test_row_optimisers_are_torchs_bit_for_bit(ours, torchs, state_keys):
    """The row-wise optimisers only change how the touched rows are gathered: parameters and
    state equal torch's sparse optimiser exactly after several steps of uncoalesced gradients
    with repeated and disjoint rows."""
    from kg_ops.train import optim

    g = torch.Generator().manual_seed(0)
    start = torch.randn(30, 4, generator=g)
    a, b = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    opt_a, opt_b = getattr(optim, ours)([a], lr=0.05), torchs([b], lr=0.05)
    for step in range(5):
        rows = torch.randint(0, 30, (12,), generator=g)
        vals = torch.randn(12, 4, generator=g)
        for p in (a, b):
            p.grad = torch.sparse_coo_tensor(rows.unsqueeze(0), vals, (30, 4))
        opt_a.step()
        opt_b.step()
        assert torch.equal(a, b), step
    sa, sb = opt_a.state_dict()["state"][0], opt_b.state_dict()["state"][0]
    assert float(sa["step"]) == float(sb["step"]) == 5
    assert all(torch.equal(sa[k], sb[k]) for k in state_keys)
    assert not torch.equal(a, start)


def test_resuming_with_another_optimizer_is_refused():
    torch.manual_seed(0)
    csr = CSRGraph.from_edges(np.array([[0, 0, 1], [1, 0, 2]]), 3, 1)
    model = LinkPredictor(ModelConfig(model="rgcn", num_nodes=3, num_relations=1))
    opt = TrainingOptimizer(model, lr=0.1, optimizer="adam")
    _step(model, opt, csr, np.array([0, 2]))
    with pytest.raises(KGOpsError, match="trained with --optimizer adam"):
        TrainingOptimizer(model, lr=0.1).load_state_dict(opt.state_dict(), source="ckpt.pt")


def test_the_three_parameter_kinds_get_their_optimisers():
    """Adagrad (default): the table and the relation vectors at lr, the GNN weights by Adam at
    dense_lr; one plateau step scales them all."""
    from kg_ops.train.optim import RowAdagrad

    model = LinkPredictor(ModelConfig(model="rgcn", num_nodes=5, num_relations=2))
    opt = TrainingOptimizer(model, lr=0.1, dense_lr=0.001)
    table, decoder, encoder = (opt.parts[k] for k in ("table", "decoder", "encoder"))
    assert type(table) is RowAdagrad and type(decoder) is torch.optim.Adagrad
    assert type(encoder) is torch.optim.Adam
    ids = lambda o: {id(p) for g in o.param_groups for p in g["params"]}  # noqa: E731
    assert ids(decoder) == {id(p) for p in model.decoder.parameters()}
    assert ids(table) | ids(decoder) | ids(encoder) == {id(p) for p in model.parameters()}
    assert not (ids(table) & ids(decoder) or ids(decoder) & ids(encoder))
    assert (table.param_groups[0]["lr"], encoder.param_groups[0]["lr"]) == (0.1, 0.001)
    assert opt.scale_lr(0.5) == 0.05 and encoder.param_groups[0]["lr"] == 0.0005

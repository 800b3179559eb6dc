"""Fold-in (:mod:`kg_ops.models.fold_in`) on a hand-built two-type graph, no Ray: which
parameters move, that chunking does not change the step, and the gradient against a brute-force
loss written query by query."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kg_ops.config.fold_in import FoldIn
from kg_ops.config.options import ConfigError
from kg_ops.graph.schema import GraphSchema, NodeType, Relation
from kg_ops.models import fold_in as fold_module
from kg_ops.models.fold_in import fold_in, fold_in_edges
from kg_ops.models.link_predictor import LinkPredictor, ModelConfig
from kg_ops.sampling import CSRGraph

torch.set_num_threads(1)

# people 0..9 (type "person"), cities 10..19 ("city"); lives_in: person -> city,
# near: city -> city. People 7, 8, 9 and city 19 are the new entities.
SCHEMA = GraphSchema("tiny", [NodeType("person", 10, 0), NodeType("city", 10, 10)],
                     [Relation("lives_in", "person", "city"), Relation("near", "city", "city")])
EDGES = np.array([[p, 0, 10 + p % 5] for p in range(10)]
                 + [[10 + c, 1, 10 + (c + 1) % 10] for c in range(10)]
                 + [[7, 0, 19], [19, 1, 12]], dtype=np.int64)
NEW = np.zeros(20, dtype=bool)
NEW[[7, 8, 9, 19]] = True


def _model(kind: str, seed: int = 0, **over) -> LinkPredictor:
    cfg = ModelConfig(model=kind, num_nodes=20, num_relations=2, embedding_dim=8, hidden_dim=8,
                      out_dim=8, num_layers=2, decoder="complex", reciprocal=True,
                      residual=kind != "complex", **over)
    torch.manual_seed(seed)
    model = LinkPredictor(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval().requires_grad_(False)


def _run(model, steps: int = 5, lr: float = 0.1, context: float = 1.0) -> dict:
    csr = CSRGraph.from_edges(EDGES, 20, 2, seed=0)
    return fold_in(model, csr, None, SCHEMA, NEW, EDGES, FoldIn(steps, lr, context),
                   fanouts=[3, 2], seed=0)


@pytest.mark.parametrize("kind", ["rgcn", "complex"])
def test_fold_in_moves_only_the_new_rows_and_lowers_the_loss(kind):
    model = _model(kind)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = _run(model, steps=20)
    after = model.state_dict()
    for k, v in before.items():
        if k != "inputs.embedding.weight":
            assert torch.equal(after[k], v), k                    # the model stays frozen
    rows = after["inputs.embedding.weight"]
    assert torch.equal(rows[~torch.from_numpy(NEW)], before["inputs.embedding.weight"]
                       [~torch.from_numpy(NEW)])                  # kept rows as trained
    moved = (rows - before["inputs.embedding.weight"]).abs().sum(1) > 0
    assert moved[torch.from_numpy(NEW)].all()
    assert report["edges"] == 7 and report["entities"] == 4 and report["steps"] == 20
    assert report["context_edges"] == 7
    assert report["loss_last"] < report["loss_first"]
    assert not model.training and not rows.requires_grad


def test_fold_in_zero_steps_changes_nothing():
    model = _model("rgcn")
    before = model.inputs.embedding.weight.clone()
    assert _run(model, steps=0)["steps"] == 0
    assert torch.equal(model.inputs.embedding.weight, before)


def test_chunking_does_not_change_the_step(monkeypatch):
    whole = _model("rgcn")
    _run(whole, steps=3)
    chunked = _model("rgcn")
    monkeypatch.setattr(fold_module, "SCORE_CELLS", 2 * 20)      # 2 edges per chunk
    _run(chunked, steps=3)
    torch.testing.assert_close(chunked.inputs.embedding.weight, whole.inputs.embedding.weight,
                               rtol=0, atol=1e-6)


def _brute_force_loss(model, table: torch.Tensor, edges: np.ndarray) -> torch.Tensor:
    """The fold-in objective of a shallow model written query by query: each edge, both
    directions, cross-entropy of the answer against every entity of the relation's expected
    type other than the answer; mean over edges of the two directions' mean (no smoothing or
    penalty: the model is built without them)."""
    ids = {t.name: range(t.offset, t.offset + t.count) for t in SCHEMA.node_types}
    rel_types = {i: (r.head, r.tail) for i, r in enumerate(SCHEMA.relations)}
    dec = model.decoder
    terms = []
    for h, r, t in edges:
        head_type, tail_type = rel_types[int(r)]
        rel = torch.tensor([int(r)])
        per_side = []
        for anchor, answer, side_type, tails in ((h, t, tail_type, True),
                                                 (t, h, head_type, False)):
            cand = [int(answer)] + [e for e in ids[side_type] if e != answer]
            score = (dec.score_tails if tails else dec.score_heads)(
                table[[int(anchor)]], rel, table[cand])[0]
            per_side.append(-(score[0] - torch.logsumexp(score, 0)))
        terms.append((per_side[0] + per_side[1]) / 2)
    return torch.stack(terms).mean()


@pytest.mark.parametrize("context", [0.0, 100.0])
def test_gradient_matches_a_brute_force_loss(context):
    """The gradient one fold-in step accumulates (its private step function, so that the
    gradient itself is compared, not Adagrad's normalised update) equals the brute-force
    loss's on the new rows: over the new entities' own edges without context, and over every
    edge of the graph when the context sample takes them all."""
    model = _model("complex", regularization=0.0)
    own, ctx, weights = fold_in_edges(EDGES, NEW, context, seed=0)
    assert len(own) == 7 and len(ctx) == (0 if context == 0 else len(EDGES) - 7)
    table = model.inputs.embedding.weight.clone().requires_grad_(True)
    expected_loss = _brute_force_loss(model, table, np.concatenate([own, ctx]))
    expected_loss.backward()
    seeds = np.unique(np.concatenate([own, ctx])[:, [0, 2]])
    csr = CSRGraph.from_edges(EDGES, 20, 2, seed=0)
    cg = fold_module.sample_computation_graph(csr, seeds, [3, 2], 0)
    weight = model.inputs.embedding.weight.requires_grad_(True)
    queries = fold_module._Queries(SCHEMA, seeds, [(own, weights[0]), (ctx, weights[1])])
    loss = fold_module._step_gradient(model, csr, None, cg, queries, [3, 2], 0)
    assert loss == pytest.approx(float(expected_loss), rel=1e-5)
    new = torch.from_numpy(NEW)
    grad = weight.grad.to_dense() if weight.grad.is_sparse else weight.grad
    torch.testing.assert_close(grad[new], table.grad[new], rtol=1e-4, atol=1e-7)


def test_context_sample_stands_for_the_other_edges():
    own, ctx, (w_own, w_ctx) = fold_in_edges(EDGES, NEW, 0.5, seed=3)
    others = len(EDGES) - len(own)
    assert len(ctx) == 4 and not (NEW[ctx[:, 0]] | NEW[ctx[:, 2]]).any()
    assert w_own * len(own) + w_ctx * len(ctx) == pytest.approx(1.0)
    assert w_ctx / w_own == pytest.approx(others / len(ctx))
    again = fold_in_edges(EDGES, NEW, 0.5, seed=3)[1]
    assert np.array_equal(ctx, again)                      # seeded


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="steps must be >= 0"):
        FoldIn(-1, 0.1)
    with pytest.raises(ConfigError, match="lr > 0"):
        FoldIn(5, 0.0)
    with pytest.raises(ConfigError, match="context >= 0"):
        FoldIn(5, 0.1, -1.0)

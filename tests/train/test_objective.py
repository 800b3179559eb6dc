"""The tuned-KGE techniques against independent computations on tiny inputs: the 1-vs-all loss
(with label smoothing, reciprocal relations and N3) one query at a time, reciprocal relations
ranking like the direct head query, the N3 formula, relation prediction one triple at a time,
and the shallow models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kg_ops.models.decoders import ComplEx, DistMult
from kg_ops.models.link_predictor import LinkPredictor, ModelConfig
from kg_ops.train.negatives import TypedNegativeSampler

torch.set_num_threads(1)


def _brute_ce(true: float, cands: list[float], eps: float) -> float:
    """Cross-entropy with label smoothing over [true, cands], written out."""
    logits = [true] + cands
    lse = math.log(sum(math.exp(v) for v in logits))
    logp = [v - lse for v in logits]
    return (1 - eps) * -logp[0] + eps * -sum(logp) / len(logp)


@pytest.mark.parametrize("decoder", ["distmult", "complex"])
@pytest.mark.parametrize("reciprocal", [False, True])
@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_one_vs_all_loss_equals_per_query_cross_entropy(decoder, reciprocal, eps):
    """All entities of a 2-type graph as candidates (what ``--loss 1vsall`` gives), each query
    scored alone with the decoder's pairwise score, its answer against every entity of the
    expected type except itself."""
    torch.manual_seed(5)
    n, dim = 8, 6
    types = np.array([0, 0, 0, 0, 1, 1, 1, 1])             # pool: 0..3 type 0, 4..7 type 1
    head_type, tail_type = np.array([0, 1]), np.array([1, 1])
    sampler = TypedNegativeSampler({0: np.arange(4), 1: np.arange(4, 8)}, head_type, tail_type)
    pos = np.array([[0, 0, 4], [2, 0, 7], [5, 1, 6], [6, 1, 5]])
    cand, tail_ok, head_ok = sampler.shared_candidates(pos, 10**6, np.random.default_rng(0))
    assert sorted(cand.tolist()) == list(range(n))       # every entity of the types needed
    model = LinkPredictor(ModelConfig(model=decoder, num_nodes=n, num_relations=2,
                                      embedding_dim=dim, reciprocal=reciprocal,
                                      label_smoothing=eps, n3=0.0, regularization=0.0))
    z = torch.randn(n, dim)
    dec = model.decoder
    want = []
    for tail_side in (True, False):
        terms = []
        for h, r, t in pos.tolist():
            answer = t if tail_side else h
            expect = (tail_type if tail_side else head_type)[r]
            others = [e for e in range(n) if types[e] == expect and e != answer]

            def s(e, h=h, r=r, t=t, tail_side=tail_side):
                if tail_side:
                    return float(dec.score(z[[h]], torch.tensor([r]), z[[e]]))
                if reciprocal:    # (t, r^-1, e) with the second relation vector
                    q = dec._forward_query(z[[t]], dec.rel[[r + 2]])
                    return float((q * z[[e]]).sum())
                return float(dec.score(z[[e]], torch.tensor([r]), z[[t]]))
            terms.append(_brute_ce(s(answer), [s(e) for e in others], eps))
        want.append(sum(terms) / len(terms))
    got = model.softmax_loss(z, torch.from_numpy(pos), torch.from_numpy(cand),
                             torch.from_numpy(tail_ok), torch.from_numpy(head_ok))
    assert float(got) == pytest.approx((want[0] + want[1]) / 2, abs=1e-5)
    # The same loss from the 1-vs-all table (sharded 1vsall's form): the answers are rows of
    # ``z``, the masks say only which rows have the expected type.
    rel = pos[:, 1]
    table_ok = [torch.from_numpy(types[None, :] == expect[rel][:, None])
                for expect in (tail_type, head_type)]
    got = model.table_loss(z, torch.from_numpy(pos), *table_ok)
    assert float(got) == pytest.approx((want[0] + want[1]) / 2, abs=1e-5)


@pytest.mark.parametrize("eps", [0.0, 0.2])
@pytest.mark.parametrize("n3", [0.0, 0.1])
def test_table_loss_with_one_node_type_needs_no_mask(eps, n3):
    """One node type: ``table_loss`` without masks is the per-query cross-entropy of each
    answer against every other entity, plus N3."""
    torch.manual_seed(3)
    n = 7
    model = LinkPredictor(ModelConfig(model="complex", num_nodes=n, num_relations=2,
                                      embedding_dim=4, reciprocal=True, label_smoothing=eps,
                                      n3=n3, regularization=0.0))
    z = torch.randn(n, 4)
    pos = torch.tensor([[0, 0, 3], [6, 1, 2], [4, 0, 4]])     # a self-loop too
    dec = model.decoder
    want = 0.0
    for h, r, t in pos.tolist():
        tail = [float(dec.score(z[[h]], torch.tensor([r]), z[[e]])) for e in range(n)]
        q = dec._forward_query(z[[t]], dec.rel[[r + 2]])
        head = [float((q * z[[e]]).sum()) for e in range(n)]
        want += _brute_ce(tail[t], tail[:t] + tail[t + 1:], eps) / 2
        want += _brute_ce(head[h], head[:h] + head[h + 1:], eps) / 2
    want /= len(pos)
    if n3:
        want += n3 * float(model.n3(z[pos[:, 0]], pos[:, 1], z[pos[:, 2]]))
    assert float(model.table_loss(z, pos)) == pytest.approx(want, abs=1e-5)


@pytest.mark.parametrize("decoder", [DistMult, ComplEx])
def test_reciprocal_head_query_ranks_like_the_direct_head_query(decoder):
    """Hand-built graph: the reciprocal vector of each relation set to what the direct head
    query computes (DistMult: the same vector; ComplEx: its conjugate), so the head query
    through ``r^-1`` must give the direct head scores exactly, hence the same ranking."""
    torch.manual_seed(7)
    rec, direct = decoder(3, 8, reciprocal=True), decoder(3, 8)
    with torch.no_grad():
        direct.rel.copy_(rec.rel[:3])
        inv = rec.rel[:3].clone()
        if decoder is ComplEx:
            inv[:, 4:] = -inv[:, 4:]                  # conj(w_r)
        rec.rel[3:] = inv
    ent = torch.randn(10, 8)
    rel, t = torch.tensor([0, 1, 2, 1]), ent[[3, 5, 7, 9]]
    got, want = rec.score_heads(t, rel, ent), direct.score_heads(t, rel, ent)
    assert torch.allclose(got, want, atol=1e-5)
    assert torch.equal(got.argsort(1, descending=True), want.argsort(1, descending=True))
    # ... and each candidate's head score is the pairwise triple score (c, r, t)
    for b in range(4):
        for c in range(10):
            assert torch.isclose(got[b, c], direct.score(ent[[c]], rel[[b]], t[[b]])[0],
                                 atol=1e-5)
    # with trained (different) reciprocal vectors the head scores really use them
    with torch.no_grad():
        rec.rel[3:] = torch.randn(3, 8)
    assert not torch.allclose(rec.score_heads(t, rel, ent), want, atol=1e-3)


@pytest.mark.parametrize("decoder", ["distmult", "complex"])
def test_n3_equals_its_formula(decoder):
    """mean over the 2B queries of sum |h|^3 + |r|^3 + |t|^3, moduli of complex coordinates
    for ComplEx (re_i, im_i = coordinates i and i + d/2)."""
    torch.manual_seed(9)
    model = LinkPredictor(ModelConfig(model=decoder, num_nodes=6, num_relations=2,
                                      embedding_dim=4, reciprocal=True, n3=0.1))
    h, t = torch.randn(3, 4), torch.randn(3, 4)
    rel = torch.tensor([0, 1, 1])
    R = model.decoder.rel.detach()

    def mod3(x):
        x = x.tolist()
        if decoder == "distmult":
            return sum(abs(v) ** 3 for v in x)
        return sum((x[i] ** 2 + x[i + 2] ** 2) ** 1.5 for i in range(2))
    total = 0.0
    for i in range(3):
        r = int(rel[i])
        total += mod3(h[i]) + mod3(R[r]) + mod3(t[i])          # (h, r, t)
        total += mod3(t[i]) + mod3(R[r + 2]) + mod3(h[i])      # (t, r^-1, h)
    assert float(model.n3(h, rel, t)) == pytest.approx(total / 6, rel=1e-5)


@pytest.mark.parametrize("decoder", ["distmult", "complex"])
@pytest.mark.parametrize("reciprocal", [False, True])
def test_relation_prediction_equals_per_triple_cross_entropy(decoder, reciprocal):
    """Each triple's relation against every row of the relation table, scored one at a time
    with the decoder's pairwise score: ``(h, ?, t)`` answered by ``r`` and, with reciprocal
    relations, ``(t, ?, h)`` by ``r^-1`` (row ``r + R``), the two averaged; weighted. It adds
    to the 1-vs-all loss and nothing else changes."""
    torch.manual_seed(13)
    n, R, w = 6, 3, 0.4
    cfg = ModelConfig(model=decoder, num_nodes=n, num_relations=R, embedding_dim=4,
                      reciprocal=reciprocal, n3=0.0, regularization=0.0)
    plain = LinkPredictor(cfg)
    model = LinkPredictor(ModelConfig(**{**cfg.to_dict(), "relation_prediction": w}))
    model.load_state_dict(plain.state_dict())
    with torch.no_grad():
        model.decoder.rel.normal_()
    plain.load_state_dict(model.state_dict())
    z = torch.randn(n, 4)
    pos = torch.tensor([[0, 0, 1], [2, 1, 3], [4, 2, 4], [5, 0, 2]])
    dec, rows = model.decoder, R * (2 if reciprocal else 1)

    def ce(a, r, b, answer):
        logits = [float(dec.score(z[[a]], torch.tensor([c]), z[[b]])) for c in range(rows)]
        return _brute_ce(logits[answer], logits[:answer] + logits[answer + 1:], 0.0)
    terms = []
    for h, r, t in pos.tolist():
        terms.append((ce(h, r, t, r) + ce(t, r, h, r + R)) / 2 if reciprocal
                     else ce(h, r, t, r))
    want = w * sum(terms) / len(terms)
    got = model.relation_loss(z[pos[:, 0]], pos[:, 1], z[pos[:, 2]])
    assert float(got) == pytest.approx(want, abs=1e-5)
    assert float(model.table_loss(z, pos)) == pytest.approx(
        float(plain.table_loss(z, pos)) + want, abs=1e-5)


def test_n3_and_label_smoothing_enter_the_loss():
    torch.manual_seed(11)
    base = ModelConfig(model="complex", num_nodes=6, num_relations=2, embedding_dim=4,
                       reciprocal=True)
    z = torch.randn(6, 4)
    pos, cand = torch.tensor([[0, 0, 1], [2, 1, 3]]), torch.arange(6)
    ok = torch.ones(2, 6, dtype=torch.bool)
    ok[0, 1] = ok[1, 3] = False
    plain = LinkPredictor(base)
    n3 = LinkPredictor(ModelConfig(**{**base.to_dict(), "n3": 0.5}))
    n3.load_state_dict(plain.state_dict())
    h, t = z[pos[:, 0]], z[pos[:, 2]]
    assert float(n3.softmax_loss(z, pos, cand, ok, ok)) == pytest.approx(
        float(plain.softmax_loss(z, pos, cand, ok, ok)) + 0.5 * float(plain.n3(h, pos[:, 1], t)),
        rel=1e-5)


def test_shallow_model_is_its_decoder_on_the_embeddings():
    """``--model complex``: no encoder; sampled and full inference are the embedding rows."""
    from kg_ops.sampling import CSRGraph, sample_computation_graph

    cfg = ModelConfig(model="complex", num_nodes=5, num_relations=2, embedding_dim=8,
                      out_dim=4, decoder="distmult", residual=True)
    assert (cfg.decoder, cfg.out_dim, cfg.num_layers, cfg.residual) == ("complex", 8, 0, False)
    model = LinkPredictor(cfg).eval()
    assert model.encoder is None
    edges = np.array([[0, 0, 1], [1, 1, 2], [3, 0, 4]])
    csr = CSRGraph.from_edges(edges, 5, 2)
    emb = model.inputs.embedding.weight
    assert torch.equal(model.encode_full(csr), emb)
    cg = sample_computation_graph(csr, np.array([4, 0, 2]), [])
    assert torch.equal(model.encode_sampled(cg), emb[[4, 0, 2]])


@pytest.mark.parametrize("model_name", ["rgcn", "relgnn"])
def test_gated_residual_starts_as_the_shallow_model(model_name):
    """``residual_gate``: the encoder's output enters scaled by a scalar initialised at 0, so
    an untrained residual GNN scores exactly like the shallow ComplEx on the same embeddings;
    with the gate at g it is ``x + g * encoder(x)``."""
    from kg_ops.sampling import CSRGraph

    torch.manual_seed(13)
    cfg = dict(model=model_name, num_nodes=6, num_relations=2, embedding_dim=8, hidden_dim=8,
               out_dim=8, decoder="complex", residual=True)
    gated = LinkPredictor(ModelConfig(**cfg, residual_gate=True)).eval()
    plain = LinkPredictor(ModelConfig(**cfg)).eval()
    plain.load_state_dict({k: v for k, v in gated.state_dict().items() if k != "gate"})
    csr = CSRGraph.from_edges(np.array([[0, 0, 1], [1, 1, 2], [3, 0, 4], [5, 1, 0]]), 6, 2)
    x = gated.inputs.embedding.weight
    assert torch.equal(gated.encode_full(csr), x)
    with torch.no_grad():
        gated.gate.fill_(0.3)
    want = x + 0.3 * (plain.encode_full(csr) - x)
    assert torch.allclose(gated.encode_full(csr), want, atol=1e-6)

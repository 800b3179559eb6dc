"""Model numerics against independent computations: PyG's RGCNConv, brute-force decoders,
hand-computed attribute inputs, and sampled vs. full-graph (layer-wise) inference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_geometric.nn import RGCNConv

from kg_ops.models.attributes import AttributeEmbedding, FeatureMismatchError, NodeFeatures
from kg_ops.models.decoders import ComplEx, DistMult
from kg_ops.models.link_predictor import LinkPredictor, ModelConfig
from kg_ops.models.rgcn import BasisRGCNConv
from kg_ops.sampling import CSRGraph, sample_computation_graph

torch.set_num_threads(1)


@pytest.mark.parametrize("relations,edges", [(4, 40), (30, 10)])  # per-relation means / per-basis
def test_basis_rgcn_equals_pyg_rgcnconv(relations, edges):
    torch.manual_seed(0)
    ours = BasisRGCNConv(6, 5, num_relations=relations, num_bases=3)
    pyg = RGCNConv(6, 5, relations, num_bases=3, aggr="mean")
    pyg.load_state_dict(ours.state_dict())          # same parameter names and shapes
    x_src = torch.randn(9, 6, requires_grad=True)
    edge_index = torch.stack([torch.randint(0, 9, (edges,)), torch.randint(0, 5, (edges,))])
    edge_type = torch.randint(0, relations, (edges,))
    got = ours((x_src, x_src[:5]), edge_index, edge_type)
    want = pyg((x_src, x_src[:5]), edge_index, edge_type)
    assert torch.allclose(got, want, atol=1e-5)
    # and gradients flow to every parameter, equal to RGCNConv's
    (got * torch.arange(5.0).unsqueeze(1)).sum().backward()
    g_ours = {n: p.grad.clone() for n, p in ours.named_parameters()}
    gx = x_src.grad.clone()
    x_src.grad = None
    (want * torch.arange(5.0).unsqueeze(1)).sum().backward()
    assert torch.allclose(x_src.grad, gx, atol=1e-5)
    for n, p in pyg.named_parameters():
        assert torch.allclose(p.grad, g_ours[n], atol=1e-5), n
    assert all(g.abs().sum() > 0 for n, g in g_ours.items() if n != "comp") \
        and g_ours["comp"].abs().sum() > 0


@pytest.mark.parametrize("decoder", [DistMult, ComplEx])
def test_decoder_candidate_scores_equal_pairwise_scores(decoder):
    torch.manual_seed(1)
    dec = decoder(3, 8)
    h, t, cand = torch.randn(4, 8), torch.randn(4, 8), torch.randn(6, 8)
    rel = torch.tensor([0, 1, 2, 1])
    tails = dec.score_tails(h, rel, cand)
    heads = dec.score_heads(t, rel, cand)
    for b in range(4):
        for n in range(6):
            assert torch.isclose(tails[b, n], dec.score(h[b:b + 1], rel[b:b + 1],
                                                        cand[n:n + 1])[0], atol=1e-5)
            assert torch.isclose(heads[b, n], dec.score(cand[n:n + 1], rel[b:b + 1],
                                                        t[b:b + 1])[0], atol=1e-5)


def test_complex_is_asymmetric_distmult_symmetric():
    torch.manual_seed(2)
    h, t, rel = torch.randn(5, 8), torch.randn(5, 8), torch.zeros(5, dtype=torch.long)
    dm, cx = DistMult(1, 8), ComplEx(1, 8)
    assert torch.allclose(dm.score(h, rel, t), dm.score(t, rel, h))
    assert not torch.allclose(cx.score(h, rel, t), cx.score(t, rel, h))


@pytest.mark.parametrize("decoder", ["distmult", "complex"])
def test_softmax_loss_equals_per_query_cross_entropy(decoder):
    """Each positive against its allowed candidates, both ways, one query at a time."""
    torch.manual_seed(3)
    model = LinkPredictor(ModelConfig(model="rgcn", num_nodes=10, num_relations=3, out_dim=8,
                                      decoder=decoder, regularization=0.05))
    z = torch.randn(10, 8)
    pos = torch.tensor([[0, 1, 2], [3, 0, 4], [5, 2, 0]])
    cand = torch.tensor([6, 7, 2, 9])
    tail_ok = torch.tensor([[1, 1, 0, 1], [1, 0, 1, 1], [0, 1, 1, 1]], dtype=torch.bool)
    head_ok = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 1]], dtype=torch.bool)
    dec = model.decoder
    per_side = []
    for side_ok, tail_side in ((tail_ok, True), (head_ok, False)):
        terms = []
        for i, (h, r, t) in enumerate(pos.tolist()):
            scores = [dec.score(z[[h]], torch.tensor([r]), z[[t]])[0]]
            for j, c in enumerate(cand.tolist()):
                if side_ok[i, j]:
                    trip = (h, r, c) if tail_side else (c, r, t)
                    scores.append(dec.score(z[[trip[0]]], torch.tensor([trip[1]]),
                                            z[[trip[2]]])[0])
            s = torch.stack(scores)
            terms.append(torch.logsumexp(s, 0) - s[0])
        per_side.append(torch.stack(terms).mean())
    reg = z.pow(2).mean() + dec.rel.pow(2).mean()
    want = (per_side[0] + per_side[1]) / 2 + 0.05 * reg
    got = model.softmax_loss(z, pos, cand, tail_ok, head_ok)
    assert torch.isclose(got, want, atol=1e-5)


class Block:
    def __init__(self, node_type, attribute, node_ids, values):
        self.node_type, self.attribute, self.kind = node_type, attribute, "numeric"
        self.node_ids, self.values = np.asarray(node_ids), np.asarray(values, np.float32)
        self.dim = self.values.shape[1]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("mode", ["add", "replace"])
def test_attribute_inputs_mean_of_per_attribute_maps_with_learned_rows(mode, precision):
    """Also under ``--precision bf16``'s autocast, where the attribute maps multiply in
    bfloat16 and their mean is still taken in float32."""
    from kg_ops.train.batches import autocast

    torch.manual_seed(3)
    blocks = [Block("item", "price", [10, 12], [[1.0], [2.0]]),
              Block("item", "tags", [12, 13], [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])]
    space = np.array([13, 12, 11, 10])               # e.g. a partition's local -> global ids
    feats = NodeFeatures.from_blocks(blocks, space)
    layer = AttributeEmbedding(20, 4, {"item/price": 1, "item/tags": 3}, mode)
    layer.check(feats)
    with autocast(precision):
        out = layer(torch.arange(4), torch.from_numpy(space), feats)
    assert out.dtype == torch.float32
    lin_p = layer.blocks[layer.names["item/price"]]
    lin_t = layer.blocks[layer.names["item/tags"]]
    with torch.no_grad():
        attrs = {13: lin_t(torch.tensor([0.0, 1.0, 0.0])),                    # tags only
                 12: (lin_p(torch.tensor([2.0])) + lin_t(torch.tensor([1.0, 0.0, 1.0]))) / 2,
                 10: lin_p(torch.tensor([1.0]))}                               # price only
        row = layer.embedding.weight
        want = {g: (row[g] + a if mode == "add" else a) for g, a in attrs.items()}
        want[11] = row[11]                                                     # no attribute
    atol = 1e-6 if precision == "fp32" else 2e-2       # bfloat16: 8 bits of mantissa
    for got, g in zip(out.detach(), space, strict=True):
        assert torch.allclose(got, want[int(g)], atol=atol), (mode, g)


def test_model_configs_saved_before_attribute_input_mean_replace():
    """A model saved before the option existed was trained with attributes replacing the
    learned rows: loading it must rebuild that model, not today's default."""
    from kg_ops.models.link_predictor import ModelConfig

    fresh = ModelConfig(model="rgcn", num_nodes=5, num_relations=2)
    assert fresh.attribute_input == "add"
    assert ModelConfig.from_dict(fresh.to_dict()).attribute_input == "add"
    old = {k: v for k, v in fresh.to_dict().items() if k != "attribute_input"}
    assert ModelConfig.from_dict(old).attribute_input == "replace"
    with pytest.raises(ValueError, match="attribute_input must be one of"):
        ModelConfig(model="rgcn", num_nodes=5, num_relations=2, attribute_input="concat")


def test_feature_dimension_mismatch_is_a_clear_error():
    layer = AttributeEmbedding(20, 4, {"item/price": 1, "item/tags": 3})
    feats = NodeFeatures.from_blocks([Block("item", "price", [1], [[1.0]]),
                                      Block("item", "tags", [1], [[1.0, 0.0]])],
                                     np.arange(20), source="s3://b/features")
    with pytest.raises(FeatureMismatchError, match=r"s3://b/features.*item/tags \(model 3, "
                                                   r"features 2\)"):
        layer.check(feats)
    with pytest.raises(FeatureMismatchError, match="missing from the features: item/price, "
                                                   "item/tags"):
        layer.check(None)


def toy_graph(seed=0):
    rng = np.random.default_rng(seed)
    n, r = 30, 3
    edges = np.unique(np.stack([rng.integers(0, n, 120), rng.integers(0, r, 120),
                                rng.integers(0, n, 120)], 1), axis=0)
    return CSRGraph.from_edges(edges, n, r), n, r


@pytest.mark.parametrize("kind", ["rgcn", "relgnn"])
def test_full_graph_inference_equals_exact_computation_graph(kind):
    """Layer-wise full inference (chunked) == the K-hop computation graph with all
    neighbours, for every node: two different code paths, same function."""
    csr, n, r = toy_graph()
    torch.manual_seed(4)
    model = LinkPredictor(ModelConfig(kind, n, r, embedding_dim=8, hidden_dim=8, out_dim=6,
                                      num_bases=2, heads=2, rel_dim=4)).eval()
    full = model.encode_full(csr, batch_size=7)
    seeds = np.array([5, 0, 29, 13])
    cg = sample_computation_graph(csr, seeds, [-1, -1])
    with torch.no_grad():
        z = model.encode_sampled(cg)
    assert torch.allclose(z[cg.seed_index], full[seeds], atol=1e-5)


@pytest.mark.parametrize("kind", ["rgcn", "relgnn"])
@pytest.mark.parametrize("sample_seed", [0, 7])
def test_sampled_full_inference_equals_the_training_computation_graph(kind, sample_seed):
    """With fanouts, full inference gives every node what a training batch's sampled
    computation graph gives it, and differs from exact inference."""
    csr, n, r = toy_graph()
    torch.manual_seed(5)
    model = LinkPredictor(ModelConfig(kind, n, r, embedding_dim=8, hidden_dim=8, out_dim=6,
                                      num_bases=2, heads=2, rel_dim=4)).eval()
    fanouts = [3, 2]
    full = model.encode_full(csr, batch_size=7, fanouts=fanouts, seed=sample_seed)
    seeds = np.arange(n)
    cg = sample_computation_graph(csr, seeds, fanouts, seed=sample_seed)
    with torch.no_grad():
        z = model.encode_sampled(cg)
    assert torch.allclose(z[cg.seed_index], full, atol=1e-5)
    assert not torch.allclose(full, model.encode_full(csr, batch_size=7), atol=1e-3)


def test_model_config_round_trip():
    cfg = ModelConfig("relgnn", 10, 2, feature_dims={"a/b": 3}, decoder="complex")
    assert ModelConfig.from_dict(cfg.to_dict() | {"graph": "ignored"}) == cfg
    with pytest.raises(ValueError, match="model must be one of"):
        ModelConfig("transe", 10, 2)


@pytest.mark.parametrize("kind", ["rgcn", "relgnn"])
def test_residual_adds_the_input_embedding_on_both_inference_paths(kind):
    """``residual=True`` gives the plain encoder's output plus the node's own input row (same
    weights, loaded into a plain model), in training's sampled path and in full inference."""
    csr, n, r = toy_graph()
    cfg = dict(embedding_dim=6, hidden_dim=8, out_dim=6, num_bases=2, heads=2, rel_dim=4)
    torch.manual_seed(6)
    res = LinkPredictor(ModelConfig(kind, n, r, residual=True, **cfg)).eval()
    plain = LinkPredictor(ModelConfig(kind, n, r, **cfg)).eval()
    plain.load_state_dict(res.state_dict())
    ids = torch.arange(n)
    with torch.no_grad():
        own = res.inputs(ids, ids, None)
        assert own.abs().sum() > 0
        fanouts = [3, 2]
        full = res.encode_full(csr, batch_size=7, fanouts=fanouts, seed=0)
        expected = plain.encode_full(csr, batch_size=7, fanouts=fanouts, seed=0) + own
        assert torch.allclose(full, expected, atol=1e-6)
        seeds = np.array([5, 0, 29, 13])
        cg = sample_computation_graph(csr, seeds, fanouts, seed=0)
        z = res.encode_sampled(cg)
        assert torch.allclose(z[cg.seed_index], full[seeds], atol=1e-5)
    with pytest.raises(ValueError, match="residual needs embedding_dim == out_dim"):
        ModelConfig(kind, n, r, residual=True, embedding_dim=8, out_dim=6)


@pytest.mark.parametrize("kind", ["rgcn", "complex"])
def test_init_scale_draws_entity_rows_and_relation_vectors_uniformly(kind):
    """``init_scale`` s: entity rows and relation vectors uniform in [-s, s] (std s/sqrt 3);
    0 (the default, and configs saved before the field) keeps Xavier-uniform."""
    torch.manual_seed(0)
    cfg = ModelConfig(kind, 400, 3, embedding_dim=64, out_dim=64, decoder="complex",
                      reciprocal=True, init_scale=0.8)
    model = LinkPredictor(cfg)
    for w in (model.inputs.embedding.weight, model.decoder.rel):
        assert float(w.abs().max()) <= 0.8
        assert float(w.std()) == pytest.approx(0.8 / 3 ** 0.5, rel=0.05)
    xavier = LinkPredictor(ModelConfig(kind, 400, 3, embedding_dim=64, out_dim=64,
                                       decoder="complex"))
    assert float(xavier.inputs.embedding.weight.abs().max()) <= (6 / (400 + 64)) ** 0.5
    old = {k: v for k, v in cfg.to_dict().items() if k != "init_scale"}
    assert ModelConfig.from_dict(old).init_scale == 0.0

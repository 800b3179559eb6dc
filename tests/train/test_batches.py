"""The batch builder and the prefetching iterator: a prefetched epoch is the plain epoch."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from kg_ops.models.link_predictor import LinkPredictor, ModelConfig
from kg_ops.sampling import CSRGraph, sample_computation_graph
from kg_ops.train.batches import BatchBuilder, batch_loss, prefetch
from kg_ops.train.negatives import TypedNegativeSampler

N_PEOPLE, N_CITIES = 60, 6


@pytest.fixture(scope="module")
def graph():
    """People know people (relation 0) and live in cities (relation 1)."""
    rng = np.random.default_rng(3)
    knows = np.stack([rng.integers(0, N_PEOPLE, 400), np.zeros(400, np.int64),
                      rng.integers(0, N_PEOPLE, 400)], 1)
    lives = np.stack([np.arange(N_PEOPLE), np.ones(N_PEOPLE, np.int64),
                      N_PEOPLE + rng.integers(0, N_CITIES, N_PEOPLE)], 1)
    edges = np.unique(np.concatenate([knows, lives]), axis=0)
    csr = CSRGraph.from_edges(edges, N_PEOPLE + N_CITIES, 2, seed=5)
    sampler = TypedNegativeSampler({0: np.arange(N_PEOPLE),
                                    1: np.arange(N_PEOPLE, N_PEOPLE + N_CITIES)},
                                   np.array([0, 0]), np.array([0, 1]))
    return edges, csr, sampler


def _flat(batch) -> list[np.ndarray]:
    """Every array a step reads from a batch."""
    if batch is None:
        return []
    out = [batch.pos, batch.cg.nodes, batch.cg.seed_index, batch.triples.numpy()]
    for edge_index, edge_type, n_src, n_dst in batch.layers:
        out += [edge_index.numpy(), edge_type.numpy(), np.array([n_src, n_dst])]
    if batch.cand is not None:
        out += [batch.cand.numpy(), batch.tail_ok.numpy(), batch.head_ok.numpy(),
                batch.cand_ids]
    return out


@pytest.mark.parametrize("loss,negatives", [("bce", 2), ("softmax", 8)])
def test_prefetched_epoch_is_the_plain_epoch_in_order(graph, loss, negatives):
    edges, csr, sampler = graph
    builder = BatchBuilder(csr, sampler, [4, 3], 5, loss, negatives)
    steps = 7
    plain = list(builder.epoch(edges, steps, np.random.default_rng([1, 2, 0])))
    rng = np.random.default_rng([1, 2, 0])
    fetched = list(prefetch(builder.epoch(edges, steps, rng), depth=2))
    assert len(plain) == len(fetched) == steps
    for a, b in zip(plain, fetched, strict=True):
        fa, fb = _flat(a), _flat(b)
        assert len(fa) == len(fb) > 0
        for x, y in zip(fa, fb, strict=True):
            np.testing.assert_array_equal(x, y)
    # The whole epoch's positives are each edge exactly once.
    pos = np.concatenate([b.pos for b in plain])
    np.testing.assert_array_equal(np.unique(pos, axis=0), edges)
    # A different seed gives a different epoch (the comparison above can fail).
    other = next(iter(builder.epoch(edges, steps, np.random.default_rng([1, 3, 0]))))
    assert not np.array_equal(other.pos, plain[0].pos)


def test_batch_tensors_match_the_computation_graph(graph):
    """The prebuilt layers and triples are what the sampled computation graph gives."""
    edges, csr, sampler = graph
    builder = BatchBuilder(csr, sampler, [4, 3], 5, "bce", 1)
    batch = builder.build(edges[:10], np.random.default_rng(0))
    neg = sampler.sample(edges[:10], 1, np.random.default_rng(0))
    rows = np.concatenate([edges[:10], neg])
    cg = sample_computation_graph(csr, rows[:, [0, 2]].ravel(), [4, 3], seed=5)
    np.testing.assert_array_equal(batch.cg.global_nodes[batch.triples[:, 0].numpy()], rows[:, 0])
    np.testing.assert_array_equal(batch.cg.global_nodes[batch.triples[:, 2].numpy()], rows[:, 2])
    np.testing.assert_array_equal(batch.triples[:, 1].numpy(), rows[:, 1])
    torch.manual_seed(0)
    model = LinkPredictor(ModelConfig(model="rgcn", num_nodes=N_PEOPLE + N_CITIES,
                                      num_relations=2, dropout=0.0)).eval()
    z_direct = model.encode_sampled(cg)
    z_batch = model.encode_sampled(batch.cg, None, batch.layers)
    torch.testing.assert_close(z_batch, z_direct, rtol=0, atol=0)
    expected = model.loss(z_direct, batch.triples[:10], batch.triples[10:])
    torch.testing.assert_close(batch_loss(model, batch), expected, rtol=0, atol=0)


def test_producer_failure_is_raised_where_it_happened():
    def items():
        yield 1
        yield 2
        raise ValueError("bad batch 3")

    got = []
    with pytest.raises(ValueError, match="bad batch 3"):
        for x in prefetch(items()):
            got.append(x)
    assert got == [1, 2]


def test_consumer_stopping_early_stops_the_producer():
    produced = []

    def items():
        for i in range(1000):
            produced.append(i)
            yield i

    for x in prefetch(items(), depth=1):
        if x == 2:
            break
    assert not any(t.name == "kgops-prefetch" and t.is_alive() for t in threading.enumerate())
    assert len(produced) <= 5   # at most depth + a few in flight, not the whole epoch


@pytest.mark.parametrize("model", ["rgcn", "relgnn", "complex"])
def test_bf16_loss_and_gradients_are_close_to_float32(graph, model):
    """--precision bf16 computes the same objective: the loss within 2 %, each parameter's
    gradient within 10 % of its float32 norm (plus 0.2 % of the whole gradient's, for the
    near-zero ones), and the weights and gradients stay float32."""
    edges, csr, sampler = graph
    torch.manual_seed(0)
    cfg = ModelConfig(model=model, num_nodes=N_PEOPLE + N_CITIES, num_relations=2,
                      embedding_dim=32, hidden_dim=16, out_dim=32, decoder="complex",
                      residual=model != "complex", reciprocal=True, dropout=0.0)
    net = LinkPredictor(cfg)
    with torch.no_grad():                     # scores far from 0, where rounding shows
        for p in net.parameters():
            p.mul_(3.0)
    net.eval()
    builder = BatchBuilder(csr, sampler, [] if model == "complex" else [4, 3], 5, "1vsall",
                           N_PEOPLE)
    batch = builder.build(edges[:64], np.random.default_rng(0))
    losses, grads = {}, {}
    for precision in ("fp32", "bf16"):
        net.zero_grad()
        loss = batch_loss(net, batch, precision=precision)
        loss.backward()
        losses[precision] = float(loss.detach())
        grads[precision] = {n: (p.grad.to_dense() if p.grad.is_sparse else p.grad).clone()
                            for n, p in net.named_parameters() if p.grad is not None}
        assert loss.dtype == torch.float32
    assert losses["fp32"] > 1.0
    assert abs(losses["bf16"] - losses["fp32"]) < 0.02 * losses["fp32"]
    assert grads["bf16"].keys() == grads["fp32"].keys()
    total = torch.cat([g.flatten() for g in grads["fp32"].values()]).norm()
    for name, g in grads["fp32"].items():
        assert grads["bf16"][name].dtype == torch.float32
        assert (grads["bf16"][name] - g).norm() <= 0.1 * g.norm() + 0.002 * total, name
    assert all(p.dtype == torch.float32 for p in net.parameters())


def test_auto_precision_follows_the_cpus_bfloat16_units():
    """--precision auto (the default) is bf16 exactly where /proc/cpuinfo lists bfloat16
    units (AVX512-BF16 or AMX-BF16), where autocast then multiplies in bfloat16."""
    from pathlib import Path

    from kg_ops.train.batches import autocast, resolve_precision

    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        pytest.skip("no /proc/cpuinfo to check against")
    flags = {f for line in cpuinfo.read_text().splitlines() if line.startswith("flags")
             for f in line.split(":", 1)[1].split()}
    native = bool(flags & {"avx512_bf16", "amx_bf16"})
    assert resolve_precision("auto") == ("bf16" if native else "fp32")
    assert resolve_precision("fp32") == "fp32" and resolve_precision("bf16") == "bf16"
    a = torch.randn(4, 8)
    with autocast("auto"):
        out = a @ a.t()
    assert out.dtype == (torch.bfloat16 if native else torch.float32)

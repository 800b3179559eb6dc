"""Sharded 1vsall, layer by layer (:mod:`kg_ops.train.layerwise`), on 2 real gloo workers
over real partitions: every entity's embedding equals the full-graph encoding with the same
sampled messages (one computation graph of the whole graph, one process, as one worker
trains), and the loss and the averaged
gradient equal the 1-process 1vsall loss over the whole graph."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kg_ops.graph.kg import load_edges
from kg_ops.models.link_predictor import LinkPredictor, ModelConfig
from kg_ops.sampling import CSRGraph

from .gloo import run_gloo

NUM_RELATIONS = 2


# The objective's terms besides the cross-entropy, as the default recipe and beyond it uses
# them: each is split differently between the workers when they score where the entities
# live (kg_ops.train.owner_scoring). "relation_dropout": trained with relation dropout, the
# one random draw every worker must make alike (no other dropout, so the run is comparable).
VARIANTS = {
    "plain": {"regularization": 0.0},
    "penalties": {"n3": 0.05, "label_smoothing": 0.5, "regularization": 0.02,
                  "init_scale": 0.5, "reciprocal": True, "relation_prediction": 0.3},
    "relation_dropout": {"regularization": 0.0, "relation_dropout": 0.5, "dropout": 0.0,
                         "init_scale": 0.5},
}
DRAW_SEED = 100     # torch's seed on rank 0 before the loss: it draws the dropout's seed


def _model(num_nodes: int, model: str, variant: str = "plain") -> LinkPredictor:
    torch.manual_seed(0)
    extra = VARIANTS[variant]
    m = LinkPredictor(ModelConfig(model=model, num_nodes=num_nodes,
                                  num_relations=NUM_RELATIONS, embedding_dim=8, hidden_dim=6,
                                  out_dim=8, decoder="complex", residual=model != "complex",
                                  residual_gate=model != "complex", **extra))
    if m.gate is not None:
        with torch.no_grad():
            m.gate.fill_(0.7)     # the encoder's share counts (it starts at 0 in training)
    # No dropout (but the relation dropout of that variant): both sides compute alike.
    return m.train() if variant == "relation_dropout" else m.eval()


def _positives(part, rank: int) -> np.ndarray:
    """A few of this worker's core edges of each relation (the relations expect different
    tail types), as global ids."""
    core = np.concatenate([part.core_edges[part.core_edges[:, 1] == r][rank::5][:6]
                           for r in range(NUM_RELATIONS)])
    return np.stack([part.global_ids[core[:, 0]], core[:, 1], part.global_ids[core[:, 2]]], 1)


def _layerwise(rank: int, world: int, parts_uri: str, model_name: str, variant: str):
    import torch.distributed as dist

    from kg_ops.partition.io import load_partition
    from kg_ops.train.batches import BatchBuilder
    from kg_ops.train.candidates import CandidateShards, balanced_owners
    from kg_ops.train.layerwise import LayerwiseEncoding
    from kg_ops.train.negatives import TypedNegativeSampler

    part = load_partition(parts_uri, rank)
    csr = part.graph()
    sampler = TypedNegativeSampler(part.negative_pool, part.relation_head_type,
                                   part.relation_tail_type)
    ids, types = sampler.pool()
    held = torch.zeros(part.num_global_nodes, dtype=torch.bool)
    held[csr.to_global(ids)] = True
    helds = [torch.empty_like(held) for _ in range(world)]
    dist.all_gather(helds, held)
    mine = balanced_owners(torch.stack(helds).numpy())[csr.to_global(ids)] == rank
    slots = torch.tensor([float(mine.sum())])
    dist.all_reduce(slots, op=dist.ReduceOp.MAX)
    model = _model(part.num_global_nodes, model_name, variant)
    fanouts = [] if model.encoder is None else part.sampling["fanouts"]
    shards = CandidateShards(world, rank, int(slots), torch.from_numpy(sampler.head_type),
                             torch.from_numpy(sampler.tail_type))
    enc = LayerwiseEncoding(csr, ids[mine], types[mine], fanouts, part.sampling["seed"],
                            model.cfg.num_layers, shards, part.num_global_nodes)
    table = enc.encode(model).detach()
    # The batch as training builds it: this worker's positives, partition-local ids.
    to_local = {int(g): i for i, g in enumerate(part.global_ids)}
    pos = _positives(part, rank)
    local = np.stack([[to_local[h], r, to_local[t]] for h, r, t in pos.tolist()])
    builder = BatchBuilder(csr, sampler, fanouts, part.sampling["seed"], "1vsall", 0,
                           layerwise=enc)
    batch = builder.build(local, np.random.default_rng(0))
    torch.manual_seed(DRAW_SEED + rank)      # the workers' generators differ
    loss = enc.loss(model, batch)
    loss.backward()
    grads = {}
    for name, p in model.named_parameters():
        g = p.grad.to_dense() if p.grad is not None else torch.zeros_like(p)
        dist.all_reduce(g)                   # what the loop's gradient averaging does
        grads[name] = g / world
    return table, enc.gid, float(loss.detach()), grads, pos


def _reference(planted: dict, model_name: str, variant: str, positives: list[np.ndarray]):
    """One process, the whole graph, as one worker trains: every entity a seed of one
    sampled computation graph, each worker's positives ranked against every entity of the
    expected type. Returns ``(embedding of every global id, losses, gradients, entities)``."""
    from kg_ops.partition.io import load_partition
    from kg_ops.sampling import sample_computation_graph

    part = load_partition(planted["parts"][2], 0)
    n, seed = part.num_global_nodes, part.sampling["seed"]
    model = _model(n, model_name, variant)
    train = np.unique(load_edges(planted["graph"], "train"), axis=0)   # as partitioned
    csr = CSRGraph.from_edges(train, n, NUM_RELATIONS, seed=seed)
    entities = np.unique(train[:, [0, 2]])
    fanouts = part.sampling["fanouts"] if model.encoder is not None else []
    z = model.encode_sampled(sample_computation_graph(csr, entities, fanouts, seed=seed))
    at = np.full(n, -1)
    at[entities] = np.arange(len(entities))
    node_type = np.zeros(n, dtype=np.int64)
    node_type[n - 12:] = 1                   # the 12 cities (conftest.planted_graph)
    head_type, tail_type = torch.tensor([0, 0]), torch.tensor([0, 1])
    ct, gid = torch.from_numpy(node_type[entities]), torch.from_numpy(entities)
    losses = []
    if variant == "relation_dropout":
        losses = _dropped_losses(model, z, at, ct, gid, positives, head_type, tail_type)
    for pos in positives if variant != "relation_dropout" else []:
        p = torch.from_numpy(pos)
        tail_ok = (ct[None] == tail_type[p[:, 1]][:, None]) & (gid[None] != p[:, 2:3])
        head_ok = (ct[None] == head_type[p[:, 1]][:, None]) & (gid[None] != p[:, 0:1])
        rows = torch.from_numpy(np.stack([at[pos[:, 0]], pos[:, 1], at[pos[:, 2]]], 1))
        losses.append(model.softmax_loss(z, rows, torch.arange(len(entities)), tail_ok,
                                         head_ok))
    (sum(losses) / len(losses)).backward()
    grads = {name: (p.grad.to_dense() if p.grad is not None else torch.zeros_like(p))
             for name, p in model.named_parameters()}
    full = torch.zeros(n, z.shape[1])
    full[gid] = z.detach()
    return full, [float(x.detach()) for x in losses], grads, entities


def _dropped_losses(model, z, at, ct, gid, positives, head_type, tail_type) -> list:
    """Each worker's loss when every query's relation vector is dropped with the mask one
    generator draws from rank 0's seed, the tail queries of all workers' positives (in rank
    order) first, then their head queries: what every worker must draw alike."""
    from kg_ops.models.objective import candidate_cross_entropy

    torch.manual_seed(DRAW_SEED)
    seed = int(torch.randint(2 ** 62, ()))
    pos = torch.from_numpy(np.concatenate(positives))
    h, rel, t = torch.from_numpy(at[pos[:, 0]]), pos[:, 1], torch.from_numpy(at[pos[:, 2]])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        queries = (model.decoder.query(z[h], rel, True), model.decoder.query(z[t], rel, False))
    oks = ((ct[None] == tail_type[rel][:, None]) & (gid[None] != pos[:, 2:3]),
           (ct[None] == head_type[rel][:, None]) & (gid[None] != pos[:, 0:1]))
    losses, start = [], 0
    for block in (slice(start, start := start + len(p)) for p in positives):
        loss = 0.0
        for q, answer, ok in zip(queries, (t, h), oks, strict=True):
            q = q[block]
            loss = loss + candidate_cross_entropy((q * z[answer[block]]).sum(-1), q @ z.t(),
                                                  ok[block])
        losses.append(loss / 2)
    return losses


@pytest.mark.parametrize("graph,model_name,variant", [
    ("planted", "rgcn", "plain"), ("crossed", "rgcn", "plain"), ("crossed", "complex", "plain"),
    ("crossed", "rgcn", "penalties"), ("crossed", "rgcn", "relation_dropout")])
def test_layerwise_1vsall_equals_the_whole_graph_on_one_process(graph, model_name, variant,
                                                                 request, tmp_path):
    planted = request.getfixturevalue(graph)
    results = run_gloo(_layerwise, 2, tmp_path, planted["parts"][2], model_name, variant)
    z, losses, grads, entities = _reference(planted, model_name, variant,
                                            [r[4] for r in results])
    for table, gid, *_ in results:
        real = gid >= 0
        # Every entity with a training edge exactly once, gathered identically on both.
        assert sorted(gid[real].tolist()) == entities.tolist()
        torch.testing.assert_close(table[real], z[gid[real]], rtol=1e-5, atol=1e-6)
        assert not table[~real].any()
    torch.testing.assert_close(results[0][0], results[1][0])
    for r in (0, 1):
        assert abs(results[r][2] - losses[r]) < 1e-5, (results[r][2], losses[r])
        for name, g in grads.items():
            torch.testing.assert_close(results[r][3][name], g, rtol=1e-4, atol=1e-6,
                                       msg=lambda m, n=name: f"{n}: {m}")
    if model_name == "rgcn":     # the messages matter: the encoder changed the embeddings
        x = _model(z.shape[0], model_name).inputs.embedding.weight.detach()
        assert (z - x).abs().max() > 1e-3

"""Sharded softmax candidates: the loss and the averaged gradient equal the unsharded
computation on a tiny hand-built graph, checked one query at a time."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kg_ops.models.link_predictor import LinkPredictor, ModelConfig
from kg_ops.train.candidates import CandidateShards, repeated, shard_size

from .gloo import run_gloo

# Nodes 0-5 are people (type 0), 6-9 cities (type 1). Relation 0: person knows person;
# relation 1: person lives_in city.
HEAD_TYPE, TAIL_TYPE = torch.tensor([0, 0]), torch.tensor([0, 1])
NODE_TYPE = np.array([0] * 6 + [1] * 4)
POS = {0: np.array([[0, 0, 1], [2, 1, 7], [3, 0, 5]]),   # each worker's positives
       1: np.array([[4, 1, 6], [1, 0, 2]])}
SHARD = {0: np.array([1, 3, 7]), 1: np.array([0, 4, 5, 6, 8])}   # each worker's candidates
# Pools overlap where an entity ends edges owned by both partitions: 4 and 7 are sent twice.
OVERLAPPING = {0: np.array([1, 3, 4, 7]), 1: np.array([0, 4, 5, 6, 7, 8])}


def _model() -> LinkPredictor:
    torch.manual_seed(0)
    return LinkPredictor(ModelConfig(model="rgcn", num_nodes=10, num_relations=2, out_dim=8,
                                     decoder="complex", regularization=0.0))


class _Batch:
    """What :meth:`CandidateShards.loss` reads; ``z`` is indexed by global id here."""

    def __init__(self, rank: int, shard: dict[int, np.ndarray]):
        self.pos_gid = POS[rank][:, [0, 2]]
        self.triples = torch.from_numpy(POS[rank])
        self.cand = torch.from_numpy(shard[rank])
        self.cand_gid, self.cand_type = shard[rank], NODE_TYPE[shard[rank]]
        self.size = len(POS[rank])


def _sharded(rank: int, world: int, shard: dict[int, np.ndarray]) -> tuple[float, torch.Tensor]:
    model = _model()
    z = torch.nn.Parameter(torch.randn(10, 8, generator=torch.Generator().manual_seed(1)))
    shards = CandidateShards(world, rank, slots=6, head_type=HEAD_TYPE, tail_type=TAIL_TYPE)
    loss = shards.loss(model, z, _Batch(rank, shard))
    loss.backward()
    grad = z.grad.clone()
    torch.distributed.all_reduce(grad)      # what the loop's gradient averaging does
    return float(loss), grad / world


def _per_query_loss(model, z: torch.Tensor, pos: np.ndarray, cands: np.ndarray) -> torch.Tensor:
    """Cross-entropy of each query over [true, valid candidates], one query at a time."""
    terms = []
    for h, r, t in pos.tolist():
        for side in ("tail", "head"):
            want = TAIL_TYPE[r] if side == "tail" else HEAD_TYPE[r]
            true = t if side == "tail" else h
            ok = [int(c) for c in cands if NODE_TYPE[c] == want and c != true]
            ents = [true] + ok
            s = torch.stack([model.decoder.score(z[h if side == "tail" else e][None],
                                                 torch.tensor([r]),
                                                 z[e if side == "tail" else t][None])[0]
                             for e in ents])
            terms.append(-torch.log_softmax(s, 0)[0])
    return torch.stack(terms).view(len(pos), 2).mean(0).sum() / 2


@pytest.mark.parametrize("shard", [SHARD, OVERLAPPING], ids=["disjoint", "overlapping"])
def test_sharded_candidates_give_the_unsharded_loss_and_gradient(tmp_path, shard):
    """The loss over the gathered shards is the loss over their union: an entity two workers
    send (their pools overlap) is one candidate, as with one worker."""
    results = run_gloo(_sharded, 2, tmp_path, shard)
    model = _model()
    z = torch.nn.Parameter(torch.randn(10, 8, generator=torch.Generator().manual_seed(1)))
    every = np.unique(np.concatenate([shard[0], shard[1]]))
    losses = [_per_query_loss(model, z, POS[r], every) for r in (0, 1)]
    for r in (0, 1):
        assert abs(results[r][0] - float(losses[r])) < 1e-5
    (sum(losses) / 2).backward()              # the mean of the workers' losses
    for r in (0, 1):
        torch.testing.assert_close(results[r][1], z.grad, rtol=1e-5, atol=1e-6)
    # The candidates matter: with one worker's shard alone the loss differs.
    alone = float(_per_query_loss(model, z, POS[0], shard[0]))
    assert abs(alone - results[0][0]) > 1e-3


def _gather_bf16(rank: int, world: int, computed_in: str
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.nn.Parameter(_rows(rank))
    shards = CandidateShards(world, rank, slots=4, head_type=HEAD_TYPE, tail_type=TAIL_TYPE,
                             wire=torch.bfloat16)
    c = shards.gather_rows(x.to(getattr(torch, computed_in)))   # bfloat16 under autocast
    (c * _weights()).sum().backward()
    return c.detach(), x.grad


def _rows(rank: int) -> torch.Tensor:
    return torch.randn(3, 5, generator=torch.Generator().manual_seed(10 + rank)) / 3


def _weights() -> torch.Tensor:
    """Each worker's gradient of the gathered rows (the same on both: the sum is 2x it)."""
    return torch.randn(8, 5, generator=torch.Generator().manual_seed(7)) / 7


@pytest.mark.parametrize("computed_in", ["float32", "bfloat16"])
def test_bfloat16_wire_gathers_rounded_rows_and_sums_rounded_gradients(tmp_path, computed_in):
    """With ``wire=bfloat16`` the rows and their gradient travel rounded to bfloat16 and come
    back as float32: every worker sees each block (zero-padded to the slots) rounded, and each
    worker's own block gets the rounded sum of both workers' gradients; the same whether the
    rows were computed in float32 or already in bfloat16 (sent as they are)."""
    results = run_gloo(_gather_bf16, 2, tmp_path, computed_in)
    blocks = [torch.cat([_rows(r), torch.zeros(1, 5)]) for r in (0, 1)]
    want = torch.cat(blocks).bfloat16().float()
    summed = (2 * _weights().bfloat16().float()).bfloat16().float()
    for rank, (c, grad) in enumerate(results):
        assert c.dtype == grad.dtype == torch.float32
        assert torch.equal(c, want)
        assert not torch.equal(c, torch.cat(blocks))          # the rounding did happen
        assert torch.equal(grad, summed[rank * 4:rank * 4 + 3])


def test_each_worker_draws_its_share_of_the_candidates():
    assert [shard_size(512, p) for p in (1, 2, 3, 8)] == [512, 256, 171, 64]
    assert shard_size(3, 8) == 1


def test_repeated_marks_every_later_copy_of_an_id():
    gid = torch.tensor([5, 2, 5, -1, 2, 9, -1, 5])
    seen, want = set(), []
    for g in gid.tolist():
        want.append(g >= 0 and g in seen)
        seen.add(g)
    assert repeated(gid).tolist() == want


def test_balanced_owners_give_each_held_node_to_one_holder_and_balance_the_busiest():
    """Against brute force on random overlapping pools: every node a pool holds gets exactly
    one of its holders, and the busiest worker's share is the smallest any assignment can
    give on 2 workers, within one of it on more (every assignment tried on small cases)."""
    import itertools

    from kg_ops.train.candidates import balanced_owners

    rng = np.random.default_rng(0)
    for _ in range(300):
        p, n = int(rng.integers(2, 5)), int(rng.integers(1, 9))
        held = rng.random((p, n)) < 0.6
        owner = balanced_owners(held)
        for v in range(n):
            assert owner[v] == -1 if not held[:, v].any() else held[owner[v], v]
        best = min(np.bincount(np.array(choice, dtype=np.int64), minlength=p).max(initial=0)
                   for choice in itertools.product(*[np.flatnonzero(held[:, v])
                                                     for v in range(n) if held[:, v].any()]))
        got = np.bincount(owner[owner >= 0], minlength=p).max(initial=0)
        assert got == best if p == 2 else best <= got <= best + 1, (held, owner)


def _gather_three(rank: int, world: int) -> torch.Tensor:
    x = torch.nn.Parameter(_rows(rank)[:2 + rank % 2])      # 2 or 3 rows: padded to 4
    shards = CandidateShards(world, rank, slots=4, head_type=HEAD_TYPE, tail_type=TAIL_TYPE)
    c = shards.gather_rows(x)
    (c * _upstream(rank)).sum().backward()
    return x.grad


def _upstream(rank: int) -> torch.Tensor:
    return torch.randn(12, 5, generator=torch.Generator().manual_seed(20 + rank))


def test_gather_backward_sums_each_block_on_its_worker_on_three_workers(tmp_path):
    """The backward's reduce-scatter: each of 3 workers gets the sum over the workers of
    the gradient of its own block (its real rows, not the padding)."""
    results = run_gloo(_gather_three, 3, tmp_path)
    total = sum(_upstream(r) for r in range(3))
    for rank, grad in enumerate(results):
        torch.testing.assert_close(grad, total[rank * 4:rank * 4 + 2 + rank % 2])

"""Softmax candidates sharded across workers: the candidate work divides by the workers.

With the ``softmax`` loss every positive is ranked against candidates shared by the batch.
If each of ``P`` workers drew the full ``k`` candidates per node type for its ``1/P`` of the
batch, every worker would still encode (sampled K-hop computation graphs) and score ``k``
candidates per type, and the step would not get cheaper with more workers.

Sharded instead: each worker draws ``ceil(k / P)`` candidates of every node type from its own
partition's negative pool (its core nodes), encodes only those, and one all-gather of their
embeddings (with their global ids and types) gives every worker the whole set of about ``k``
per type. The pools overlap: a node at the end of edges owned by two partitions is core in
both (CoDEx-S at P=2: 462 of 2,034 entities). With 1vsall each such entity is encoded by one
of its holders (:func:`balanced_owners`); softmax draws may still meet, so a gathered entity
counts once, from the lowest rank that sent it (the other copies become padding). Either way
the gathered set holds each entity once, as with one worker. Each worker ranks its local positives
against all of them. Backward sends every worker's gradient of the gathered embeddings back
to the worker that computed them (a reduce-scatter of the ``[P * slots, d]`` gradient: each
worker receives every worker's gradient of its own block only, and sums them), so the averaged
gradient is the gradient of the mean loss over the global batch, as with one worker.
When every worker computes in bfloat16 (``--precision``), the rows and their gradient travel
as bfloat16 (:func:`kg_ops.train.batches.wire_dtype`): half the bytes, and the forward's
matrix products had rounded them to bfloat16 already.
Candidate masks are computed from global ids after the gather: a candidate may replace a
positive's tail (head) when it has the type the relation expects there and is not the true
entity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from kg_ops.train.steptime import StepTimes


def shard_size(k: int, world: int) -> int:
    """Candidates per node type each of ``world`` workers draws for ``k`` in total."""
    return max(1, math.ceil(int(k) / max(int(world), 1)))


class _GatherRows(torch.autograd.Function):
    """All-gather of equally shaped ``[m, d]`` row blocks, differentiable: the backward sums
    every worker's gradient of the gathered rows and hands each worker its own block. It is a
    reduce-scatter: one ``all_to_all_single`` gives each worker every worker's gradient of its
    own block, which it sums, so a worker receives ``(P - 1) m d`` values where an all-reduce
    of the whole gathered gradient moved ``2 (P - 1) m d``; on 2 workers the sums are the
    all-reduce's, bit for bit. At CoDEx-M's P=2 sizes (``benchmarks/bench_collectives.py``,
    side by side) 39.5 ms per backward instead of 57.1 with float32 on the wire, 37.6 instead
    of 60.7 with bfloat16; gloo's own ``reduce_scatter_single`` took longer than the all-reduce
    (69 ms against 61, float32). Both
    travel as ``wire`` (bfloat16 halves the bytes when the workers compute in bf16); the rows
    come back as float32, the gradient in the rows' own dtype. Both are timed as
    ``collectives`` in ``times``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, world: int, wire: torch.dtype, times: StepTimes
                ) -> torch.Tensor:
        import torch.distributed as dist

        ctx.world, ctx.m, ctx.wire, ctx.times = world, x.shape[0], wire, times
        ctx.dtype = x.dtype
        with times.collective():
            out = x.new_empty((world * x.shape[0], *x.shape[1:]), dtype=wire)
            dist.all_gather_single(out, x.to(wire).contiguous())
            return out.float()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        import torch.distributed as dist

        with ctx.times.collective():
            sent = grad.to(ctx.wire).contiguous()
            got = torch.empty_like(sent)
            dist.all_to_all_single(got, sent)     # block p of every worker's to worker p
            blocks = got.view(ctx.world, ctx.m, *got.shape[1:])
            mine = blocks[0] + blocks[1]          # summed in rank order, as ``wire``
            for block in blocks[2:]:
                mine += block
            return mine.to(ctx.dtype), None, None, None


def balanced_owners(held: np.ndarray) -> np.ndarray:
    """For every node, the one worker whose 1vsall shard carries it: ``held [P, N]`` says
    which workers' pools hold it (they overlap where a node ends edges owned by several
    partitions). A node one pool holds is that worker's; the shared ones are dealt, group by
    group of the same holders and in id order within a group, to the holders with the fewest
    so far, so the busiest worker encodes as few as it can (a step waits for the slowest):
    the fewest possible on 2 workers, within one of it on more. ``-1`` where no pool holds
    the node. Deterministic: every worker computes the same owners from the same ``held``."""
    held = np.asarray(held, dtype=bool)
    holders = held.sum(0)
    owner = np.where(holders > 0, held.argmax(0), -1)
    load = np.bincount(owner[holders == 1], minlength=held.shape[0])
    shared = np.flatnonzero(holders > 1)
    if not len(shared):
        return owner
    pattern = np.packbits(held[:, shared], axis=0, bitorder="little")
    pattern = pattern.astype(np.int64).T @ (256 ** np.arange(len(pattern)))
    for key in np.unique(pattern):
        nodes = shared[pattern == key]
        ranks = np.flatnonzero(held[:, nodes[0]])
        got = _water_fill(load[ranks], len(nodes))
        owner[nodes] = np.repeat(ranks, got)
        load[ranks] += got
    return owner


def _water_fill(load: np.ndarray, m: int) -> np.ndarray:
    """How many of ``m`` items each bin takes so that the fullest bin ends as low as possible
    (leftovers to the lower bins first)."""
    order = np.argsort(load, kind="stable")
    level = load[order].astype(np.int64)
    cost = level * np.arange(1, len(level) + 1) - np.cumsum(level)   # fill bins 0..j to j's
    j = int(np.searchsorted(cost, m, side="right")) - 1
    top, extra = divmod(m - int(cost[j]), j + 1)
    got = np.zeros(len(load), dtype=np.int64)
    got[order[:j + 1]] = level[j] + top - level[:j + 1]
    got[order[:extra]] += 1
    return got


def repeated(gid: torch.Tensor) -> torch.Tensor:
    """``True`` where an id (``>= 0``) already occurred earlier in ``gid``."""
    order = torch.argsort(gid, stable=True)
    s = gid[order]
    again = torch.zeros_like(gid, dtype=torch.bool)
    again[order[1:]] = (s[1:] == s[:-1]) & (s[1:] >= 0)
    return again


@dataclass
class CandidateShards:
    """Gathers the workers' candidate shards; ``slots`` rows per worker (padding included)."""

    world: int
    rank: int
    slots: int
    head_type: torch.Tensor     # node type each relation expects at its head
    tail_type: torch.Tensor
    wire: torch.dtype = torch.float32   # what the gathered rows travel as (batches.wire_dtype)
    times: StepTimes = field(default_factory=StepTimes)    # the loop's: Collectives.times

    def gather(self, emb: torch.Tensor, gid: np.ndarray, ntype: np.ndarray
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every worker's candidates: ``(embeddings [P*slots, d], global ids, node types)``;
        padding rows have id and type -1 (no positive may use them), and an entity two
        workers sent counts once (the later copies' type is -1)."""
        gid, ntype = self.gather_ids(gid, ntype)
        ntype = torch.where(repeated(gid), -1, ntype)
        return self.gather_rows(emb), gid, ntype

    def gather_ids(self, gid: np.ndarray, ntype: np.ndarray
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every worker's ``[P * slots]`` global ids and node types (-1: padding)."""
        import torch.distributed as dist

        m = len(gid)
        if m > self.slots:
            raise ValueError(f"{m} candidates exceed the {self.slots} slots of a shard")
        meta = torch.full((2, self.slots), -1, dtype=torch.long)
        meta[0, :m] = torch.from_numpy(np.asarray(gid, dtype=np.int64))
        meta[1, :m] = torch.from_numpy(np.asarray(ntype, dtype=np.int64))
        metas = [torch.empty_like(meta) for _ in range(self.world)]
        with self.times.collective():
            dist.all_gather(metas, meta)
        gid, ntype = torch.cat(metas, dim=1)
        return gid, ntype

    def gather_rows(self, emb: torch.Tensor) -> torch.Tensor:
        """Every worker's ``[m, d]`` rows, each block padded with zeros to ``slots``
        (differentiable: :class:`_GatherRows`), as float32; on one worker its own padded
        block. Rows computed in bfloat16 (``--precision bf16``) go on the wire as they are
        when the wire is bfloat16 too: one cast, to float32 on arrival."""
        m = emb.shape[0]
        if m > self.slots:
            raise ValueError(f"{m} candidates exceed the {self.slots} slots of a shard")
        if m < self.slots:
            emb = torch.cat([emb, emb.new_zeros(self.slots - m, emb.shape[1])])
        if self.world == 1:
            return emb.float()
        return _GatherRows.apply(emb, self.world, self.wire, self.times)

    def masks(self, rel: torch.Tensor, head_gid: torch.Tensor, tail_gid: torch.Tensor,
              cand_gid: torch.Tensor, cand_type: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """``tail_ok, head_ok [B, M]``: candidate ``j`` may replace positive ``i``'s tail /
        head (the type its relation expects there, and not the true entity)."""
        tail_ok = (cand_type[None, :] == self.tail_type[rel][:, None]) \
            & (cand_gid[None, :] != tail_gid[:, None])
        head_ok = (cand_type[None, :] == self.head_type[rel][:, None]) \
            & (cand_gid[None, :] != head_gid[:, None])
        return tail_ok, head_ok

    def loss(self, model, z: torch.Tensor, batch) -> torch.Tensor:
        """The softmax loss of this worker's positives against every worker's candidates."""
        c, gid, ntype = self.gather(z[batch.cand], batch.cand_gid, batch.cand_type)
        if batch.size == 0:      # still part of the collectives, contributes nothing
            return c.sum() * 0.0
        pos = batch.triples
        tail_ok, head_ok = self.masks(pos[:, 1], torch.from_numpy(batch.pos_gid[:, 0]),
                                      torch.from_numpy(batch.pos_gid[:, 1]), gid, ntype)
        return model.candidate_loss(z, pos, c, tail_ok, head_ok)

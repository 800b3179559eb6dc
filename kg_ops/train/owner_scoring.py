"""Sharded 1vsall scored where the entities live: each worker ranks every worker's queries
against only the entities it owns (model parallelism over the entity table, the
vocabulary-parallel cross-entropy of Megatron-LM with entities for words).

:mod:`kg_ops.train.layerwise` computes each entity's final embedding on the one worker that
owns it. Gathering that final layer to every worker (``[N, d]``: 68 MB on CoDEx-M at
1,000 dimensions) and summing its gradient back (68 MB again) cost a 2-worker step about
160 ms, and each worker then scored its own positives against all ``N`` entities, so the
worker with more positives (partition 0: 4 % more on CoDEx-M) set the pace of every step.

Here the final layer stays with its owner. Per step:

1. one all-gather of every worker's positives (a few KB of ids): every worker knows every
   query of the global batch;
2. one all-reduce of the queries' anchor rows (each worker fills the rows it owns): every
   worker builds every query vector (``[2B, d]``, 8 MB at batch 1,024);
3. each worker scores all ``2B`` queries against its own ``N / P`` entities, so the scoring
   divides by ownership, which :func:`~kg_ops.train.candidates.balanced_owners` balances;
4. one all-reduce of three numbers per query (the sum of exponentials of the scores, the
   answer's score, and the sum of the allowed scores for label smoothing) and one of the
   per-query maximum give every query its log-sum-exp over all entities.

The backward is the same two all-reduces in reverse (each is differentiable: the gradient
of a sum read by every worker's loss is the sum of their gradients), and the gradient of
each owned entity's embedding stays local. Each worker's loss is the loss of its own
positives, as :meth:`~kg_ops.models.link_predictor.LinkPredictor.table_loss` computes it on
the gathered table: the same value and, once the loop averages gradients, the same gradient
(``tests/train/test_layerwise.py``), with entity dropout drawn once per entity (by its owner),
the type masks, label smoothing, N3, L2 and relation prediction as there. Relation dropout
is drawn once per step from a seed rank 0 sends with its positives, since every worker
computes every query.
"""

from __future__ import annotations

import numpy as np
import torch

from kg_ops.train.collectives import all_gather_blocks
from kg_ops.train.steptime import StepTimes


class _AllReduce(torch.autograd.Function):
    """Sum across workers, differentiable: every worker's loss reads the sum, so the gradient
    of each worker's part is the sum of every worker's gradient of it. Travels as ``wire``;
    timed as ``collectives``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, wire: torch.dtype, times: StepTimes) -> torch.Tensor:
        ctx.wire, ctx.times = wire, times
        return _sum(x, wire, times)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _sum(grad, ctx.wire, ctx.times), None, None


def _sum(x: torch.Tensor, wire: torch.dtype, times: StepTimes) -> torch.Tensor:
    import torch.distributed as dist

    with times.collective():
        out = x.to(wire, copy=True).contiguous()
        dist.all_reduce(out)
        return out.to(x.dtype)


def all_reduce(x: torch.Tensor, times: StepTimes, wire: torch.dtype = torch.float32
               ) -> torch.Tensor:
    """The differentiable sum of ``x`` over the workers (:class:`_AllReduce`)."""
    return _AllReduce.apply(x, wire, times)


def gather_positives(triples: torch.Tensor, times: StepTimes, seed: int = 0
                     ) -> tuple[torch.Tensor, np.ndarray, int]:
    """Every worker's ``[B_w, 3]`` positives (table rows and relation ids), stacked in rank
    order; ``(triples, where each worker's block starts [P + 1], rank 0's seed)``."""
    import torch.distributed as dist

    world = dist.get_world_size()
    head = torch.tensor([len(triples), int(seed)], dtype=torch.long)
    heads = [torch.empty_like(head) for _ in range(world)]
    with times.collective():
        dist.all_gather(heads, head)
        sizes = [int(h[0]) for h in heads]
        triples = all_gather_blocks(triples, sizes)
    return triples, np.concatenate([[0], np.cumsum(sizes)]), int(heads[0][1])


def owner_table_loss(model, z_own: torch.Tensor, offset: int, num_rows: int,
                     triples: torch.Tensor, mine: slice,
                     tail_ok: torch.Tensor | None, head_ok: torch.Tensor | None,
                     times: StepTimes, wire: torch.dtype = torch.float32,
                     query_seed: int | None = None) -> torch.Tensor:
    """This worker's 1vsall loss, scored where the entities live.

    ``z_own [m, d]``: the final embeddings of the table rows ``offset .. offset + m`` this
    worker owns (of ``num_rows``); ``triples [B, 3]``: every worker's positives as table rows
    and relation ids, this worker's at ``mine``; ``tail_ok`` / ``head_ok``: ``[R, num_rows]``,
    which rows have the type each relation expects at its tail / head (``None``: all);
    ``query_seed``: the relation dropout's seed, the same on every worker. Returns
    :meth:`LinkPredictor.table_loss` of this worker's positives against the whole table;
    every worker calls it with the same ``triples``."""
    z_own = model.entity_drop(z_own)
    m, b = z_own.shape[0], len(triples)
    rel = triples[:, 1]
    anchor_rows = torch.cat([triples[:, 0], triples[:, 2]])      # tail queries, head queries
    answer_cols = torch.cat([triples[:, 2], triples[:, 0]]) - offset

    # Every query's anchor embedding, summed from its owner (the others add zero rows).
    rows, where = torch.unique(anchor_rows, return_inverse=True)
    owned = ((rows >= offset) & (rows < offset + m)).nonzero().squeeze(1)
    partial = z_own.new_zeros(len(rows), z_own.shape[1]).index_copy(
        0, owned, z_own.index_select(0, rows[owned] - offset))
    anchors = all_reduce(partial, times, wire)[where]
    with _seeded(query_seed):
        q = torch.cat([model.decoder.query(anchors[:b], rel, True),
                       model.decoder.query(anchors[b:], rel, False)])

    scores = (q @ z_own.t()).float()                              # [2B, m]
    ok, allowed = _allowed(tail_ok, head_ok, rel, slice(offset, offset + m), num_rows)
    eps = model.cfg.label_smoothing
    lse, answer, smooth = _distributed_terms(scores, answer_cols, ok, times, eps)
    ce = lse - answer if not eps else lse - (1.0 - eps) * answer - eps * smooth / allowed
    ce_tail, ce_head = ce[:b][mine], ce[b:][mine]
    # A worker without positives still takes part in every collective of the backward.
    loss = (ce_tail.mean() + ce_head.mean()) / 2 if len(ce_tail) else ce.sum() * 0.0
    h, t = anchors[:b][mine], anchors[b:][mine]
    return (loss + _penalties(model, z_own, h, rel[mine], t, num_rows, times)
            + model.relation_loss(h, rel[mine], t))


def _seeded(seed: int | None):
    """Draw torch's random numbers from ``seed`` inside the block (``None``: as they come)."""
    import contextlib

    if seed is None:
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    stack.enter_context(torch.random.fork_rng(devices=[]))
    torch.manual_seed(seed)
    return stack


def _allowed(tail_ok: torch.Tensor | None, head_ok: torch.Tensor | None, rel: torch.Tensor,
             cols: slice, num_rows: int) -> tuple[torch.Tensor | None, torch.Tensor]:
    """``(which owned columns each query may rank [2B, m] or None for all, how many columns
    of the whole table each may rank [2B])``: tail queries first, then head queries. Only
    the owned columns of each relation's mask are gathered per query; the counts are per
    relation."""
    if tail_ok is None and head_ok is None:
        return None, torch.full((2 * len(rel),), float(num_rows))
    masks, counts = [], []
    for ok in (tail_ok, head_ok):
        if ok is None:
            masks.append(torch.ones(len(rel), cols.stop - cols.start, dtype=torch.bool))
            counts.append(torch.full((len(rel),), float(num_rows)))
        else:
            masks.append(ok[:, cols][rel])
            counts.append(ok.sum(1).float()[rel])
    return torch.cat(masks), torch.cat(counts)


def _distributed_terms(scores: torch.Tensor, answer_cols: torch.Tensor,
                       ok: torch.Tensor | None, times: StepTimes, label_smoothing: float
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per query, over every worker's columns: the log-sum-exp of the allowed scores, the
    answer's score (``answer_cols``: its column here, out of range on other workers) and,
    with label smoothing, the sum of the allowed scores."""
    import torch.distributed as dist

    n, m = scores.shape
    masked = scores if ok is None else scores.masked_fill(~ok, float("-inf"))
    with torch.no_grad():                     # a shift: no gradient flows through it
        top = masked.max(1).values if m else scores.new_full((n,), float("-inf"))
        with times.collective():
            dist.all_reduce(top, op=dist.ReduceOp.MAX)
    hit = ((answer_cols >= 0) & (answer_cols < m)).nonzero().squeeze(1)
    answer = scores.new_zeros(n).index_put((hit,), scores[hit, answer_cols[hit]])
    parts = [torch.exp(masked - top[:, None]).sum(1), answer]
    if label_smoothing:
        parts.append((scores if ok is None else scores.masked_fill(~ok, 0.0)).sum(1))
    total = all_reduce(torch.stack(parts), times)
    return torch.log(total[0]) + top, total[1], total[2] if label_smoothing else None


def _penalties(model, z_own: torch.Tensor, h: torch.Tensor, rel: torch.Tensor,
               t: torch.Tensor, num_rows: int, times: StepTimes) -> torch.Tensor | float:
    """:meth:`LinkPredictor._penalties` of this worker's positives. The table's L2 is split
    by owner: each worker differentiates its rows' share times the number of workers (the
    loop averages the workers' gradients) and reports the whole table's value."""
    import torch.distributed as dist

    cfg, out = model.cfg, 0.0
    if cfg.regularization:
        own = z_own.pow(2).sum() / (num_rows * z_own.shape[1])
        whole = own.detach().clone()
        with times.collective():
            dist.all_reduce(whole)
        share = own * dist.get_world_size()
        out = cfg.regularization * (share + (whole - share).detach()
                                    + model.decoder.rel.pow(2).mean())
    if cfg.n3 and len(h):
        out = out + cfg.n3 * model.n3(h, rel, t)
    return out

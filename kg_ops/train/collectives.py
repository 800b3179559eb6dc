"""Collectives between the Ray Train workers over torch.distributed (gloo): sums and maxima of
a few numbers, mask gathering, gradient averaging and parameter broadcast. Every call is a no-op
for a single worker, so the same loop runs distributed and alone."""

from __future__ import annotations

import numpy as np


class Collectives:
    """Collectives over torch.distributed (gloo), no-ops for a single worker."""

    def __init__(self, world: int, exchange: str = "auto"):
        import torch

        from kg_ops.train.steptime import StepTimes

        self.world, self.exchange = world, exchange
        self.wire = torch.float32     # what embedding gradients travel as (batches.wire_dtype)
        self.last_exchange = None
        self.times = StepTimes()      # the training loop's split of each step
        self.owner_rows = None        # OwnerRows: the input table updated by its rows' owners

    def _dist(self):
        import torch.distributed as dist

        return dist

    def all_reduce(self, values: list[float], op: str = "sum") -> list[float]:
        import torch

        if self.world == 1:
            return list(values)
        dist = self._dist()
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return t.tolist()

    def sum_tensor(self, t) -> None:
        """Sum a tensor across workers, in place."""
        if self.world > 1:
            self._dist().all_reduce(t)

    def _all_gather(self, values: np.ndarray) -> np.ndarray:
        """``[world, n]``: every worker's ``n`` values (the same ``n`` and dtype everywhere)."""
        import torch

        if self.world == 1:
            return values[None, :]
        out = [torch.empty(len(values), dtype=torch.from_numpy(values).dtype)
               for _ in range(self.world)]
        self._dist().all_gather(out, torch.from_numpy(values))
        return np.stack([o.numpy() for o in out])

    def all_gather_mask(self, mask: np.ndarray) -> np.ndarray:
        return self._all_gather(np.ascontiguousarray(mask, dtype=np.uint8)).astype(bool)

    def all_gather_values(self, values) -> np.ndarray:
        """``[world, n]``: every worker's ``n`` float64 values."""
        return self._all_gather(np.asarray(values, dtype=np.float64))

    def average_gradients(self, model) -> None:
        """Average every gradient across workers: dense ones with one flat all-reduce
        (float32), sparse ones (embedding rows) by the cheaper of a gather of each worker's
        touched rows and a dense all-reduce of the table (:mod:`kg_ops.train.exchange`),
        sent as ``self.wire``; with ``owner_rows``, its table's gradient becomes its owned
        rows' mean (:mod:`kg_ops.train.owner_rows`). Timed as ``collectives`` in
        ``self.times``."""
        import torch

        from kg_ops.train.optim import sparse_parameters

        sparse = {id(p) for p in sparse_parameters(model)}
        params = [p for p in model.parameters() if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = (torch.sparse_coo_tensor(torch.empty(1, 0, dtype=torch.long),
                                                  torch.empty(0, *p.shape[1:]), p.shape)
                          if id(p) in sparse else torch.zeros_like(p))
        if self.world == 1:
            return
        with self.times.collective():
            self._average(params, sparse)

    def _average(self, params: list, sparse: set[int]) -> None:
        import torch

        from kg_ops.train.exchange import sparse_mean

        dense = [p for p in params if id(p) not in sparse]
        flat = torch.cat([p.grad.reshape(-1) for p in dense])
        self._dist().all_reduce(flat)
        flat /= self.world
        offset = 0
        for p in dense:
            n = p.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p))
            offset += n
        for p in params:
            if self.owner_rows is not None and p is self.owner_rows.table:
                self.owner_rows.reduce_gradient()
            elif id(p) in sparse:
                mode = "auto" if self.exchange == "owner" else self.exchange  # no owners
                p.grad, self.last_exchange = sparse_mean(p.grad, self.world, mode, self.wire)

    @property
    def table_exchange(self) -> str | None:
        """How the last step averaged the embedding table's gradient: ``owner rows``,
        ``dense``, ``gather``, or ``None`` (one worker, or no table)."""
        if self.owner_rows is not None:
            return "owner rows"
        return self.last_exchange.mode if self.last_exchange is not None else None

    def after_step(self) -> None:
        """After the optimiser step: the owner-updated rows to the workers that read them."""
        if self.owner_rows is not None:
            self.owner_rows.refresh()

    def synchronize_rows(self, optimizer) -> None:
        """Before anything reads the whole table (validation, a checkpoint): every owner's
        rows and their optimiser state to every worker (a no-op without ``owner_rows``)."""
        if self.owner_rows is not None:
            self.owner_rows.synchronize(optimizer)

    def broadcast_parameters(self, model) -> None:
        if self.world == 1:
            return
        for p in model.state_dict().values():
            self._dist().broadcast(p, src=0)


def all_gather_blocks(x, counts: list[int]):
    """Every worker's block of rows, concatenated in rank order (``counts[w]``: worker
    ``w``'s row count, ``x``: this worker's block): one all-gather of the blocks padded with
    zeros to the largest, trimmed after."""
    import torch
    import torch.distributed as dist

    width = max(counts)
    padded = x.new_zeros(width, *x.shape[1:])
    padded[:len(x)] = x
    blocks = [torch.empty_like(padded) for _ in counts]
    if width:
        dist.all_gather(blocks, padded)
    return torch.cat([b[:k] for b, k in zip(blocks, counts, strict=True)])

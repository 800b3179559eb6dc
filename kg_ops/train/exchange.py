"""Averaging an embedding table's sparse gradient across workers, by the cheaper exchange.

A step's embedding gradient has a row for every node its computation graph touched. Two ways
to average it over ``P`` workers (gloo, ``torch.distributed``):

* ``gather``: all-gather every worker's (row ids, row values), padded to the largest worker's
  row count, then sum duplicate rows. Each worker receives ``P * max_rows * (4 d + 8)`` bytes.
* ``dense``: scatter the rows into a ``[N, d + 1]`` table (the last column marks a touched
  row, so a row whose summed gradient is zero stays in the result, as with ``gather``) and
  all-reduce it: a ring all-reduce moves ``2 (P - 1) / P * N * 4 (d + 1)`` bytes per worker.

The gather wins while steps touch a small part of the table (the 2.8M-node graph: ~100k of
2.8M rows); the dense all-reduce wins when every step touches most of it (CoDEx-M). The row
counts are exchanged first, so every worker knows them and picks the same exchange, by the
bytes above (``mode="auto"``). Both give the same rows and, in exact arithmetic, the same
values: the sum over workers, then divided by ``P``. ``wire=torch.bfloat16`` (every worker
computes in bf16) sends the values as bfloat16, half the bytes, and sums them there; the
result is float32 again.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kg_ops.train.collectives import all_gather_blocks

MODES = ("auto", "gather", "dense")


@dataclass
class Exchange:
    """What one exchange did (for profiling and the cost planner)."""

    mode: str
    rows: list[int]
    gather_bytes: int
    dense_bytes: int


def exchange_bytes(rows: list[int], num_rows: int, dim: int, value_bytes: int = 4
                   ) -> tuple[int, int]:
    """Bytes each worker receives with the ``gather`` and with the ``dense`` exchange, for
    values of ``value_bytes`` each (4: float32, 2: bfloat16)."""
    p = len(rows)
    gather = p * max(rows, default=0) * (value_bytes * dim + 8)
    dense = int(2 * (p - 1) / p * num_rows * value_bytes * (dim + 1)) if p > 1 else 0
    return gather, dense


def choose(rows: list[int], num_rows: int, dim: int, mode: str = "auto",
           value_bytes: int = 4) -> str:
    if mode not in MODES:
        raise ValueError(f"gradient exchange must be one of {MODES}, not {mode!r}")
    if mode != "auto":
        return mode
    gather, dense = exchange_bytes(rows, num_rows, dim, value_bytes)
    return "gather" if gather <= dense else "dense"


def sparse_mean(grad: torch.Tensor, world: int, mode: str = "auto",
                wire: torch.dtype = torch.float32) -> tuple[torch.Tensor, Exchange]:
    """The mean over the ``world`` workers of each worker's sparse row gradient ``grad``
    (a ``[N, d]`` sparse COO tensor), coalesced, and how it was exchanged; the values
    travel as ``wire``."""
    import torch.distributed as dist

    g = grad.coalesce()
    rows, vals = g.indices()[0], g.values()
    counts = [torch.zeros(1, dtype=torch.long) for _ in range(world)]
    dist.all_gather(counts, torch.tensor([len(rows)]))
    n = [int(c) for c in counts]
    num_rows, dim = grad.shape[0], vals.shape[1] if vals.dim() > 1 else 1
    picked = choose(n, num_rows, dim, mode, wire.itemsize)
    info = Exchange(picked, n, *exchange_bytes(n, num_rows, dim, wire.itemsize))
    if picked == "dense":
        total = _dense_sum(rows, vals, grad.shape, wire)
    else:
        total = _gather_sum(rows, vals, grad.shape, n, wire)
    return torch.sparse_coo_tensor(total.indices(), total.values() / world, grad.shape,
                                   is_coalesced=True), info


def _gather_sum(rows, vals, shape, counts: list[int], wire: torch.dtype) -> torch.Tensor:
    """The sum over workers of their ``(rows, vals)``, coalesced: one all-gather of the row
    ids and one of the values (as ``wire``), summed in ``vals``' dtype."""
    rows = all_gather_blocks(rows, counts)
    sent = all_gather_blocks(vals.to(wire), counts).to(vals.dtype)
    return torch.sparse_coo_tensor(rows.unsqueeze(0), sent, shape).coalesce()


def _dense_sum(rows, vals, shape, wire: torch.dtype) -> torch.Tensor:
    """The sum over workers of their ``(rows, vals)``, coalesced: one all-reduce of a
    ``wire`` table whose last column marks the rows some worker touched."""
    import torch.distributed as dist

    flat = vals.reshape(len(rows), -1)
    table = torch.zeros(shape[0], flat.shape[1] + 1, dtype=wire)
    table[rows, :-1] = flat.to(wire)
    table[rows, -1] = 1.0
    dist.all_reduce(table)
    touched = torch.nonzero(table[:, -1] > 0).squeeze(1)
    values = table[touched, :-1].to(vals.dtype).reshape(len(touched), *vals.shape[1:])
    return torch.sparse_coo_tensor(touched.unsqueeze(0), values, shape, is_coalesced=True)

"""The input table updated where its rows live: each worker applies the optimiser to the rows of
the entities it owns, and sends other workers only the rows they read.

With sharded 1vsall (:mod:`kg_ops.train.layerwise`) a worker's step reads a fixed set of
input rows: its owned entities and its *halo*, the other workers' entities its first layer
receives messages from (the messages are sampled once per run). Averaging the table's sparse
gradient (:mod:`kg_ops.train.exchange`) then moves the whole table: on CoDEx-M at P=2 a step
touches about 10k of the 17k rows (its 8,525 entities and a halo of 1,713 or 2,371), too many
for the gather, so the exchange all-reduces a dense 68 MB table, and every worker runs the
optimiser on every row.

Here, per step (the halo exchange of distributed GNN training, as DGL's ``DistEmbedding``):

1. each worker sends its halo rows' gradient to their owners, with a marker of the rows its
   step touched (one ``all_to_all_single``; the marker is one more column of it when the rows
   travel as bfloat16, a second small one when they travel as float32, as they are);
2. the owner adds them to its own rows' gradient and divides by the workers: the table's
   gradient is its owned rows' mean gradient, so the optimiser updates those rows only, with
   the arithmetic the dense exchange would give them;
3. each owner sends the updated rows to the workers that read them (a second
   ``all_to_all_single``), so every worker reads the same values as after a dense exchange.

The step's gradient is its input lookup's: every row it reads, once, in the order the
layer-wise encoding reads them (its owned entities, then the halo), the same every step. Its
values are the exchange's buffer: the halo's rows are sent from them, and the received rows
added to the owned ones and the mean taken in place, so nothing the size of the rows read is
zeroed or summed into. Before (issue #13), a zeroed buffer of every row read (41 MB at
CoDEx-M's sizes), the ``index_add_`` of the gradient into it and the division over it took
more of the exchange's time than its two ``all_to_all_single``: ``bench_collectives.py
--sections owner`` (steps 1 and 2 per call, at CoDEx-M's P=2 sizes, on the 2-core Xeon)
25.3 ms before and 14.1 ms after with float32 on the wire, 25.6 and 10.3 ms with bfloat16;
17.5 ms when the lookup reads the owned rows out of id order (one more pass gathers them into
it). Any other gradient (repeated rows, a subset, none) is summed into such a buffer first.

Rows a worker neither owns nor reads go stale on it, and so does its optimiser state of the
rows it does not own; :meth:`OwnerRows.synchronize` gathers every owner's rows (and their
optimiser state) to every worker before anything reads the whole table (validation,
checkpoints). ``benchmarks/bench_collectives.py --sections halo``: exchange and optimiser
164 ms per step with the dense exchange, 60 ms owner-updated (69.7 ms with the buffer above,
the same script back to back), at CoDEx-M's P=2 sizes on the Xeon (355 and 145 ms on the AVX2
EPYC before issue #13). It is the default (``--exchange auto``) since whole CoDEx-M steps
measured faster with it on a CPU whose steps are short enough for the exchange to matter
(bf16: 1.08x over 4 alternating rounds, ``bench_scaleout.py --sections codex-m-spans``); on a
float32-only CPU, with 8 s steps, the 0.2 s it saves was within the step's noise.
"""

from __future__ import annotations

import numpy as np
import torch

from kg_ops.train.collectives import all_gather_blocks
from kg_ops.train.steptime import StepTimes


class NoOwner(ValueError):
    """Some worker reads rows no worker owns: the loop keeps the plain exchange."""


class OwnerRows:
    """The owner-updated exchange of one embedding ``table`` (``[N, d]``, sparse gradients).

    ``read``: the global rows this worker's step reads, its ``owned`` ones first (they must
    be disjoint between workers and should cover every worker's reads: else every worker
    raises :class:`NoOwner`), in the order the step reads them: a gradient with exactly these
    rows in this order is used as the exchange's buffer, its values overwritten. Constructing
    it is a collective (the owned and halo rows of every worker are gathered once)."""

    def __init__(self, table: torch.nn.Parameter, read: np.ndarray, owned: int, rank: int,
                 world: int, times: StepTimes, wire: torch.dtype = torch.float32):
        import torch.distributed as dist

        self.table, self.rank, self.world = table, rank, world
        self.times, self.wire = times, wire
        n = table.shape[0]
        read = np.asarray(read, dtype=np.int64)
        own, halo = np.sort(read[:owned]), read[owned:]
        mine = torch.tensor([len(own), len(halo)])
        got = [torch.empty_like(mine) for _ in range(world)]
        dist.all_gather(got, mine)
        own_counts = [int(g[0]) for g in got]
        halo_counts = [int(g[1]) for g in got]
        self.everyone = all_gather_blocks(torch.from_numpy(own), own_counts)
        owner = np.full(n, -1, dtype=np.int64)
        owner[self.everyone.numpy()] = np.repeat(np.arange(world), own_counts)
        unowned = torch.tensor([int((owner[halo] < 0).sum())])
        dist.all_reduce(unowned)        # every worker raises, or none does
        if int(unowned):
            raise NoOwner(f"{int(unowned)} table rows that the workers read are owned by no "
                          "worker")
        halo = halo[np.argsort(owner[halo], kind="stable")]   # grouped by owner, rank order
        self.send = np.bincount(owner[halo], minlength=world).tolist()
        # Every worker's halo, grouped by owner: my readers' rows are their groups owned by me.
        halos = all_gather_blocks(torch.from_numpy(halo), halo_counts).numpy()
        starts = np.concatenate([[0], np.cumsum(halo_counts)])
        readers = [halos[starts[p]:starts[p + 1]] for p in range(world)]
        readers = [r[owner[r] == rank] for r in readers]
        self.recv = [len(r) for r in readers]
        self.own, self.halo = torch.from_numpy(own), torch.from_numpy(halo)
        self.readers = torch.from_numpy(np.concatenate(readers))
        self.own_counts = own_counts
        # Where each read row sits in this worker's [owned; halo] gradient buffer.
        where = np.full(n, -1, dtype=np.int64)
        where[own] = np.arange(len(own))
        where[halo] = len(own) + np.arange(len(halo))
        self.where = torch.from_numpy(where)
        self.reader_pos = self.where[self.readers]
        # The order the step reads the table in (``read``): an embedding lookup's gradient
        # has its rows in it. Where the [owned; halo] rows sit in that order (``None``:
        # already in it).
        self.read = torch.tensor(read)
        in_read = np.empty(n, dtype=np.int64)
        in_read[read] = np.arange(len(read))
        self.own_at = _unless_identity(in_read[own])
        self.halo_at = _unless_identity(in_read[halo] - len(own))

    @torch.no_grad()
    def reduce_gradient(self) -> None:
        """Replace the table's gradient by its owned rows' mean gradient over the workers
        (steps 1 and 2), on the owned rows some worker's step touched: a marker travels with
        the rows, as in the dense exchange (Adam moves a row with a zero gradient, so an
        untouched row must stay out). A worker without a batch this step sends zeros.

        The step's gradient is normally the input lookup's: every row the step reads, once,
        in the order it reads them (``read``). Its values are then the buffer: the owned rows'
        mean is computed in place on them (gathered into id order first when the lookup reads
        the owned rows in another order), the halo's rows go on the wire from them, every one
        marked touched, and no buffer of every row is zeroed and summed into. Any other
        gradient (repeated rows, a subset) is first summed into such a buffer."""
        grad, n_own = self.table.grad, len(self.own)
        if grad is not None and _rows_are(grad, self.read):
            vals = grad._values().to(self.table.dtype).contiguous()
            own_at, halo_at, mark = self.own_at, self.halo_at, None
        else:
            (vals, mark), own_at, halo_at = self._accumulate(grad), None, None
        halo = vals[n_own:] if halo_at is None else vals[n_own:].index_select(0, halo_at)
        got, got_mark = self._send_halo(halo, torch.ones(len(halo)) if mark is None
                                        else mark[n_own:])
        own = vals[:n_own] if own_at is None else vals.index_select(0, own_at)
        own.index_add_(0, self.reader_pos, got)
        rows, values = self.own, own.div_(self.world)
        if mark is not None:
            touched = mark[:n_own].index_add_(0, self.reader_pos, got_mark) > 0
            if not bool(touched.all()):
                rows, values = rows[touched], values[touched]
        self.table.grad = torch.sparse_coo_tensor(rows.unsqueeze(0), values,
                                                  self.table.shape, is_coalesced=True)

    def _send_halo(self, rows: torch.Tensor, marks: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """Step 1: the halo's gradient ``rows`` and their touched-row ``marks`` to their
        owners; returns the ones readers sent this worker (contiguous, in ``rows``' and
        ``marks``' dtypes). As bfloat16 the rows are copied by the cast anyway, and the marker
        rides along as one more column (one ``all_to_all_single``); as float32 the rows go as
        they are and the marker on its own (copying the rows to add the column took longer
        than the second, small exchange)."""
        a2a, d = torch.distributed.all_to_all_single, rows.shape[1]
        if self.wire == rows.dtype:
            got = torch.empty(sum(self.recv), d, dtype=rows.dtype)
            got_mark = torch.empty(sum(self.recv), dtype=marks.dtype)
            a2a(got, rows.contiguous(), self.recv, self.send)
            a2a(got_mark, marks, self.recv, self.send)
            return got, got_mark
        send = torch.empty(len(rows), d + 1, dtype=self.wire)
        send[:, :d] = rows
        send[:, d] = marks
        got = torch.empty(sum(self.recv), d + 1, dtype=self.wire)
        a2a(got, send, self.recv, self.send)
        return got[:, :d].to(rows.dtype), got[:, d].to(marks.dtype)

    def _accumulate(self, grad: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``([owned; halo] rows' summed gradient, 1 where the step touched a row)`` of any
        sparse gradient over the rows this worker reads (zeros without one)."""
        buf = torch.zeros(len(self.own) + len(self.halo), self.table.shape[1],
                          dtype=self.table.dtype)
        mark = torch.zeros(len(buf))
        if grad is not None:     # uncoalesced: index_add_ sums repeats
            rows = grad._indices()[0]
            pos = self.where[rows]
            if bool((pos < 0).any()):
                raise RuntimeError(f"the step read table row {int(rows[pos < 0][0])}, which is "
                                   "neither owned by this worker nor in its halo")
            buf.index_add_(0, pos, grad._values().to(buf.dtype))
            mark[pos] = 1.0
        return buf, mark

    @torch.no_grad()
    def refresh(self) -> None:
        """Step 3: the updated rows this worker owns to the workers that read them, and the
        halo's updated rows from their owners (float32: the replicas stay exact)."""
        with self.times.collective():
            fresh = torch.empty(len(self.halo), self.table.shape[1], dtype=self.table.dtype)
            torch.distributed.all_to_all_single(
                fresh, self.table.index_select(0, self.readers), self.send, self.recv)
            self.table.index_copy_(0, self.halo, fresh)

    @torch.no_grad()
    def synchronize(self, optimizer: torch.optim.Optimizer | None) -> None:
        """Every worker's owned rows of the table, and of ``optimizer``'s per-row state, to
        every worker: afterwards each worker holds the whole current table and state."""
        for t in [self.table, *_row_state(optimizer, self.table)]:
            t.index_copy_(0, self.everyone,
                          all_gather_blocks(t.index_select(0, self.own), self.own_counts))


def _row_state(optimizer: torch.optim.Optimizer | None, table: torch.Tensor
               ) -> list[torch.Tensor]:
    """The optimiser's state tensors with one row per table row (Adagrad's sums, Adam's
    moments)."""
    if optimizer is None or table not in optimizer.state:
        return []
    return [v for v in optimizer.state[table].values()
            if isinstance(v, torch.Tensor) and v.shape[:1] == table.shape[:1] and v.dim() > 1]


def _unless_identity(order: np.ndarray) -> torch.Tensor | None:
    return None if np.array_equal(order, np.arange(len(order))) else torch.from_numpy(order)


def _rows_are(grad: torch.Tensor, rows: torch.Tensor) -> bool:
    """Whether sparse ``grad`` has exactly ``rows``, in that order, each once."""
    idx = grad._indices()
    return idx.shape[1] == len(rows) and torch.equal(idx[0], rows)

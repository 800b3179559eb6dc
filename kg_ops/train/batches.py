"""Mini-batches of a training epoch, built ahead of the step that consumes them.

A batch is everything a step needs that does not depend on the model's weights: the positive
edges, their negatives (``bce``) or the candidates shared by the batch (``softmax``), the
sampled K-hop computation graph of every entity scored, and the index tensors the loss reads.
Building it is numpy work over the partition's CSR (sorting, gathers), most of which releases
the GIL; :func:`prefetch` builds batch ``i+1`` in a background thread while step ``i`` runs
forward and backward, so a step costs ``max(build, train)`` instead of their sum.

Every random draw of a batch comes from the epoch's ``numpy`` generator, consumed in batch
order by one thread, so the prefetched batches are exactly the plain ones, in order.
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from kg_ops.sampling import ComputationGraph, sample_computation_graph


@dataclass
class Batch:
    """One step's inputs; ``triples`` are ``[z-position, relation, z-position]`` rows."""

    pos: np.ndarray                     # (B, 3) positive edges, partition-local ids
    cg: ComputationGraph | None         # None: sharded 1vsall (kg_ops.train.layerwise)
    layers: list[tuple[torch.Tensor, torch.Tensor, int, int]]   # (edge_index, type, src, dst)
    triples: torch.Tensor               # bce: positives then negatives; softmax: positives
    cand: torch.Tensor | None = None    # softmax: z-positions of the shared candidates
    tail_ok: torch.Tensor | None = None
    head_ok: torch.Tensor | None = None
    cand_ids: np.ndarray | None = None  # softmax: partition-local ids of the candidates
    cand_gid: np.ndarray | None = None  # sharded softmax: their global ids and node types,
    cand_type: np.ndarray | None = None  # and the positives' global [head, tail] ids
    pos_gid: np.ndarray | None = None

    @property
    def size(self) -> int:
        return len(self.pos)


def candidates_per_type(loss: str, negatives: int, sampler) -> int:
    """What :class:`BatchBuilder` takes as ``negatives``: with ``1vsall`` every entity of the
    partition's pool of each type (the largest pool's size), else the loss's ``negatives``."""
    return int(sampler.count.max()) if loss == "1vsall" else int(negatives)


class BatchBuilder:
    """Builds :class:`Batch` es of one partition (negatives, candidates, computation graph).

    ``shard``: the softmax candidates this worker draws per node type when candidates are
    sharded across workers (:mod:`kg_ops.train.candidates`); ``None``: ``negatives`` per
    type the batch expects, masks built here. ``layerwise``: sharded 1vsall's
    :class:`~kg_ops.train.layerwise.LayerwiseEncoding`; its batches carry only the positives,
    as rows of the gathered entity table, and no computation graph."""

    def __init__(self, csr, sampler, fanouts: list[int], sample_seed: int, loss: str,
                 negatives: int, shard: int | None = None, layerwise=None):
        self.csr, self.sampler = csr, sampler
        self.fanouts, self.sample_seed = list(fanouts), int(sample_seed)
        self.softmax = loss in ("softmax", "1vsall")
        self.negatives = int(negatives)
        self.shard = shard if self.softmax else None
        self.layerwise = layerwise
        self.workspace = np.full(csr.num_nodes, -1, dtype=np.int64)   # one builder thread

    def build(self, pos: np.ndarray, rng: np.random.Generator) -> Batch:
        pos = np.asarray(pos, dtype=np.int64).reshape(-1, 3)
        if self.layerwise is not None:      # sharded 1vsall: rows of the gathered table
            gid = self.csr.to_global(pos[:, [0, 2]])
            rows = self.layerwise.positive_rows(gid)
            triples = torch.from_numpy(np.stack([rows[:, 0], pos[:, 1], rows[:, 1]], axis=1))
            return Batch(pos=pos, cg=None, layers=[], triples=triples, pos_gid=gid)
        if self.shard is not None:
            cand, cand_type = self.sampler.draw(self.sampler.pool_types(), self.shard, rng)
        elif self.softmax:
            cand, tail_ok, head_ok = self.sampler.shared_candidates(pos, self.negatives, rng)
        if self.softmax:
            seeds = np.concatenate([pos[:, [0, 2]].ravel(), cand])
            rows = pos
        else:
            neg = self.sampler.sample(pos, self.negatives, rng)
            rows = np.concatenate([pos, neg])
            seeds = rows[:, [0, 2]].ravel()
        cg = sample_computation_graph(self.csr, seeds, self.fanouts, seed=self.sample_seed,
                                      workspace=self.workspace)
        loc = cg.seed_index
        ends = loc[:2 * len(rows)].reshape(-1, 2)
        triples = torch.from_numpy(np.stack([ends[:, 0], rows[:, 1], ends[:, 1]], axis=1))
        layers = [(torch.from_numpy(np.stack([hop.src, hop.dst])), torch.from_numpy(hop.rel),
                   n_src, n_dst) for hop, n_src, n_dst in cg.gnn_layers()]
        batch = Batch(pos=pos, cg=cg, layers=layers, triples=triples)
        if self.softmax:
            batch.cand, batch.cand_ids = torch.from_numpy(loc[2 * len(pos):]), cand
        if self.shard is not None:
            batch.cand_gid, batch.cand_type = self.csr.to_global(cand), cand_type
            batch.pos_gid = self.csr.to_global(pos[:, [0, 2]])
        elif self.softmax:
            batch.tail_ok, batch.head_ok = torch.from_numpy(tail_ok), torch.from_numpy(head_ok)
        return batch

    def epoch(self, edges: np.ndarray, steps: int, rng: np.random.Generator
              ) -> Iterator[Batch | None]:
        """The epoch's batches in order: a random permutation of ``edges`` cut into ``steps``
        parts (``None`` for an empty part, so every worker takes the same number of steps)."""
        for idx in np.array_split(rng.permutation(len(edges)), steps):
            # Sharded candidates: a worker without positives still draws and encodes its
            # shard (the other workers rank against it).
            shared = self.shard is not None or self.layerwise is not None
            yield self.build(edges[idx], rng) if len(idx) or shared else None


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices natively (AVX512-BF16 or AMX): there
    bf16 autocast is faster; elsewhere oneDNN emulates it and float32 is faster."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def resolve_precision(precision: str) -> str:
    """``kgops train --precision`` on this worker: ``auto`` is ``bf16`` where the CPU has
    bfloat16 units, else ``fp32``."""
    if precision == "auto":
        return "bf16" if cpu_has_bf16() else "fp32"
    return precision


def wire_dtype(used: str) -> torch.dtype:
    """What activations and embedding gradients travel between workers as, for the precision
    the workers settled on (``bf16``, ``fp32`` or ``mixed``): bfloat16 only when every
    worker computes in it, since its forward products round to bfloat16 anyway (half the
    bytes through gloo); float32 otherwise."""
    return torch.bfloat16 if used == "bf16" else torch.float32


def autocast(precision: str):
    """The context a training forward runs in: ``kgops train --precision`` (``bf16``: CPU
    autocast to bfloat16; ``fp32``: a no-op; ``auto``: as :func:`resolve_precision`)."""
    return torch.autocast("cpu", dtype=torch.bfloat16,
                          enabled=resolve_precision(precision) == "bf16")


def batch_loss(model, batch: Batch, features=None, shards=None,
               precision: str = "fp32") -> torch.Tensor:
    """Forward and loss of one batch (see :mod:`kg_ops.models.link_predictor`); ``shards``:
    the :class:`kg_ops.train.candidates.CandidateShards` of a sharded-candidate run (the
    :class:`kg_ops.train.layerwise.LayerwiseEncoding` of a sharded 1vsall run).
    ``precision="bf16"``: the forward's matrix products in bfloat16 (CPU autocast; weights,
    optimiser and the message aggregation stay float32), for CPUs with bfloat16 units;
    ``"auto"``: bf16 on such a CPU, else fp32."""
    with autocast(precision):
        if batch.cg is None:
            return shards.loss(model, batch, features)
        z = model.encode_sampled(batch.cg, features, batch.layers)
        if shards is not None:
            return shards.loss(model, z, batch)
        if batch.cand is not None:
            return model.softmax_loss(z, batch.triples, batch.cand, batch.tail_ok,
                                      batch.head_ok)
        n = batch.size
        return model.loss(z, batch.triples[:n], batch.triples[n:])


_DONE = object()


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


def prefetch(items: Iterable[Any], depth: int = 1) -> Iterator[Any]:
    """``items``, produced ``depth`` ahead by a background thread, in the same order.

    An exception in the producer is raised in the consumer at the item where it happened;
    when the consumer stops early (break, exception) the producer stops at its next item."""
    if depth < 1:
        yield from items
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as exc:   # handed to the consumer, re-raised there
            put(_Failure(exc))

    thread = threading.Thread(target=produce, name="kgops-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        stop.set()
        thread.join()

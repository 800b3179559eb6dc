"""Per-epoch validation MRR, the signal that keeps the best epoch and stops early.

:class:`FullValidation` (the default) is ``kgops evaluate``'s protocol: filtered by every known
triple, both directions, against every entity of the graph. Each worker embeds its partition's
core entities (their K-hop neighbourhoods are complete there), one all-reduce assembles the
graph's table, and each worker ranks its share of the triples. Measured on a Debian slice (2
workers, ``benchmarks/bench_warm_start.py`` checkpoints): the full validation MRR peaked at
epoch 2 with the test MRR (0.255 / 0.261) and fell after it, while the in-partition ranking
below rose to epoch 9, where the test MRR was 0.189: it ranks only triples inside one
partition's core, and kept the wrong epoch. It needs the ``[entities, dim]`` table on every
worker; above :data:`FULL_TABLE_BYTES` the sampled one is used (and the manifest says so).

:class:`SampledValidation` (``--valid-ranking sampled``), cheap enough for any graph:

A subset of the graph's validation triples (seeded, the same on every worker) is ranked both
ways against the true entity plus a fixed set of sampled candidates of the node type the
relation expects (drawn from the worker's negative pool), ties counted as the mean of the
optimistic and pessimistic rank. Each triple is ranked by exactly one worker: the lowest rank
whose core nodes contain both its ends (the only nodes whose computation graphs a partition
holds completely); triples no partition covers are counted, not ranked.

Filtered, as far as the worker knows: a candidate that makes a known true triple is left out
of the ranking, known meaning the partition's training edges (core and halo) and the graph's
valid and test triples. Unfiltered, a model that learns more true facts ranks more of them
above the answer, so the measure *fell* while the filtered MRR rose (CoDEx-S: 0.47 at epoch 2
to 0.41 at epoch 40), and the best epoch it picked was the second. With one partition the
filter is exact; with more, a true triple stored only in another partition can stay a
candidate. This is still NOT the filtered full ranking of ``kgops evaluate``.
"""

from __future__ import annotations

import contextlib
import logging

import numpy as np
import torch

from kg_ops.evaluate.filters import FilterIndex
from kg_ops.sampling import sample_computation_graph

FULL_TABLE_BYTES = 1 << 30     # the graph's embedding table on every worker, at most
FULL_KIND = "filtered full ranking (all entities, both directions, as kgops evaluate)"
SAMPLED_KIND = "sampled (type-constrained candidates inside each partition, filtered)"


@contextlib.contextmanager
def evaluating(model):
    """``model`` in eval mode for the whole validation, encoding *and* scoring: the decoder's
    relation dropout would otherwise perturb the queries, and the epoch kept would carry
    dropout noise (as it did while the mode was restored right after encoding)."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def validation_kind(ranking: str, num_nodes: int, dim: int) -> str:
    """What the per-epoch validation MRR is for a run (``--valid-ranking``, graph size)."""
    full = ranking == "full" and num_nodes * dim * 4 <= FULL_TABLE_BYTES
    return FULL_KIND if full else SAMPLED_KIND


class FullValidation:
    """Filtered full ranking of (a seeded subset of) the validation triples; see the module
    docstring. ``filters``: every train, valid and test triple of the graph (global ids)."""

    def __init__(self, part, valid_global: np.ndarray, filters: FilterIndex, comm, rank: int):
        self.part, self.filters, self.comm = part, filters, comm
        self.triples = valid_global[rank::comm.world]

    @torch.no_grad()
    def reciprocal_ranks(self, model, csr, fanouts, sample_seed: int, features=None,
                         ) -> tuple[float, int]:
        """(sum of reciprocal ranks, number of queries) of this worker's triples."""
        with evaluating(model):
            return self._reciprocal_ranks(model, csr, fanouts, sample_seed, features)

    def _reciprocal_ranks(self, model, csr, fanouts, sample_seed, features):
        from kg_ops.evaluate.ranking import overall_metrics, rank_queries
        from kg_ops.progress import Progress

        z = model.encode_full(csr, features, fanouts=list(fanouts), seed=sample_seed)
        # A node at the end of edges owned by two partitions is core in both, where its
        # sampled neighbourhood, hence its row, is the same: the table takes the mean.
        core = self.part.num_core_nodes
        table = z.new_zeros(self.filters.num_nodes, z.shape[1] + 1)
        table[torch.from_numpy(self.part.global_ids[:core])] = torch.cat(
            [z[:core], z.new_ones(core, 1)], dim=1)
        self.comm.sum_tensor(table)
        table = table[:, :-1] / table[:, -1:].clamp(min=1)
        if not len(self.triples):
            return 0.0, 0
        quiet = Progress("train/validate", every_s=float("inf"), logger=_QUIET)
        res = rank_queries(table, model.decoder, self.triples, self.filters, progress=quiet)
        n = 2 * len(self.triples)
        return float(overall_metrics(res)["mrr"]) * n, n


_QUIET = logging.getLogger("kg_ops.train.validation.quiet")
_QUIET.setLevel(logging.WARNING)


def realistic_rank(true: torch.Tensor, cand: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """1-based rank of ``true[B]`` among ``cand[B, N]`` (only where ``valid``), ties halved."""
    greater = ((cand > true.unsqueeze(1)) & valid).sum(1).double()
    equal = ((cand == true.unsqueeze(1)) & valid).sum(1).double()
    return 1.0 + greater + 0.5 * equal


class SampledValidation:
    def __init__(self, part, valid_global: np.ndarray, sampler, candidates: int, seed: int,
                 owner_mask: np.ndarray, known_global: np.ndarray | None = None):
        """``valid_global``: ``(V, 3)`` global triples (the same array on every worker);
        ``owner_mask[i]``: this worker ranks triple ``i``; ``known_global``: more true triples
        (global ids: the graph's valid and test sets) to filter with, besides the partition's
        own edges."""
        core = part.global_ids[:part.num_core_nodes]           # sorted by global id
        trip = valid_global[owner_mask]
        self.triples = np.stack([np.searchsorted(core, trip[:, 0]), trip[:, 1],
                                 np.searchsorted(core, trip[:, 2])], axis=1)
        rng = np.random.default_rng([seed, part.part_id, 7])
        # Fixed candidates per node type: every epoch ranks against the same entities.
        self.candidates = {}
        for t in range(len(sampler.count)):
            n = int(sampler.count[t])
            if n:
                self.candidates[t] = sampler.start[t] + np.sort(
                    rng.choice(n, size=min(candidates, n), replace=False))
        self.sampler = sampler
        self.known = known_triples(part, known_global)

    @staticmethod
    def eligible(part, valid_global: np.ndarray) -> np.ndarray:
        core = part.global_ids[:part.num_core_nodes]
        if not len(core):
            return np.zeros(len(valid_global), dtype=bool)
        ends = valid_global[:, [0, 2]]
        pos = np.minimum(np.searchsorted(core, ends), len(core) - 1)
        return (core[pos] == ends).all(axis=1)

    @torch.no_grad()
    def reciprocal_ranks(self, model, csr, fanouts, sample_seed: int, features=None,
                         ) -> tuple[float, int]:
        """(sum of reciprocal ranks, number of queries) of this worker's triples."""
        if not len(self.triples):
            return 0.0, 0
        with evaluating(model):
            return self._reciprocal_ranks(model, csr, fanouts, sample_seed, features)

    def _reciprocal_ranks(self, model, csr, fanouts, sample_seed, features):
        cand_types = sorted(self.candidates)
        cand_nodes = np.concatenate([self.candidates[t] for t in cand_types])
        seeds = np.concatenate([self.triples[:, [0, 2]].ravel(), cand_nodes])
        cg = sample_computation_graph(csr, seeds, fanouts, seed=sample_seed)
        z = model.encode_sampled(cg, features)
        n2 = 2 * len(self.triples)
        loc = torch.from_numpy(cg.seed_index[:n2].reshape(-1, 2))
        cand_pos = torch.from_numpy(cg.seed_index[n2:])
        bounds = np.cumsum([0] + [len(self.candidates[t]) for t in cand_types])
        rel = torch.from_numpy(self.triples[:, 1])
        h, t = z[loc[:, 0]], z[loc[:, 1]]
        total, count = 0.0, 0
        for tail_side in (True, False):
            # the answer's score from the same query the candidates get: with reciprocal
            # relations the head query goes through r^-1, not through score(h, r, t)
            query = model.decoder.query(h if tail_side else t, rel, tail_side)
            true = (query * (t if tail_side else h)).sum(-1)
            types = self.sampler.expected_type(self.triples[:, 1], np.full(len(rel), tail_side))
            answer = self.triples[:, 2] if tail_side else self.triples[:, 0]
            for j, ty in enumerate(cand_types):
                rows = np.flatnonzero(types == ty)
                if not len(rows):
                    continue
                cpos = cand_pos[bounds[j]:bounds[j + 1]]
                r = torch.from_numpy(rows)
                cand = query[r] @ z[cpos].t()
                c = self.candidates[ty][None, :]
                known = (self.known.contains(self.triples[rows, 0, None],
                                             self.triples[rows, 1, None], c) if tail_side else
                         self.known.contains(c, self.triples[rows, 1, None],
                                             self.triples[rows, 2, None]))
                valid = torch.from_numpy((c != answer[rows, None]) & ~known)
                total += float((1.0 / realistic_rank(true[r], cand, valid)).sum())
                count += len(rows)
        return total, count


def known_triples(part, known_global: np.ndarray | None) -> FilterIndex:
    """The partition's edges and the ``known_global`` triples whose ends are both nodes of
    the partition (mapped to local ids), indexed for membership tests."""
    triples = [part.edges]
    if known_global is not None and len(known_global):
        ends = part.to_local(known_global[:, [0, 2]])
        inside = (ends >= 0).all(axis=1)
        triples.append(np.stack([ends[inside, 0], known_global[inside, 1], ends[inside, 1]],
                                axis=1))
    return FilterIndex(np.concatenate(triples), part.num_nodes, part.num_relations)

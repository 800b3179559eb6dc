"""Per-epoch validation MRR, sampled (and labelled so): cheap enough to run every epoch inside
the partitions, honest about what it measures.

A subset of the graph's validation triples (seeded, the same on every worker) is ranked both
ways against the true entity plus a fixed set of sampled candidates of the node type the
relation expects (drawn from the worker's negative pool), unfiltered, ties counted as the
mean of the optimistic and pessimistic rank. Each triple is ranked by exactly one worker: the
lowest rank whose core nodes contain both its ends (the only nodes whose computation graphs a
partition holds completely); triples no partition covers are counted, not ranked. This is NOT
the filtered full ranking of ``kgops evaluate``: use it for early stopping and curves only.
"""

from __future__ import annotations

import numpy as np
import torch

from kg_ops.sampling import sample_computation_graph


def realistic_rank(true: torch.Tensor, cand: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """1-based rank of ``true[B]`` among ``cand[B, N]`` (only where ``valid``), ties halved."""
    greater = ((cand > true.unsqueeze(1)) & valid).sum(1).double()
    equal = ((cand == true.unsqueeze(1)) & valid).sum(1).double()
    return 1.0 + greater + 0.5 * equal


class SampledValidation:
    def __init__(self, part, valid_global: np.ndarray, sampler, candidates: int, seed: int,
                 owner_mask: np.ndarray):
        """``valid_global``: ``(V, 3)`` global triples (the same array on every worker);
        ``owner_mask[i]``: this worker ranks triple ``i``."""
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
        cand_types = sorted(self.candidates)
        cand_nodes = np.concatenate([self.candidates[t] for t in cand_types])
        seeds = np.concatenate([self.triples[:, [0, 2]].ravel(), cand_nodes])
        cg = sample_computation_graph(csr, seeds, fanouts, seed=sample_seed)
        was_training = model.training
        model.eval()
        try:
            z = model.encode_sampled(cg, features)
        finally:
            model.train(was_training)
        n2 = 2 * len(self.triples)
        loc = torch.from_numpy(cg.seed_index[:n2].reshape(-1, 2))
        cand_pos = torch.from_numpy(cg.seed_index[n2:])
        bounds = np.cumsum([0] + [len(self.candidates[t]) for t in cand_types])
        rel = torch.from_numpy(self.triples[:, 1])
        h, t = z[loc[:, 0]], z[loc[:, 1]]
        true = model.decoder.score(h, rel, t)
        total, count = 0.0, 0
        for tail_side in (True, False):
            types = self.sampler.expected_type(self.triples[:, 1], np.full(len(rel), tail_side))
            answer = self.triples[:, 2] if tail_side else self.triples[:, 0]
            for j, ty in enumerate(cand_types):
                rows = np.flatnonzero(types == ty)
                if not len(rows):
                    continue
                cpos = cand_pos[bounds[j]:bounds[j + 1]]
                r = torch.from_numpy(rows)
                score = model.decoder.score_tails if tail_side else model.decoder.score_heads
                cand = score(h[r] if tail_side else t[r], rel[r], z[cpos])
                valid = torch.from_numpy(self.candidates[ty][None, :] != answer[rows, None])
                total += float((1.0 / realistic_rank(true[r], cand, valid)).sum())
                count += len(rows)
        return total, count

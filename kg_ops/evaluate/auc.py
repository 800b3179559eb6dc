"""ROC-AUC of triple scores: true test triples against type-constrained corrupted negatives.

Negatives policy (recorded in the manifest by :func:`negatives_policy`): for each positive
(h, r, t), ``k`` negatives; each corrupts the head or the tail (fair coin), replacing it with an
entity drawn uniformly from the node type the relation expects on that side. Draws that form a
known true triple (train+valid+test) are redrawn, all at once per round; any still true after
``max_rounds`` are dropped and counted. Everything is seeded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from kg_ops.errors import KGOpsError
from kg_ops.evaluate.filters import FilterIndex
from kg_ops.evaluate.ranking import HEAD, TAIL

log = logging.getLogger(__name__)


@dataclass
class Negatives:
    triples: np.ndarray     # (M, 3)
    positive: np.ndarray    # (M,) index of the positive each negative was made from
    dropped: int            # draws still true after max_rounds (not used)


def negatives_policy(k: int, seed: int, max_rounds: int) -> dict:
    return {"per_positive": k, "seed": seed, "max_rounds": max_rounds,
            "sampled": True,
            "corrupt": "head or tail with probability 1/2 each",
            "replacement": "uniform over the node type the relation expects on that side",
            "excluded": "known true triples (train+valid+test), redrawn; leftovers dropped"}


def sample_negatives(positives: np.ndarray, filters: FilterIndex, ranges: np.ndarray, *,
                     k: int = 1, seed: int = 0, max_rounds: int = 50) -> Negatives:
    """``ranges``: :func:`kg_ops.evaluate.ranking.candidate_ranges` (R, 2, 2)."""
    rng = np.random.default_rng(seed)
    positives = np.asarray(positives, np.int64).reshape(-1, 3)
    pos_idx = np.repeat(np.arange(len(positives)), k)
    neg = positives[pos_idx].copy()
    # Corrupting the tail answers a tail query, so it draws from the tail type's range.
    side = np.where(rng.random(len(neg)) < 0.5, TAIL, HEAD)
    col = np.where(side == TAIL, 2, 0)
    lo, hi = ranges[neg[:, 1], side, 0], ranges[neg[:, 1], side, 1]
    pending = np.arange(len(neg))
    for _ in range(max_rounds):
        if not len(pending):
            break
        neg[pending, col[pending]] = lo[pending] + (rng.random(len(pending)) * (hi[pending] - lo[pending])
                                           ).astype(np.int64)
        pending = pending[filters.contains(neg[pending, 0], neg[pending, 1], neg[pending, 2])]
    keep = np.ones(len(neg), bool)
    keep[pending] = False
    if len(pending):
        log.warning("AUC negatives: %d of %d draws were still true triples after %d rounds "
                    "(relations whose expected type is almost fully linked); dropped",
                    len(pending), len(neg), max_rounds)
    return Negatives(triples=neg[keep], positive=pos_idx[keep], dropped=int(len(pending)))


@dataclass
class AucResult:
    auc: float
    per_relation: np.ndarray   # (R,) NaN where a relation lacks positives or negatives
    positives: int
    negatives: int
    dropped: int


def grouped_auc(scores: np.ndarray, positive: np.ndarray, group: np.ndarray,
                num_groups: int) -> np.ndarray:
    """ROC-AUC of every group at once, as the Mann-Whitney statistic with mid-ranks for ties
    (identical to sklearn's ``roc_auc_score``, which the tests check): one sort for all groups
    instead of one sklearn call, with its input validation, per relation. NaN for a group
    without both classes."""
    scores, positive = np.asarray(scores, np.float64), np.asarray(positive, bool)
    group = np.asarray(group, np.int64)
    order = np.lexsort((scores, group))
    s, g, pos = scores[order], group[order], positive[order]
    n = len(s)
    # Tie blocks: equal group and score. A block's mid-rank within its group is the mean of the
    # 1-based positions it spans, counted from the group's first row.
    new_block = np.ones(n, bool)
    new_block[1:] = (g[1:] != g[:-1]) | (s[1:] != s[:-1])
    block = np.cumsum(new_block) - 1
    starts = np.flatnonzero(new_block)
    ends = np.append(starts[1:], n)
    group_start = np.searchsorted(g, np.arange(num_groups))
    mid = (starts + ends + 1) / 2.0 - group_start[g[starts]]
    ranks = mid[block]
    n_pos = np.bincount(g[pos], minlength=num_groups).astype(np.float64)
    n_neg = np.bincount(g[~pos], minlength=num_groups).astype(np.float64)
    rank_sum = np.bincount(g[pos], weights=ranks[pos], minlength=num_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def roc_auc(positive_scores: np.ndarray, negative_scores: np.ndarray) -> float:
    pos, neg = np.asarray(positive_scores), np.asarray(negative_scores)
    labels = np.r_[np.ones(len(pos), bool), np.zeros(len(neg), bool)]
    return float(grouped_auc(np.r_[pos, neg], labels, np.zeros(len(labels), np.int64), 1)[0])


def evaluate_auc(score_triples: Callable[[np.ndarray], np.ndarray], positives: np.ndarray,
                 filters: FilterIndex, ranges: np.ndarray, num_relations: int, *, k: int = 1,
                 seed: int = 0, max_rounds: int = 50, batch_size: int = 65536) -> AucResult:
    """``score_triples((B, 3) ids) -> (B,)`` scores, called in batches."""
    positives = np.asarray(positives, np.int64).reshape(-1, 3)
    neg = sample_negatives(positives, filters, ranges, k=k, seed=seed, max_rounds=max_rounds)

    def scores(trip: np.ndarray) -> np.ndarray:
        parts = [np.asarray(score_triples(trip[i:i + batch_size]), np.float64).reshape(-1)
                 for i in range(0, len(trip), batch_size)]
        return np.concatenate(parts) if parts else np.zeros(0)

    s_pos, s_neg = scores(positives), scores(neg.triples)
    if not (np.isfinite(s_pos).all() and np.isfinite(s_neg).all()):
        raise KGOpsError("the model produced non-finite scores (NaN/inf) for AUC triples; the "
                         "checkpoint is corrupt or training diverged")
    labels = np.r_[np.ones(len(s_pos), bool), np.zeros(len(s_neg), bool)]
    per_rel = grouped_auc(np.r_[s_pos, s_neg], labels,
                          np.r_[positives[:, 1], neg.triples[:, 1]], num_relations)
    return AucResult(auc=roc_auc(s_pos, s_neg), per_relation=per_rel, positives=len(s_pos),
                     negatives=len(s_neg), dropped=neg.dropped)

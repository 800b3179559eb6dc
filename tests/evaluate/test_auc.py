"""ROC-AUC: negatives obey the type-constrained policy; AUC equals a pairwise brute force and
sklearn on the same pairs, overall and per relation."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from kg_ops.errors import KGOpsError
from kg_ops.evaluate.auc import evaluate_auc, grouped_auc, roc_auc, sample_negatives
from kg_ops.evaluate.filters import FilterIndex

# Two node types: ids [0, 10) "person" and [10, 30) "city".
# r0: person -> city, r1: person -> person.
RANGES = np.array([[[10, 30], [0, 10]],    # r0: tail range (city), head range (person)
                   [[0, 10], [0, 10]]])    # r1


def graph(seed=0, m=80):
    rng = np.random.default_rng(seed)
    r = rng.integers(0, 2, m)
    h = rng.integers(0, 10, m)
    t = np.where(r == 0, rng.integers(10, 30, m), rng.integers(0, 10, m))
    return np.unique(np.stack([h, r, t], 1), axis=0)


def pairwise_auc(pos, neg):
    """P(score_pos > score_neg) + 0.5 P(tie), over every pair."""
    total = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return total / (len(pos) * len(neg))


def test_negatives_follow_the_policy():
    trip = graph()
    fi = FilterIndex(trip, 30, 2)
    neg = sample_negatives(trip[:30], fi, RANGES, k=4, seed=3)
    assert neg.dropped == 0 and len(neg.triples) == 120
    assert not fi.contains(*neg.triples.T).any()
    src = trip[:30][neg.positive]
    same_h, same_t = neg.triples[:, 0] == src[:, 0], neg.triples[:, 2] == src[:, 2]
    assert (neg.triples[:, 1] == src[:, 1]).all()
    assert (same_h ^ same_t).all()  # exactly one side corrupted
    for x, corrupted_tail in zip(neg.triples, same_h, strict=True):
        lo, hi = RANGES[x[1], 0 if corrupted_tail else 1]
        assert lo <= x[2 if corrupted_tail else 0] < hi
    assert 30 < same_h.sum() < 90  # both sides get corrupted
    again = sample_negatives(trip[:30], fi, RANGES, k=4, seed=3)
    assert np.array_equal(again.triples, neg.triples)
    assert not np.array_equal(sample_negatives(trip[:30], fi, RANGES, k=4, seed=4).triples,
                              neg.triples)


def test_impossible_negatives_are_dropped_and_counted():
    # Relation 0 links every person to every city: no corruption of head or tail is false.
    trip = np.array([[h, 0, t] for h in range(10) for t in range(10, 30)])
    neg = sample_negatives(trip[:5], FilterIndex(trip, 30, 2), RANGES, k=2, seed=0,
                           max_rounds=3)
    assert neg.dropped == 10 and len(neg.triples) == 0


def test_auc_equals_pairwise_brute_force_and_sklearn():
    trip = graph(1, m=120)
    fi = FilterIndex(trip, 30, 2)
    rng = np.random.default_rng(0)
    table = rng.integers(0, 5, (30, 2, 30)).astype(float)  # coarse scores -> many ties

    def score(b):
        return table[b[:, 0], b[:, 1], b[:, 2]]

    test = trip[:50]
    res = evaluate_auc(score, test, fi, RANGES, 2, k=3, seed=7, batch_size=16)
    neg = sample_negatives(test, fi, RANGES, k=3, seed=7)
    s_pos = [table[h, r, t] for h, r, t in test]
    s_neg = [table[h, r, t] for h, r, t in neg.triples]
    assert res.positives == 50 and res.negatives == 150
    assert res.auc == pytest.approx(pairwise_auc(s_pos, s_neg))
    assert res.auc == pytest.approx(roc_auc_score([1] * 50 + [0] * 150, s_pos + s_neg))
    for r in (0, 1):
        pr = [table[h, rr, t] for h, rr, t in test if rr == r]
        nr = [table[h, rr, t] for h, rr, t in neg.triples if rr == r]
        assert res.per_relation[r] == pytest.approx(pairwise_auc(pr, nr))


def test_perfect_and_reversed_scorers():
    trip = graph(2)
    fi = FilterIndex(trip, 30, 2)
    known = fi.contains

    def good(b):
        return known(b[:, 0], b[:, 1], b[:, 2]).astype(float)

    assert evaluate_auc(good, trip, fi, RANGES, 2).auc == 1.0
    assert evaluate_auc(lambda b: -good(b), trip, fi, RANGES, 2).auc == 0.0
    assert np.isnan(roc_auc(np.array([]), np.array([1.0])))


def test_nan_scores_fail_clearly():
    trip = graph(3)
    with pytest.raises(KGOpsError, match="non-finite"):
        evaluate_auc(lambda b: np.full(len(b), np.nan), trip, FilterIndex(trip, 30, 2),
                     RANGES, 2)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grouped_auc_equals_sklearn_per_group(seed):
    rng = np.random.default_rng(seed)
    n, groups = 400, 7
    scores = rng.integers(0, 6, n).astype(float)        # heavy ties
    scores[::7] += rng.random(len(scores[::7]))          # and some distinct values
    labels = rng.random(n) < 0.4
    group = rng.integers(0, groups, n)
    group[group == 5] = 4                                # group 5 empty
    labels[group == 6] = True                            # group 6 has one class only
    got = grouped_auc(scores, labels, group, groups)
    for g in range(groups):
        m = group == g
        if g in (5, 6):
            assert np.isnan(got[g])
        else:
            assert got[g] == pytest.approx(roc_auc_score(labels[m], scores[m]), abs=1e-12)
    assert roc_auc(scores[labels], scores[~labels]) == pytest.approx(
        roc_auc_score(labels, scores), abs=1e-12)

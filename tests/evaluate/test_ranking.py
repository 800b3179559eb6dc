"""Filtered ranking against an independent brute force: plain loops over every query and every
candidate, Python sets as filters. Integer-valued embeddings make exact ties common."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kg_ops.errors import KGOpsError
from kg_ops.evaluate.filters import FilterIndex
from kg_ops.evaluate.ranking import (
    HEAD,
    TAIL,
    cold_metrics,
    overall_metrics,
    per_relation_metrics,
    rank_queries,
)

torch.set_num_threads(1)


class Bilinear:
    """score(h, r, t) = h^T M_r t: asymmetric, so head and tail queries differ."""

    def __init__(self, mats: torch.Tensor):
        self.mats = mats

    def score_tails(self, h_emb, rel, cand):
        return torch.einsum("bd,bde->be", h_emb, self.mats[rel]) @ cand.T

    def score_heads(self, t_emb, rel, cand):
        return torch.einsum("bde,be->bd", self.mats[rel], t_emb) @ cand.T

    def one(self, emb, h, r, t) -> float:
        return float(emb[h] @ self.mats[r] @ emb[t])


class Constant:
    def score_tails(self, h_emb, rel, cand):
        return torch.zeros(len(rel), len(cand))

    score_heads = score_tails


def random_graph(seed: int, n: int = 14, num_rel: int = 3, m: int = 60):
    rng = np.random.default_rng(seed)
    trip = np.unique(np.stack([rng.integers(0, n, m), rng.integers(0, num_rel, m),
                               rng.integers(0, n, m)], 1), axis=0)
    trip = trip[rng.permutation(len(trip))]
    emb = torch.from_numpy(rng.integers(-1, 2, (n, 2)).astype(np.float32))
    mats = torch.from_numpy(rng.integers(-1, 2, (num_rel, 2, 2)).astype(np.float32))
    return trip, emb, Bilinear(mats)


def brute_ranks(score, n, test, known, lo_hi=None):
    """Per query (tail queries first, then head queries): (optimistic, pessimistic)."""
    out = []
    for side in (TAIL, HEAD):
        for h, r, t in test:
            answer = t if side == TAIL else h
            s_ans = score(h, r, t)
            gt = ge = 0
            cands = range(n) if lo_hi is None else range(*lo_hi(r, side))
            for c in cands:
                if c == answer:
                    continue
                triple = (h, r, c) if side == TAIL else (c, r, t)
                if triple in known:
                    continue
                s = score(*triple)
                gt += s > s_ans
                ge += s >= s_ans
            out.append((side, h, r, t, 1 + gt, 1 + ge))
    return out


def as_table(res, test):
    rows = [(int(s), *map(int, test[i]), int(o), int(p))
            for i, s, o, p in zip(res.triple_index, res.side, res.optimistic, res.pessimistic,
                                  strict=True)]
    return sorted(rows)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("batch_size", [1, 4, None])
def test_ranks_equal_brute_force(seed, batch_size):
    trip, emb, model = random_graph(seed)
    test = trip[:15]
    known = {tuple(map(int, x)) for x in trip}
    fi = FilterIndex(trip, num_nodes=len(emb), num_relations=3)
    res = rank_queries(emb, model, test, fi, batch_size=batch_size)
    expected = brute_ranks(lambda h, r, t: model.one(emb, h, r, t), len(emb),
                           [tuple(map(int, x)) for x in test], known)
    assert as_table(res, test) == sorted(expected)
    # The random integer embeddings must actually produce ties, or this test checks less.
    assert (res.pessimistic > res.optimistic).any()


def test_overall_and_per_relation_metrics_equal_brute_force():
    trip, emb, model = random_graph(5, n=20, num_rel=4, m=120)
    test = trip[:40]
    known = {tuple(map(int, x)) for x in trip}
    fi = FilterIndex(trip, num_nodes=len(emb), num_relations=4)
    res = rank_queries(emb, model, test, fi, batch_size=7)
    rows = brute_ranks(lambda h, r, t: model.one(emb, h, r, t), len(emb),
                       [tuple(map(int, x)) for x in test], known)
    real = [(o + p) / 2 for *_, o, p in rows]
    m = overall_metrics(res)
    assert m["queries"] == 80
    assert m["mrr"] == pytest.approx(sum(1 / x for x in real) / len(real))
    for k in (1, 3, 10):
        assert m[f"hits@{k}"] == pytest.approx(sum(x <= k for x in real) / len(real))
    tails = [(o + p) / 2 for s, *_, o, p in rows if s == TAIL]
    assert m["mrr_tail"] == pytest.approx(sum(1 / x for x in tails) / len(tails))
    assert m["mrr_optimistic"] == pytest.approx(sum(1 / o for *_, o, _ in rows) / len(rows))

    table = per_relation_metrics(res, ["a", "b", "c", "d"])
    assert [r["relation"] for r in table] == ["a", "b", "c", "d"]
    for r in range(4):
        mine = [(o + p) / 2 for _, _, rr, _, o, p in rows if rr == r]
        heads = [(o + p) / 2 for s, _, rr, _, o, p in rows if rr == r and s == HEAD]
        assert table[r]["queries"] == len(mine)
        if mine:
            assert table[r]["mrr"] == pytest.approx(sum(1 / x for x in mine) / len(mine))
            assert table[r]["hits@3"] == pytest.approx(sum(x <= 3 for x in mine) / len(mine))
            assert table[r]["mrr_head"] == pytest.approx(sum(1 / x for x in heads) / len(heads))
        else:
            assert np.isnan(table[r]["mrr"])


def test_cold_metrics_cover_exactly_the_triples_with_a_sparse_entity():
    trip, emb, model = random_graph(7, n=20, num_rel=3, m=90)
    test, train = trip[:30], trip[30:]
    fi = FilterIndex(trip, num_nodes=len(emb), num_relations=3)
    res = rank_queries(emb, model, test, fi, batch_size=5)
    rows = brute_ranks(lambda h, r, t: model.one(emb, h, r, t), len(emb),
                       [tuple(map(int, x)) for x in test], {tuple(map(int, x)) for x in trip})
    degree = {e: 0 for e in range(len(emb))}          # training edges touching each entity
    for h, _, t in train:
        degree[int(h)] += 1
        degree[int(t)] += 1
    cold = [(o + p) / 2 for _, h, _, t, o, p in rows if min(degree[h], degree[t]) <= 3]
    assert 0 < len(cold) < len(rows)                  # the graph has both kinds
    m = cold_metrics(res, test, train, len(emb))
    assert m["cold_queries"] == len(cold)
    assert m["cold_mrr"] == pytest.approx(sum(1 / x for x in cold) / len(cold))
    assert m["cold_hits@10"] == pytest.approx(sum(x <= 10 for x in cold) / len(cold))
    assert cold_metrics(res, test, train, len(emb), max_degree=-1)["cold_queries"] == 0


def test_constant_scores_give_the_middle_of_the_unfiltered_candidates():
    n = 10
    # (0, 0, 1) is the test triple; (0, 0, 2) and (0, 0, 3) are other true tails of (0, 0, ?);
    # (5, 0, 1) is another true head of (?, 0, 1).
    trip = np.array([[0, 0, 1], [0, 0, 2], [0, 0, 3], [5, 0, 1]])
    fi = FilterIndex(trip, num_nodes=n, num_relations=1)
    res = rank_queries(torch.zeros(n, 4), Constant(), trip[:1], fi)
    by_side = dict(zip(res.side.tolist(), zip(res.optimistic, res.pessimistic, strict=True),
                       strict=True))
    # Tail query: 10 entities - 2 filtered = 8 unfiltered incl. the answer -> ranks 1..8.
    assert by_side[TAIL] == (1, 8)
    # Head query: 10 - 1 filtered = 9 -> ranks 1..9.
    assert by_side[HEAD] == (1, 9)
    assert sorted(res.realistic.tolist()) == [(1 + 8) / 2, (1 + 9) / 2]


def test_a_true_triple_ranked_above_the_answer_does_not_count():
    n = 5
    emb = torch.eye(n)

    class Fixed:  # tail scores: entity 3 > entity 2 (answer) > the rest; heads all equal
        def score_tails(self, h_emb, rel, cand):
            return torch.tensor([[0.0, 0.0, 2.0, 3.0, 0.0]]).expand(len(rel), n)

        def score_heads(self, t_emb, rel, cand):
            return torch.zeros(len(rel), n)

    test = np.array([[0, 0, 2]])
    unfiltered = rank_queries(emb, Fixed(), test, FilterIndex(test, n, 1))
    filtered = rank_queries(emb, Fixed(), test, FilterIndex(np.array([[0, 0, 2], [0, 0, 3]]),
                                                            n, 1))
    assert unfiltered.optimistic[unfiltered.side == TAIL].tolist() == [2]
    assert filtered.optimistic[filtered.side == TAIL].tolist() == [1]
    assert filtered.pessimistic[filtered.side == TAIL].tolist() == [1]


def test_answer_missing_from_filter_set_is_still_excluded_from_its_own_count():
    trip, emb, model = random_graph(3)
    with_test = rank_queries(emb, model, trip[:10], FilterIndex(trip, len(emb), 3))
    without = rank_queries(emb, model, trip[:10], FilterIndex(trip[10:], len(emb), 3))
    # Same unless another test triple of the same query filters something away.
    assert (without.optimistic >= with_test.optimistic).all()
    assert (without.pessimistic >= with_test.pessimistic).all()
    assert (with_test.optimistic >= 1).all()


def test_type_constrained_ranks_equal_brute_force():
    trip, emb, model = random_graph(7, n=16, num_rel=3, m=80)
    # Two node types: ids [0, 6) and [6, 16). Relation r's tail type / head type:
    ranges = np.array([[[6, 16], [0, 6]], [[0, 6], [0, 6]], [[6, 16], [6, 16]]])
    test = trip[:25]
    known = {tuple(map(int, x)) for x in trip}
    res = rank_queries(emb, model, test, FilterIndex(trip, 16, 3), ranges=ranges, batch_size=6)
    rows = brute_ranks(lambda h, r, t: model.one(emb, h, r, t), 16,
                       [tuple(map(int, x)) for x in test], known,
                       lo_hi=lambda r, side: tuple(ranges[r, side]))
    # Brute force counts only in-range candidates; the answer always counts once.
    got = sorted((int(s), *map(int, test[i]), int(o), int(p)) for i, s, o, p in
                 zip(res.triple_index, res.side, res.tc_optimistic, res.tc_pessimistic,
                     strict=True))
    assert got == sorted(rows)
    assert (res.tc_optimistic <= res.optimistic).all()
    assert "tc_mrr" in overall_metrics(res)


def test_filter_index_lists_every_true_answer():
    trip, _, _ = random_graph(11, n=30, num_rel=4, m=300)
    fi = FilterIndex(np.concatenate([trip, trip[:20]]), 30, 4)  # duplicates are collapsed
    anchors = np.array([0, 1, 2, 29, 7])
    rels = np.array([0, 3, 1, 2, 0])
    rows, ents = fi.known(anchors, rels, tail_side=True)
    got = sorted(zip(rows.tolist(), ents.tolist(), strict=True))
    want = sorted((i, int(t)) for i, (a, r) in enumerate(zip(anchors, rels, strict=True))
                  for t in {int(x[2]) for x in trip if x[0] == a and x[1] == r})
    assert got == want
    rows, ents = fi.known(anchors, rels, tail_side=False)
    want = sorted((i, int(h)) for i, (a, r) in enumerate(zip(anchors, rels, strict=True))
                  for h in {int(x[0]) for x in trip if x[2] == a and x[1] == r})
    assert sorted(zip(rows.tolist(), ents.tolist(), strict=True)) == want
    assert fi.contains(trip[:, 0], trip[:, 1], trip[:, 2]).all()
    assert fi.num_triples == len(trip)


def test_mismatched_embeddings_and_nan_scores_fail_clearly():
    trip, emb, model = random_graph(0)
    fi = FilterIndex(trip, len(emb), 3)
    with pytest.raises(KGOpsError, match="embeds 13 entities but the graph has 14"):
        rank_queries(emb[:-1], model, trip[:3], fi)
    bad = emb.clone()
    bad[int(trip[0, 2])] = float("nan")
    with pytest.raises(KGOpsError, match="non-finite"):
        rank_queries(bad, model, trip[:1], fi)
    with pytest.raises(KGOpsError, match="outside 14 nodes"):
        FilterIndex(np.array([[0, 0, 14]]), 14, 3)

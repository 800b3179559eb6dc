"""Type-constrained negatives: the corrupted side gets an entity of the type the relation
expects, drawn from the partition's pool; the other side is kept."""

from __future__ import annotations

import numpy as np
import pytest

from kg_ops.errors import KGOpsError
from kg_ops.partition.io import load_partition
from kg_ops.train.negatives import TypedNegativeSampler


def test_negatives_respect_types_in_a_real_partition(planted):
    part = load_partition(planted["parts"][2], 1)
    sampler = TypedNegativeSampler(part.negative_pool, part.relation_head_type,
                                   part.relation_tail_type)
    pos = part.core_edges
    neg = sampler.sample(pos, 3, np.random.default_rng(0))
    assert neg.shape == (3 * len(pos), 3)
    src = np.repeat(pos, 3, axis=0)
    assert (neg[:, 1] == src[:, 1]).all()
    tail_changed = neg[:, 0] == src[:, 0]
    head_changed = neg[:, 2] == src[:, 2]
    assert (tail_changed | head_changed).all()
    # about half heads, half tails
    assert 0.4 < tail_changed.mean() < 0.6
    # the node type of each side is the one the schema expects for the relation
    assert (part.node_type[neg[:, 0]] == part.relation_head_type[neg[:, 1]]).all()
    assert (part.node_type[neg[:, 2]] == part.relation_tail_type[neg[:, 1]]).all()
    # only core nodes (the negative pool) are drawn
    assert neg[:, [0, 2]].max() < part.num_core_nodes
    # lives_in tails are cities: every city of the pool gets drawn
    cities = part.negative_pool[1]
    lives = neg[(neg[:, 1] == 1) & ~tail_changed]
    assert set(np.unique(lives[:, 2])) == set(cities.tolist())


def test_empty_pool_for_an_expected_type_is_a_clear_error():
    sampler = TypedNegativeSampler({0: np.arange(0, 5)}, np.array([0]), np.array([1]))
    rng = np.random.default_rng(0)
    with pytest.raises(KGOpsError, match="no negative candidates of node type 1"):
        sampler.sample(np.array([[0, 0, 1]] * 20), 2, rng)


def test_shared_candidates_match_types_and_exclude_the_true_entity(planted):
    part = load_partition(planted["parts"][2], 0)
    sampler = TypedNegativeSampler(part.negative_pool, part.relation_head_type,
                                   part.relation_tail_type)
    pos = part.core_edges[:40]
    rng = np.random.default_rng(0)
    cand, tail_ok, head_ok = sampler.shared_candidates(pos, 5, rng)
    # up to 5 distinct candidates of each type the batch needs, all from the pool
    types = part.node_type[cand]
    for ty in np.unique(types):
        ids = cand[types == ty]
        assert len(np.unique(ids)) == len(ids) == min(5, len(part.negative_pool[ty]))
        assert np.isin(ids, part.negative_pool[ty]).all()
    # the masks, checked entry by entry
    for i, (h, r, t) in enumerate(pos):
        for j, c in enumerate(cand):
            assert tail_ok[i, j] == (part.node_type[c] == part.relation_tail_type[r] and c != t)
            assert head_ok[i, j] == (part.node_type[c] == part.relation_head_type[r] and c != h)
    # a pool smaller than k is taken whole
    cand_all, _, _ = sampler.shared_candidates(pos, 10_000, rng)
    needed = np.union1d(part.relation_head_type[pos[:, 1]], part.relation_tail_type[pos[:, 1]])
    assert sorted(cand_all) == sorted(np.concatenate([part.negative_pool[t] for t in needed]))

"""The in-process engine (:class:`kg_ops.serve.index.LinkIndex`) against the brute-force
ranking of the stored files (:class:`tests.serve.conftest.Brute`): no Ray, no HTTP."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from tests.serve.conftest import Brute, queries


@pytest.mark.parametrize("chunk_rows", [None, 7])
def test_a_mixed_batch_answers_each_query_like_brute_force(versions, graph, chunk_rows):
    """Head and tail queries that share a candidate type are scored in one product; every
    answer list still equals its own brute-force ranking, whether the query filters known
    facts or not, whatever its k, and when the product is chunked (``chunk_rows``)."""
    from kg_ops.serve.index import LinkIndex

    brute = Brute(versions[0], graph)
    bodies = [{**q, "k": 3 + i % 9, "filter_known": i % 3 != 0}
              for i, q in enumerate(queries(brute, n=30))]
    index = LinkIndex.open(versions[0])
    resolved = [index.query(**b) for b in bodies]
    sides = defaultdict(set)
    for q in resolved:
        sides[index.candidate_range(q.rel, q.tail_side)].add(q.tail_side)
    assert any(len(s) == 2 for s in sides.values()), "no group mixes head and tail queries"
    if chunk_rows:  # the score matrix's budget: chunk_rows candidates per product
        index.memory_mib = 4 * len(resolved) * chunk_rows / 2**20

    answers = index.topk(resolved)
    for body, got in zip(bodies, answers, strict=True):
        tail_side = "head" in body
        keys, scores = brute.topk(body.get("head") or body.get("tail"), body["relation"],
                                  body["k"], tail_side, body["filter_known"])
        assert [a["key"] for a in got] == keys, body
        np.testing.assert_allclose([a["score"] for a in got], scores, rtol=1e-4, atol=1e-5)

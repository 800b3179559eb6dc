"""The per-epoch sampled validation MRR against a brute-force, one-candidate-at-a-time
computation with a Python set of known triples (the planted graph, one partition: the filter
is exact there)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kg_ops.graph.kg import load_edges
from kg_ops.models.link_predictor import LinkPredictor, ModelConfig
from kg_ops.partition.io import load_partition
from kg_ops.train.negatives import TypedNegativeSampler
from kg_ops.train.validation import SampledValidation

PERSON, CITY = 0, 1
HEAD_TYPE, TAIL_TYPE = {0: PERSON, 1: PERSON}, {0: PERSON, 1: CITY}   # knows, lives_in


@torch.no_grad()
def brute_force(emb, decoder, triples, candidates, known, filtered: bool) -> tuple[float, int]:
    """With reciprocal relations a head query (?, r, t) scores c as (t, r^-1, c): the decoder's
    forward score with the second relation vector (row r + R)."""
    total, count = 0.0, 0
    for h, r, t in triples.tolist():
        rel = torch.tensor([r])
        for tail_side in (True, False):
            if tail_side or not decoder.reciprocal:
                def pair(a, b, rel=rel):
                    return float(decoder.score(emb[[a]], rel, emb[[b]]))
            else:
                inv = decoder.rel[[r + decoder.num_relations]]

                def pair(a, b, inv=inv, t=t):
                    return float((decoder._forward_query(emb[[t]], inv) * emb[[a]]).sum())
            true = pair(h, t)
            answer = t if tail_side else h
            ty = TAIL_TYPE[r] if tail_side else HEAD_TYPE[r]
            greater = equal = 0
            for c in candidates[ty].tolist():
                triple = (h, r, c) if tail_side else (c, r, t)
                if c == answer or (filtered and triple in known):
                    continue
                s = pair(triple[0], triple[2])
                greater += s > true + 1e-6
                equal += abs(s - true) <= 1e-6
            total += 1.0 / (1 + greater + 0.5 * equal)
            count += 1
    return total, count


@pytest.mark.parametrize("reciprocal", [False, True])
def test_sampled_validation_is_filtered_and_equals_brute_force(planted, reciprocal):
    graph = planted["graph"]
    part = load_partition(planted["parts"][1], 0)
    assert np.array_equal(part.global_ids, np.arange(part.num_nodes))  # local ids are global
    split = {s: load_edges(graph, s) for s in ("train", "valid", "test")}
    sampler = TypedNegativeSampler(part.negative_pool, part.relation_head_type,
                                   part.relation_tail_type)
    valid = split["valid"]
    v = SampledValidation(part, valid, sampler, candidates=40, seed=3,
                          owner_mask=np.ones(len(valid), dtype=bool),
                          known_global=np.concatenate([split["valid"], split["test"]]))
    torch.manual_seed(0)
    model = LinkPredictor(ModelConfig("rgcn", part.num_nodes, 2, embedding_dim=8, hidden_dim=8,
                                      out_dim=8, decoder="complex",
                                      reciprocal=reciprocal)).eval()
    fanouts = [10, 5]
    rr, n = v.reciprocal_ranks(model, part.graph(), fanouts, sample_seed=0)

    emb = model.encode_full(part.graph(), fanouts=fanouts, seed=0)
    known = {tuple(x) for s in split.values() for x in s.tolist()}
    want, want_n = brute_force(emb, model.decoder, valid, v.candidates, known, filtered=True)
    unfiltered, _ = brute_force(emb, model.decoder, valid, v.candidates, known, filtered=False)
    assert n == want_n == 2 * len(valid)
    assert abs(rr - want) < 1e-4
    # Filtering matters here: people of the queried city are among the head candidates.
    assert want > unfiltered + 0.01


def _full(part, graph: str, world: int, rank: int, reciprocal: bool, fanouts):
    from kg_ops.evaluate.filters import FilterIndex
    from kg_ops.train.collectives import Collectives
    from kg_ops.train.validation import FullValidation

    split = {s: load_edges(graph, s) for s in ("train", "valid", "test")}
    n_nodes = int(max(part.global_ids.max(), np.concatenate(list(split.values()))[:, [0, 2]].max())) + 1
    filters = FilterIndex(np.concatenate(list(split.values())), n_nodes, 2)
    torch.manual_seed(0)
    model = LinkPredictor(ModelConfig("rgcn", n_nodes, 2, embedding_dim=8, hidden_dim=8,
                                      out_dim=8, decoder="complex",
                                      reciprocal=reciprocal)).eval()
    v = FullValidation(part, split["valid"], filters, Collectives(world), rank)
    return v.reciprocal_ranks(model, part.graph(), fanouts, sample_seed=0), model, split


def _full_on_worker(rank: int, world: int, parts_uri: str, graph: str):
    (rr, n), _, _ = _full(load_partition(parts_uri, rank), graph, world, rank, True, [-1, -1])
    return rr, n


@pytest.mark.parametrize("reciprocal", [False, True])
def test_full_validation_equals_brute_force_over_every_entity(planted, reciprocal):
    """One worker: every entity is a candidate for both sides (as ``kgops evaluate`` ranks),
    filtered by every train, valid and test triple."""
    part = load_partition(planted["parts"][1], 0)
    (rr, n), model, split = _full(part, planted["graph"], 1, 0, reciprocal, [10, 5])
    emb = model.encode_full(part.graph(), fanouts=[10, 5], seed=0)
    everyone = np.arange(part.num_nodes)
    known = {tuple(x) for s in split.values() for x in s.tolist()}
    want, want_n = brute_force(emb, model.decoder, split["valid"],
                               {PERSON: everyone, CITY: everyone}, known, filtered=True)
    assert n == want_n == 2 * len(split["valid"])
    assert abs(rr - want) < 1e-4


@pytest.mark.parametrize("graph", ["planted", "crossed"])
def test_two_workers_assemble_the_whole_table_and_share_the_triples(graph, request, tmp_path):
    """2 gloo workers on 2 partitions: each embeds its core entities, one all-reduce gives
    both the graph's table, and their shares of the triples add up to the 1-worker ranking
    (all neighbours, so a core entity's embedding is the same in its partition as in the
    whole graph). On the crossed graph the partitions' cores overlap: an entity core in both
    still has its one row in the table."""
    from .gloo import run_gloo

    g = request.getfixturevalue(graph)
    cores = [set(p.global_ids[:p.num_core_nodes].tolist())
             for p in (load_partition(g["parts"][2], r) for r in (0, 1))]
    assert bool(cores[0] & cores[1]) == (graph == "crossed")
    got = run_gloo(_full_on_worker, 2, str(tmp_path), g["parts"][2], g["graph"])
    assert all(n > 0 for _, n in got)
    (one_rr, one_n), _, _ = _full(load_partition(g["parts"][1], 0), g["graph"],
                                  1, 0, True, [-1, -1])
    assert sum(n for _, n in got) == one_n
    assert abs(sum(rr for rr, _ in got) - one_rr) < 1e-4


def test_validation_scores_without_dropout_and_restores_training_mode(planted):
    """Dropout never reaches the validation, in encoding or in scoring: a model in training
    mode with heavy dropout gets exactly its eval-mode MRR from both validations, every call,
    and is handed back in training mode (the decoder's relation dropout used to perturb the
    queries)."""
    from kg_ops.evaluate.filters import FilterIndex
    from kg_ops.train.collectives import Collectives
    from kg_ops.train.validation import FullValidation

    graph = planted["graph"]
    part = load_partition(planted["parts"][1], 0)
    split = {s: load_edges(graph, s) for s in ("train", "valid", "test")}
    sampler = TypedNegativeSampler(part.negative_pool, part.relation_head_type,
                                   part.relation_tail_type)
    filters = FilterIndex(np.concatenate(list(split.values())), part.num_nodes, 2)
    validations = {
        "full": FullValidation(part, split["valid"], filters, Collectives(1), 0),
        "sampled": SampledValidation(part, split["valid"], sampler, candidates=40, seed=3,
                                     owner_mask=np.ones(len(split["valid"]), dtype=bool),
                                     known_global=np.concatenate([split["valid"],
                                                                  split["test"]]))}
    torch.manual_seed(0)
    model = LinkPredictor(ModelConfig("rgcn", part.num_nodes, 2, embedding_dim=8, hidden_dim=8,
                                      out_dim=8, decoder="complex", reciprocal=True,
                                      dropout=0.5, entity_dropout=0.5, relation_dropout=0.5))
    for name, v in validations.items():
        model.eval()
        want = v.reciprocal_ranks(model, part.graph(), [10, 5], sample_seed=0)
        model.train()
        got = [v.reciprocal_ranks(model, part.graph(), [10, 5], sample_seed=0)
               for _ in range(3)]
        assert model.training, name
        assert got == [want] * 3, name

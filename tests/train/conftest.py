"""Fixtures for the training tests: a real local Ray instance and a planted toy graph.

The planted graph: 12 communities, each with 10 people and 1 city. People know 4 others of
their own community and live in their community's city. Held-out ``lives_in`` triples can only
be answered by a model that learned the community structure: a random scorer's tail MRR over
the 12 cities is H(12)/12 = 0.259.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kg_ops.graph.kg import KnowledgeGraph
from kg_ops.graph.schema import GraphSchema, NodeType, Relation
from kg_ops.manifest import Stage
from kg_ops.store import join

torch.set_num_threads(1)
COMMUNITIES, PEOPLE = 12, 10


def planted_graph(uri: str, seed: int = 0, cross: int = 0) -> str:
    """``cross``: that many extra ``knows`` edges between random people of any communities
    (edges a 2-way partition cannot keep inside one part)."""
    rng = np.random.default_rng(seed)
    n_people = COMMUNITIES * PEOPLE
    schema = GraphSchema(
        name="planted", node_types=[NodeType("person", n_people, 0),
                                    NodeType("city", COMMUNITIES, n_people)],
        relations=[Relation("knows", "person", "person"), Relation("lives_in", "person", "city")])
    community = np.arange(n_people) // PEOPLE
    knows = []
    for k in range(4):
        other = community * PEOPLE + (np.arange(n_people) % PEOPLE + 1 + k) % PEOPLE
        knows.append(np.stack([np.arange(n_people), np.zeros(n_people, np.int64), other], 1))
    if cross:
        pairs = rng.choice(n_people, size=(cross, 2))
        pairs = pairs[pairs[:, 0] != pairs[:, 1]]
        knows.append(np.stack([pairs[:, 0], np.zeros(len(pairs), np.int64), pairs[:, 1]], 1))
    lives = np.stack([np.arange(n_people), np.ones(n_people, np.int64),
                      n_people + community], 1)
    lives = lives[rng.permutation(n_people)]
    held = 2 * COMMUNITIES
    edges = {"train": np.concatenate(knows + [lives[held:]]), "valid": lives[:held // 2],
             "test": lives[held // 2:held]}
    with Stage("import", uri, announce=False):
        KnowledgeGraph(schema, edges).save(uri)
    return uri


@pytest.fixture(scope="session")
def planted(tmp_path_factory):
    """The planted graph and its 1- and 2-partition splits."""
    from kg_ops.config import PartitionConfig
    from kg_ops.partition.cli import partition

    root = str(tmp_path_factory.mktemp("planted"))
    graph = planted_graph(join(root, "graph"))
    parts = {p: join(root, f"parts{p}") for p in (1, 2)}
    for p, uri in parts.items():
        partition(PartitionConfig(graph=graph, parts=p, out=uri, fanout="10,5", seed=0))
    return {"graph": graph, "parts": parts, "root": root}


@pytest.fixture(scope="session")
def crossed(tmp_path_factory):
    """The planted graph with 40 cross-community edges, and its 1- and 2-partition splits:
    nodes at the ends of cut edges are core in both partitions. Every neighbour is kept
    (fanout -1): a core entity's representation is then the same in either partition."""
    from kg_ops.config import PartitionConfig
    from kg_ops.partition.cli import partition

    root = str(tmp_path_factory.mktemp("crossed"))
    graph = planted_graph(join(root, "graph"), cross=40)
    parts = {p: join(root, f"parts{p}") for p in (1, 2)}
    for p, uri in parts.items():
        partition(PartitionConfig(graph=graph, parts=p, out=uri, fanout="-1,-1", seed=0))
    return {"graph": graph, "parts": parts, "root": root}


def tail_mrr(trained, triples: np.ndarray, candidates: np.ndarray) -> float:
    """Brute-force tail MRR of ``triples`` among ``candidates`` (realistic ties)."""
    emb = trained.embed_all()
    h = emb[torch.from_numpy(triples[:, 0])]
    rel = torch.from_numpy(triples[:, 1])
    scores = trained.score_tails(h, rel, emb[torch.from_numpy(candidates)]).numpy()
    true = trained.score(h, rel, emb[torch.from_numpy(triples[:, 2])]).numpy()
    ranks = []
    for i in range(len(triples)):
        greater = (scores[i] > true[i] + 1e-6).sum()
        equal = (np.abs(scores[i] - true[i]) <= 1e-6).sum() - 1
        ranks.append(1 + greater + equal / 2)
    return float(np.mean(1.0 / np.array(ranks)))


def crash_once_after(marker: str, epoch: int):
    """A test-only wrapper of the real worker loop: the worker dies (a real ``os._exit``) right
    after reporting ``epoch``'s checkpoint, once (``marker`` records that it happened). A
    nested function, so Ray ships it by value to the workers."""

    def train_loop(loop_config: dict) -> None:
        import os

        from kg_ops.train import loop

        report = loop._report

        def report_then_crash(metrics: dict, pointer_uri: str | None) -> None:
            report(metrics, pointer_uri)
            if metrics["epoch"] == epoch and not os.path.exists(marker):
                open(marker, "w").close()
                os._exit(1)

        loop._report = report_then_crash
        loop.train_worker(loop_config)

    return train_loop

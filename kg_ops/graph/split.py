"""Deterministic train/valid/test edge split for datasets that ship without one."""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)


def split_edges(edges: np.ndarray, num_nodes: int, num_relations: int, seed: int = 0,
                fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
                ) -> tuple[dict[str, np.ndarray], int]:
    """Seeded 80/10/10 split. Valid/test edges whose head, tail or relation never occurs in train
    are moved to train (a model cannot rank an entity it never saw). Returns the splits and the
    number of moved edges, which the caller reports in its manifest.
    """
    edges = np.asarray(edges, dtype=np.int64).reshape(-1, 3)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(edges))
    n_train = int(round(fractions[0] * len(edges)))
    n_valid = int(round(fractions[1] * len(edges)))
    part = np.full(len(edges), 2, dtype=np.int8)
    part[order[:n_train]] = 0
    part[order[n_train:n_train + n_valid]] = 1

    train = part == 0
    seen_node = np.zeros(num_nodes, dtype=bool)
    seen_node[edges[train, 0]] = True
    seen_node[edges[train, 2]] = True
    seen_rel = np.zeros(num_relations, dtype=bool)
    seen_rel[edges[train, 1]] = True
    # Moving an edge to train only adds seen entities, so one pass is enough.
    offending = ~train & ~(seen_node[edges[:, 0]] & seen_node[edges[:, 2]] & seen_rel[edges[:, 1]])
    moved = int(offending.sum())
    part[offending] = 0
    if moved:
        log.info("split: moved %d valid/test edges to train because an entity or relation of "
                 "theirs does not occur in train", moved)
    # Keep the original edge order inside each split: deterministic and diff-friendly.
    return {name: edges[part == i] for i, name in enumerate(("train", "valid", "test"))}, moved

"""Known true triples, indexed for the filtered protocol and for negative sampling.

Built once from train+valid+test. Two CSR maps, ``(head, relation) -> sorted tails`` and
``(tail, relation) -> sorted heads``, keyed by ``entity * R + relation`` in one sorted int64 array,
so a batch of queries finds its filter lists with one ``searchsorted`` and one gather (no Python
dict per triple). Membership of whole triples uses the same keys plus a sorted array of
``key * N + other_end``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kg_ops.errors import KGOpsError

_INT64_MAX = np.iinfo(np.int64).max


@dataclass
class _CSR:
    keys: np.ndarray     # sorted unique keys (entity * R + relation)
    indptr: np.ndarray   # len(keys) + 1
    values: np.ndarray   # other end of each triple, sorted within a key

    @classmethod
    def build(cls, keys: np.ndarray, values: np.ndarray) -> _CSR:
        order = np.lexsort((values, keys))
        keys, values = keys[order], values[order]
        keep = np.ones(len(keys), dtype=bool)
        keep[1:] = (keys[1:] != keys[:-1]) | (values[1:] != values[:-1])
        keys, values = keys[keep], values[keep]
        uniq, starts = np.unique(keys, return_index=True)
        indptr = np.append(starts, len(keys)).astype(np.int64)
        return cls(keys=uniq, indptr=indptr, values=values)

    def gather(self, query_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Flat ``(query_row, value)`` pairs for every value listed under each query key."""
        if not len(self.keys):
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        pos = np.minimum(np.searchsorted(self.keys, query_keys), len(self.keys) - 1)
        found = self.keys[pos] == query_keys
        starts = np.where(found, self.indptr[pos], 0)
        lengths = np.where(found, self.indptr[pos + 1] - self.indptr[pos], 0)
        rows = np.repeat(np.arange(len(query_keys)), lengths)
        # Index of the j-th value of query i is starts[i] + j, built without a loop.
        offsets = np.cumsum(lengths) - lengths
        idx = np.repeat(starts - offsets, lengths) + np.arange(int(lengths.sum()))
        return rows, self.values[idx]


class FilterIndex:
    """All known true triples of a graph. ``tails`` answers (h, r, ?), ``heads`` (?, r, t)."""

    def __init__(self, triples: np.ndarray, num_nodes: int, num_relations: int):
        triples = np.asarray(triples, dtype=np.int64).reshape(-1, 3)
        self.num_nodes, self.num_relations = int(num_nodes), int(num_relations)
        if len(triples):
            bad = ((triples[:, [0, 2]] < 0) | (triples[:, [0, 2]] >= num_nodes)).any(1) \
                | (triples[:, 1] < 0) | (triples[:, 1] >= num_relations)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise KGOpsError(f"triple {triples[i].tolist()} (row {i} of the filter set) is "
                                 f"outside {num_nodes} nodes / {num_relations} relations; the "
                                 "edges do not match the graph schema")
        if num_nodes * num_relations * num_nodes >= _INT64_MAX:
            raise KGOpsError(f"{num_nodes} nodes x {num_relations} relations is too large for "
                             "64-bit triple keys")
        h, r, t = triples[:, 0], triples[:, 1], triples[:, 2]
        self.tails = _CSR.build(h * self.num_relations + r, t)
        self.heads = _CSR.build(t * self.num_relations + r, h)
        self._triple_keys = np.unique((h * self.num_relations + r) * self.num_nodes + t)

    @property
    def num_triples(self) -> int:
        return len(self._triple_keys)

    def contains(self, h: np.ndarray, r: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Whether each (h, r, t) is a known true triple (vectorised)."""
        keys = (np.asarray(h, np.int64) * self.num_relations + np.asarray(r, np.int64)) \
            * self.num_nodes + np.asarray(t, np.int64)
        if not len(self._triple_keys):
            return np.zeros(keys.shape, dtype=bool)
        pos = np.minimum(np.searchsorted(self._triple_keys, keys), len(self._triple_keys) - 1)
        return self._triple_keys[pos] == keys

    def known(self, anchor: np.ndarray, rel: np.ndarray, tail_side: bool,
              ) -> tuple[np.ndarray, np.ndarray]:
        """Flat ``(query_row, entity)`` pairs of the true answers of each query.
        ``tail_side``: queries are (anchor, rel, ?); else (?, rel, anchor)."""
        keys = np.asarray(anchor, np.int64) * self.num_relations + np.asarray(rel, np.int64)
        return (self.tails if tail_side else self.heads).gather(keys)

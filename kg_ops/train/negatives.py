"""Constraint-based negatives inside a partition.

A negative corrupts the head or the tail of a positive triple (each with probability 1/2) with
an entity of the node type the relation expects on that side, drawn uniformly from the
partition's negative pool of that type (its core nodes: the only nodes whose computation graph
the partition holds completely). Negatives are not filtered against known triples: with pools
of hundreds of entities a sampled negative is rarely a true triple, as in the usual recipe.
"""

from __future__ import annotations

import numpy as np

from kg_ops.errors import KGOpsError


class TypedNegativeSampler:
    """Vectorised type-constrained corruption; pools are contiguous local id ranges."""

    def __init__(self, negative_pool: dict[int, np.ndarray], head_type: np.ndarray,
                 tail_type: np.ndarray):
        num_types = max([int(t) for t in negative_pool]
                        + [int(np.max(head_type, initial=-1)), int(np.max(tail_type, initial=-1))]
                        ) + 1
        self.start = np.zeros(max(num_types, 1), dtype=np.int64)
        self.count = np.zeros(max(num_types, 1), dtype=np.int64)
        for t, ids in negative_pool.items():
            ids = np.asarray(ids, dtype=np.int64)
            if len(ids) and not np.array_equal(ids, np.arange(ids[0], ids[0] + len(ids))):
                raise KGOpsError(f"negative pool of node type {t} is not a contiguous local "
                                 "id range; re-run `kgops partition`")
            self.start[t] = ids[0] if len(ids) else 0
            self.count[t] = len(ids)
        self.head_type = np.asarray(head_type, dtype=np.int64)
        self.tail_type = np.asarray(tail_type, dtype=np.int64)

    def expected_type(self, rel: np.ndarray, tail_side: np.ndarray) -> np.ndarray:
        return np.where(tail_side, self.tail_type[rel], self.head_type[rel])

    def sample(self, pos: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
        """``k`` negatives per positive ``[h, r, t]`` row (local ids), as ``(len(pos)*k, 3)``;
        row ``i*k + j`` corrupts positive ``i``."""
        neg = np.repeat(np.asarray(pos, dtype=np.int64), k, axis=0)
        if not len(neg):
            return neg
        tail_side = rng.random(len(neg)) < 0.5
        types = self.expected_type(neg[:, 1], tail_side)
        count = self.count[types]
        if (count == 0).any():
            bad = int(types[count == 0][0])
            raise KGOpsError(f"no negative candidates of node type {bad} in this partition "
                             "although one of its edges expects that type; the partition "
                             "does not match the graph schema; re-run `kgops partition`")
        ent = self.start[types] + (rng.random(len(neg)) * count).astype(np.int64)
        neg[:, 2] = np.where(tail_side, ent, neg[:, 2])
        neg[:, 0] = np.where(tail_side, neg[:, 0], ent)
        return neg

    def shared_candidates(self, pos: np.ndarray, k: int, rng: np.random.Generator
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Candidates shared by a batch for the softmax loss: up to ``k`` distinct entities
        of each node type some positive in ``pos`` expects (all of the pool when it is
        smaller), and the ``[B, M]`` masks of which candidate may replace each positive's tail
        and head (the expected type, and not the true entity).

        Returns ``(cand[M], tail_ok[B, M], head_ok[B, M])``."""
        pos = np.asarray(pos, dtype=np.int64)
        rel = pos[:, 1]
        types = np.union1d(self.tail_type[rel], self.head_type[rel])
        empty = types[self.count[types] == 0]
        if len(empty):
            raise KGOpsError(f"no negative candidates of node type {int(empty[0])} in this "
                             "partition although one of its edges expects that type; the "
                             "partition does not match the graph schema; re-run "
                             "`kgops partition`")
        cand, cand_type = self.draw(types, k, rng)
        tail_ok = (cand_type[None, :] == self.tail_type[rel][:, None]) \
            & (cand[None, :] != pos[:, 2:3])
        head_ok = (cand_type[None, :] == self.head_type[rel][:, None]) \
            & (cand[None, :] != pos[:, 0:1])
        return cand, tail_ok, head_ok

    def draw(self, types: np.ndarray, k: int, rng: np.random.Generator
             ) -> tuple[np.ndarray, np.ndarray]:
        """Up to ``k`` distinct pool entities of each of ``types`` (all of a smaller pool),
        sorted within each type: ``(local ids, their node types)``."""
        parts, part_types = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
        for ty in types:
            n = int(self.count[ty])
            pick = np.arange(n) if n <= k else np.sort(rng.choice(n, size=k, replace=False))
            parts.append(self.start[ty] + pick)
            part_types.append(np.full(len(pick), ty, dtype=np.int64))
        return np.concatenate(parts), np.concatenate(part_types)

    def pool(self) -> tuple[np.ndarray, np.ndarray]:
        """Every pool entity: ``(local ids, their node types)``, by type then id."""
        types = self.pool_types()
        ids = [self.start[t] + np.arange(self.count[t]) for t in types]
        return (np.concatenate([np.empty(0, np.int64), *ids]),
                np.repeat(types, self.count[types]).astype(np.int64))

    def pool_types(self) -> np.ndarray:
        """Node types with a non-empty pool in this partition."""
        return np.flatnonzero(self.count > 0)

"""Entity identity across graph versions: match by node key, never by dense id.

Dense ids are assigned at import (first appearance of each key), so the same entity may get a
different id in tomorrow's import, and an id may name another entity. A graph version's
entities are therefore matched to the previous version's by ``(node type, key)``: a key of the
same node type in both versions is *kept*, one only in the new version is *new*, one only in
the old version is *removed*.

:class:`EntityMapping` is that match as two arrays (``new_to_old``, ``removed``), stored as
``entity_map.parquet`` (one row per entity of either version: ``node_type``, ``key``,
``old_id``, ``new_id`` (-1 when absent), ``status``) next to the artifact that used it, with
its counts in the manifest. :func:`edge_drift` compares the two versions' training edges
through the mapping, for the warm-start drift guard.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from kg_ops.graph.kg import load_edges, load_nodes, load_schema
from kg_ops.graph.schema import GraphSchema


@dataclass
class EntityMapping:
    """``new_to_old[i]``: the old id of new entity ``i``, or -1 if it is new. ``removed``:
    old ids without a new counterpart (ascending)."""

    new_to_old: np.ndarray
    removed: np.ndarray
    old_num_nodes: int

    @property
    def new_num_nodes(self) -> int:
        return int(len(self.new_to_old))

    @property
    def is_new(self) -> np.ndarray:
        return self.new_to_old < 0

    def counts(self) -> dict[str, int]:
        new = int(self.is_new.sum())
        return {"old_entities": int(self.old_num_nodes), "new_entities": self.new_num_nodes,
                "kept": self.new_num_nodes - new, "new": new, "removed": int(len(self.removed))}

    def changed_fraction(self) -> float:
        """(new + removed) / old entities: how much of the entity set changed."""
        c = self.counts()
        return (c["new"] + c["removed"]) / max(c["old_entities"], 1)

    def old_to_new(self) -> np.ndarray:
        """``[old_num_nodes]``: the new id of each old entity, -1 if removed."""
        out = np.full(self.old_num_nodes, -1, dtype=np.int64)
        kept = ~self.is_new
        out[self.new_to_old[kept]] = np.flatnonzero(kept)
        return out

    def to_table(self, old: GraphSchema, new: GraphSchema, old_keys: np.ndarray,
                 new_keys: np.ndarray) -> pa.Table:
        """One row per entity of either version (new graph's entities in id order, then the
        removed ones). ``*_keys[i]`` is the key of id ``i`` in that version."""
        removed = self.removed
        type_names = np.concatenate([_type_names(new, np.arange(self.new_num_nodes)),
                                     _type_names(old, removed)])
        status = np.where(self.is_new, "new", "kept")
        return pa.table({
            "node_type": pa.array(type_names, pa.string()),
            "key": pa.array(np.concatenate([new_keys, old_keys[removed]]), pa.string()),
            "old_id": pa.array(np.concatenate([self.new_to_old, removed]), pa.int64()),
            "new_id": pa.array(np.concatenate([np.arange(self.new_num_nodes),
                                               np.full(len(removed), -1)]), pa.int64()),
            "status": pa.array(np.concatenate([status, np.full(len(removed), "removed")]),
                               pa.string()),
        })

    @classmethod
    def from_table(cls, table: pa.Table, old_num_nodes: int) -> EntityMapping:
        new_id = table.column("new_id").to_numpy()
        old_id = table.column("old_id").to_numpy()
        present = new_id >= 0
        new_to_old = np.full(int(present.sum()), -1, dtype=np.int64)
        new_to_old[new_id[present]] = old_id[present]
        return cls(new_to_old, np.sort(old_id[~present]), int(old_num_nodes))


def _type_names(schema: GraphSchema, ids: np.ndarray) -> np.ndarray:
    names = np.array([t.name for t in schema.node_types], dtype=object)
    return names[schema.type_of(ids)] if len(ids) else np.empty(0, dtype=object)


def graph_keys(uri: str, schema: GraphSchema | None = None) -> np.ndarray:
    """``keys[i]``: the original key of node ``i`` (object array of str)."""
    schema = schema or load_schema(uri)
    keys = np.empty(schema.num_nodes, dtype=object)
    for t in schema.node_types:
        table = load_nodes(uri, t.name, columns=["id", "key"])
        keys[table.column("id").to_numpy()] = table.column("key").to_numpy(zero_copy_only=False)
    return keys


def match_keys(old: GraphSchema, old_keys: np.ndarray, new: GraphSchema,
               new_keys: np.ndarray) -> EntityMapping:
    """Match per node type (by name) on the key: one hash lookup per type, no Python loop per
    entity. Keys are unique within a type (the importers guarantee it)."""
    new_to_old = np.full(new.num_nodes, -1, dtype=np.int64)
    old_types = {t.name: t for t in old.node_types}
    for t in new.node_types:
        o = old_types.get(t.name)
        if o is None or not t.count:
            continue
        index = pd.Index(old_keys[o.offset:o.offset + o.count], dtype=object)
        hit = index.get_indexer(new_keys[t.offset:t.offset + t.count])
        new_to_old[t.offset:t.offset + t.count] = np.where(hit >= 0, hit + o.offset, -1)
    seen = np.zeros(old.num_nodes, dtype=bool)
    seen[new_to_old[new_to_old >= 0]] = True
    return EntityMapping(new_to_old, np.flatnonzero(~seen), old.num_nodes)


def match_graphs(old_uri: str, new_uri: str) -> tuple[EntityMapping, pa.Table]:
    """The key-based mapping between two stored graphs, and its ``entity_map`` table."""
    old, new = load_schema(old_uri), load_schema(new_uri)
    old_keys, new_keys = graph_keys(old_uri, old), graph_keys(new_uri, new)
    mapping = match_keys(old, old_keys, new, new_keys)
    return mapping, mapping.to_table(old, new, old_keys, new_keys)


def edge_drift(old_uri: str, new_uri: str, mapping: EntityMapping,
               split: str = "train") -> dict[str, float]:
    """Added / removed ``split`` edges between two versions, compared as
    ``(head key, relation name, tail key)`` through the mapping (duplicates counted once)."""
    old_s, new_s = load_schema(old_uri), load_schema(new_uri)
    old_e, new_e = load_edges(old_uri, split), load_edges(new_uri, split)
    rel_of = {r.name: i for i, r in enumerate(new_s.relations)}
    old_rel_to_new = np.array([rel_of.get(r.name, -1) for r in old_s.relations] or [-1])
    o2n = mapping.old_to_new()
    mapped = np.stack([o2n[old_e[:, 0]], old_rel_to_new[old_e[:, 1]], o2n[old_e[:, 2]]], 1) \
        if len(old_e) else np.empty((0, 3), np.int64)
    survivable = (mapped >= 0).all(1)
    n, r = max(new_s.num_nodes, 1), max(new_s.num_relations, 1)

    def packed(e: np.ndarray) -> np.ndarray:
        return np.unique((e[:, 0] * r + e[:, 1]) * n + e[:, 2])

    old_keys, new_keys = packed(mapped[survivable]), packed(new_e)
    old_unique = len(np.unique((old_e[:, 0] * max(old_s.num_relations, 1) + old_e[:, 1])
                               * max(old_s.num_nodes, 1) + old_e[:, 2]))
    kept = len(np.intersect1d(old_keys, new_keys, assume_unique=True))
    added, removed = len(new_keys) - kept, old_unique - kept
    return {"old_edges": int(old_unique), "new_edges": int(len(new_keys)), "kept": int(kept),
            "added": int(added), "removed": int(removed),
            "changed_fraction": (added + removed) / max(old_unique, 1)}


def save_mapping(uri: str, table: pa.Table) -> None:
    from kg_ops.store import get_store

    get_store(uri).write_parquet(uri, table)


"""The graph schema (``schema.json``): node types, relation types, attribute kinds.

Node ids are dense int64, assigned at import, and contiguous per node type: node type ``t`` owns
ids ``[t.offset, t.offset + t.count)``. So the type of any id is one ``searchsorted`` away and a
per-type attribute table's row ``i`` is node ``t.offset + i``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from kg_ops.errors import KGOpsError

FORMAT = "kgops-graph/1"
ATTRIBUTE_KINDS = ("text", "numeric", "date", "categorical", "multilabel")
SPLITS = ("train", "valid", "test")

# How each kind is stored in the node tables (Arrow types), documented once:
#   text        -> string        (null or "" = missing)
#   numeric     -> float64       (null/NaN = missing)
#   date        -> timestamp[*, UTC]  (null = missing); written as seconds, read back as ms
#                  (Parquet has no seconds unit); encoders turn it into days since epoch
#   categorical -> string        (null = missing)
#   multilabel  -> list<string>  (null or [] = no labels)


class SchemaError(KGOpsError):
    pass


@dataclass
class Attribute:
    name: str
    kind: str
    description: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ATTRIBUTE_KINDS:
            raise SchemaError(f"attribute {self.name!r}: unknown kind {self.kind!r}; "
                              f"expected one of {', '.join(ATTRIBUTE_KINDS)}")


@dataclass
class NodeType:
    name: str
    count: int
    offset: int
    attributes: list[Attribute] = field(default_factory=list)
    description: str = ""

    def attribute(self, name: str) -> Attribute:
        for a in self.attributes:
            if a.name == name:
                return a
        raise SchemaError(f"node type {self.name!r} has no attribute {name!r}")


@dataclass
class Relation:
    name: str
    head: str
    tail: str
    label: str = ""


@dataclass
class GraphSchema:
    name: str
    node_types: list[NodeType]
    relations: list[Relation]
    source: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT

    # --- lookups ----------------------------------------------------------------------------
    @property
    def num_nodes(self) -> int:
        return sum(t.count for t in self.node_types)

    @property
    def num_relations(self) -> int:
        return len(self.relations)

    def node_type(self, name: str) -> NodeType:
        for t in self.node_types:
            if t.name == name:
                return t
        raise SchemaError(f"unknown node type {name!r}; known: "
                          f"{', '.join(t.name for t in self.node_types)}")

    def node_type_index(self, name: str) -> int:
        return [t.name for t in self.node_types].index(self.node_type(name).name)

    def relation_index(self) -> dict[str, int]:
        return {r.name: i for i, r in enumerate(self.relations)}

    def offsets(self) -> np.ndarray:
        """Start id of each node type, plus the total at the end (length T+1)."""
        return np.array([t.offset for t in self.node_types] + [self.num_nodes], dtype=np.int64)

    def type_of(self, ids: np.ndarray) -> np.ndarray:
        """Node-type index of each node id (vectorised)."""
        return np.searchsorted(self.offsets(), np.asarray(ids), side="right") - 1

    def relation_head_tail_types(self) -> tuple[np.ndarray, np.ndarray]:
        """Per relation, the node-type index its heads and its tails must have."""
        idx = {t.name: i for i, t in enumerate(self.node_types)}
        heads = np.array([idx[r.head] for r in self.relations], dtype=np.int64)
        tails = np.array([idx[r.tail] for r in self.relations], dtype=np.int64)
        return heads, tails

    # --- (de)serialisation ------------------------------------------------------------------
    def validate(self) -> None:
        names = [t.name for t in self.node_types]
        if len(set(names)) != len(names):
            raise SchemaError(f"duplicate node type names in schema: {names}")
        expected = 0
        for t in self.node_types:
            if t.offset != expected:
                raise SchemaError(f"node type {t.name!r}: offset {t.offset} but ids must be "
                                  f"contiguous (expected {expected})")
            expected += t.count
        rel_names = [r.name for r in self.relations]
        if len(set(rel_names)) != len(rel_names):
            raise SchemaError("duplicate relation names in schema")
        for r in self.relations:
            for end in (r.head, r.tail):
                if end not in names:
                    raise SchemaError(f"relation {r.name!r} refers to unknown node type {end!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GraphSchema:
        if d.get("format") != FORMAT:
            raise SchemaError(f"schema format {d.get('format')!r} is not {FORMAT!r}; "
                              "re-import the graph with this version of kg_ops")
        schema = cls(
            name=d["name"],
            node_types=[NodeType(name=t["name"], count=int(t["count"]), offset=int(t["offset"]),
                                 attributes=[Attribute(**a) for a in t.get("attributes", [])],
                                 description=t.get("description", ""))
                        for t in d["node_types"]],
            relations=[Relation(**r) for r in d["relations"]],
            source=d.get("source", {}),
        )
        schema.validate()
        return schema

"""The canonical on-disk graph: Parquet tables plus ``schema.json``.

Layout under a graph URI::

    schema.json                    GraphSchema (see schema.py)
    nodes/<node_type>.parquet      id:int64, key:string, one column per attribute
    edges/<split>.parquet          head:int64, relation:int32, tail:int64  (split: train/valid/test)
    _manifest.json                 written last by the import stage (commit marker)

In memory, edges are ``(E, 3)`` int64 arrays ``[head, relation, tail]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from kg_ops.graph.schema import SPLITS, GraphSchema
from kg_ops.store import get_store, join

EDGE_SCHEMA = pa.schema([("head", pa.int64()), ("relation", pa.int32()), ("tail", pa.int64())])


def edges_to_table(edges: np.ndarray) -> pa.Table:
    edges = np.asarray(edges, dtype=np.int64).reshape(-1, 3)
    return pa.table([pa.array(edges[:, 0]), pa.array(edges[:, 1].astype(np.int32)),
                     pa.array(edges[:, 2])], schema=EDGE_SCHEMA)


def table_to_edges(table: pa.Table) -> np.ndarray:
    out = np.empty((table.num_rows, 3), dtype=np.int64)
    for j, col in enumerate(("head", "relation", "tail")):
        out[:, j] = table.column(col).to_numpy()
    return out


@dataclass
class KnowledgeGraph:
    schema: GraphSchema
    edges: dict[str, np.ndarray]
    nodes: dict[str, pa.Table] = field(default_factory=dict)

    @property
    def num_nodes(self) -> int:
        return self.schema.num_nodes

    def edge_counts(self) -> dict[str, int]:
        return {s: int(len(self.edges.get(s, ()))) for s in SPLITS}

    # --- storage ----------------------------------------------------------------------------
    def save(self, uri: str) -> dict[str, str]:
        """Write schema, node tables and edge tables; returns the written URIs. The caller's
        Stage writes the manifest afterwards."""
        store = get_store(uri)
        written = {}
        for t in self.schema.node_types:
            table = self.nodes.get(t.name)
            if table is None:
                ids = np.arange(t.offset, t.offset + t.count, dtype=np.int64)
                table = pa.table({"id": ids, "key": pa.array(ids.astype(str))})
            written[f"nodes/{t.name}"] = join(uri, "nodes", f"{t.name}.parquet")
            store.write_parquet(written[f"nodes/{t.name}"], table)
        for split, edges in self.edges.items():
            written[f"edges/{split}"] = join(uri, "edges", f"{split}.parquet")
            store.write_parquet(written[f"edges/{split}"], edges_to_table(edges))
        store.write_json(join(uri, "schema.json"), self.schema.to_dict())
        written["schema"] = join(uri, "schema.json")
        return written

    @classmethod
    def load(cls, uri: str, splits: tuple[str, ...] = SPLITS, with_nodes: bool = True,
             ) -> KnowledgeGraph:
        schema = load_schema(uri)
        edges = {s: load_edges(uri, s) for s in splits}
        nodes = {t.name: load_nodes(uri, t.name) for t in schema.node_types} if with_nodes else {}
        return cls(schema=schema, edges=edges, nodes=nodes)


def load_schema(uri: str) -> GraphSchema:
    from kg_ops.manifest import require_manifest

    require_manifest(uri, "import")
    return GraphSchema.from_dict(get_store(uri).read_json(join(uri, "schema.json")))


def load_edges(uri: str, split: str) -> np.ndarray:
    return table_to_edges(get_store(uri).read_parquet(join(uri, "edges", f"{split}.parquet")))


def load_nodes(uri: str, node_type: str, columns: list[str] | None = None) -> pa.Table:
    return get_store(uri).read_parquet(join(uri, "nodes", f"{node_type}.parquet"),
                                       columns=columns)

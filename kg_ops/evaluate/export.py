"""Entity embeddings as Parquet for downstream use: one row per node with its original key.

Columns: ``id`` (int64, the dense graph id), ``key`` (string, the key from the source data),
``node_type`` (string), ``embedding`` (fixed-size list of float32). Rows are in id order.
``kgops embed`` adds ``inductive`` (bool): the entity is not in the model's graph, so its
embedding was computed from its attributes and neighbours without a learned row of its own.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from kg_ops.errors import KGOpsError
from kg_ops.graph.kg import load_nodes
from kg_ops.graph.schema import GraphSchema
from kg_ops.store import get_store


def embeddings_table(graph_uri: str, schema: GraphSchema, emb: np.ndarray,
                     inductive: np.ndarray | None = None) -> pa.Table:
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != schema.num_nodes:
        raise KGOpsError(f"embeddings of shape {emb.shape} do not cover the graph's "
                         f"{schema.num_nodes} nodes")
    keys, types = [], []
    for t in schema.node_types:
        table = load_nodes(graph_uri, t.name, columns=["id", "key"])
        ids = table.column("id").to_numpy()
        expected = np.arange(t.offset, t.offset + t.count)
        if len(ids) != t.count or not np.array_equal(np.sort(ids), expected):
            raise KGOpsError(f"{graph_uri}/nodes/{t.name}.parquet: ids do not match the schema's "
                             f"range [{t.offset}, {t.offset + t.count}); re-import the graph")
        keys.append(table.column("key").take(pa.array(np.argsort(ids, kind="stable")))
                    .cast(pa.string()))
        types.append(pa.DictionaryArray.from_arrays(
            pa.array(np.zeros(t.count, np.int32)), pa.array([t.name])))
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), emb.shape[1])
    columns = {
        "id": pa.array(np.arange(schema.num_nodes, dtype=np.int64)),
        "key": pa.chunked_array(keys, type=pa.string()),
        "node_type": pa.chunked_array(types, type=pa.dictionary(pa.int32(), pa.string())),
        "embedding": vectors,
    }
    if inductive is not None:
        columns["inductive"] = pa.array(np.asarray(inductive, dtype=bool))
    return pa.table(columns)


def export_embeddings(uri: str, graph_uri: str, schema: GraphSchema, emb: np.ndarray,
                      inductive: np.ndarray | None = None) -> int:
    """Write ``uri`` (Parquet); returns the number of rows."""
    table = embeddings_table(graph_uri, schema, emb, inductive)
    get_store(uri).write_parquet(uri, table)
    return table.num_rows

"""The feature-block format written by ``kgops encode`` and its loader.

One block per (node type, attribute): exactly what the attribute-embedding layer needs, one
weight matrix per block (``dim`` columns in, hidden size out). Layout under a features URI::

    features.json                                   the index (below)
    encoders.json                                   fitted encoders: learned parameters only
    blocks/<node_type>/<attribute>/part-<first row:012d>.parquet
                                                    node_id: int64 (GLOBAL node id), then
        storage "dense" (text):                     values: fixed_size_list<float32>[dim]
        storage "indicator" (all other kinds):      cols: list<int32> (columns that are 1.0)
    _manifest.json                                  written last (commit marker)

Numeric, date, categorical and multilabel blocks hold only 0/1 (one-hot bins, one-hot
categories, multi-hot labels), so their shards store the positions of the ones ("indicator"
storage). On a 63k x 256 multi-hot block (loaded machine) a dense shard took ~1.5 s to write and
~1.3 s to read, the indicator shard ~0.2 s to write. ``load_feature_blocks`` always returns dense
float32 values, whatever the storage.

``features.json``::

    {"format": "kgops-features/1", "graph": <graph URI>, "num_nodes": N,
     "encoders": "encoders.json", "encoders_sha256": ..., "missing_policy": MISSING_POLICY,
     "blocks": [{"node_type", "attribute", "kind", "dim", "rows", "storage",
                 "shards": [relative paths], "shard_rows": [...], "shard_id_ranges": [[lo, hi]],
                 "missing": n, "bad": n, "unknown": n, "bad_examples": [keys],
                 "encoder": {summary}}],
     "skipped_attributes": {"<type>/<attr>": reason}}   # no value at all to fit on

Missing-value policy (MISSING_POLICY): a node whose value is missing has NO row in that block.
An entity's input feature is the aggregation of the transformed blocks it has rows in; an entity
with no rows at all gets a learned embedding. Missing means: text null/empty/whitespace-only;
numeric null/NaN; date null; categorical null/empty; multilabel null/empty list. A categorical
value or label unseen at fit time keeps its row (all zeros for that attribute's columns: the entity
has the attribute, its value is simply unknown to the encoder) and is counted as ``unknown``.
Bad values (numeric +-inf, null labels inside a multilabel list) stop the stage with an error
naming the row, unless ``--on-bad skip`` is given; then they are treated as missing and counted
as ``bad`` (with example keys in the manifest). Nothing is dropped without being counted.

One-hot widths are bounded at fit time (``--max-categories``, ``--max-labels``: rarer values
share one "infrequent" column), so the dense arrays the loader returns stay small. Within a block
node ids are strictly ascending.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kg_ops.errors import KGOpsError
from kg_ops.store import get_store, join

FORMAT = "kgops-features/1"
INDEX_NAME = "features.json"
ENCODERS_NAME = "encoders.json"
MISSING_POLICY = "omit-row"
STORAGES = ("dense", "indicator")


def storage_for(kind: str) -> str:
    """Text vectors are dense; every other kind encodes to 0/1 indicators."""
    return "dense" if kind == "text" else "indicator"


class FeatureFormatError(KGOpsError):
    """A features artifact is not in the expected format; the message names the file."""


@dataclass
class FeatureBlock:
    """Rows of one attribute of one node type: ``values[i]`` belongs to node ``node_ids[i]``."""

    node_type: str
    attribute: str
    kind: str
    dim: int
    node_ids: np.ndarray  # int64, global ids, strictly ascending
    values: np.ndarray  # float32, (len(node_ids), dim)

    @property
    def name(self) -> str:
        return f"{self.node_type}/{self.attribute}"

    def __len__(self) -> int:
        return len(self.node_ids)


def shard_path(node_type: str, attribute: str, first_row: int) -> str:
    """Relative path of the shard holding the block's rows starting at table row ``first_row``."""
    return f"blocks/{node_type}/{attribute}/part-{first_row:012d}.parquet"


def _sorted_unique(a: np.ndarray) -> np.ndarray:
    """``np.unique`` for int64 via sort (numpy 2's hash-based unique is ~25x slower here)."""
    a = np.sort(a)
    return a[np.r_[True, a[1:] != a[:-1]]] if len(a) else a


def dense_table(node_ids: np.ndarray, values: np.ndarray, dim: int) -> pa.Table:
    values = np.ascontiguousarray(values, dtype=np.float32).reshape(-1, dim)
    flat = pa.array(values.reshape(-1), type=pa.float32())
    return pa.table({"node_id": pa.array(np.asarray(node_ids, dtype=np.int64)),
                     "values": pa.FixedSizeListArray.from_arrays(flat, dim)})


def indicator_table(node_ids: np.ndarray, hot_rows: np.ndarray, hot_cols: np.ndarray,
                    dim: int) -> pa.Table:
    """Rows ``node_ids``; row ``hot_rows[k]`` (a position in ``node_ids``) has a 1.0 in column
    ``hot_cols[k]``. Duplicates collapse; columns come out sorted within each row."""
    n = len(node_ids)
    hot_cols = np.asarray(hot_cols, dtype=np.int64)
    if len(hot_cols) and (hot_cols.min() < 0 or hot_cols.max() >= dim):
        raise FeatureFormatError(f"indicator column out of range [0, {dim})")
    key = _sorted_unique(np.asarray(hot_rows, dtype=np.int64) * dim + hot_cols)
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(np.bincount(key // dim, minlength=n), out=offsets[1:])
    cols = pa.ListArray.from_arrays(pa.array(offsets), pa.array((key % dim).astype(np.int32)))
    return pa.table({"node_id": pa.array(np.asarray(node_ids, dtype=np.int64)), "cols": cols})


def write_shard(features_uri: str, rel_path: str, table: pa.Table) -> dict[str, Any]:
    """Write one shard straight to the store; returns its small manifest (no arrays)."""
    get_store(features_uri).write_parquet(join(features_uri, rel_path), table)
    ids = table.column("node_id").to_numpy()
    return {"path": rel_path, "rows": int(len(ids)),
            "id_range": [int(ids[0]), int(ids[-1])] if len(ids) else None}


def read_index(features_uri: str) -> dict[str, Any]:
    uri = join(features_uri, INDEX_NAME)
    index = get_store(uri).read_json(uri)
    if index.get("format") != FORMAT:
        raise FeatureFormatError(f"{uri}: format {index.get('format')!r} is not {FORMAT!r}; "
                                 "re-run `kgops encode` with this version of kg_ops")
    return index


def _read_shard(uri: str, dim: int, wanted: np.ndarray | None,
                storage: str = "dense") -> tuple[np.ndarray, np.ndarray]:
    if storage == "indicator":
        table = get_store(uri).read_parquet(uri, columns=["node_id", "cols"])
        ids = table.column("node_id").to_numpy()
        cols = table.column("cols").combine_chunks()
        if wanted is not None:
            keep = np.flatnonzero(np.isin(ids, wanted))
            ids, cols = ids[keep], cols.take(pa.array(keep))
        values = np.zeros((len(ids), dim), dtype=np.float32)
        c = pc.list_flatten(cols).to_numpy(zero_copy_only=False)
        if len(c) and (c.min() < 0 or c.max() >= dim):
            raise FeatureFormatError(f"{uri}: column index out of range [0, {dim})")
        values[pc.list_parent_indices(cols).to_numpy(zero_copy_only=False), c] = 1.0
        return ids.astype(np.int64, copy=False), values
    table = get_store(uri).read_parquet(uri, columns=["node_id", "values"])
    ids = table.column("node_id").to_numpy()
    col = table.column("values").combine_chunks()
    if not pa.types.is_fixed_size_list(col.type) or col.type.list_size != dim:
        raise FeatureFormatError(f"{uri}: column 'values' is {col.type}, expected "
                                 f"fixed_size_list<float32>[{dim}]")
    values = col.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
    if wanted is not None:
        keep = np.isin(ids, wanted, assume_unique=False)
        ids, values = ids[keep], values[keep]
    return ids.astype(np.int64, copy=False), values.astype(np.float32, copy=False)


def load_feature_blocks(features_uri: str, node_types: list[str] | None = None,
                        node_ids: np.ndarray | None = None) -> list[FeatureBlock]:
    """All blocks (schema order), optionally only some node types and/or some global node ids.

    The list of blocks does not depend on ``node_ids``: a filter that matches no row of a block
    still returns it (with zero rows), so every partition builds the same attribute matrices.
    Shards whose id range misses the filter are not read.
    """
    index = read_index(features_uri)
    wanted = None if node_ids is None else _sorted_unique(np.asarray(node_ids, dtype=np.int64))
    blocks = []
    for b in index["blocks"]:
        if node_types is not None and b["node_type"] not in node_types:
            continue
        dim = int(b["dim"])
        storage = b.get("storage", "dense")
        if storage not in STORAGES:
            raise FeatureFormatError(f"{features_uri}: block {b['node_type']}/{b['attribute']} "
                                     f"has unknown storage {storage!r}")
        parts_ids, parts_vals = [], []
        for rel, id_range in zip(b["shards"], b["shard_id_ranges"], strict=True):
            if wanted is not None:
                if id_range is None or len(wanted) == 0:
                    continue
                lo, hi = np.searchsorted(wanted, [id_range[0], id_range[1]], side="left")
                if hi == lo and (hi >= len(wanted) or wanted[hi] != id_range[1]):
                    continue
            ids, vals = _read_shard(join(features_uri, rel), dim, wanted, storage)
            parts_ids.append(ids)
            parts_vals.append(vals)
        blocks.append(FeatureBlock(
            node_type=b["node_type"], attribute=b["attribute"], kind=b["kind"], dim=dim,
            node_ids=np.concatenate(parts_ids) if parts_ids else np.empty(0, np.int64),
            values=np.concatenate(parts_vals) if parts_vals else np.empty((0, dim), np.float32),
        ))
    return blocks

"""The feature-block format written by ``kgops encode`` and its loader.

One block per (node type, attribute): exactly what the attribute-embedding layer needs, one
weight matrix per block (``dim`` columns in, hidden size out). Layout under a features URI::

    features.json                                   the index (below)
    encoders.json                                   fitted encoders: learned parameters only
    blocks/<node_type>/<attribute>/part-<first row:012d>.parquet
                                                    node_id: int64 (GLOBAL node id)
                                                    values:  fixed_size_list<float32>[dim]
    _manifest.json                                  written last (commit marker)

``features.json``::

    {"format": "kgops-features/1", "graph": <graph URI>, "num_nodes": N,
     "encoders": "encoders.json", "encoders_sha256": ..., "missing_policy": MISSING_POLICY,
     "blocks": [{"node_type", "attribute", "kind", "dim", "rows",
                 "shards": [relative paths], "shard_rows": [...], "shard_id_ranges": [[lo, hi]],
                 "missing": n, "bad": n, "unknown": n, "encoder": {summary}}]}

Missing-value policy (MISSING_POLICY): a node whose value is missing has NO row in that block.
An entity's input feature is the aggregation of the transformed blocks it has rows in; an entity
with no rows at all gets a learned embedding. Missing means: text null/empty/whitespace-only;
numeric null/NaN; date null; categorical null/empty; multilabel null/empty list. A categorical
value or label unseen at fit time keeps its row (all zeros for that attribute's columns: the entity
has the attribute, its value is simply unknown to the encoder) and is counted as ``unknown``.
Bad values (numeric +-inf, null labels inside a multilabel list) stop the stage with an error
naming the row, unless ``--on-bad skip`` is given; then they are treated as missing and counted
as ``bad`` (with example keys in the manifest). Nothing is dropped without being counted.

Blocks are dense float32; one-hot widths are bounded at fit time (``--max-categories``,
``--max-labels``: rarer values share one "infrequent" column), so dense storage stays small and
zstd compresses the zeros away. Within a block node ids are strictly ascending.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from kg_ops.errors import KGOpsError
from kg_ops.store import get_store, join

FORMAT = "kgops-features/1"
INDEX_NAME = "features.json"
ENCODERS_NAME = "encoders.json"
MISSING_POLICY = "omit-row"


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


def block_table(node_ids: np.ndarray, values: np.ndarray, dim: int) -> pa.Table:
    values = np.ascontiguousarray(values, dtype=np.float32).reshape(-1, dim)
    flat = pa.array(values.reshape(-1), type=pa.float32())
    return pa.table({
        "node_id": pa.array(np.asarray(node_ids, dtype=np.int64)),
        "values": pa.FixedSizeListArray.from_arrays(flat, dim),
    })


def write_shard(features_uri: str, rel_path: str, node_ids: np.ndarray, values: np.ndarray,
                dim: int) -> dict[str, Any]:
    """Write one shard straight to the store; returns its small manifest (no arrays)."""
    get_store(features_uri).write_parquet(join(features_uri, rel_path),
                                          block_table(node_ids, values, dim))
    ids = np.asarray(node_ids)
    return {"path": rel_path, "rows": int(len(ids)),
            "id_range": [int(ids[0]), int(ids[-1])] if len(ids) else None}


def read_index(features_uri: str) -> dict[str, Any]:
    uri = join(features_uri, INDEX_NAME)
    index = get_store(uri).read_json(uri)
    if index.get("format") != FORMAT:
        raise FeatureFormatError(f"{uri}: format {index.get('format')!r} is not {FORMAT!r}; "
                                 "re-run `kgops encode` with this version of kg_ops")
    return index


def _read_shard(uri: str, dim: int, wanted: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
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
    wanted = None if node_ids is None else np.unique(np.asarray(node_ids, dtype=np.int64))
    blocks = []
    for b in index["blocks"]:
        if node_types is not None and b["node_type"] not in node_types:
            continue
        dim = int(b["dim"])
        parts_ids, parts_vals = [], []
        for rel, id_range in zip(b["shards"], b["shard_id_ranges"], strict=True):
            if wanted is not None:
                if id_range is None or len(wanted) == 0:
                    continue
                lo, hi = np.searchsorted(wanted, [id_range[0], id_range[1]], side="left")
                if hi == lo and (hi >= len(wanted) or wanted[hi] != id_range[1]):
                    continue
            ids, vals = _read_shard(join(features_uri, rel), dim, wanted)
            parts_ids.append(ids)
            parts_vals.append(vals)
        blocks.append(FeatureBlock(
            node_type=b["node_type"], attribute=b["attribute"], kind=b["kind"], dim=dim,
            node_ids=np.concatenate(parts_ids) if parts_ids else np.empty(0, np.int64),
            values=np.concatenate(parts_vals) if parts_vals else np.empty((0, dim), np.float32),
        ))
    return blocks

"""Partition storage and loader: what ``kgops partition`` writes and a training worker reads.

Layout under the partition stage's URI (local path or ``s3://``)::

    _manifest.json                   stage manifest (commit marker); outputs.parts lists parts
    part-00000/nodes.parquet         global_id:int64, node_type:int32 -- row i = local id i;
                                     core nodes first (sorted by global id), then halo nodes
    part-00000/core_edges.parquet    head, relation, tail in LOCAL ids: the training edges this
                                     partition owns (supervision targets; also message passing)
    part-00000/halo_edges.parquet    head, relation, tail in LOCAL ids: other training edges the
                                     K-hop computation graphs of the core nodes need (message
                                     passing only, never a target)
    part-00000/meta.json             counts, negative pool ranges, sampling parameters, features

Relation ids are the graph's base ids ``[0, R)``; inverse messages (``r + R``) are made by
:class:`kg_ops.sampling.CSRGraph`, see :meth:`Partition.graph`.

Negative pool: the core nodes of each node type (type-constrained negatives). Only core nodes
are candidates, because only their K-hop computation graphs are stored complete; as core nodes
are sorted by global id and ids are contiguous per type, each type's pool is one local range.

Features: the partition stage records the encode stage's URI (``features_uri``, given with
``--features``). A worker reads only its rows with :meth:`Partition.load_features`, i.e.
``kg_ops.encode.features.load_feature_blocks(features_uri, node_ids=global_ids)``: nothing is
copied per partition, so features are stored once and partitions stay small.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kg_ops.errors import KGOpsError
from kg_ops.graph.kg import edges_to_table, table_to_edges
from kg_ops.manifest import require_manifest
from kg_ops.store import get_store, join, normalize

STAGE = "partition"
FORMAT = "kgops-partition/1"


class PartitionError(KGOpsError):
    pass


def part_dir(uri: str, part_id: int) -> str:
    return join(uri, f"part-{part_id:05d}")


@dataclass
class Partition:
    part_id: int
    global_ids: np.ndarray            # int64[n_local], local -> global; core nodes first
    num_core_nodes: int
    node_type: np.ndarray             # int64[n_local], node-type index of each local node
    core_edges: np.ndarray            # int64[E_core, 3] local [h, r, t]
    halo_edges: np.ndarray            # int64[E_halo, 3] local [h, r, t]
    num_relations: int                # base relations R (inverse messages use r + R)
    negative_pool: dict[int, np.ndarray] = field(default_factory=dict)  # type -> local ids
    node_type_names: list[str] = field(default_factory=list)
    relation_head_type: np.ndarray | None = None   # int64[R]: node-type index of heads
    relation_tail_type: np.ndarray | None = None   # int64[R]: node-type index of tails
    sampling: dict[str, Any] = field(default_factory=dict)   # {"seed", "fanouts", "hops"}
    features_uri: str | None = None
    num_global_nodes: int = 0
    uri: str = ""

    @property
    def num_nodes(self) -> int:
        return len(self.global_ids)

    @property
    def edges(self) -> np.ndarray:
        """Core then halo edges (local ids): the partition's message-passing graph."""
        return np.concatenate([self.core_edges, self.halo_edges])

    def graph(self, add_inverse: bool = True):
        """The message-passing CSR of this partition, keyed by global ids and sorted for the
        partition's sampling seed: sampling it with that seed and the partition's fanouts (or
        smaller ones) reproduces the full-graph sample of every core node. A message with
        ``eid < len(core_edges)`` comes from a core edge."""
        from kg_ops.sampling import CSRGraph

        return CSRGraph.from_edges(self.edges, self.num_nodes, num_relations=self.num_relations,
                                   add_inverse=add_inverse, node_ids=self.global_ids,
                                   seed=int(self.sampling.get("seed", 0)))

    def to_global(self, local: np.ndarray) -> np.ndarray:
        return self.global_ids[np.asarray(local, dtype=np.int64)]

    def global_core_edges(self) -> np.ndarray:
        e = self.core_edges
        return np.stack([self.global_ids[e[:, 0]], e[:, 1], self.global_ids[e[:, 2]]], axis=1)

    def to_local(self, global_ids: np.ndarray) -> np.ndarray:
        """Local ids of global ids (-1 where a node is not in this partition)."""
        g = np.asarray(global_ids, dtype=np.int64)
        order = np.argsort(self.global_ids, kind="stable")
        pos = np.minimum(np.searchsorted(self.global_ids[order], g), len(order) - 1)
        hit = self.global_ids[order][pos] == g
        return np.where(hit, order[pos], -1)

    def load_features(self) -> Any:
        """The encode stage's feature blocks (``list[FeatureBlock]``, every block even if
        empty) restricted to this partition's nodes; each block's ``node_ids`` are global ids,
        map them with :meth:`to_local`. Nodes without a row in a block miss that attribute."""
        if not self.features_uri:
            raise PartitionError(f"{self.uri}: partitioned without --features; rerun "
                                 "`kgops partition ... --features <encode output URI>`")
        from kg_ops.encode.features import load_feature_blocks

        return load_feature_blocks(self.features_uri, node_ids=self.global_ids)


def write_partition(uri: str, part: Partition) -> dict[str, int]:
    """Write one partition's files; returns bytes written per file. The caller's Stage writes
    the manifest after all partitions."""
    store = get_store(uri)
    d = part_dir(uri, part.part_id)
    sizes: dict[str, int] = {}

    def put(name: str, data: bytes) -> None:
        store.write_bytes(join(d, name), data)
        sizes[name] = len(data)

    def parquet_bytes(table: pa.Table) -> bytes:
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        return buf.getvalue()

    put("nodes.parquet", parquet_bytes(pa.table({
        "global_id": pa.array(part.global_ids, pa.int64()),
        "node_type": pa.array(part.node_type.astype(np.int32), pa.int32())})))
    put("core_edges.parquet", parquet_bytes(edges_to_table(part.core_edges)))
    put("halo_edges.parquet", parquet_bytes(edges_to_table(part.halo_edges)))
    pool = {}
    for t, ids in part.negative_pool.items():
        ids = np.asarray(ids)
        if len(ids) and not np.array_equal(ids, np.arange(ids[0], ids[0] + len(ids))):
            raise ValueError("negative pool of a type must be a contiguous local range")
        pool[str(int(t))] = [int(ids[0]), int(ids[0] + len(ids))] if len(ids) else [0, 0]
    meta = {
        "format": FORMAT,
        "part_id": part.part_id,
        "num_nodes": part.num_nodes,
        "num_core_nodes": part.num_core_nodes,
        "num_core_edges": len(part.core_edges),
        "num_halo_edges": len(part.halo_edges),
        "num_relations": part.num_relations,
        "num_global_nodes": part.num_global_nodes,
        "negative_pool": pool,
        "node_type_names": part.node_type_names,
        "relation_head_type": [] if part.relation_head_type is None
        else [int(x) for x in part.relation_head_type],
        "relation_tail_type": [] if part.relation_tail_type is None
        else [int(x) for x in part.relation_tail_type],
        "sampling": part.sampling,
        "features_uri": part.features_uri,
    }
    put("meta.json", json.dumps(meta, indent=2, sort_keys=True).encode())
    return sizes


def load_partitions_manifest(uri: str) -> dict:
    """The partition stage's manifest, or a clear error if the stage has not completed."""
    return require_manifest(normalize(uri), STAGE)


def load_partition(partitions_uri: str, part_id: int) -> Partition:
    """Load partition ``part_id`` of a completed partition stage at ``partitions_uri``."""
    uri = normalize(partitions_uri)
    manifest = load_partitions_manifest(uri)
    parts = int(manifest["outputs"]["parts"])
    if not 0 <= int(part_id) < parts:
        raise PartitionError(f"{uri} has {parts} partitions (0..{parts - 1}); there is no "
                             f"partition {part_id}. Start one worker per partition or "
                             f"repartition with --parts.")
    return read_partition(part_dir(uri, int(part_id)))


def read_partition(d: str) -> Partition:
    """Read one partition directory (:func:`load_partition` checks the stage first; the
    partition stage's cost planner reads a partition before the manifest exists)."""
    store = get_store(d)
    try:
        meta = store.read_json(join(d, "meta.json"))
        nodes = store.read_parquet(join(d, "nodes.parquet"))
        core = table_to_edges(store.read_parquet(join(d, "core_edges.parquet")))
        halo = table_to_edges(store.read_parquet(join(d, "halo_edges.parquet")))
    except FileNotFoundError as exc:
        raise PartitionError(f"{d}: partition files missing although the manifest is complete "
                             f"({exc}); the artifact was modified after the stage ran. Rerun "
                             "`kgops --force partition ...`.") from exc
    node_type = nodes.column("node_type").to_numpy().astype(np.int64)
    pool = {int(t): np.arange(a, b, dtype=np.int64) for t, (a, b) in meta["negative_pool"].items()}
    return Partition(
        part_id=int(meta["part_id"]),
        global_ids=nodes.column("global_id").to_numpy().astype(np.int64),
        num_core_nodes=int(meta["num_core_nodes"]),
        node_type=node_type,
        core_edges=core,
        halo_edges=halo,
        num_relations=int(meta["num_relations"]),
        negative_pool=pool,
        node_type_names=list(meta.get("node_type_names", [])),
        relation_head_type=np.asarray(meta.get("relation_head_type", []), dtype=np.int64),
        relation_tail_type=np.asarray(meta.get("relation_tail_type", []), dtype=np.int64),
        sampling=dict(meta.get("sampling", {})),
        features_uri=meta.get("features_uri"),
        num_global_nodes=int(meta.get("num_global_nodes", 0)),
        uri=d,
    )

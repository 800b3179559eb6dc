"""``kgops info URI [--json]``: what is in a graph (counts per node type, relation, split)."""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np

from kg_ops.graph.schema import SPLITS, GraphSchema

HELP = "Summarise a graph: nodes and edges per type, relation and split, attributes."


def summarize(schema: GraphSchema, edges: dict[str, np.ndarray]) -> dict[str, Any]:
    """Counts of a graph. ``edges`` maps split -> (E, 3) array or just its relation column."""
    rel_counts = np.zeros(schema.num_relations, dtype=np.int64)
    for e in edges.values():
        rel = e[:, 1] if e.ndim == 2 else e
        rel_counts += np.bincount(rel, minlength=schema.num_relations)[:schema.num_relations]
    return {
        "name": schema.name,
        "nodes": schema.num_nodes,
        "relations": schema.num_relations,
        "edges": {s: int(len(edges[s])) if s in edges else 0 for s in SPLITS},
        "node_types": {t.name: t.count for t in schema.node_types},
        "relation_types": {r.name: int(c) for r, c in zip(schema.relations, rel_counts,
                                                          strict=True)},
        "relation_signatures": {r.name: f"{r.head} -> {r.tail}" for r in schema.relations},
        "relation_labels": {r.name: r.label for r in schema.relations if r.label},
        "attributes": {t.name: {a.name: a.kind for a in t.attributes} for t in schema.node_types},
    }


def graph_info(uri: str) -> dict[str, Any]:
    """Summary of a stored graph; reads only schema.json, the manifest and the relation
    columns of the edge tables."""
    from kg_ops.graph.kg import load_schema
    from kg_ops.manifest import read_manifest
    from kg_ops.store import get_store, join

    schema = load_schema(uri)
    store = get_store(uri)
    rels = {s: store.read_parquet(join(uri, "edges", f"{s}.parquet"),
                                  columns=["relation"]).column("relation").to_numpy()
            for s in SPLITS if store.exists(join(uri, "edges", f"{s}.parquet"))}
    out = summarize(schema, rels)
    manifest = read_manifest(uri) or {}
    out["uri"] = uri
    out["stage"] = manifest.get("stage")
    out["created_at"] = manifest.get("created_at")
    validation = manifest.get("validation") or {}
    out["bad_rows"] = validation.get("bad_rows", 0)
    if manifest.get("counts", {}).get("moved_to_train") is not None:
        out["moved_to_train"] = manifest["counts"]["moved_to_train"]
    return out


def format_table(info: dict[str, Any]) -> str:
    e = info["edges"]
    lines = [f"graph {info['name']!r}  {info.get('uri', '')}",
             f"  {info['nodes']:,} nodes, {info['relations']} relations, "
             f"{sum(e.values()):,} edges (train {e['train']:,} / valid {e['valid']:,} / "
             f"test {e['test']:,})"]
    if info.get("bad_rows"):
        lines.append(f"  {info['bad_rows']:,} input rows were quarantined at import "
                     "(see quarantine/ and the manifest)")
    lines.append("")
    width = max([len("node type"), *map(len, info["node_types"])])
    lines.append(f"  {'node type':<{width}}  {'nodes':>10}  attributes")
    for name, count in info["node_types"].items():
        attrs = ", ".join(f"{a} ({k})" for a, k in info["attributes"].get(name, {}).items())
        lines.append(f"  {name:<{width}}  {count:>10,}  {attrs or '-'}")
    lines.append("")
    rwidth = max([len("relation"), *map(len, info["relation_types"])])
    labels = info.get("relation_labels", {})
    lines.append(f"  {'relation':<{rwidth}}  {'edges':>10}  head -> tail")
    for name, count in info["relation_types"].items():
        label = f"  ({labels[name]})" if name in labels else ""
        lines.append(f"  {name:<{rwidth}}  {count:>10,}  {info['relation_signatures'][name]}"
                     f"{label}")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("uri", help="graph directory (local path or s3://)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    from kg_ops.store import normalize

    info = graph_info(normalize(args.uri))
    print(json.dumps(info, indent=2) if args.json else format_table(info))
    return 0

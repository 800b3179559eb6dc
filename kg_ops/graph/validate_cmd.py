"""``kgops validate URI``: check a stored graph (the same checks every import runs).

Errors (files missing, counts that disagree with the manifest, ids out of range, relations
violating their declared head/tail types, duplicate keys, attribute columns of the wrong storage
type) fail with the first one spelled out (exit 2). With ``--on-bad-rows quarantine`` the
offending rows are written to ``{report}/quarantine/bad_rows.parquet`` with their reasons
instead, and their counts to the report's manifest. Warnings (duplicate edges, valid/test edges
also in train, entities unseen in train) are printed and recorded, never fatal.
"""

from __future__ import annotations

import argparse
import json

HELP = "Validate a stored graph: files, ids, relation types, keys, attribute types."


def add_arguments(p: argparse.ArgumentParser) -> None:
    from kg_ops.graph.validate import ON_BAD_ROWS

    p.add_argument("uri", help="graph directory (local path or s3://)")
    p.add_argument("--on-bad-rows", choices=ON_BAD_ROWS, default="fail",
                   help="fail (default): exit 2 on the first problem; quarantine: write the "
                        "offending rows with reasons to the report and exit 0")
    p.add_argument("--report", help="where to write the validation report "
                                    "(default: {uri}/validation)")
    p.add_argument("--force", action="store_true", default=argparse.SUPPRESS,
                   help="re-validate even if a report exists (as `kgops --force validate`)")


def require_graph(uri: str) -> None:
    from kg_ops.graph.validate import GraphInvalidError
    from kg_ops.store import get_store, join

    if not get_store(uri).exists(join(uri, "schema.json")):
        raise GraphInvalidError(f"{uri}/schema.json is missing: {uri} is not a kg_ops graph. "
                                "Run `kgops import ...` into it first.")


def load_for_validation(uri: str):
    """Schema, edges, node id/key columns and node Arrow schemas of a stored graph, with a
    clear error for each missing file."""
    import pyarrow.parquet as pq

    from kg_ops.graph.kg import load_edges, load_nodes, load_schema
    from kg_ops.graph.schema import SPLITS
    from kg_ops.graph.validate import GraphInvalidError
    from kg_ops.store import get_store, join

    store = get_store(uri)
    require_graph(uri)
    schema = load_schema(uri)
    missing = [f"nodes/{t.name}.parquet" for t in schema.node_types
               if not store.exists(join(uri, "nodes", f"{t.name}.parquet"))]
    missing += [f"edges/{s}.parquet" for s in SPLITS
                if not store.exists(join(uri, "edges", f"{s}.parquet"))]
    if missing:
        raise GraphInvalidError(f"{uri}: missing {', '.join(missing)}. The graph is incomplete; "
                                "re-import it.")
    edges = {s: load_edges(uri, s) for s in SPLITS}
    nodes, arrow_schemas = {}, {}
    for t in schema.node_types:
        file = join(uri, "nodes", f"{t.name}.parquet")
        nodes[t.name] = load_nodes(uri, t.name, columns=["id", "key"])
        with store.local_path(file) as path:
            arrow_schemas[t.name] = pq.read_schema(path)
    return schema, edges, nodes, arrow_schemas


def validate_uri(uri: str, on_bad_rows: str = "fail", report: str | None = None,
                 force: bool = False) -> dict:
    """Validate the graph at ``uri``; returns the report's manifest."""
    from kg_ops.graph.info import summarize
    from kg_ops.graph.validate import GraphInvalidError, validate_graph
    from kg_ops.manifest import Stage, files_unchecked, require_manifest
    from kg_ops.store import join, normalize

    uri = normalize(uri)
    report = normalize(report) if report else join(uri, "validation")
    require_graph(uri)
    with files_unchecked(), Stage("validate", report, config={"on_bad_rows": on_bad_rows},
                                  inputs={"graph": uri}, force=force) as st:
        if st.reused:
            return st.manifest
        with st.phase("load"):
            schema, edges, nodes, arrow_schemas = load_for_validation(uri)
        with st.phase("check"):
            rep = validate_graph(schema, edges, nodes, where=uri, node_schemas=arrow_schemas)
            _check_manifest_counts(rep, require_manifest(uri), summarize(schema, edges), uri)
        if rep.errors and on_bad_rows == "fail":
            more = f" ({len(rep.errors)} problems in all: {'; '.join(rep.errors[1:4])})" \
                if len(rep.errors) > 1 else ""
            raise GraphInvalidError(rep.errors[0] + more)
        quarantine = rep.bad_rows.write(st.out) if len(rep.bad_rows) else {"bad_rows": 0}
        st.counts.update({"errors": len(rep.errors), "warnings": len(rep.warnings),
                          "bad_rows": quarantine["bad_rows"], "checks": rep.checks,
                          "edges": {s: len(e) for s, e in edges.items()}})
        st.extra["validation"] = {**rep.to_dict(), **quarantine}
        if "report" in quarantine:
            st.outputs["quarantine"] = quarantine["report"]
    return st.manifest


def _check_manifest_counts(rep, manifest: dict, summary: dict, uri: str) -> None:
    """Files that disagree with the counts the import recorded were changed or mixed up."""
    counts = manifest.get("counts", {})
    for split, n in (counts.get("edges") or {}).items():
        if summary["edges"].get(split) != n:
            rep.record("manifest_counts", 1,
                       f"{uri}/edges/{split}.parquet has {summary['edges'].get(split)} edges but "
                       f"the import's manifest recorded {n}: the file was changed after the "
                       "import. Re-import the graph.")


def run(args: argparse.Namespace) -> int:
    manifest = validate_uri(args.uri, args.on_bad_rows, args.report, args.force)
    v = manifest.get("validation", {})
    for w in v.get("warnings", []):
        print(f"warning: {w}")
    for e in v.get("errors", []):
        print(f"error: {e}")
    status = "OK" if v.get("ok") else f"{len(v.get('errors', []))} problems"
    print(f"validate {args.uri}: {status}; {len(v.get('warnings', []))} warnings"
          + (f"; {v['bad_rows']} rows set aside in {v['report']['rows']}" if v.get("report")
             else ""))
    if args.verbose:
        print(json.dumps(v.get("checks", {}), indent=2))
    return 0

"""Do encoded attributes earn their place? Filtered test MRR overall and on cold triples, with
and without attributes, for the default GNN and the shallow ComplEx baseline.

Rows per graph (``kgops train`` defaults otherwise; ``--parts`` partitions, one worker each,
one thread per worker; with 1 partition the worker gets 2 threads):

* ``none``: no attributes (partitions built without ``--features``): learned rows only;
* ``add``: attributes encoded by ``kgops encode``, their projection added to each entity's
  learned row (``--attribute-input add``, the default);
* ``replace``: the published system's input layer (``--attribute-input replace``): the
  attribute projection *is* the input of every entity that has attributes.

Cold triples: test triples whose head or tail has at most 3 training edges (``kgops
evaluate``'s ``cold_*`` metrics, both directions).

Graphs (``--sections``):

* ``debian``: a seeded slice of the Debian graph (``../shared/datasets/debian``: packages with
  long-description text, sections, priorities, sizes, tags...). Packages are taken
  breadth-first over package-to-package edges from seeded random starts until ``--packages``
  are kept (a dependency-connected slice, not a scatter of isolated packages), plus every other
  entity (virtual names, sources, maintainers, sections, tags) one of their edges reaches.
  The whole graph (144,628 entities, 590,300 training edges, 63,664 texts) takes hours per row
  on this 2-core machine; the slice keeps each row to minutes.
* ``codex-s``: CoDEx-S, whose attributes are each entity's Wikidata types (every entity has
  some).

Run: ``KGOPS_SHARED=/work/shared flock /tmp/kgops-cpu.lock .venv/bin/python
benchmarks/bench_attributes.py [--sections debian,codex-s] [--work DIR]``; writes
``results/bench_attributes.json`` (sections of earlier runs kept).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import deque
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_train import kgops, run_train  # noqa: E402
from benchmarks.common import DATASETS, read_results, start_local_ray, write_results  # noqa: E402
from kg_ops.config.train import ATTRIBUTE_INPUTS  # noqa: E402

MODES = ("none", *ATTRIBUTE_INPUTS)   # none: partitions built without features
KEEP = ("mrr", "hits@1", "hits@10", "mrr_tail", "mrr_head", "cold_mrr", "cold_hits@1",
        "cold_hits@10", "cold_queries")


def debian_slice(full: str, out: Path, packages: int, seed: int) -> str:
    """The Debian slice described in the module docstring, written as an imported graph."""
    from kg_ops.graph.kg import KnowledgeGraph
    from kg_ops.graph.split_entities import subgraph
    from kg_ops.manifest import Stage

    if (out / "_manifest.json").exists():
        return str(out)
    kg = KnowledgeGraph.load(full)
    pkg = next(t for t in kg.schema.node_types if t.name == "package")
    is_pkg = np.zeros(kg.num_nodes, bool)
    is_pkg[pkg.offset:pkg.offset + pkg.count] = True
    keep = _bfs_packages(kg.edges["train"], is_pkg, packages, seed)
    every = np.concatenate(list(kg.edges.values()))
    touch = keep[every[:, 0]] | keep[every[:, 2]]
    ends = every[touch][:, [0, 2]].ravel()
    keep[ends[~is_pkg[ends]]] = True                       # the non-package ends they reach
    sub = subgraph(kg, keep)
    with Stage("import", str(out), config={"derived_from": full, "packages": packages,
                                           "seed": seed}, announce=False):
        sub.save(str(out))
    return str(out)


def _bfs_packages(edges: np.ndarray, is_pkg: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """``limit`` packages, breadth-first over package-package edges (either direction) from
    the packages of a seeded random order."""
    pp = edges[is_pkg[edges[:, 0]] & is_pkg[edges[:, 2]]]
    both = np.concatenate([pp[:, [0, 2]], pp[:, [2, 0]]])
    both = both[np.argsort(both[:, 0], kind="stable")]
    starts = np.searchsorted(both[:, 0], np.arange(len(is_pkg) + 1))
    keep = np.zeros(len(is_pkg), bool)
    order = np.random.default_rng(seed).permutation(np.flatnonzero(is_pkg))
    taken, queue = 0, deque()
    for s in order:
        if taken >= limit:
            break
        if keep[s]:
            continue
        queue.append(s)
        keep[s], taken = True, taken + 1
        while queue and taken < limit:
            for v in both[starts[queue[0]]:starts[queue[0] + 1], 1]:
                if not keep[v] and taken < limit:
                    keep[v], taken = True, taken + 1
                    queue.append(v)
            queue.popleft()
    return keep


def prepare(graph: str, work: Path, parts: int) -> dict:
    """Encode the graph's attributes and build partitions with and without them."""
    t = time.perf_counter()
    feats = work / "features"
    kgops("encode", "--graph", graph, "--out", str(feats))
    encode_s = time.perf_counter() - t
    out = {"none": work / f"p{parts}", "attrs": work / f"p{parts}-features"}
    kgops("partition", "--graph", graph, "--parts", str(parts), "--out", str(out["none"]))
    kgops("partition", "--graph", graph, "--parts", str(parts), "--out", str(out["attrs"]),
          "--features", str(feats))
    manifest = json.loads((feats / "_manifest.json").read_text())
    return {"features": str(feats), "parts": {k: str(v) for k, v in out.items()}, "n": parts,
            "encode": {"wall_s": round(encode_s, 1), "dims": manifest["metrics"].get("dims"),
                       "texts": manifest["counts"].get("texts")}}


def evaluate(model_uri: str, graph: str, out: str) -> dict:
    from kg_ops.evaluate.run import evaluate_model
    from kg_ops.models.trained import load_trained

    m = evaluate_model(load_trained(model_uri), model_uri=model_uri, graph_uri=graph, out=out)
    return {k: (round(m["metrics"][k], 4) if isinstance(m["metrics"].get(k), float)
                else m["metrics"].get(k)) for k in KEEP}


def rows(graph: str, work: Path, prep: dict, models: list[str], modes: list[str],
         epochs: int | None, threads: int, options: dict | None = None,
         tag: str = "") -> list[dict]:
    out = []
    for model in models:
        for mode in modes:
            name = f"{model}-{mode}-p{prep['n']}{tag}"
            kw = {"model": model, "threads": threads, "seed": 0, **(options or {})}
            if epochs:
                kw["epochs"] = epochs
            if mode != "none":
                kw["attribute_input"] = mode
            parts = prep["parts"]["none" if mode == "none" else "attrs"]
            print(f"== {name}", flush=True)
            tr = run_train(name, parts, work, **kw)
            ev = evaluate(tr["uri"], graph, str(work / f"eval-{name}"))
            row = {"model": model, "attributes": mode, **(options or {}),
                   "train_wall_s": tr["wall_s"],
                   "epochs": tr["epochs"], "best_valid_mrr_sampled":
                   tr["best_valid_mrr_sampled"], **ev}
            print(json.dumps(row), flush=True)
            out.append(row)
    return out


def graph_stats(graph: str) -> dict:
    from kg_ops.evaluate.ranking import cold_triples
    from kg_ops.graph.kg import load_edges, load_schema

    schema = load_schema(graph)
    train = load_edges(graph, "train")
    test = load_edges(graph, "test")
    cold = cold_triples(test, train, schema.num_nodes)
    return {"entities": schema.num_nodes, "train_edges": int(len(train)),
            "test_edges": int(len(test)), "cold_test_triples": int(cold.sum()),
            "entities_per_type": {t.name: t.count for t in schema.node_types}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sections", default="debian,codex-s")
    ap.add_argument("--work", default="/tmp/bench_attributes")
    ap.add_argument("--packages", type=int, default=5000, help="Debian slice size")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--parts", type=int, default=2, help="partitions = workers")
    ap.add_argument("--models", default="rgcn,complex")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--epochs", type=int, default=None,
                    help="cap on epochs (default: the config's, with its early stopping)")
    ap.add_argument("--train-options", type=json.loads, default={},
                    help='kgops train options besides the defaults, as JSON (e.g. '
                         '\'{"batch_size": 4096}\'); the section is then keyed '
                         '"<section> <options>"')
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    start_local_ray()
    results = read_results("bench_attributes")["results"]
    results["protocol"] = {
        "rows": "kgops train defaults, each section's `parts` partitions, one worker each; only "
                "--model and --attribute-input differ (and --epochs when capped); attributes "
                "from kgops encode defaults",
        "metrics": "kgops evaluate: filtered test ranking, both directions, all entities",
        "cold": "test triples whose head or tail has at most 3 training edges"}
    models, modes = args.models.split(","), args.modes.split(",")
    for section in args.sections.split(","):
        w = work / section
        t0 = time.perf_counter()
        if section == "debian":
            full = w / "debian-full"
            if not (full / "_manifest.json").exists():
                kgops("import", "debian", "--root", str(DATASETS / "debian"), "--out",
                      str(full))
            graph = debian_slice(str(full), w / f"debian-{args.packages}", args.packages,
                                 args.seed)
        elif section == "codex-s":
            graph = str(w / "codex-s")
            kgops("import", "codex", "--root", str(DATASETS / "codex"), "--size", "s",
                  "--out", graph)
        else:
            raise SystemExit(f"unknown section {section!r}")
        prep = prepare(graph, w, args.parts)
        threads = 2 if args.parts == 1 else 1
        opts = args.train_options
        tag = "".join(f"-{k}{v}" for k, v in sorted(opts.items()))
        key = f"{section} {json.dumps(opts, sort_keys=True)}" if opts else section
        results[key] = {"graph": graph_stats(graph), "encode": prep["encode"],
                        "parts": args.parts, "epochs_cap": args.epochs,
                        "rows": rows(graph, w, prep, models, modes, args.epochs, threads,
                                     opts, tag),
                        "section_wall_s": round(time.perf_counter() - t0, 1),
                        "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        print(json.dumps(results[key], indent=1), flush=True)
        write_results("bench_attributes", results)


if __name__ == "__main__":
    main()

"""``kgops synth`` wall time and peak memory, from 1k nodes to the paper's 2.8M nodes / 24M edges.

Each size runs as its own ``kgops synth`` process (``run_measured``), so the peak RSS is that of
the command alone. Per-phase timings (nodes, edges, split, validate, write) come from the
stage manifest. Usage::

    .venv/bin/python -m benchmarks.bench_synth                  # all sizes
    .venv/bin/python -m benchmarks.bench_synth --sizes 1k 100k  # some
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from benchmarks.common import run_measured, write_results

SIZES = {  # name: (nodes, edges)
    "1k": (1_000, 10_000),
    "100k": (100_000, 1_000_000),
    "paper": (2_800_000, 24_000_000),
}


def bench(name: str, nodes: int, edges: int, root: Path, seed: int) -> dict:
    out = root / name
    cmd = [sys.executable, "-m", "kg_ops.cli", "synth", "--nodes", str(nodes), "--edges",
           str(edges), "--seed", str(seed), "--out", str(out)]
    try:
        res = run_measured(cmd)
        manifest = json.loads((out / "_manifest.json").read_text())
        disk = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    finally:
        shutil.rmtree(out, ignore_errors=True)
    c = manifest["counts"]
    return {
        "nodes": nodes, "edges_requested": edges, "edges": c["edges_total"],
        "splits": c["edges"], "moved_to_train": c["moved_to_train"],
        "communities": c["communities"],
        "wall_s": round(res["wall_s"], 2), "peak_rss_mib": round(res["peak_rss_mib"], 1),
        "phases_s": {k: v for k, v in manifest["timings"].items() if k != "total_s"},
        "stage_total_s": manifest["timings"].get("total_s"),
        "edges_per_s": round(c["edges_total"] / res["wall_s"], 1),
        "bytes_on_disk": disk,
        "within_community_edge_fraction": manifest["metrics"]["within_community_edge_fraction"],
        "within_community_random_baseline":
            manifest["metrics"]["within_community_random_baseline"],
        "command": " ".join(cmd[1:]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tmp", default=None, help="scratch directory (default: system temp)")
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="kgops-bench-synth-", dir=args.tmp) as tmp:
        for name in args.sizes:
            nodes, edges = SIZES[name]
            results[name] = bench(name, nodes, edges, Path(tmp), args.seed)
            r = results[name]
            print(f"{name}: {nodes:,} nodes, {r['edges']:,} edges in {r['wall_s']} s, "
                  f"peak {r['peak_rss_mib']} MiB, phases {r['phases_s']}", flush=True)
    write_results("synth", results)


if __name__ == "__main__":
    main()

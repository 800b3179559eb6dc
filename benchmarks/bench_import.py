"""Import + validate throughput and peak memory: CoDEx-M, the Debian graph (shared snapshot and
this machine's apt), and ``kgops synth`` at the paper's 2.8M nodes / 24M edges.

Every import and every ``kgops validate`` runs as its own process (``run_measured``), so each
peak RSS is that command's alone. Rows/s counts input rows (triple lines, deb822 stanzas, or the
generated edges for synth); edges/s counts the graph's edges. Per-phase timings come from the
stage manifests. Usage::

    .venv/bin/python -m benchmarks.bench_import                     # everything
    .venv/bin/python -m benchmarks.bench_import --only codex-m debian
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from benchmarks.common import DATASETS, run_measured, write_results

KGOPS = [sys.executable, "-m", "kg_ops.cli"]
CASES = ("codex-m", "debian", "debian-apt", "synth-paper")


def import_cmd(case: str, out: Path, synth_nodes: int, synth_edges: int) -> list[str]:
    if case == "codex-m":
        return [*KGOPS, "import", "codex", "--root", str(DATASETS / "codex"), "--size", "m",
                "--out", str(out)]
    if case == "debian":
        return [*KGOPS, "import", "debian", "--root", str(DATASETS / "debian"), "--out", str(out)]
    if case == "debian-apt":
        return [*KGOPS, "import", "debian", "--from-apt", "--out", str(out)]
    return [*KGOPS, "synth", "--nodes", str(synth_nodes), "--edges", str(synth_edges),
            "--seed", "0", "--out", str(out)]


def bench(case: str, root: Path, synth_nodes: int, synth_edges: int) -> dict:
    out = root / case
    cmd = import_cmd(case, out, synth_nodes, synth_edges)
    try:
        imp = run_measured(cmd)
        manifest = json.loads((out / "_manifest.json").read_text())
        val = run_measured([*KGOPS, "validate", str(out)])
        vman = json.loads((out / "validation" / "_manifest.json").read_text())
    finally:
        shutil.rmtree(out, ignore_errors=True)
    c = manifest["counts"]
    edges = sum(c["edges"].values())
    rows = c.get("rows_read", edges)
    return {
        "command": " ".join(cmd[2:]),
        "nodes": c["nodes"] if isinstance(c["nodes"], int) else sum(c["node_types"].values()),
        "node_types": c.get("node_types"),
        "relation_types": c.get("relation_types"),
        "edges": c["edges"], "moved_to_train": c.get("moved_to_train"),
        "bad_rows": c.get("bad_rows", 0),
        "import": {"wall_s": round(imp["wall_s"], 2), "peak_rss_mib": round(imp["peak_rss_mib"], 1),
                   "input_rows": rows, "rows_per_s": round(rows / imp["wall_s"], 1),
                   "edges_per_s": round(edges / imp["wall_s"], 1),
                   "phases_s": {k: v for k, v in manifest["timings"].items()}},
        "validate": {"wall_s": round(val["wall_s"], 2),
                     "peak_rss_mib": round(val["peak_rss_mib"], 1),
                     "edges_per_s": round(edges / val["wall_s"], 1),
                     "ok": vman["validation"]["ok"], "warnings": vman["validation"]["warnings"],
                     "phases_s": vman["timings"]},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", choices=CASES, default=list(CASES))
    ap.add_argument("--synth-nodes", type=int, default=2_800_000)
    ap.add_argument("--synth-edges", type=int, default=24_000_000)
    ap.add_argument("--tmp", default=None, help="scratch directory (default: system temp)")
    args = ap.parse_args()
    cases = [c for c in args.only if c != "debian-apt" or shutil.which("apt-cache")]
    results = {}
    with tempfile.TemporaryDirectory(prefix="kgops-bench-import-", dir=args.tmp) as tmp:
        for case in cases:
            r = results[case] = bench(case, Path(tmp), args.synth_nodes, args.synth_edges)
            print(f"{case}: {r['nodes']:,} nodes, {sum(r['edges'].values()):,} edges; import "
                  f"{r['import']['wall_s']} s ({r['import']['rows_per_s']:,} rows/s, peak "
                  f"{r['import']['peak_rss_mib']} MiB); validate {r['validate']['wall_s']} s "
                  f"({r['validate']['edges_per_s']:,} edges/s, peak "
                  f"{r['validate']['peak_rss_mib']} MiB)", flush=True)
    write_results("import", results)


if __name__ == "__main__":
    main()

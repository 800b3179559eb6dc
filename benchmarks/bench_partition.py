"""Partitioning benchmark: time, peak memory and replication for P = 2, 4, 8.

Graphs: CoDEx-M (imported with ``kgops import codex``) and the synthetic enterprise graph at
2.8M nodes / 24M edges (``kgops synth``). Every ``kgops partition`` run is a fresh process, so
its wall time and peak RSS are its own. Targets (issue 5): CoDEx-M, METIS, K=2, fanout 25,10:
edge replication factor <= 2.0 at P=4; the 2.8M/24M graph into 8 partitions in < 10 min and
< 16 GiB.

    python benchmarks/bench_partition.py --work /tmp/bench-partition
    python benchmarks/bench_partition.py --synth-graph /path/to/synth --skip-codex

A skipped section (``--skip-codex``/``--skip-synth``) keeps the previous figures of the same
results file, listed under ``carried_over`` with the time they were measured.

The machine's load average is recorded next to each run: on a shared machine, wall times
scale with it; ``cpu_s`` (user + system time of the run) does not.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import DATASETS, read_results, run_measured, write_results  # noqa: E402

KGOPS = [sys.executable, "-m", "kg_ops.cli"]
KEEP = ("parts", "edge_replication_factor", "node_replication_factor", "balance",
        "speedup_bound", "edge_replication_breakdown", "metis_cut_edge_fraction",
        "metis_hubs_left_out", "partitioner_peak_rss_mib")


def ensure_graph(kind: str, uri: str | None, work: Path) -> str:
    if uri:
        return uri
    out = work / kind
    if (out / "_manifest.json").exists():
        return str(out)
    if kind == "codex-m":
        cmd = [*KGOPS, "import", "codex", "--root", str(DATASETS / "codex"), "--size", "m",
               "--out", str(out)]
    else:
        cmd = [*KGOPS, "synth", "--nodes", "2800000", "--edges", "24000000", "--seed", "0",
               "--text-fraction", "0.01", "--out", str(out)]
    print(f"building {kind}: {' '.join(cmd)}", flush=True)
    r = run_measured(cmd)
    print(f"  {kind}: {r['wall_s']:.0f}s, peak {r['peak_rss_mib']:.0f} MiB", flush=True)
    return str(out)


def run_partition(graph: str, out: Path, parts: int, method: str, fanout: str) -> dict:
    cmd = [*KGOPS, "--force", "partition", "--graph", graph, "--parts", str(parts), "--hops",
           str(len(fanout.split(","))), f"--fanout={fanout}", "--method", method, "--seed", "0",
           "--out", str(out)]
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = run_measured(cmd)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    m = json.loads((out / "_manifest.json").read_text())
    row = {"parts": parts, "method": method, "fanout": fanout,
           "wall_s": round(r["wall_s"], 1), "cpu_s": round(cpu_s, 1),
           "peak_rss_mib": round(r["peak_rss_mib"], 0),
           "load_avg_1m_before": round(load, 1),
           **{k: m["metrics"][k] for k in KEEP if k in m["metrics"]},
           "halo_edges_mean": m["metrics"]["halo_edges"]["mean"],
           "halo_nodes_mean": m["metrics"]["halo_nodes"]["mean"],
           "bytes_per_partition_max": m["metrics"]["bytes_per_partition"]["max"],
           "est_peak_worker_memory_mib_max": round(
               m["metrics"]["est_peak_worker_memory_bytes"]["max"] / 2**20, 1),
           "timings": m["timings"], "train_edges": m["counts"]["train_edges"]}
    print(json.dumps({k: v for k, v in row.items() if k != "timings"}), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/kgops-bench-partition")
    ap.add_argument("--parts", default="2,4,8")
    ap.add_argument("--codex-graph", default=None, help="an imported CoDEx-M graph URI")
    ap.add_argument("--synth-graph", default=None, help="a 2.8M/24M kgops synth graph URI")
    ap.add_argument("--skip-codex", action="store_true")
    ap.add_argument("--skip-synth", action="store_true")
    ap.add_argument("--name", default="partition", help="results file name (results/NAME.json)")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    parts = [int(p) for p in args.parts.split(",")]
    results: dict = {"load_avg_at_start": os.getloadavg()[0]}

    if not args.skip_codex:
        graph = ensure_graph("codex-m", args.codex_graph, work)
        rows = [run_partition(graph, work / f"codex-{m}-p{p}", p, m, "25,10")
                for p in parts for m in ("metis", "random")]
        # What the fanout does at P=4: exact 2-hop pulls in most of the graph.
        rows += [run_partition(graph, work / f"codex-metis-p4-f{f.replace(',', '_')}", 4,
                               "metis", f) for f in ("-1,-1", "10,5", "10,10", "15,10")]
        results["codex_m"] = rows
        target = next(r for r in rows if r["parts"] == 4 and r["method"] == "metis"
                      and r["fanout"] == "25,10")
        results["target_codex_m_p4_edge_replication_le_2"] = {
            "value": target["edge_replication_factor"],
            "met": target["edge_replication_factor"] <= 2.0}

    if not args.skip_synth:
        graph = ensure_graph("synth-2.8m", args.synth_graph, work)
        rows = [run_partition(graph, work / f"synth-metis-p{p}", p, "metis", "25,10")
                for p in parts]
        results["synth_2_8m"] = rows
        p8 = next((r for r in rows if r["parts"] == 8), None)
        if p8:
            results["target_synth_p8_under_10min_16gib"] = {
                "wall_s": p8["wall_s"], "peak_rss_mib": p8["peak_rss_mib"],
                "met": p8["wall_s"] < 600 and p8["peak_rss_mib"] < 16 * 1024}

    # A skipped section keeps the figures of the previous run in the same results file,
    # labelled with when they were measured.
    doc = read_results(args.name)
    if doc["results"]:
        for skipped, keys in ((args.skip_codex, ("codex_m", "target_codex_m_p4_edge_"
                                                 "replication_le_2")),
                              (args.skip_synth, ("synth_2_8m", "target_synth_p8_under_"
                                                 "10min_16gib"))):
            for key in keys if skipped else ():
                if key in doc["results"] and key not in results:
                    results[key] = doc["results"][key]
                    results.setdefault("carried_over", {})[key] = doc.get("created_at")
    write_results(args.name, results)


if __name__ == "__main__":
    main()

"""Simulated scale-out of ``kgops train`` on ``synth`` at 2.8M nodes / 24M edges.

This machine has 2 cores, so a P-worker cluster is simulated one partition at a time. For
P = 4 and 8 every partition is loaded on its own and timed for a number of real training
steps (the training loop's own ``_batch_loss``, backward and optimiser step) at the local batch
that worker would get (the global batch split in proportion to its core edges; every worker
takes the same number of steps per epoch). The single-machine baseline T1 is the same step on
the whole training graph with the whole global batch. Then, per epoch of ``S`` steps:

* ``T1 = S * step_s(full graph)`` (``step_s``: the median of the timed steps),
* ``Tp = S * (max over partitions of step_s(partition) + sync_s)``,
* speed-up ``T1 / Tp``, next to the published 12x (4 workers) and 16x (8 workers).

``sync_s`` is estimated, not measured (there is one machine): per step a ring all-reduce of the
dense parameters (``2 (P-1)/P * bytes``) and an all-gather of every worker's touched embedding
rows (``(P-1) * max rows * (dim * 4 + 8)`` bytes received), at an assumed network bandwidth
(default 10 Gbit/s) plus a per-message latency (default 50 us) for each of the ``2 (P-1)``
ring steps of each collective. The touched rows are measured (computation-graph nodes of each
step). The same estimate for a dense gradient of the whole embedding table is printed next to
it, to show why the table's gradients are sparse.

Run: ``make bench BENCH=bench_scaleout`` (creates the graph and partitions under ``--work`` if
they are missing: ~10 min; or pass ``--graph`` / ``--parts4`` / ``--parts8``).
"""

from __future__ import annotations

import argparse
import gc
import logging
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import peak_rss_mib, write_results  # noqa: E402

log = logging.getLogger("bench_scaleout")
PUBLISHED = {4: 12.0, 8: 16.0}


def kgops(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "kg_ops.cli", *args], check=True,
                   stdout=subprocess.DEVNULL)


def ensure_inputs(args) -> dict:
    from kg_ops.store import get_store, join

    work = Path(args.work)
    graph = args.graph or str(work / "synth-2.8m")
    if not get_store(graph).exists(join(graph, "_manifest.json")):
        kgops("synth", "--nodes", "2800000", "--edges", "24000000", "--seed", "0",
              "--out", graph)
    parts = {}
    for p, given in ((4, args.parts4), (8, args.parts8)):
        uri = given or str(work / f"synth-metis-p{p}")
        if not get_store(uri).exists(join(uri, "_manifest.json")):
            kgops("partition", "--graph", graph, "--parts", str(p), "--method", "metis",
                  "--out", uri)
        parts[p] = uri
    return {"graph": graph, "parts": parts}


class StepTimer:
    """Times real training steps of one (partition's) graph."""

    def __init__(self, csr, sampler, num_nodes: int, num_relations: int, fanouts, seed: int):
        import torch

        from kg_ops.models.link_predictor import LinkPredictor, ModelConfig
        from kg_ops.train.optim import TrainingOptimizer

        torch.manual_seed(0)
        self.model = LinkPredictor(ModelConfig(model="rgcn", num_nodes=num_nodes,
                                               num_relations=num_relations))
        self.opt = TrainingOptimizer(self.model, lr=0.01)
        self.csr, self.sampler, self.fanouts, self.seed = csr, sampler, list(fanouts), seed
        self.dense_bytes = sum(p.numel() * 4 for n, p in self.model.named_parameters()
                               if n != "inputs.embedding.weight")
        self.table_bytes = self.model.inputs.embedding.weight.numel() * 4

    def time_steps(self, edges: np.ndarray, batch: int, steps: int, loss: str,
                   negatives: int, warmup: int = 2) -> dict:
        from kg_ops.config import TrainConfig
        from kg_ops.train.loop import _batch_loss

        rng = np.random.default_rng(0)
        config = TrainConfig(partitions="-", out="-", loss=loss, negatives=negatives)
        times, rows = [], []
        for i in range(warmup + steps):
            pos = edges[rng.integers(0, len(edges), batch)]
            t = time.perf_counter()
            self.opt.zero_grad()
            out = _batch_loss(self.model, config, self.csr, self.sampler, pos, self.fanouts,
                              self.seed, None, rng)
            out.backward()
            self.opt.step()
            if i >= warmup:
                times.append(time.perf_counter() - t)
                rows.append(int(self.model.inputs.embedding.weight.grad.coalesce()
                                .indices().shape[1]))
        # The median: one step stalled by another process on this shared machine must not
        # become "the slowest partition".
        return {"step_s": float(np.median(times)), "step_s_mean": float(np.mean(times)),
                "step_s_std": float(np.std(times)),
                "touched_rows": float(np.mean(rows)), "local_batch": batch}


def sync_estimate(p: int, dense_bytes: int, rows: float, dim: int, table_bytes: int,
                  gbit: float, latency_s: float) -> dict:
    bw = gbit * 1e9 / 8
    ring = 2 * (p - 1) * latency_s
    dense = 2 * (p - 1) / p * dense_bytes / bw + ring
    sparse = (p - 1) * rows * (dim * 4 + 8) / bw + 2 * ring
    table = 2 * (p - 1) / p * table_bytes / bw + ring
    return {"sync_s": dense + sparse, "dense_params_s": dense, "sparse_rows_s": sparse,
            "if_dense_table_s": dense + table}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/kgops-bench-scaleout")
    ap.add_argument("--graph", default=None)
    ap.add_argument("--parts4", default=None)
    ap.add_argument("--parts8", default=None)
    ap.add_argument("--steps", type=int, default=9, help="timed steps per partition and loss")
    ap.add_argument("--batch", type=int, default=256, help="global batch (issue default 256)")
    ap.add_argument("--losses", default="bce:1,softmax:512,softmax:32",
                    help="loss:negatives pairs to time (softmax candidates are per node type "
                         "and per batch, so they do not shrink with the local batch)")
    ap.add_argument("--gbit", type=float, default=10.0, help="assumed network, Gbit/s")
    ap.add_argument("--latency-us", type=float, default=50.0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import torch

    torch.set_num_threads(1)
    from kg_ops.graph.kg import load_edges, load_schema
    from kg_ops.partition.io import load_partition, load_partitions_manifest, part_dir
    from kg_ops.sampling import CSRGraph
    from kg_ops.store import get_store, join
    from kg_ops.train.negatives import TypedNegativeSampler

    inputs = ensure_inputs(args)
    losses = [(k, int(v)) for k, v in (x.split(":") for x in args.losses.split(","))]
    schema = load_schema(inputs["graph"])
    n, r = schema.num_nodes, schema.num_relations
    sampling = get_store(inputs["parts"][8]).read_json(
        join(part_dir(inputs["parts"][8], 0), "meta.json"))["sampling"]
    fanouts, seed = list(sampling["fanouts"]), int(sampling["seed"])
    results: dict = {"graph": {"uri": inputs["graph"], "nodes": n, "relations": r},
                     "global_batch": args.batch, "fanouts": fanouts, "timed_steps": args.steps,
                     "model": "rgcn, embedding 64, hidden 64, out 32, 4 bases, no attributes",
                     "network_assumption": f"{args.gbit} Gbit/s, {args.latency_us} us per "
                                           "ring step",
                     "published_speedup": PUBLISHED}

    # T1: the whole training graph on one machine.
    train = np.unique(load_edges(inputs["graph"], "train"), axis=0)
    steps_per_epoch = math.ceil(len(train) / args.batch)
    results["train_edges"], results["steps_per_epoch"] = len(train), steps_per_epoch
    t = time.perf_counter()
    csr = CSRGraph.from_edges(train, n, r, seed=seed)
    ranges = {i: np.arange(nt.offset, nt.offset + nt.count)
              for i, nt in enumerate(schema.node_types)}
    names = [nt.name for nt in schema.node_types]
    sampler = TypedNegativeSampler(ranges, np.array([names.index(x.head) for x in
                                                     schema.relations]),
                                   np.array([names.index(x.tail) for x in schema.relations]))
    log.info("full graph CSR built in %.1fs", time.perf_counter() - t)
    timer = StepTimer(csr, sampler, n, r, fanouts, seed)
    full = {f"{name}:{k}": timer.time_steps(train, args.batch, args.steps, name, k)
            for name, k in losses}
    log.info("T1 steps: %s", full)
    results["full_graph"] = full
    dim = timer.model.inputs.embedding.weight.shape[1]
    dense_bytes, table_bytes = timer.dense_bytes, timer.table_bytes
    del timer, csr, sampler, train
    gc.collect()

    for p, uri in inputs["parts"].items():
        pm = load_partitions_manifest(uri)
        per_part = {f"{name}:{k}": [] for name, k in losses}
        cores = [int(get_store(uri).read_json(join(part_dir(uri, i), "meta.json"))
                     ["num_core_edges"]) for i in range(p)]
        total = sum(cores)
        for i in range(p):
            t = time.perf_counter()
            part = load_partition(uri, i)
            csr = part.graph()
            sampler = TypedNegativeSampler(part.negative_pool, part.relation_head_type,
                                           part.relation_tail_type)
            load_s = time.perf_counter() - t
            timer = StepTimer(csr, sampler, n, r, fanouts, seed)
            local = max(1, round(args.batch * cores[i] / total))
            for name, k in losses:
                row = timer.time_steps(part.core_edges, local, args.steps, name, k)
                row.update({"part": i, "core_edges": cores[i], "load_s": round(load_s, 1)})
                per_part[f"{name}:{k}"].append(row)
                log.info("P=%d part %d %s: %s", p, i, name, row)
            del timer, csr, sampler, part
            gc.collect()
        out = {"edge_replication_factor": pm["metrics"]["edge_replication_factor"],
               "balance": pm["metrics"]["balance"]}
        for name in per_part:
            rows = per_part[name]
            slowest = max(x["step_s"] for x in rows)
            sync = sync_estimate(p, dense_bytes, max(x["touched_rows"] for x in rows), dim,
                                 table_bytes, args.gbit, args.latency_us * 1e-6)
            t1 = steps_per_epoch * full[name]["step_s"]
            tp = steps_per_epoch * (slowest + sync["sync_s"])
            tp_dense = steps_per_epoch * (slowest + sync["if_dense_table_s"])
            out[name] = {
                "per_partition": rows,
                "t1_epoch_s": round(t1, 1), "tp_epoch_s": round(tp, 1),
                "tp_compute_only_epoch_s": round(steps_per_epoch * slowest, 1),
                "sync_s_per_step": {k: round(v, 5) for k, v in sync.items()},
                "speedup": round(t1 / tp, 2),
                "speedup_compute_only": round(t1 / (steps_per_epoch * slowest), 2),
                "speedup_if_dense_embedding_gradients": round(t1 / tp_dense, 2),
                "published_speedup": PUBLISHED[p]}
            log.info("P=%d %s: T1 %.0fs/epoch, Tp %.0fs/epoch, speed-up %.2fx (published "
                     "%.0fx)", p, name, t1, tp, t1 / tp, PUBLISHED[p])
        results[f"P={p}"] = out
        results["peak_rss_mib"] = peak_rss_mib()
        write_results("bench_scaleout", results)


if __name__ == "__main__":
    main()

"""Scale-out of ``kgops train``: synth 2.8M nodes / 24M edges (simulated) and CoDEx-M (measured).

Sections (``--sections``, comma separated; results of earlier runs are kept, merged by key):

* ``profile``: one training step on the whole synth graph (P=1) and on a P=8 partition, split
  into phases (:mod:`kg_ops.train.profile`: sample, gather, forward, loss, backward,
  coalesce, optimizer) at the global batch and at each worker's local batch.
* ``simulate``: the measure of earlier sessions. This machine has 2 cores, so a P-worker
  cluster is simulated one partition at a time: every partition of P = 4 and 8 is loaded on its
  own and timed for real training steps at the local batch its worker would get (the global
  batch split in proportion to core edges; every worker takes the same number of steps). T1 is
  the same step on the whole training graph with the whole global batch. Per epoch of ``S``
  steps: ``T1 = S * step(full)``, ``Tp = S * (max over partitions of step + sync)``, speed-up
  ``T1 / Tp``. ``sync`` is estimated (one machine): a ring all-reduce of the dense parameters
  plus the sparse exchange :mod:`kg_ops.train.exchange` would pick (gather of the touched rows,
  or a dense all-reduce of the table) at an assumed bandwidth and per-message latency. Steps
  are timed as the loop runs them: batches prefetched (built in a background thread).
  Next to it: the partition stage's prediction (``metrics.plan``) for the same batch.
* ``epoch``: one full epoch on one P=8 partition (the one the plan says is slowest), run as
  the loop runs it, in a fresh process: wall time and peak memory against the prediction.
  ``memory`` does the same for a fixed number of steps on the largest partition of P = 1, 4,
  8: peak memory measured against predicted.
* ``codex-m-step``: one training step of ``kgops train``'s default recipe on partition 0 of
  CoDEx-M at P=2 (its local batch, 1 thread), split into phases, in float32 and with
  ``--precision bf16`` side by side; and each RGCN layer's forward
  and backward on that step's sampled layers with the sparse-matrix aggregation
  (:mod:`kg_ops.models.aggregate`) next to the ``index_add`` aggregation it replaced (kept
  here as the reference), same inputs, side by side.
* ``codex-m``: ``kgops train`` on CoDEx-M with 1 worker (1 torch thread), 1 worker (2 torch
  threads: the fair single-process reference on 2 cores) and 2 workers (1 thread each), same
  recipe, then filtered test MRR: epoch speed-ups and |MRR(2w) - MRR(1w)| (``--m-runs``: a
  subset, ``--m-key``: the results key). ``2w-1t-dense`` is the 2-worker run with
  ``--exchange dense`` (the input table's whole gradient all-reduced, instead of the default's
  rows updated by their owners, :mod:`kg_ops.train.owner_rows`).
* ``codex-m-spans``: the same configurations side by side in time: ``--rounds`` rounds, each
  running every configuration of ``--m-runs`` for two epochs of ``--span-steps`` steps
  (``kgops train --limit-steps``; the first warms up, the second is timed), in alternating
  order (A B C, C B A, ...). The ratios are taken per round from the spans' seconds per
  step, so a machine whose speed drifts over the hour (this one has a slow state it enters
  and leaves within minutes) shifts both sides of a ratio alike; the JSON keeps every span.
  No test MRR (a span trains a few steps); the full epochs of ``codex-m`` give it.
* ``codex-m-contention``: what the machine itself allows two 1-thread workers. The default
  recipe's 1-worker CoDEx-M step (1 thread, the whole graph, the global batch: the ``1w-1t``
  run's step, without Ray) is timed in a fresh process alone, and in two identical processes
  at once, in alternating order (alone, pair; pair, alone; ...). Two processes that share
  nothing but the machine (its caches and memory bandwidth), with the work divided perfectly
  and no communication, would run a 2-worker step in ``pair / 2``: ``2 * alone / pair`` per
  round is the most any code can gain from a second worker on this machine, to read next to
  the measured ``codex-m-spans`` speed-up.

Run: ``flock /tmp/kgops-cpu.lock .venv/bin/python benchmarks/bench_scaleout.py --sections ...``
(creates the synth graph and partitions under ``--work`` when missing: ~15 min).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import peak_rss_mib, read_results, start_local_ray, write_results  # noqa: E402

log = logging.getLogger("bench_scaleout")
PUBLISHED = {4: 12.0, 8: 16.0}
RESULTS: dict = {}


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
    parts = {1: None}      # P=1: the whole training graph in memory (see whole_graph)
    for p in args.parts:
        uri = str(work / f"synth-metis-p{p}")
        if not get_store(uri).exists(join(uri, "_manifest.json")):
            kgops("partition", "--graph", graph, "--parts", str(p), "--method", "metis",
                  "--out", uri)
        parts[p] = uri
    return {"graph": graph, "parts": parts}


def whole_graph(graph: str, sampling: dict):
    """The whole training graph as the one partition of a single worker (every node core,
    pools = the node types' id ranges): what ``kgops partition --parts 1`` would write."""
    from kg_ops.graph.kg import load_edges, load_schema
    from kg_ops.partition.io import Partition

    schema = load_schema(graph)
    n = schema.num_nodes
    names = [nt.name for nt in schema.node_types]
    types = sorted(range(len(names)), key=lambda i: schema.node_types[i].offset)
    node_type = np.empty(n, dtype=np.int64)
    for i in types:
        nt = schema.node_types[i]
        node_type[nt.offset:nt.offset + nt.count] = i
    return Partition(
        part_id=0, global_ids=np.arange(n, dtype=np.int64), num_core_nodes=n,
        node_type=node_type, core_edges=np.unique(load_edges(graph, "train"), axis=0),
        halo_edges=np.empty((0, 3), dtype=np.int64), num_relations=schema.num_relations,
        negative_pool={i: np.arange(nt.offset, nt.offset + nt.count)
                       for i, nt in enumerate(schema.node_types)},
        node_type_names=names,
        relation_head_type=np.array([names.index(x.head) for x in schema.relations]),
        relation_tail_type=np.array([names.index(x.tail) for x in schema.relations]),
        sampling=dict(sampling), num_global_nodes=n, uri=f"whole:{graph}")


def sampling_of(inputs: dict) -> dict:
    """The partitions' sampling settings (seed, fanouts, hops)."""
    from kg_ops.partition.io import part_dir
    from kg_ops.store import get_store, join

    uri = inputs["parts"][8]
    return get_store(uri).read_json(join(part_dir(uri, 0), "meta.json"))["sampling"]


def load_part(inputs: dict, p: int, i: int):
    from kg_ops.partition.io import load_partition

    if inputs["parts"][p] is None:
        return whole_graph(inputs["graph"], sampling_of(inputs))
    return load_partition(inputs["parts"][p], i)


def plan_of(inputs: dict, p: int) -> dict:
    """The partition stage's plan; for P=1 (no partition stage run) the P=8 plan's measured
    cost applied to the whole graph's size."""
    from kg_ops.graph.kg import load_edges, load_schema
    from kg_ops.partition.expand import estimate_worker_bytes
    from kg_ops.partition.io import load_partitions_manifest
    from kg_ops.train.plan import StepCost, predict

    if inputs["parts"][p] is not None:
        return load_partitions_manifest(inputs["parts"][p])["metrics"]["plan"]
    base = plan_of(inputs, 8)
    edges = len(np.unique(load_edges(inputs["graph"], "train"), axis=0))
    n = load_schema(inputs["graph"]).num_nodes
    plan = predict(StepCost.from_dict(base["cost"]), [edges],
                   [estimate_worker_bytes(n, edges)], base["global_batch"])
    return plan | {"recipe": base["recipe"], "from": "P=8 calibration, whole-graph sizes"}


class Worker:
    """One (simulated) worker: a partition, the default model, its optimiser and builder."""

    def __init__(self, part, recipe: dict, loss: str, negatives: int,
                 optimizer: dict | None = None):
        """``optimizer``: :class:`TrainingOptimizer` options (default Adam at 0.01); with
        ``1vsall`` the candidates are the partition's whole pool, as the training loop's."""
        import torch

        from kg_ops.models.link_predictor import LinkPredictor, ModelConfig
        from kg_ops.train.batches import BatchBuilder, candidates_per_type
        from kg_ops.train.negatives import TypedNegativeSampler
        from kg_ops.train.optim import TrainingOptimizer

        torch.manual_seed(0)
        self.part = part
        self.model = LinkPredictor(ModelConfig.from_dict(recipe["model"]))
        self.opt = TrainingOptimizer(self.model, **(optimizer or {"lr": 0.01}))
        self.csr = part.graph()
        sampler = TypedNegativeSampler(part.negative_pool, part.relation_head_type,
                                       part.relation_tail_type)
        self.builder = BatchBuilder(self.csr, sampler, recipe["fanouts"],
                                    int(part.sampling["seed"]), loss,
                                    candidates_per_type(loss, negatives, sampler))
        self.table = self.model.inputs.embedding.weight
        self.dense_bytes = sum(p.numel() * 4 for p in self.model.parameters()
                               if p is not self.table)

    def time_steps(self, batch: int, steps: int, warmup: int = 2, depth: int = 1,
                   count_rows: bool = True, precision: str = "fp32") -> dict:
        """Steps as the loop runs them (prefetched batches), median seconds and touched rows
        (``count_rows=False``: not counted, a step exactly as the loop's); ``precision``: as
        ``kgops train --precision`` (``auto``: bf16 on a CPU with bfloat16 units)."""
        from kg_ops.train.batches import batch_loss, prefetch

        rng = np.random.default_rng(0)
        edges = self.part.core_edges
        take = rng.permutation(len(edges))[:batch * (warmup + steps)]
        times, rows = [], []
        t = time.perf_counter()
        for i, b in enumerate(prefetch(self.builder.epoch(edges[take], warmup + steps, rng),
                                       depth)):
            self.opt.zero_grad()
            batch_loss(self.model, b, precision=precision).backward()
            if count_rows:
                rows.append(int(self.table.grad.coalesce().indices().shape[1]))
            self.opt.step()
            now = time.perf_counter()
            if i >= warmup:
                times.append(now - t)
            t = now
        return {"step_s": float(np.median(times)), "step_s_mean": float(np.mean(times)),
                "touched_rows": float(np.mean(rows[warmup:])) if count_rows else None,
                "local_batch": batch}


def sync_estimate(p: int, dense_bytes: int, rows: float, num_rows: int, dim: int,
                  gbit: float, latency_s: float) -> dict:
    """Seconds per step of the gradient exchange on an assumed network (see module doc)."""
    from kg_ops.train.exchange import choose, exchange_bytes

    bw = gbit * 1e9 / 8
    ring = 2 * (p - 1) * latency_s
    dense = 2 * (p - 1) / p * dense_bytes / bw + ring
    counts = [int(rows)] * p
    gather_b, table_b = exchange_bytes(counts, num_rows, dim)
    mode = choose(counts, num_rows, dim)
    sparse = (gather_b / bw + 3 * ring) if mode == "gather" else (table_b / bw + ring)
    return {"sync_s": dense + sparse, "dense_params_s": dense, "embedding_s": sparse,
            "embedding_exchange": mode,
            "if_always_dense_table_s": dense + table_b / bw + ring}


def section_profile(inputs: dict, args) -> None:
    from kg_ops.train.profile import profile_steps

    out = {}
    recipe = plan_of(inputs, 8)["recipe"]
    for p, part_id in ((1, 0), (8, 0)):
        part = load_part(inputs, p, part_id)
        for loss, k in args.loss_list:
            w = Worker(part, recipe, loss, k)
            for batch in args.batch_list:
                local = max(1, round(batch / p))
                r = profile_steps(w.model, w.opt, w.builder, part.core_edges, local,
                                  args.steps)
                r["edges_per_s"] = round(local / r["step"], 1)
                out[f"P={p} part {part_id} {loss}:{k} global batch {batch}"] = r
                log.info("profile P=%d %s:%d batch %d (local %d): %s", p, loss, k, batch,
                         local, {a: round(b, 4) for a, b in r.items()})
            del w
        del part
        gc.collect()
    RESULTS["profile"] = out
    write_results("bench_scaleout", RESULTS)


def section_simulate(inputs: dict, args) -> None:
    from kg_ops.partition.io import load_partition, load_partitions_manifest
    from kg_ops.train.plan import StepCost, predict

    full = load_part(inputs, 1, 0)
    recipe = plan_of(inputs, 8)["recipe"]
    steps_of = {b: math.ceil(len(full.core_edges) / b) for b in args.batch_list}
    t1 = {}
    for loss, k in args.loss_list:
        w = Worker(full, recipe, loss, k)
        for b in args.batch_list:
            t1[(loss, k, b)] = w.time_steps(b, args.steps)
            log.info("T1 %s:%d batch %d: %s", loss, k, b, t1[(loss, k, b)])
        num_rows, dim = w.table.shape
        dense_bytes = w.dense_bytes
        del w
    del full
    gc.collect()
    sim = {"T1": {f"{a}:{k} batch {b}": v for (a, k, b), v in t1.items()}}
    for p in [q for q in args.parts if q > 1]:
        uri = inputs["parts"][p]
        pm = load_partitions_manifest(uri)
        cores = [s["core_edges"] for s in pm["outputs"]["partitions"]]
        per_part = {key: [] for key in t1}
        for i in range(p):
            part = load_partition(uri, i)
            for loss, k in args.loss_list:
                w = Worker(part, recipe, loss, k)
                for b in args.batch_list:
                    local = max(1, round(cores[i] / steps_of[b]))
                    row = w.time_steps(local, args.steps) | {"part": i, "core_edges": cores[i]}
                    per_part[(loss, k, b)].append(row)
                    log.info("P=%d part %d %s:%d batch %d: %s", p, i, loss, k, b, row)
                del w
            del part
            gc.collect()
        plan = pm["metrics"]["plan"]
        cost = StepCost.from_dict(plan["cost"])
        out = {"edge_replication_factor": pm["metrics"]["edge_replication_factor"],
               "balance": pm["metrics"]["balance"]}
        for (loss, k, b), rows in per_part.items():
            slowest = max(x["step_s"] for x in rows)
            sync = sync_estimate(p, dense_bytes, max(x["touched_rows"] for x in rows),
                                 num_rows, dim, args.gbit, args.latency_us * 1e-6)
            s = steps_of[b]
            t1_epoch = s * t1[(loss, k, b)]["step_s"]
            tp = s * (slowest + sync["sync_s"])
            predicted = predict(cost, cores, [w["data_bytes"] for w in plan["workers"]], b)
            out[f"{loss}:{k} batch {b}"] = {
                "per_partition": rows, "steps_per_epoch": s,
                "t1_epoch_s": round(t1_epoch, 1), "tp_epoch_s": round(tp, 1),
                "tp_compute_only_epoch_s": round(s * slowest, 1),
                "sync_s_per_step": sync,
                "speedup": round(t1_epoch / tp, 2),
                "speedup_compute_only": round(t1_epoch / (s * slowest), 2),
                "edges_per_s_per_worker": round(max(cores) / (s * slowest), 1),
                "predicted_epoch_s (plan, compute only)": predicted["epoch_s"],
                "plan_recipe": plan["recipe"]["loss"], "published_speedup": PUBLISHED[p]}
            log.info("P=%d %s:%d batch %d: T1 %.0fs, Tp %.0fs (predicted %.0fs compute), "
                     "speed-up %.2fx, %.0f edges/s per worker", p, loss, k, b, t1_epoch, tp,
                     predicted["epoch_s"], t1_epoch / tp, max(cores) / (s * slowest))
        sim[f"P={p}"] = out
        RESULTS["simulate"] = sim
        write_results("bench_scaleout", RESULTS)


def start_child(spec: dict) -> subprocess.Popen:
    """``child_run(spec)`` started in a fresh process (the workers' allocator settings)."""
    from kg_ops.train.allocator import step_env

    return subprocess.Popen([sys.executable, __file__, "--child", json.dumps(spec)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=step_env(os.environ))


def finish_child(proc: subprocess.Popen) -> dict:
    """A started child's result (and its own peak memory); its stderr if it failed."""
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(err[-3000:])
    return json.loads(out.strip().splitlines()[-1])


def run_child(spec: dict) -> dict:
    """``child_run(spec)`` in a fresh process; its result and its own peak memory."""
    return finish_child(start_child(spec))


def _codex_m_step_child(spec: dict) -> dict:
    """The default recipe's steps on one partition at the global batch, as one worker runs
    them (1 thread, prefetched batches), timed after ``warmup`` steps."""
    from kg_ops.train.batches import resolve_precision
    from kg_ops.train.plan import peak_rss_bytes

    cfg, w = default_worker(spec["parts"], 0)
    step = w.time_steps(cfg.batch_size, spec["steps"], spec["warmup"], cfg.prefetch,
                        count_rows=False, precision=cfg.precision)
    return {k: step[k] for k in ("step_s", "step_s_mean")} | {
        "peak_rss_bytes": peak_rss_bytes(), "precision": resolve_precision(cfg.precision)}


def child_run(spec: dict) -> dict:
    """Load a partition and train ``steps`` steps (None: one full epoch) as the loop does."""
    import torch

    from kg_ops.partition.io import load_partition
    from kg_ops.train.batches import batch_loss, prefetch
    from kg_ops.train.plan import peak_rss_bytes

    torch.set_num_threads(1)
    if spec.get("kind") == "codex-m-step":
        return _codex_m_step_child(spec)
    t0 = time.perf_counter()
    if spec["parts"].startswith("whole:"):
        part = whole_graph(spec["parts"][len("whole:"):], spec["recipe"]["sampling"])
    else:
        part = load_partition(spec["parts"], spec["part"])
    w = Worker(part, spec["recipe"], spec["loss"], spec["negatives"])
    load_s = time.perf_counter() - t0
    edges = part.core_edges
    steps_epoch = int(spec["steps_per_epoch"])
    n = steps_epoch if spec.get("steps") is None else int(spec["steps"])
    rng = np.random.default_rng(0)
    order = rng.permutation(len(edges))
    take = order if n == steps_epoch else order[:math.ceil(len(edges) / steps_epoch) * n]
    t = time.perf_counter()
    last = t
    for i, b in enumerate(prefetch(w.builder.epoch(edges[take], n, rng), 1)):
        w.opt.zero_grad()
        if b is not None:
            batch_loss(w.model, b).backward()
        w.opt.step()
        if time.perf_counter() - last > 60:
            last = time.perf_counter()
            print(f"step {i + 1}/{n} {last - t:.0f}s", file=sys.stderr, flush=True)
    train_s = time.perf_counter() - t
    return {"part": spec["part"], "steps": n, "edges": int(len(take)), "train_s": train_s,
            "load_s": load_s, "edges_per_s": len(take) / train_s,
            "peak_rss_bytes": peak_rss_bytes()}


def section_epoch(inputs: dict, args, memory_only: bool) -> None:
    from kg_ops.train.plan import StepCost, predict

    out = RESULTS.setdefault("memory" if memory_only else "epoch", {})
    for p in ([1, *args.parts] if memory_only else (8,)):
        uri = inputs["parts"][p] or f"whole:{inputs['graph']}"
        plan = plan_of(inputs, p)
        cores = [w["core_edges"] for w in plan["workers"]]
        b = args.epoch_batch
        pred = predict(StepCost.from_dict(plan["cost"]), cores,
                       [w["data_bytes"] for w in plan["workers"]], b)
        part = pred["slowest_part"] if not memory_only else int(np.argmax(cores))
        recipe = plan["recipe"] | {"sampling": sampling_of(inputs)}
        spec = {"parts": uri, "part": part, "recipe": recipe, "loss": recipe["loss"],
                "negatives": recipe["negatives"], "steps_per_epoch": pred["steps_per_epoch"],
                "steps": args.memory_steps if memory_only else None}
        log.info("%s P=%d part %d at global batch %d: predicted %s", "memory" if memory_only
                 else "epoch", p, part, b, pred["workers"][part])
        got = run_child(spec)
        w = pred["workers"][part]
        row = {"global_batch": b, "predicted": w, "measured": got,
               "peak_measured_over_predicted": round(got["peak_rss_bytes"] / w["peak_bytes"],
                                                     3)}
        if not memory_only:
            row["epoch_measured_over_predicted"] = round(got["train_s"] / w["epoch_s"], 3)
        out[f"P={p}"] = row
        log.info("P=%d: %s", p, row)
        write_results("bench_scaleout", RESULTS)


def _index_add_basis_conv(conv, x_src, x_dst, edge_index, edge_type):
    """The per-basis ``index_add`` aggregation :class:`BasisRGCNConv` used before
    :mod:`kg_ops.models.aggregate` (the reference of the ``codex-m-step`` section)."""
    import torch

    src, dst = edge_index[0], edge_index[1]
    n_dst = x_dst.size(0)
    key = dst * conv.num_relations + edge_type
    _, inv, cnt = torch.unique(key, return_inverse=True, return_counts=True)
    coef = (conv.comp[edge_type] / cnt[inv].unsqueeze(1).to(x_src.dtype)).t().contiguous()
    xs = x_src.index_select(0, src)
    agg = torch.stack([torch.zeros(n_dst, conv.in_dim, dtype=x_src.dtype)
                       .index_add(0, dst, xs * coef[b].unsqueeze(1))
                       for b in range(conv.num_bases)], dim=1)
    out = agg.reshape(n_dst, -1) @ conv.weight.reshape(-1, conv.out_dim)
    return out + x_dst @ conv.root + conv.bias


def _product_conv(conv, x_src, x_dst, edge_index, edge_type):
    return conv((x_src, x_dst), edge_index, edge_type)


def default_worker(parts: str, part_id: int):
    """``(resolved TrainConfig, Worker)``: ``kgops train``'s default recipe on one partition."""
    from kg_ops.config import TrainConfig
    from kg_ops.partition.io import load_partition
    from kg_ops.train.cli import _model_config, _TrainInputs

    cfg = TrainConfig(partitions=parts, out="unused").resolved()
    part = load_partition(parts, part_id)
    recipe = {"model": _model_config(cfg, _TrainInputs.load(cfg)).to_dict(),
              "fanouts": [int(f) for f in part.sampling["fanouts"]]}
    return cfg, Worker(part, recipe, cfg.loss, cfg.negatives,
                       {"lr": cfg.lr, "optimizer": cfg.optimizer, "dense_lr": cfg.dense_lr})


def section_codex_m_step(args) -> None:
    import torch

    from benchmarks.bench_train import prepare
    from kg_ops.train.profile import profile_steps

    work = Path(args.work) / "codex"
    work.mkdir(parents=True, exist_ok=True)
    parts = prepare(work, "m", (2,))[2]
    cfg, w = default_worker(parts, 0)
    part, model, builder = w.part, w.model, w.builder
    local = cfg.batch_size // 2
    steps = {}
    for precision in ("fp32", "bf16"):      # side by side: kgops train --precision
        step = profile_steps(model, w.opt, builder, part.core_edges, local, args.steps,
                             precision=precision)
        step["edges_per_s"] = round(local / step["step"], 1)
        steps[precision] = {k: (round(v, 4) if isinstance(v, float) else v)
                            for k, v in step.items()}
    rng = np.random.default_rng(0)
    batch = builder.build(part.core_edges[rng.integers(0, len(part.core_edges), local)], rng)
    layers = {}
    for i, (edge_index, edge_type, n_src, n_dst) in enumerate(batch.layers):
        conv = model.encoder.convs[i]
        x = torch.randn(n_src, conv.in_dim, requires_grad=True)
        row = {"messages": int(edge_index.shape[1]), "sources": n_src, "targets": n_dst}
        for name, fn in (("index_add", _index_add_basis_conv), ("spmm", _product_conv)):
            fwd, bwd = [], []
            for _ in range(args.steps):
                t0 = time.perf_counter()
                out = fn(conv, x, x[:n_dst], edge_index, edge_type)
                t1 = time.perf_counter()
                out.square().sum().backward()
                fwd.append(t1 - t0)
                bwd.append(time.perf_counter() - t1)
            row[name] = {"forward_s": round(float(np.median(fwd)), 4),
                         "backward_s": round(float(np.median(bwd)), 4)}
        row["speedup"] = round(sum(row["index_add"].values()) / sum(row["spmm"].values()), 2)
        layers[f"layer {i}"] = row
    RESULTS["codex-m step (default recipe, P=2 part 0, 1 thread)"] = {
        "recipe": {k: getattr(cfg, k) for k in ("model", "loss", "batch_size", "embedding_dim",
                                                "hidden_dim", "out_dim", "optimizer")},
        "step": steps, "layers": layers}
    log.info("codex-m step: %s", RESULTS["codex-m step (default recipe, P=2 part 0, 1 thread)"])
    write_results("bench_scaleout", RESULTS)


def _codex_m(args) -> tuple[Path, dict]:
    """A local Ray instance, and CoDEx-M imported and cut into 1 and 2 partitions under
    ``--work`` (reused when there)."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from benchmarks.bench_train import prepare

    start_local_ray()
    work = Path(args.work) / "codex"
    work.mkdir(parents=True, exist_ok=True)
    return work, prepare(work, "m", (1, 2))


def section_codex_m(args) -> None:
    from benchmarks.bench_train import evaluate, run_train

    work, m = _codex_m(args)
    kw = {"model": "rgcn", "epochs": args.m_epochs, "patience": 0, **json.loads(args.m_recipe)}
    runs, key = {}, args.m_key
    for name in args.m_runs.split(","):
        parts, workers, threads, extra = M_RUNS[name]
        r = run_train(f"m-{name}", m[parts], work, workers=workers, threads=threads,
                      **kw | extra)
        r["test"] = evaluate(r["uri"], m["graph"], str(work / f"m-{name}-eval"))
        runs[name] = r
        log.info("codex-m %s: %s", name, r)
        RESULTS[key] = {"runs": runs, "recipe": kw}
        write_results("bench_scaleout", RESULTS)
    ratios = {"speedup_2w_vs_1w_1thread": ("1w-1t", "2w-1t"),
              "speedup_2w_vs_1w_2threads": ("1w-2t", "2w-1t")}
    for name, (one, two) in ratios.items():
        if one in runs and two in runs:
            RESULTS[key][name] = round(runs[one]["epoch_s"] / runs[two]["epoch_s"], 2)
    if "1w-1t" in runs and "2w-1t" in runs:
        RESULTS[key]["abs_test_mrr_diff_2w_1w"] = round(abs(runs["2w-1t"]["test"]["mrr"]
                                                            - runs["1w-1t"]["test"]["mrr"]), 4)
    write_results("bench_scaleout", RESULTS)


# name: (parts, workers, threads, options besides the recipe). 2w-1t-dense: the input table's
# whole gradient all-reduced (--exchange dense) instead of the default's rows updated by their
# owners. Names of earlier results: 2026-12-05 07:03-08:39 as today; 08:42-10:50, when owner
# rows were opt-in, "2w-1t" was the dense exchange and "2w-1t-owner" owner rows.
M_RUNS = {"1w-1t": (1, 1, 1, {}), "1w-2t": (1, 1, 2, {}), "2w-1t": (2, 2, 1, {}),
          "2w-1t-dense": (2, 2, 1, {"exchange": "dense"})}


def section_codex_m_spans(args) -> None:
    from benchmarks.bench_train import run_train
    from kg_ops.store import get_store, join

    work, m = _codex_m(args)
    # Two epochs of --span-steps steps: the first warms the workers up (allocator, caches:
    # its first steps are up to twice as slow), the second is timed. Validation is the cheap
    # sampled one: it is outside the timed steps anyway.
    kw = {"model": "rgcn", "epochs": 2, "patience": 0, "limit_steps": args.span_steps,
          "valid_ranking": "sampled", "valid_triples": 100, **json.loads(args.m_recipe)}
    names, key = args.m_runs.split(","), f"{args.m_key}, alternating spans"
    spans: list[dict] = []
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            parts, workers, threads, extra = M_RUNS[name]
            out = f"span-{name}-{r}"
            shutil.rmtree(work / out, ignore_errors=True)      # a rerun trains again
            started = time.strftime("%H:%M:%S")
            res = run_train(out, m[parts], work, workers=workers, threads=threads,
                            **kw | extra)
            timed = get_store(res["uri"]).read_json(join(res["uri"], "history.json"))[-1]
            span = {"round": r, "run": name, "started": started,
                    "step_s": round(timed["epoch_s"] / timed["steps"], 3),
                    "edges_per_s": round(timed["edges_per_s"], 1),
                    "split": {k: round(v, 4) for k, v in timed["step_s"].items()}}
            spans.append(span)
            log.info("codex-m span %s", span)
            RESULTS[key] = {"recipe": kw, "spans": spans} | _span_ratios(spans, names)
            write_results("bench_scaleout", RESULTS)
    log.info("codex-m spans: %s", {k: v for k, v in RESULTS[key].items() if k != "spans"})


def section_codex_m_contention(args) -> None:
    from benchmarks.bench_train import prepare

    work = Path(args.work) / "codex"
    work.mkdir(parents=True, exist_ok=True)
    parts = prepare(work, "m", (1,))[1]
    key = f"{args.m_key}, contention ceiling"
    spec = {"kind": "codex-m-step", "parts": parts, "steps": args.span_steps, "warmup": 3}
    rounds: list[dict] = []
    for r in range(args.rounds):
        row: dict = {"round": r}
        for kind in ("alone", "pair") if r % 2 == 0 else ("pair", "alone"):
            started = time.strftime("%H:%M:%S")
            procs = [start_child(spec) for _ in range(1 if kind == "alone" else 2)]
            got = [finish_child(p) for p in procs]
            row[kind] = [{k: (round(v, 3) if isinstance(v, float) else v)
                          for k, v in g.items()} | {"started": started} for g in got]
        alone = row["alone"][0]["step_s"]
        pair = float(np.mean([g["step_s"] for g in row["pair"]]))
        row["slowdown_in_pair"] = round(pair / alone, 3)
        row["ceiling_2w_vs_1w_1t"] = round(2 * alone / pair, 3)
        rounds.append(row)
        log.info("codex-m contention round %s", row)
        RESULTS[key] = {
            "what": "the default recipe's 1-worker step (whole graph, 1 thread, no Ray, "
                    "--precision auto as kgops train) in "
                    "one process alone and in two identical processes at once: 2 * alone / "
                    "pair is the most a second 1-thread worker can give on this machine",
            "steps_timed": args.span_steps, "rounds": rounds,
            "ceiling_2w_vs_1w_1t": {
                "median": round(float(np.median([x["ceiling_2w_vs_1w_1t"] for x in rounds])),
                                3),
                "rounds": [x["ceiling_2w_vs_1w_1t"] for x in rounds]}}
        write_results("bench_scaleout", RESULTS)
    log.info("codex-m contention: %s", RESULTS[key]["ceiling_2w_vs_1w_1t"])


def _span_ratios(spans: list[dict], names: list[str]) -> dict:
    """Per round, each 1-worker configuration's seconds per step over each 2-worker one's
    (its speed-up), and 2w-1t-dense's over 2w-1t's: the median over the rounds, and every
    round's. Keys: ``speedup_2w_vs_<one>`` for 2w-1t, ``speedup_<two>_vs_<one>`` else."""
    pairs = [(two, one) for two in names if two.startswith("2w") for one in names
             if one.startswith("1w")]
    if "2w-1t" in names and "2w-1t-dense" in names:
        pairs.append(("2w-1t", "2w-1t-dense"))
    out = {}
    for two, one in pairs:
        per_round = []
        for r in sorted({s["round"] for s in spans}):
            t = {s["run"]: s["step_s"] for s in spans if s["round"] == r}
            if one in t and two in t:
                per_round.append(round(t[one] / t[two], 3))
        if per_round:
            label = "2w" if two == "2w-1t" else two
            out[f"speedup_{label}_vs_{one}"] = {"median": round(float(np.median(per_round)), 3),
                                                "rounds": per_round}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sections", default="profile,simulate,memory,epoch,codex-m")
    ap.add_argument("--work", default="/tmp/kgops-scale")
    ap.add_argument("--graph", default=None)
    ap.add_argument("--parts", default="4,8", help="partition counts to build and measure")
    ap.add_argument("--steps", type=int, default=9, help="timed steps per measurement")
    ap.add_argument("--batches", default="256", help="global batches to measure")
    ap.add_argument("--losses", default="bce:1,softmax:32",
                    help="loss:negatives pairs (softmax: candidates per node type)")
    ap.add_argument("--epoch-batch", type=int, default=256,
                    help="global batch of the full-epoch and memory runs")
    ap.add_argument("--memory-steps", type=int, default=200)
    ap.add_argument("--gbit", type=float, default=10.0, help="assumed network, Gbit/s")
    ap.add_argument("--latency-us", type=float, default=50.0)
    ap.add_argument("--m-epochs", type=int, default=3)
    ap.add_argument("--m-recipe", default="{}",
                    help="kgops train options of the CoDEx-M runs besides its defaults (JSON; "
                         "default: none, i.e. the default recipe)")
    ap.add_argument("--m-runs", default=",".join(M_RUNS),
                    help="which CoDEx-M runs, in order (a 1-thread worker's epoch on a slow "
                         "CPU can take most of the hour)")
    ap.add_argument("--m-key", default="codex-m", help="results key of the CoDEx-M runs")
    ap.add_argument("--rounds", type=int, default=4,
                    help="codex-m-spans and codex-m-contention: rounds")
    ap.add_argument("--span-steps", type=int, default=10,
                    help="codex-m-spans: steps per epoch of a span (2 epochs: warm-up, "
                         "timed); codex-m-contention: timed steps (after 3 warm-up steps)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    unknown = set(args.m_runs.split(",")) - set(M_RUNS)
    if unknown:
        ap.error(f"--m-runs: unknown {sorted(unknown)}; choose from {', '.join(M_RUNS)}")
    if args.child:
        print(json.dumps(child_run(json.loads(args.child))))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    old = read_results("bench_scaleout")["results"]
    if old:
        if "full_graph" in old:     # the session-2 layout: results at the top level
            old = {"session 2 (before issue 13; bce 1 negative, batch 256)": old}
        RESULTS.update(old)
    RESULTS.update({"published_speedup": PUBLISHED, "network_assumption":
                    f"{args.gbit} Gbit/s, {args.latency_us} us per ring step"})
    import torch

    torch.set_num_threads(1)
    args.loss_list = [(a, int(b)) for a, b in (x.split(":") for x in args.losses.split(","))]
    args.batch_list = [int(x) for x in args.batches.split(",")]
    args.parts = [int(x) for x in args.parts.split(",")]
    sections = args.sections.split(",")
    synth = {"profile", "simulate", "memory", "epoch"} & set(sections)
    inputs = ensure_inputs(args) if synth else None
    if "profile" in sections:
        section_profile(inputs, args)
    if "simulate" in sections:
        section_simulate(inputs, args)
    if "memory" in sections:
        section_epoch(inputs, args, memory_only=True)
    if "epoch" in sections:
        section_epoch(inputs, args, memory_only=False)
    if "codex-m-step" in sections:
        section_codex_m_step(args)
    if "codex-m" in sections:
        section_codex_m(args)
    if "codex-m-spans" in sections:
        section_codex_m_spans(args)
    if "codex-m-contention" in sections:
        section_codex_m_contention(args)
    RESULTS["peak_rss_mib"] = peak_rss_mib()
    write_results("bench_scaleout", RESULTS)


if __name__ == "__main__":
    main()

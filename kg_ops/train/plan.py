"""The cost planner: each worker's epoch time and peak memory, predicted before a long run.

A training step's cost grows with its local batch (the computation graphs of the batch's
entities) on top of a fixed part (Python dispatch, the dense optimiser, the exchange's
bookkeeping). :func:`calibrate` measures real steps of the training loop (the same batch
builder, prefetching, loss, backward and optimiser) on one partition at two local batch sizes
and fits ``step_s = fixed_s + per_edge_s * local_batch``; it also samples the process's
resident memory while the steps run, which gives the memory a step needs on top of the data
and the model. :func:`predict` then gives, for every worker of a P-way run, its local batch,
steps per epoch, epoch time and peak memory:

* ``epoch_s = steps * (fixed_s + per_edge_s * local_batch)``, ``steps = ceil(E / batch)``;
  the run's epoch is the slowest worker's (gradient exchange not included: it depends on the
  network; ``bench_scaleout`` estimates it);
* ``peak = runtime + model state + partition data + step_bytes_per_edge * local_batch``: model
  state is the parameters plus Adam's two moments (SparseAdam keeps both for the whole
  embedding table) plus dense gradients, partition data is
  :func:`kg_ops.partition.expand.estimate_worker_bytes`, and the runtime (interpreter, torch,
  numpy) and the per-edge step memory are measured.

With ``1vsall`` on P workers the calibration times the step a worker runs there: its 1/P of
the entities encoded layer by layer (:mod:`kg_ops.train.layerwise`), its queries ranked
against all of them; the per-layer all-gathers are not included either.

The partition stage writes the plan into its manifest (``metrics.plan``) for the default
training recipe, and ``kgops train`` prints it, rescaled to its own batch size, before it
starts. When the recipe's tables alone would not fit this machine's memory
(:mod:`kg_ops.train.memory`; the default recipe on a graph of millions of entities), nothing
is calibrated: the plan says why (``fits: false``) and what to change.
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import asdict, dataclass

import numpy as np

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """This process's resident memory now (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * _PAGE


def peak_rss_bytes() -> int:
    """This process's peak resident memory (``VmHWM``). Not ``getrusage``'s ``ru_maxrss``:
    a child started by fork and exec inherits its parent's value."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


class RSSPeak:
    """The highest resident memory seen while the block runs (sampled every ``every_s``)."""

    def __init__(self, every_s: float = 0.002):
        self.every_s, self.peak = every_s, 0
        self._stop = threading.Event()

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.every_s)

    def __enter__(self) -> RSSPeak:
        self.start = self.peak = rss_bytes()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


@dataclass
class StepCost:
    """Measured cost of a training step on this machine (one worker, ``threads`` threads)."""

    fixed_s: float
    per_edge_s: float
    step_bytes_per_edge: float
    peak_bytes: int            # the calibration process's peak: one worker's whole footprint
    data_bytes: int            # estimated data bytes of the partition it ran on
    local_batch: int           # the larger local batch it ran
    measured_on: dict

    def step_s(self, local_batch: float) -> float:
        return self.fixed_s + self.per_edge_s * local_batch

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> StepCost:
        return cls(**d)


def _time_steps(model, opt, builder, edges: np.ndarray, batch: int, steps: int,
                features, depth: int, precision: str, shards=None) -> tuple[float, int]:
    """Median seconds per step of ``steps`` real steps (after one warm-up) and the peak
    resident memory growth while they ran."""
    from kg_ops.train.batches import batch_loss, prefetch

    rng = np.random.default_rng(0)
    take = min(len(edges), batch * (steps + 1))
    times = []
    with RSSPeak() as mem:
        t = time.perf_counter()
        for b in prefetch(builder.epoch(edges[rng.permutation(len(edges))[:take]],
                                        steps + 1, rng), depth):
            opt.zero_grad()
            if b is not None:
                batch_loss(model, b, features, shards, precision=precision).backward()
            opt.step()
            now = time.perf_counter()
            times.append(now - t)
            t = now
    return float(np.median(times[1:])), max(0, mem.peak - mem.start)


def calibrate(part, model_config: dict, *, loss: str, negatives: int, fanouts: list[int],
              sample_seed: int, batches: tuple[int, int], steps: int = 6, lr: float = 0.01,
              features=None, prefetch_depth: int = 1, precision: str = "fp32",
              workers: int = 1) -> StepCost:
    """Fit the step cost from real steps on partition ``part`` at two local batch sizes.
    Run it in a fresh process (:func:`calibrate_in_child`): its peak memory is the answer.
    ``workers``: with ``1vsall`` on several, the step a worker runs there
    (:func:`_worker_share`), collectives aside."""
    import torch

    from kg_ops.models.link_predictor import LinkPredictor, ModelConfig
    from kg_ops.partition.expand import estimate_worker_bytes
    from kg_ops.train.batches import BatchBuilder, candidates_per_type, resolve_precision
    from kg_ops.train.memory import footprint
    from kg_ops.train.negatives import TypedNegativeSampler
    from kg_ops.train.optim import TrainingOptimizer

    torch.manual_seed(0)
    model = LinkPredictor(ModelConfig.from_dict(model_config))
    opt = TrainingOptimizer(model, lr=lr)
    csr = part.graph()
    sampler = TypedNegativeSampler(part.negative_pool, part.relation_head_type,
                                   part.relation_tail_type)
    # as the training loop does: with 1vsall, the whole pool (every step encodes it)
    negatives = candidates_per_type(loss, negatives, sampler)
    shards = _worker_share(model, csr, sampler, fanouts, sample_seed, workers) \
        if loss == "1vsall" and workers > 1 else None
    builder = BatchBuilder(csr, sampler, fanouts, sample_seed, loss, negatives,
                           layerwise=shards)
    small, large = sorted(max(1, int(b)) for b in batches)
    t_small, _ = _time_steps(model, opt, builder, part.core_edges, small, steps, features,
                             prefetch_depth, precision, shards)
    t_large, mem = _time_steps(model, opt, builder, part.core_edges, large, steps, features,
                               prefetch_depth, precision, shards)
    per_edge = max(0.0, (t_large - t_small) / (large - small)) if large > small \
        else t_large / large
    return StepCost(
        fixed_s=max(0.0, t_large - per_edge * large), per_edge_s=per_edge,
        step_bytes_per_edge=mem / large,
        peak_bytes=peak_rss_bytes(),
        data_bytes=estimate_worker_bytes(part.num_nodes, len(part.edges)), local_batch=large,
        measured_on={"part": int(part.part_id), "batches": [small, large],
                     "step_s": [round(t_small, 5), round(t_large, 5)], "steps": steps,
                     "loss": loss, "negatives": negatives, "fanouts": list(fanouts),
                     "precision": resolve_precision(precision),
                     "threads": torch.get_num_threads(), "workers": int(workers),
                     "owned": None if shards is None else shards.owned,
                     "model_state_bytes": sum(footprint(model_config, "bce", opt.name,
                                                        0).values())})


def _worker_share(model, csr, sampler, fanouts: list[int], seed: int, workers: int):
    """One worker's step of a ``workers``-way sharded 1vsall run, on one process: a random
    1/P of the graph's entities from this partition's pool encoded layer by layer and every
    query ranked against a table of all the graph's entities (the other workers' rows left
    zero): the arithmetic of :mod:`kg_ops.train.layerwise` without its collectives."""
    import torch

    from kg_ops.train.candidates import CandidateShards
    from kg_ops.train.layerwise import LayerwiseEncoding

    n = model.cfg.num_nodes
    ids, types = sampler.pool()
    pick = np.sort(np.random.default_rng(0).choice(len(ids), min(len(ids),
                                                                 math.ceil(n / workers)),
                                                   replace=False))
    owned, owned_types = ids[pick], types[pick]
    mine = csr.to_global(owned)
    rest = np.setdiff1d(np.arange(n, dtype=np.int64), mine)
    # The other workers' entities: node types drawn as the pool's (the type masks, if any,
    # cost what they will).
    rest_types = np.random.default_rng(1).choice(types, len(rest)) if len(types) else \
        np.zeros(len(rest), dtype=np.int64)
    layout = (np.concatenate([mine, rest]), np.concatenate([owned_types, rest_types]))
    shards = CandidateShards(1, 0, n, torch.from_numpy(sampler.head_type),
                             torch.from_numpy(sampler.tail_type))
    return LayerwiseEncoding(csr, owned, owned_types, fanouts, seed, model.cfg.num_layers,
                             shards, n, layout=layout)


def calibrate_in_child(part_uri: str, **kwargs) -> StepCost:
    """:func:`calibrate` on the partition directory ``part_uri`` in a fresh Python process
    (one thread, the workers' allocator settings: :mod:`kg_ops.train.allocator`), as a
    training worker runs."""
    import json
    import os
    import subprocess
    import sys

    from kg_ops.train.allocator import step_env

    spec = json.dumps({"part_uri": part_uri, **kwargs})
    proc = subprocess.run([sys.executable, "-m", "kg_ops.train.plan", spec],
                          capture_output=True, text=True, env=step_env(os.environ))
    if proc.returncode != 0:
        raise RuntimeError(f"step-cost calibration on {part_uri} failed:\n"
                           f"{proc.stderr[-3000:]}")
    return StepCost.from_dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def predict(cost: StepCost, core_edges: list[int], data_bytes: list[int],
            global_batch: int) -> dict:
    """Per-worker plan of a run over partitions with ``core_edges`` each (see module doc)."""
    total = int(sum(core_edges))
    steps = max(1, math.ceil(total / global_batch))
    workers = []
    for i, (edges, data) in enumerate(zip(core_edges, data_bytes, strict=True)):
        local = edges / steps
        peak = (cost.peak_bytes + (data - cost.data_bytes)
                + cost.step_bytes_per_edge * (local - cost.local_batch))
        workers.append({"part": i, "core_edges": int(edges), "data_bytes": int(data),
                        "local_batch": round(local, 1),
                        # Significant digits, not decimals: a small partition's epoch of
                        # 0.04 s must not read as 0 (nor divide the throughput by zero).
                        "epoch_s": float(f"{steps * cost.step_s(local):.4g}"),
                        "peak_bytes": int(max(peak, 0))})
    slowest = max(workers, key=lambda w: w["epoch_s"])
    return {"workers": workers, "steps_per_epoch": steps, "global_batch": int(global_batch),
            "epoch_s": slowest["epoch_s"], "slowest_part": slowest["part"],
            "edges_per_s_per_worker": round(total / len(workers) / max(slowest["epoch_s"],
                                                                        1e-9), 1),
            "peak_bytes": max(w["peak_bytes"] for w in workers), "cost": cost.to_dict()}


def plan_partitions(stats: list[dict], schema, fanouts: list[int], sample_seed: int,
                    steps: int = 6, available: int | None = None) -> dict:
    """The plan the partition stage records: :func:`calibrate_in_child` on the partition with
    the most core edges, with ``kgops train``'s default recipe (:class:`TrainConfig`'s
    defaults), then :func:`predict`; ``{"fits": False, "reason": ...}`` without calibrating
    when the recipe's tables alone exceed ``available`` bytes (default: what this machine
    has now)."""
    from kg_ops.config import TrainConfig

    d = TrainConfig(partitions="-", out="-").resolved()
    core = [int(s["core_edges"]) for s in stats]
    largest = int(np.argmax(core))
    local = max(1, math.ceil(core[largest] / max(1, math.ceil(sum(core) / d.batch_size))))
    model = {"model": d.model, "num_nodes": schema.num_nodes,
             "num_relations": schema.num_relations, "embedding_dim": d.embedding_dim,
             "hidden_dim": d.hidden_dim, "out_dim": d.out_dim, "num_layers": len(fanouts),
             "num_bases": d.num_bases, "num_blocks": d.num_blocks, "dropout": d.dropout,
             "decoder": d.decoder, "residual": d.residual, "regularization": d.regularization}
    recipe = {"model": model, "loss": d.loss, "negatives": d.negatives,
              "batch_size": d.batch_size, "fanouts": list(fanouts)}
    skipped = _too_large(model, d.loss, d.optimizer, local, available)
    if skipped:
        return {"fits": False, "reason": skipped, "recipe": recipe}
    cost = calibrate_in_child(stats[largest]["uri"], model_config=model, loss=d.loss,
                              negatives=d.negatives, fanouts=list(fanouts),
                              sample_seed=sample_seed, batches=(max(1, local // 2), local),
                              steps=steps, lr=d.lr, precision=d.precision,
                              workers=len(stats))
    plan = predict(cost, core, [int(s["est_worker_memory_bytes"]) for s in stats],
                   d.batch_size)
    plan["recipe"] = recipe
    return plan


def _too_large(model: dict, loss: str, optimizer: str, local: int,
               available: int | None) -> str | None:
    """Why the recipe cannot be calibrated here (its tables alone exceed this machine's
    memory: :mod:`kg_ops.train.memory`), or ``None``."""
    from kg_ops.train.memory import RecipeTooLarge, available_bytes, check_fits, footprint

    try:
        check_fits(footprint(model, loss, optimizer, local),
                   available_bytes() if available is None else available,
                   where="the machine of the partition stage")
    except RecipeTooLarge as exc:
        return str(exc)
    return None


def for_run(plan: dict, global_batch: int, loss: str, model: str,
            limit_steps: int = 0) -> str:
    """The partition stage's plan rescaled to a run's global batch, as a log line that says
    when the run's recipe differs from the measured one, and what an epoch cut short by
    ``--limit-steps`` should take."""
    if not plan.get("workers"):
        return describe(plan)
    p = _rescaled(plan, global_batch)
    line = describe(p)
    if 0 < limit_steps < p["steps_per_epoch"]:
        line += (f"; this run trains the first {limit_steps} of them per epoch "
                 f"(--limit-steps): ~{p['epoch_s'] * limit_steps / p['steps_per_epoch']:.0f} s")
    if not _same_recipe(plan, loss, model):
        r = plan.get("recipe", {})
        line += (f"; measured with {r.get('model', {}).get('model')}/{r.get('loss')}, this "
                 f"run is {model}/{loss}: a rough guide only")
    return line


def _rescaled(plan: dict, global_batch: int) -> dict:
    """The measured plan predicted again at another global batch."""
    w = plan["workers"]
    return predict(StepCost.from_dict(plan["cost"]), [x["core_edges"] for x in w],
                   [x["data_bytes"] for x in w], global_batch)


def _same_recipe(plan: dict, loss: str, model: str) -> bool:
    r = plan.get("recipe", {})
    return (r.get("loss"), r.get("model", {}).get("model")) == (loss, model)


def against_run(plan: dict | None, global_batch: int, loss: str, model: str,
                metrics: dict, threads: int = 1) -> dict | None:
    """The plan rescaled to a run's global batch beside what the run measured (``metrics``:
    the training manifest's): epoch seconds, and the step's compute (what the plan times:
    it leaves the collectives out) against the planned step; ``threads``: the run's torch
    threads per worker (the plan's are recorded beside them). An epoch cut short by
    ``--limit-steps`` is checked against the plan's time for the steps it ran. None without
    a measured plan or a trained epoch."""
    if not plan or not plan.get("workers") or not metrics.get("epoch_s"):
        return None
    p = _rescaled(plan, global_batch)
    step_s = p["epoch_s"] / p["steps_per_epoch"]
    steps = min(metrics.get("steps") or p["steps_per_epoch"], p["steps_per_epoch"])
    predicted = float(f"{step_s * steps:.4g}")
    out = {"same_recipe": _same_recipe(plan, loss, model), "threads": int(threads),
           "plan_threads": int(plan["cost"].get("measured_on", {}).get("threads", 1)),
           "predicted_epoch_s": predicted, "measured_epoch_s": round(metrics["epoch_s"], 1),
           "measured_over_predicted": round(metrics["epoch_s"] / predicted, 3),
           "predicted_step_s": round(step_s, 4)}
    if steps < p["steps_per_epoch"]:
        out["steps"] = int(steps)
    step = metrics.get("step_s")
    if step:
        out["measured_compute_step_s"] = round(step["slowest_compute"], 4)
        out["measured_collectives_step_s"] = round(step["collectives"] - step["imbalance"], 4)
    return out


def describe_check(check: dict) -> str:
    """:func:`against_run` as one log line."""
    line = (f"epoch {check['measured_epoch_s']:.0f} s against the plan's "
            f"{check['predicted_epoch_s']:.0f} s (x{check['measured_over_predicted']:.2f})")
    if "steps" in check:
        line += f" for the {check['steps']} steps it ran (--limit-steps)"
    if "measured_compute_step_s" in check:
        line += (f"; per step: compute of the slowest worker "
                 f"{check['measured_compute_step_s']:.3g} s against the planned "
                 f"{check['predicted_step_s']:.3g} s, collectives "
                 f"{check['measured_collectives_step_s']:.3g} s (not planned)")
    if not check["same_recipe"]:
        line += "; the plan measured another recipe"
    if check["threads"] != check["plan_threads"]:
        line += (f"; the plan measured {check['plan_threads']} thread(s) per worker, this run "
                 f"has {check['threads']}")
    return line


def describe(plan: dict) -> str:
    """One line for the log before a run starts."""
    if plan.get("fits") is False:
        return f"plan: not measured, {plan['reason']}"
    return (f"plan: {len(plan['workers'])} worker(s), {plan['steps_per_epoch']} steps/epoch "
            f"at global batch {plan['global_batch']}: epoch ~{plan['epoch_s']:.0f} s "
            f"(slowest partition {plan['slowest_part']}), ~"
            f"{plan['edges_per_s_per_worker']:.0f} edges/s per worker, peak memory ~"
            f"{plan['peak_bytes'] / 2**20:.0f} MiB per worker (measured "
            f"{plan['cost']['per_edge_s'] * 1e3:.3f} ms/edge + "
            f"{plan['cost']['fixed_s'] * 1e3:.1f} ms/step on this machine; gradient exchange "
            "not included)")


def main(argv: list[str] | None = None) -> None:
    import json
    import sys

    import torch

    from kg_ops.partition.io import read_partition

    spec = json.loads((argv or sys.argv[1:])[0])
    torch.set_num_threads(int(spec.pop("threads", 1)))
    part = read_partition(spec.pop("part_uri"))
    print(json.dumps(calibrate(part, **spec).to_dict()))


if __name__ == "__main__":
    main()

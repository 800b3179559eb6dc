"""The Ray Train worker loop: one worker per partition, data-parallel, same code for 1 worker.

Per epoch every worker makes one pass over its partition's core (owned) edges in
``steps = ceil(all core edges / global batch)`` mini-batches, so a global batch of ~256 edges is
split across the workers in proportion to their partitions and all workers take the same
number of optimiser steps. Per step: type-constrained negatives from the partition's pool, the
sampled K-hop computation graph of the batch's entities inside the partition (the shared
globally deterministic sampler, with the partition's sampling seed: the same sample the full
graph would give), forward, the loss (``bce``, or ``softmax`` against candidates shared by the
batch), backward, then the gradients are averaged across workers (dense ones with one
all-reduce, embedding rows by gathering the rows each worker touched) and every worker takes
the same optimiser step (identical parameters everywhere).

After each epoch: sampled validation MRR (:mod:`kg_ops.train.validation`), one report per
epoch through ``ray.train.report`` and a checkpoint in the artifact store written by rank 0;
Ray gets a pointer to it, so when a worker dies Ray Train's failure handling restarts the group
and the loop continues from the last checkpoint. Randomness is seeded per (seed, epoch, rank),
so a resumed run repeats exactly what an uninterrupted one would have done.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from typing import Any

import numpy as np

log = logging.getLogger("kg_ops.train")

CRASH_ENV = "KGOPS_TRAIN_CRASH_ONCE"   # "<marker file>:<epoch>": die once after that epoch


class _Comm:
    """Collectives over torch.distributed (gloo), no-ops for a single worker."""

    def __init__(self, world: int):
        self.world = world

    def _dist(self):
        import torch.distributed as dist

        return dist

    def all_reduce(self, values: list[float], op: str = "sum") -> list[float]:
        import torch

        if self.world == 1:
            return list(values)
        dist = self._dist()
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return t.tolist()

    def all_gather_mask(self, mask: np.ndarray) -> np.ndarray:
        import torch

        if self.world == 1:
            return mask[None, :]
        out = [torch.zeros(len(mask), dtype=torch.uint8) for _ in range(self.world)]
        self._dist().all_gather(out, torch.from_numpy(mask.astype(np.uint8)))
        return np.stack([o.numpy().astype(bool) for o in out])

    def average_gradients(self, model) -> None:
        """Average every gradient across workers: dense ones with one flat all-reduce, sparse
        ones (embedding rows) by gathering each worker's touched rows, so what travels is what
        the batches touched, not the whole table."""
        import torch

        from kg_ops.train.optim import sparse_parameters

        sparse = {id(p) for p in sparse_parameters(model)}
        params = [p for p in model.parameters() if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = (torch.sparse_coo_tensor(torch.empty(1, 0, dtype=torch.long),
                                                  torch.empty(0, *p.shape[1:]), p.shape)
                          if id(p) in sparse else torch.zeros_like(p))
        if self.world == 1:
            return
        dense = [p for p in params if id(p) not in sparse]
        flat = torch.cat([p.grad.reshape(-1) for p in dense])
        self._dist().all_reduce(flat)
        flat /= self.world
        offset = 0
        for p in dense:
            n = p.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p))
            offset += n
        for p in params:
            if id(p) in sparse:
                p.grad = self._sparse_mean(p.grad)

    def _sparse_mean(self, grad):
        """Mean over workers of a sparse row gradient: all-gather (rows, values), padded to
        the largest worker's row count, then sum duplicates."""
        import torch

        dist = self._dist()
        g = grad.coalesce()
        rows, vals = g.indices()[0], g.values()
        counts = [torch.zeros(1, dtype=torch.long) for _ in range(self.world)]
        dist.all_gather(counts, torch.tensor([len(rows)]))
        width = int(max(int(c) for c in counts))
        pad_rows = torch.zeros(width, dtype=torch.long)
        pad_vals = torch.zeros(width, *vals.shape[1:], dtype=vals.dtype)
        pad_rows[:len(rows)], pad_vals[:len(rows)] = rows, vals
        all_rows = [torch.empty_like(pad_rows) for _ in range(self.world)]
        all_vals = [torch.empty_like(pad_vals) for _ in range(self.world)]
        dist.all_gather(all_rows, pad_rows)
        dist.all_gather(all_vals, pad_vals)
        n = [int(c) for c in counts]
        rows = torch.cat([r[:k] for r, k in zip(all_rows, n, strict=True)])
        vals = torch.cat([v[:k] for v, k in zip(all_vals, n, strict=True)]) / self.world
        return torch.sparse_coo_tensor(rows.unsqueeze(0), vals, grad.shape).coalesce()

    def broadcast_parameters(self, model) -> None:
        if self.world == 1:
            return
        for p in model.state_dict().values():
            self._dist().broadcast(p, src=0)


def _resume_state(config: dict) -> dict | None:
    """Ray's latest checkpoint of this run (after a worker failure) or ``--resume``."""
    import ray.train

    from kg_ops.train.checkpoints import load_checkpoint

    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d, open(os.path.join(d, "pointer.json")) as fh:
            uri = json.load(fh)["uri"]
        log.info("restarting from Ray Train's last checkpoint %s", uri)
        return load_checkpoint(uri)
    if config.get("resume"):
        log.info("resuming from %s", config["resume"])
        return load_checkpoint(config["resume"])
    return None


def _report(metrics: dict, pointer_uri: str | None) -> None:
    import ray.train

    if pointer_uri is None:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="kgops-ckpt-") as d:
        with open(os.path.join(d, "pointer.json"), "w") as fh:
            json.dump({"uri": pointer_uri}, fh)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


def _maybe_crash(epoch: int) -> None:
    """Fault injection for the failure-recovery test: a real worker death (os._exit)."""
    spec = os.environ.get(CRASH_ENV)
    if not spec:
        return
    marker, at = spec.rsplit(":", 1)
    if int(at) == epoch and not os.path.exists(marker):
        open(marker, "w").close()
        log.warning("%s: worker exits after epoch %d (fault injection)", CRASH_ENV, epoch)
        os._exit(1)


def _batch_loss(model, config: dict, csr, sampler, pos: np.ndarray, fanouts: list[int],
                sample_seed: int, features, rng: np.random.Generator):
    """The loss of one mini-batch of positive edges ``pos`` (local ids): negatives, the
    sampled computation graph of every entity scored, forward, loss (see
    :mod:`kg_ops.models.link_predictor` for the two losses)."""
    import torch

    from kg_ops.sampling import sample_computation_graph

    softmax = config.get("loss", "bce") == "softmax"
    if softmax:
        cand, tail_ok, head_ok = sampler.shared_candidates(pos, int(config["negatives"]), rng)
        seeds = np.concatenate([pos[:, [0, 2]].ravel(), cand])
    else:
        neg = sampler.sample(pos, int(config["negatives"]), rng)
        seeds = np.concatenate([pos, neg])[:, [0, 2]].ravel()
    cg = sample_computation_graph(csr, seeds, fanouts, seed=sample_seed)
    z = model.encode_sampled(cg, features)
    loc = cg.seed_index
    if softmax:
        n = 2 * len(pos)
        ends = loc[:n].reshape(-1, 2)
        trip = torch.from_numpy(np.stack([ends[:, 0], pos[:, 1], ends[:, 1]], axis=1))
        return model.softmax_loss(z, trip, torch.from_numpy(loc[n:]),
                                  torch.from_numpy(tail_ok), torch.from_numpy(head_ok))
    ends = loc.reshape(-1, 2)
    rel = np.concatenate([pos[:, 1], neg[:, 1]])
    trip = torch.from_numpy(np.stack([ends[:, 0], rel, ends[:, 1]], axis=1))
    return model.loss(z, trip[:len(pos)], trip[len(pos):])


def train_worker(config: dict[str, Any]) -> None:
    """``train_loop_per_worker`` of the TorchTrainer; ``config`` is built by ``train()``."""
    import ray.train
    import torch

    from kg_ops.train.quiet import quiet_worker

    quiet_worker()

    from kg_ops.graph.kg import load_edges
    from kg_ops.models.attributes import NodeFeatures
    from kg_ops.models.link_predictor import LinkPredictor, ModelConfig
    from kg_ops.partition.io import load_partition
    from kg_ops.progress import Progress
    from kg_ops.train.checkpoints import save_checkpoint
    from kg_ops.train.negatives import TypedNegativeSampler
    from kg_ops.train.optim import TrainingOptimizer
    from kg_ops.train.validation import SampledValidation

    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    comm = _Comm(world)
    torch.set_num_threads(int(config["threads"]))
    seed = int(config["seed"])

    part = load_partition(config["partitions"], rank)
    features = None
    if config.get("features"):
        features = NodeFeatures.from_blocks(part.load_features(), part.global_ids,
                                            source=config["features"])
    mcfg = ModelConfig.from_dict(config["model_config"])
    torch.manual_seed(seed)
    model = LinkPredictor(mcfg)
    model.inputs.check(features)
    opt = TrainingOptimizer(model, lr=config["lr"], weight_decay=config["weight_decay"])
    state = _resume_state(config)
    history: list[dict] = []
    best, best_epoch, bad_epochs, start = -1.0, 0, 0, 1
    best_model = None
    if state is None and config.get("init_state"):
        from kg_ops.train.checkpoints import load_torch

        model.load_state_dict(load_torch(config["init_state"], what="warm-start weights"))
    if state is not None:
        best_model = state["best_model"]
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"], source=state.get("uri", "checkpoint"))
        history = list(state["history"])
        best, best_epoch = float(state["best_valid_mrr"]), int(state["best_epoch"])
        bad_epochs, start = int(state["bad_epochs"]), int(state["epoch"]) + 1
    comm.broadcast_parameters(model)

    csr = part.graph()
    sampler = TypedNegativeSampler(part.negative_pool, part.relation_head_type,
                                   part.relation_tail_type)
    fanouts, sample_seed = list(config["fanouts"]), int(config["sample_seed"])
    edges = part.core_edges
    total_edges = int(comm.all_reduce([float(len(edges))])[0])
    steps = max(1, math.ceil(total_edges / int(config["batch_size"])))

    valid = load_edges(config["graph"], "valid")
    known = np.concatenate([valid, load_edges(config["graph"], "test")])   # for filtering
    if config["valid_triples"] and len(valid) > config["valid_triples"]:
        pick = np.random.default_rng(seed).choice(len(valid), config["valid_triples"],
                                                  replace=False)
        valid = valid[np.sort(pick)]
    eligible = comm.all_gather_mask(SampledValidation.eligible(part, valid))
    owner = np.where(eligible.any(0), eligible.argmax(0), -1)
    validation = SampledValidation(part, valid, sampler, int(config["valid_candidates"]), seed,
                                   owner == rank, known_global=known)
    uncovered = int((owner < 0).sum())
    if rank == 0:
        log.info("worker 0/%d: partition %d: %d core edges of %d, %d steps/epoch, local batch "
                 "~%d; validation: %d triples ranked (%d not inside any partition's core)",
                 world, part.part_id, len(edges), total_edges, steps,
                 math.ceil(len(edges) / steps), len(valid) - uncovered, uncovered)

    for epoch in range(start, int(config["epochs"]) + 1):
        rng = np.random.default_rng([seed, epoch, rank])
        torch.manual_seed(int(rng.integers(2**62)))
        model.train()
        t0 = time.perf_counter()
        loss_sum, seen = 0.0, 0
        progress = Progress(f"train epoch {epoch}/{config['epochs']} worker {rank}",
                            total=len(edges), unit="edges", every_s=float(config["log_every_s"]))
        for batch in np.array_split(rng.permutation(len(edges)), steps):
            opt.zero_grad()
            if len(batch):
                loss = _batch_loss(model, config, csr, sampler, edges[batch], fanouts,
                                   sample_seed, features, rng)
                loss.backward()
                loss_sum += float(loss.detach()) * len(batch)
                seen += len(batch)
            comm.average_gradients(model)
            opt.step()
            progress.update(len(batch), loss=loss_sum / max(seen, 1))
        train_s = time.perf_counter() - t0
        loss_total, seen_total = comm.all_reduce([loss_sum, float(seen)])
        epoch_s = comm.all_reduce([train_s], op="max")[0]
        rr, n = comm.all_reduce(list(validation.reciprocal_ranks(
            model, csr, fanouts, sample_seed, features)))
        mrr = rr / n if n else float("nan")
        row = {"epoch": epoch, "loss": loss_total / max(seen_total, 1),
               "valid_mrr_sampled": mrr, "valid_queries_sampled": int(n),
               "edges_per_s": total_edges / max(epoch_s, 1e-9), "epoch_s": epoch_s}
        history.append(row)
        improved = n > 0 and mrr > best
        if improved:
            best, best_epoch, bad_epochs = mrr, epoch, 0
            best_model = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            bad_epochs += 1
        patience = int(config["patience"])
        stop = patience > 0 and bad_epochs >= patience
        eta = (int(config["epochs"]) - epoch) * (time.perf_counter() - t0)
        if rank == 0:
            log.info("epoch %d/%d: loss %.4f, valid MRR (sampled) %.4f, %.0f edges/s, epoch "
                     "%.1fs, ETA %.0fs%s", epoch, config["epochs"], row["loss"], mrr,
                     row["edges_per_s"], epoch_s, 0 if stop else eta,
                     " -- early stop" if stop else "")
        pointer = None
        if rank == 0:
            pointer = save_checkpoint(config["out"], {
                "epoch": epoch, "model": model.state_dict(), "optimizer": opt.state_dict(),
                "history": history, "best_valid_mrr": best, "best_epoch": best_epoch,
                "bad_epochs": bad_epochs, "stopped_early": stop, "run_id": config["run_id"],
                "model_config": mcfg.to_dict(),
                "best_model": best_model if best_model is not None else model.state_dict()},
                keep_last=int(config["keep_checkpoints"]))
        _report({**row, "best_valid_mrr": best, "best_epoch": best_epoch,
                 "stopped_early": stop}, pointer)
        _maybe_crash(epoch)
        if stop:
            break

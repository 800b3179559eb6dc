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

import dataclasses
import itertools
import json
import logging
import math
import os
import tempfile
import time
from typing import Any

import numpy as np

from kg_ops.config import TrainConfig
from kg_ops.train.collectives import Collectives
from kg_ops.train.worker_errors import describe, first_error, is_deterministic, report_error

log = logging.getLogger("kg_ops.train")


@dataclasses.dataclass(frozen=True)
class TrainRun:
    """What the workers need besides the options, resolved from the inputs by the driver."""

    graph: str
    features: str | None
    model_config: dict[str, Any]
    fanouts: list[int]
    sample_seed: int
    run_id: str
    init_state: str | None = None     # warm-start weights (``--init-from``), if any
    fingerprint: str = ""             # options + inputs; a rerun continues only its own run
    log_every_s: float = 10.0


@dataclasses.dataclass
class _Progress:
    """What a checkpoint carries besides the weights: history and early-stopping state."""

    history: list[dict] = dataclasses.field(default_factory=list)
    best: float = -1.0
    best_epoch: int = 0
    bad_epochs: int = 0
    start: int = 1
    best_model: dict | None = None

    @classmethod
    def from_checkpoint(cls, state: dict) -> _Progress:
        return cls(history=list(state["history"]), best=float(state["best_valid_mrr"]),
                   best_epoch=int(state["best_epoch"]), bad_epochs=int(state["bad_epochs"]),
                   start=int(state["epoch"]) + 1, best_model=state["best_model"])

    def update(self, epoch: int, mrr: float, queries: int, model, patience: int) -> bool:
        """Record an epoch's validation; True when early stopping says stop."""
        if queries > 0 and mrr > self.best:
            self.best, self.best_epoch, self.bad_epochs = mrr, epoch, 0
            self.best_model = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            self.bad_epochs += 1
        return patience > 0 and self.bad_epochs >= patience


def _resume_state(config: TrainConfig, run: TrainRun) -> dict | None:
    """After a worker failure, the newest checkpoint of this run (Ray Train's last registered
    pointer can lag one epoch behind ``latest.json``); else the checkpoint the run starts from
    (``--resume``, or a rerun's own latest)."""
    import ray.train

    from kg_ops.train.checkpoints import load_checkpoint, restart_state

    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d, open(os.path.join(d, "pointer.json")) as fh:
            uri = json.load(fh)["uri"]
        state = restart_state(config.out, run.run_id, uri)
        log.info("restarting from %s (Ray Train's last registered checkpoint: %s)",
                 state["uri"], uri)
        return state
    if config.resume:
        log.info("resuming from %s", config.resume)
        return load_checkpoint(config.resume)
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


def train_worker(loop_config: dict[str, Any]) -> None:
    """``train_loop_per_worker`` of the TorchTrainer: ``{"config": TrainConfig, "run":
    TrainRun}``, both built by :func:`kg_ops.train.cli.train`."""
    import ray.train

    from kg_ops.train.quiet import quiet_worker

    quiet_worker()
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    worker = _Worker(loop_config["config"], loop_config["run"], rank,
                     Collectives(world, loop_config["config"].exchange),
                     node_workers=ctx.get_local_world_size())
    error = None
    try:
        worker.load()
    except Exception as exc:  # noqa: BLE001 -- sorted below: retry only what a retry can fix
        if not is_deterministic(exc):
            raise
        error = describe(exc, rank)
    error = first_error(world, error)
    if error:           # no restart can fix it: every worker stops; the driver says it once
        report_error(error, rank)
        return
    worker.connect()
    worker.validate_start()
    for epoch in range(worker.progress.start, worker.config.epochs + 1):
        if worker.run_epoch(epoch):
            break


class _Worker:
    """One worker's partition, model, optimiser and validation; one method per epoch."""

    def __init__(self, config: TrainConfig, run: TrainRun, rank: int, comm: Collectives,
                 node_workers: int = 1):
        import torch

        self.config, self.run, self.rank, self.comm = config, run, rank, comm
        self.node_workers = node_workers      # this run's workers on this worker's node
        torch.set_num_threads(config.threads)

    def load(self) -> None:
        """Everything this worker reads (partition, features, checkpoint, validation edges) and
        builds, without any collective: a failure here is settled by :func:`train_worker`."""
        from kg_ops.graph.kg import load_edges
        from kg_ops.partition.io import load_partition
        from kg_ops.train.negatives import TypedNegativeSampler

        self._check_memory()
        self.part = load_partition(self.config.partitions, self.rank)
        self.features = self._features()
        self._build_model()
        self.csr = self.part.graph()
        self.sampler = TypedNegativeSampler(self.part.negative_pool,
                                            self.part.relation_head_type,
                                            self.part.relation_tail_type)
        self.edges = self.part.core_edges
        self.valid = load_edges(self.run.graph, "valid")
        self.known = np.concatenate([self.valid, load_edges(self.run.graph, "test")])

    def _check_memory(self) -> None:
        """Stop before allocating when the recipe's tables alone exceed this node's memory
        (:mod:`kg_ops.train.memory`); first thing a worker does, so that no worker on the
        node has allocated its own yet."""
        from kg_ops.train.memory import available_bytes, check_fits, footprint, local_batch

        cfg = self.config
        sharded = cfg.candidates == "sharded" and self.comm.world > 1
        terms = footprint(self.run.model_config, cfg.loss, cfg.optimizer,
                          local_batch(cfg.batch_size, self.comm.world),
                          self.comm.world if sharded else 1)
        check_fits(terms, available_bytes(), self.node_workers,
                   where=f"worker {self.rank}'s node")

    def connect(self) -> None:
        """The collectives of the start: equal parameters, global step count, who validates."""
        from kg_ops.train.batches import wire_dtype

        self.comm.broadcast_parameters(self.model)
        self.total_edges = int(self.comm.all_reduce([float(len(self.edges))])[0])
        self.steps = max(1, math.ceil(self.total_edges / self.config.batch_size))
        self.run_steps = min(self.steps, self.config.limit_steps or self.steps)
        if self.run_steps < self.steps and self.rank == 0:
            log.info("--limit-steps %d: each epoch trains its first %d of %d steps",
                     self.config.limit_steps, self.run_steps, self.steps)
        self.precision = self._precision()
        self.comm.wire = wire_dtype(self.precision)
        self._build_batches()
        self.validation = self._validation()

    def _precision(self) -> str:
        """What ``--precision`` became on the workers (``auto`` follows each one's CPU):
        ``bf16``, ``fp32``, or ``mixed`` when their CPUs differ."""
        from kg_ops.train.batches import resolve_precision

        mine = resolve_precision(self.config.precision)
        bf16 = int(self.comm.all_reduce([float(mine == "bf16")])[0])
        used = {0: "fp32", self.comm.world: "bf16"}.get(bf16, "mixed")
        if self.rank == 0:
            log.info("precision %s: %s on %d of %d workers", self.config.precision,
                     "bf16" if bf16 else "fp32", bf16 or self.comm.world, self.comm.world)
        return used

    def _build_batches(self) -> None:
        """The batch builder; with softmax or 1vsall on several workers, candidates are sharded
        (:mod:`kg_ops.train.candidates`): each worker draws its share of every node type
        (softmax) or its whole pool (1vsall), and every query is ranked against all of them."""
        from kg_ops.train.batches import BatchBuilder, candidates_per_type
        from kg_ops.train.layerwise import LayerwiseEncoding

        cfg = self.config
        shard, self.shards = self._candidate_shards()
        if isinstance(self.shards, LayerwiseEncoding):
            self.comm.owner_rows = self._owner_rows(self.shards)
        self.builder = BatchBuilder(
            self.csr, self.sampler, self.fanouts, self.run.sample_seed, cfg.loss,
            candidates_per_type(cfg.loss, cfg.negatives, self.sampler), shard=shard,
            layerwise=self.shards if isinstance(self.shards, LayerwiseEncoding) else None)

    def _candidate_shards(self):
        """``(candidates this worker draws per node type, CandidateShards)`` for sharded
        softmax, ``(None, LayerwiseEncoding)`` for sharded 1vsall, or ``(None, None)`` when
        each worker ranks against its own partition's candidates. 1vsall: the pools overlap
        (a node ending edges of two partitions is core in both), so each entity is given to
        one of the workers that hold it (:func:`~kg_ops.train.candidates.balanced_owners`),
        each worker encodes only its share, layer by layer (:mod:`kg_ops.train.layerwise`),
        and the gathered shares are every entity of the graph once: a P-worker run optimises
        the 1-worker objective (with local candidates a query never meets the entities of
        other partitions, which then rank too high at test time)."""
        import torch

        from kg_ops.train.candidates import CandidateShards, shard_size
        from kg_ops.train.layerwise import LayerwiseEncoding

        cfg, world = self.config, self.comm.world
        if world == 1 or cfg.candidates != "sharded" or cfg.loss not in ("softmax", "1vsall"):
            return None, None
        head, tail = (torch.from_numpy(self.sampler.head_type),
                      torch.from_numpy(self.sampler.tail_type))
        if cfg.loss == "softmax":
            types = int(self.comm.all_reduce([float(len(self.sampler.count))], op="max")[0])
            shard = shard_size(cfg.negatives, world)
            return shard, CandidateShards(world, self.rank, shard * types, head, tail,
                                          self.comm.wire, self.comm.times)
        owned, types = self._owned_pool()
        slots = int(self.comm.all_reduce([float(len(owned))], op="max")[0])
        return None, LayerwiseEncoding(
            self.csr, owned, types, self.fanouts, self.run.sample_seed, self.mcfg.num_layers,
            CandidateShards(world, self.rank, slots, head, tail, self.comm.wire,
                            self.comm.times),
            self.mcfg.num_nodes)

    def _owner_rows(self, layerwise):
        """With sharded 1vsall and ``--exchange auto`` or ``owner``: the input table's rows
        updated by their owners, the layer-wise encoding's (:mod:`kg_ops.train.owner_rows`);
        ``None`` keeps the exchange of the whole table's gradient."""
        from kg_ops.train.optim import sparse_parameters
        from kg_ops.train.owner_rows import NoOwner, OwnerRows

        table = sparse_parameters(self.model)
        if self.config.exchange not in ("auto", "owner") or len(table) != 1:
            return None
        try:
            rows = OwnerRows(table[0], layerwise.input_gid, layerwise.owned, self.rank,
                             self.comm.world, self.comm.times, self.comm.wire)
        except NoOwner as exc:
            if self.rank == 0:
                log.info("input table: %s; each step exchanges the whole table's gradient",
                         exc)
            return None
        if self.rank == 0:
            log.info("input table: each worker updates the rows of the entities it owns "
                     "(worker 0: %d) and exchanges its halo (%d rows it reads, %d of its rows "
                     "others read)", len(rows.own), len(rows.halo), len(rows.readers))
        return rows

    def _owned_pool(self) -> tuple[np.ndarray, np.ndarray]:
        """This worker's share of the entities for sharded 1vsall: ``(local ids, node
        types)`` of the pool entities :func:`balanced_owners` gives it."""
        from kg_ops.train.candidates import balanced_owners

        ids, types = self.sampler.pool()
        gids = self.csr.to_global(ids)
        mask = np.zeros(self.mcfg.num_nodes, dtype=bool)
        mask[gids] = True
        held = self.comm.all_gather_mask(mask)
        owner = balanced_owners(held)
        mine = owner[gids] == self.rank
        if self.rank == 0:
            log.info("1vsall candidates: %d entities in the workers' pools, %d of them in "
                     "more than one; each is encoded by one worker (worker 0: %d of its %d)",
                     int((owner >= 0).sum()), int((held.sum(0) > 1).sum()), int(mine.sum()),
                     len(ids))
        return ids[mine], types[mine]

    def _features(self):
        from kg_ops.models.attributes import NodeFeatures

        if not self.run.features:
            return None
        return NodeFeatures.from_blocks(self.part.load_features(), self.part.global_ids,
                                        source=self.run.features)

    def _build_model(self) -> None:
        """Model and optimiser, from the last checkpoint if there is one, equal everywhere."""
        import torch

        from kg_ops.models.link_predictor import LinkPredictor, ModelConfig
        from kg_ops.train.optim import TrainingOptimizer

        self.mcfg = ModelConfig.from_dict(self.run.model_config)
        # A shallow model passes no messages: the seeds are all it needs.
        self.fanouts = [] if self.mcfg.shallow else list(self.run.fanouts)
        torch.manual_seed(self.config.seed)
        self.model = LinkPredictor(self.mcfg)
        self.model.inputs.check(self.features)
        self.opt = TrainingOptimizer(self.model, lr=self.config.lr,
                                     weight_decay=self.config.weight_decay,
                                     optimizer=self.config.optimizer,
                                     dense_lr=self.config.dense_lr)
        state = _resume_state(self.config, self.run)
        self.progress = _Progress()
        if state is None and self.run.init_state:
            from kg_ops.train.checkpoints import load_torch

            init = load_torch(self.run.init_state, what="warm-start weights")
            self.model.load_state_dict(init["model"])
            if init["optimizer"] is not None:
                self.opt.carry_state(init["optimizer"], source=self.run.init_state)
        if state is not None:
            self.model.load_state_dict(state["model"])
            self.opt.load_state_dict(state["optimizer"], source=state.get("uri", "checkpoint"))
            self.progress = _Progress.from_checkpoint(state)

    def _validation(self):
        """The per-epoch validation (:mod:`kg_ops.train.validation`): the filtered full
        ranking, or the sampled one where each triple is ranked by one worker whose partition
        holds it."""
        from kg_ops.train.validation import FULL_KIND, SampledValidation, validation_kind

        cfg, part = self.config, self.part
        valid, known = self.valid, self.known      # known: valid + test, for filtering
        if cfg.valid_triples and len(valid) > cfg.valid_triples:
            pick = np.random.default_rng(cfg.seed).choice(len(valid), cfg.valid_triples,
                                                          replace=False)
            valid = valid[np.sort(pick)]
        if validation_kind(cfg.valid_ranking, self.mcfg.num_nodes,
                           self.mcfg.out_dim) == FULL_KIND:
            return self._full_validation(valid, known)
        eligible = self.comm.all_gather_mask(SampledValidation.eligible(part, valid))
        owner = np.where(eligible.any(0), eligible.argmax(0), -1)
        uncovered = int((owner < 0).sum())
        if self.rank == 0:
            log.info("worker 0/%d: partition %d: %d core edges of %d, %d steps/epoch, local "
                     "batch ~%d; validation: %d triples ranked (%d not inside any partition's "
                     "core)", self.comm.world, part.part_id, len(self.edges), self.total_edges,
                     self.steps, math.ceil(len(self.edges) / self.steps),
                     len(valid) - uncovered, uncovered)
        return SampledValidation(part, valid, self.sampler, cfg.valid_candidates, cfg.seed,
                                 owner == self.rank, known_global=known)

    def _full_validation(self, valid: np.ndarray, known: np.ndarray):
        from kg_ops.evaluate.filters import FilterIndex
        from kg_ops.graph.kg import load_edges
        from kg_ops.train.validation import FullValidation

        everything = np.concatenate([load_edges(self.run.graph, "train"), known])
        filters = FilterIndex(everything, self.mcfg.num_nodes, self.mcfg.num_relations)
        if self.rank == 0:
            log.info("validation: %d triples ranked against all %d entities per epoch "
                     "(filtered, both directions)", len(valid), self.mcfg.num_nodes)
        return FullValidation(self.part, valid, filters, self.comm, self.rank)

    @property
    def patience(self) -> int:
        """Early-stopping patience: a warm start begins near its optimum, so it gives up after
        ``warm_patience`` epochs without a better validation MRR instead of ``patience``."""
        return self.config.warm_patience if self.run.init_state else self.config.patience

    def _validate(self) -> tuple[float, int]:
        """The validation MRR of the current weights and how many queries it ranked (first
        the owner-updated table rows to every worker: validation and the checkpoint that
        follows read the whole table)."""
        self.comm.synchronize_rows(self.opt.parts.get("table"))
        rr, n = self.comm.all_reduce(list(self.validation.reciprocal_ranks(
            self.model, self.csr, self.fanouts, self.run.sample_seed, self.features)))
        return (rr / n if n else float("nan")), int(n)

    def validate_start(self) -> None:
        """A warm start's epoch 0: the mapped weights validated (and checkpointed) before any
        training, so the run keeps them when no epoch beats them and its curve starts where
        the previous version left off. Not on a restart or a resume (already recorded)."""
        if not self.run.init_state or self.progress.history:
            return
        mrr, n = self._validate()
        row = {"epoch": 0, "loss": None, "edges_per_s": None, "epoch_s": 0.0,
               "valid_mrr_sampled": mrr, "valid_queries_sampled": n}
        self.progress.history.append(row)
        self.progress.update(0, mrr, n, self.model, self.patience)
        if self.rank == 0:
            log.info("epoch 0 (warm start, before training): valid MRR (filtered) %.4f; "
                     "early stopping after %d epochs without a better one", mrr, self.patience)
        self._checkpoint_and_report(0, row, False)

    def run_epoch(self, epoch: int) -> bool:
        """Train, validate, checkpoint and report one epoch; True to stop early."""
        t0 = time.perf_counter()
        row = self._train(epoch)
        mrr, n = self._validate()
        row.update(valid_mrr_sampled=mrr, valid_queries_sampled=n)
        self.progress.history.append(row)
        stop = self.progress.update(epoch, mrr, n, self.model, self.patience)
        self._decay_on_plateau()
        if self.rank == 0:
            eta = (self.config.epochs - epoch) * (time.perf_counter() - t0)
            log.info("epoch %d/%d: loss %.4f, valid MRR (filtered) %.4f, %.0f edges/s, "
                     "epoch %.1fs, ETA %.0fs%s", epoch, self.config.epochs, row["loss"], mrr,
                     row["edges_per_s"], row["epoch_s"], 0 if stop else eta,
                     " -- early stop" if stop else "")
        self._checkpoint_and_report(epoch, row, stop)
        return stop

    def _decay_on_plateau(self) -> None:
        """The learning-rate schedule: multiply the rates by ``lr_decay`` after every
        ``lr_patience`` epochs without a better validation MRR (ReduceLROnPlateau, as LibKGE's
        tuned CoDEx configs use). The rates live in the optimiser state, so they resume."""
        cfg, bad = self.config, self.progress.bad_epochs
        if cfg.lr_decay < 1.0 and cfg.lr_patience > 0 and bad and bad % cfg.lr_patience == 0:
            lr = self.opt.scale_lr(cfg.lr_decay)
            if self.rank == 0:
                log.info("no better validation MRR for %d epochs: learning rate now %.3g",
                         bad, lr)

    def _train(self, epoch: int) -> dict[str, Any]:
        """One pass over the partition's core edges, in ``steps`` synchronised mini-batches."""
        import torch

        from kg_ops.progress import Progress
        from kg_ops.train.batches import batch_loss, prefetch

        rng = np.random.default_rng([self.config.seed, epoch, self.rank])
        torch.manual_seed(int(rng.integers(2**62)))
        self.model.train()
        t0 = time.perf_counter()
        loss_sum, seen = 0.0, 0
        progress = Progress(f"train epoch {epoch}/{self.config.epochs} worker {self.rank}",
                            total=_first_parts(len(self.edges), self.steps, self.run_steps),
                            unit="edges", every_s=self.run.log_every_s)
        times = self.comm.times
        times.reset()
        batches = itertools.islice(self.builder.epoch(self.edges, self.steps, rng),
                                   self.run_steps)
        for batch in times.batches(prefetch(batches, self.config.prefetch)):
            with times.phase("optimizer"):
                self.opt.zero_grad()
            size = 0 if batch is None else batch.size
            with times.step():
                if batch is not None:
                    loss = batch_loss(self.model, batch, self.features, self.shards,
                                      self.config.precision)   # auto: this worker's CPU
                    loss.backward()
                    loss_sum += float(loss.detach()) * size
                    seen += size
            self.comm.average_gradients(self.model)
            with times.phase("optimizer"):
                self.opt.step()
            self.comm.after_step()
            progress.update(size, loss=loss_sum / max(seen, 1), **times.running())
        loss_total, seen_total = self.comm.all_reduce([loss_sum, float(seen)])
        epoch_s = self.comm.all_reduce([time.perf_counter() - t0], op="max")[0]
        return {"epoch": epoch, "loss": loss_total / max(seen_total, 1),
                "edges_per_s": seen_total / max(epoch_s, 1e-9), "epoch_s": epoch_s,
                "steps": self.run_steps, "steps_per_epoch": self.steps,
                "precision": self.precision, "table_exchange": self.comm.table_exchange,
                "step_s": self._step_times(epoch)}

    def _step_times(self, epoch: int) -> dict[str, float]:
        """Where this epoch's steps went, the workers' mean seconds per step
        (:mod:`kg_ops.train.steptime`); rank 0 logs it, with the workers' range."""
        from kg_ops.train.steptime import KEYS, describe

        times = self.comm.times
        mine = times.summary(self.comm.all_gather_values(times.compute), self.rank)
        keys = [k for k, _ in KEYS]
        per_worker = self.comm.all_gather_values([mine[k] for k in keys])
        if self.rank == 0:
            log.info("epoch %d/%d %s", epoch, self.config.epochs,
                     describe(per_worker, len(times.compute)))
        return {k: float(v) for k, v in zip(keys, per_worker.mean(axis=0), strict=True)}

    def _checkpoint_and_report(self, epoch: int, row: dict, stop: bool) -> None:
        """Rank 0 writes the checkpoint to the artifact store; Ray gets a pointer to it."""
        from kg_ops.train.checkpoints import save_checkpoint

        p, pointer = self.progress, None
        if self.rank == 0:
            pointer = save_checkpoint(self.config.out, {
                "epoch": epoch, "model": self.model.state_dict(),
                "optimizer": self.opt.state_dict(), "history": p.history,
                "best_valid_mrr": p.best, "best_epoch": p.best_epoch,
                "bad_epochs": p.bad_epochs, "stopped_early": stop, "run_id": self.run.run_id,
                "fingerprint": self.run.fingerprint,
                "model_config": self.mcfg.to_dict(),
                "best_model": p.best_model if p.best_model is not None
                else self.model.state_dict()},
                keep_last=self.config.keep_checkpoints)
        _report({**row, "best_valid_mrr": p.best, "best_epoch": p.best_epoch,
                 "stopped_early": stop}, pointer)


def _first_parts(n: int, parts: int, first: int) -> int:
    """How many of ``n`` items the first ``first`` of ``np.array_split``'s ``parts`` parts
    hold (the larger parts come first)."""
    return first * (n // parts) + min(first, n % parts)

"""``kgops train``: data-parallel GNN training on Ray Train, one worker per partition.

Writes under ``--out``: ``model.pt`` (the best epoch's state_dict), ``model_config.json``,
``history.json`` (one row per epoch), ``checkpoints/`` and ``_manifest.json`` last. See
:mod:`kg_ops.train.loop` for what a worker does and :mod:`kg_ops.models.trained` for loading
the result.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import tempfile
import uuid
from collections.abc import Callable
from typing import Any

from kg_ops.config import TrainConfig
from kg_ops.errors import KGOpsError, root_cause

HELP = ("Train an RGCN or relation-attention GCN link predictor with Ray Train, one worker per "
        "partition (1 worker on 1 partition = the non-distributed baseline).")
log = logging.getLogger(__name__)

ARTIFACT_FORMAT = "kgops-train/1"


def add_arguments(p: argparse.ArgumentParser) -> None:
    TrainConfig.add_arguments(p)


def run(args: argparse.Namespace) -> int:
    train(TrainConfig.from_args(args), force=args.force)
    return 0


def train(config: TrainConfig, *, worker_env: dict[str, str] | None = None,
          force: bool = False, train_loop: Callable[[dict], None] | None = None,
          callbacks: list | None = None, announce: bool = True) -> dict[str, Any]:
    """Run the train stage; returns its manifest.

    ``worker_env``: extra environment variables for the Ray Train workers (library switches);
    never credentials: workers use the Ray nodes' own (see the README). ``train_loop``: a
    wrapper of
    :func:`kg_ops.train.loop.train_worker` (fault-injection tests). ``callbacks``: Ray Train
    callbacks of the run (a ``kgops tune`` trial forwards the epochs to Ray Tune);
    ``announce=False``: no ``KGOPS_MANIFEST`` line (a stage inside another stage).
    """
    from kg_ops.manifest import Stage
    from kg_ops.train.checkpoints import continue_from, fingerprint, latest_pointer

    refuse_secrets(worker_env or {})
    config = _prepared(config)
    inputs = _TrainInputs.load(config)
    mcfg = _model_config(config, inputs)
    config, done = _check_resume(config, mcfg)
    recorded, stage_inputs = _recorded(config, inputs, mcfg)
    with Stage("train", config.out, config=recorded, inputs=stage_inputs, force=force,
               announce=announce) as st:
        if st.reused:
            return st.manifest
        if inputs.plan:
            from kg_ops.train.plan import for_run

            log.info("train: %s", for_run(inputs.plan, config.batch_size, config.loss,
                                          config.model, config.limit_steps))
        run_id = uuid.uuid4().hex[:12]
        run_fp = fingerprint(recorded, st.inputs)
        start = continue_from(config.out, run_fp, config.resume, st.force)
        if start != config.resume:
            st.extra["resumed_from"] = start       # a rerun after a crash continued its run
            done = latest_pointer(config.out)["epoch"]   # the checkpoint continue_from named
        config = config.replace(resume=start)
        init_state = (_warm_start(st, config, inputs, mcfg)
                      if config.init_from and not config.resume else None)
        if done >= config.epochs:
            # Nothing left to train (e.g. kgops tune sealing a trial stopped at its budget):
            # no Ray Train run, so no cluster resources are waited for.
            log.info("train: %s is at epoch %d of %d; nothing left to train, writing the "
                     "output", config.resume, done, config.epochs)
        else:
            with st.phase("fit"):
                _fit(config, inputs.worker_run(mcfg, run_id, init_state, run_fp),
                     inputs.parts, worker_env, train_loop, callbacks)
        with st.phase("write"):
            final = _finish(st, config, mcfg, inputs, recorded, run_id)
        st.metrics.update(final)
        _check_plan(st, config, inputs.plan)
        st.counts.update({"nodes": inputs.schema.num_nodes,
                          "relations": inputs.schema.num_relations, "partitions": inputs.parts})
    return st.manifest


def _check_plan(st, config: TrainConfig, plan: dict | None) -> None:
    """The partition stage's plan beside what this run measured: logged, and in the
    manifest (``metrics.plan_check``)."""
    from kg_ops.train.plan import against_run, describe_check

    check = against_run(plan, config.batch_size, config.loss, config.model, st.metrics,
                        config.threads)
    if check:
        st.metrics["plan_check"] = check
        log.info("train: %s", describe_check(check))


def _prepared(config: TrainConfig) -> TrainConfig:
    """The config with normalised URIs, the tuned recipe applied and the preset resolved."""
    from kg_ops.store import normalize

    config = config.replace(partitions=normalize(config.partitions),
                            out=normalize(config.out))
    if config.tuned:
        from kg_ops.tune.recipe import apply_tuned

        config = apply_tuned(config)
    return config.resolved()


def _recorded(config: TrainConfig, inputs: _TrainInputs, mcfg) -> tuple[dict, dict]:
    """The manifest's ``config`` (what changes the result) and the stage's inputs."""
    recorded = {**config.recorded(), "workers": inputs.parts, "model": mcfg.to_dict(),
                "fanouts": inputs.fanouts, "sample_seed": inputs.sample_seed}
    stage_inputs = {"partitions": config.partitions}
    if config.tuned:
        stage_inputs["tuned"] = config.tuned
    if config.init_from:
        stage_inputs["init_from"] = config.init_from
        recorded["warm_start"] = {"max_drift": config.max_drift,
                                  "retrain_every": config.retrain_every,
                                  "warm_patience": config.warm_patience,
                                  "fold_in_steps": config.warm_fold_in_steps}
    return recorded, stage_inputs


class _TrainInputs:
    """The partitions manifest, the graph's schema and the sampling the partitions were built
    with; checked before any Ray work starts."""

    def __init__(self, config: TrainConfig, pm: dict, meta0: dict):
        from kg_ops.graph.kg import load_schema

        self.parts = int(pm["outputs"]["parts"])
        self.graph = pm["inputs"]["graph"]["uri"]
        self.features = pm["outputs"].get("features_uri")
        self.plan = pm.get("metrics", {}).get("plan")     # the cost planner's prediction
        self.schema = load_schema(self.graph)
        sampling = meta0["sampling"]
        self.sample_seed = int(sampling["seed"])
        self.fanouts = _fanouts(config.fanout, list(sampling["fanouts"]), int(sampling["hops"]),
                                config.partitions)

    @classmethod
    def load(cls, config: TrainConfig) -> _TrainInputs:
        from kg_ops.partition.io import load_partitions_manifest, part_dir
        from kg_ops.store import get_store, join

        uri = config.partitions
        pm = load_partitions_manifest(uri)
        parts = int(pm["outputs"]["parts"])
        if config.workers is not None and config.workers != parts:
            raise KGOpsError(f"--workers {config.workers} but {uri} has {parts} partitions: "
                             f"training runs one worker per partition. Pass --workers {parts} "
                             f"or repartition with `kgops partition --parts {config.workers}`.")
        store = get_store(uri)
        for p in range(parts):
            if not store.exists(join(part_dir(uri, p), "meta.json")):
                raise KGOpsError(f"partition {p} is missing: {part_dir(uri, p)}/meta.json "
                                 "does not exist although the partition manifest lists it. "
                                 "Rerun `kgops --force partition`.")
        return cls(config, pm, store.read_json(join(part_dir(uri, 0), "meta.json")))

    def worker_run(self, mcfg, run_id: str, init_state: str | None = None,
                   run_fingerprint: str = ""):
        from kg_ops.train.loop import TrainRun

        return TrainRun(graph=self.graph, features=self.features, model_config=mcfg.to_dict(),
                        fanouts=self.fanouts, sample_seed=self.sample_seed, run_id=run_id,
                        init_state=init_state, fingerprint=run_fingerprint)


def _model_config(config: TrainConfig, inputs: _TrainInputs):
    from kg_ops.models.link_predictor import ModelConfig

    try:
        return ModelConfig(
            model=config.model, num_nodes=inputs.schema.num_nodes,
            num_relations=inputs.schema.num_relations, embedding_dim=config.embedding_dim,
            hidden_dim=config.hidden_dim, out_dim=config.out_dim,
            num_layers=len(inputs.fanouts), num_bases=config.num_bases,
            num_blocks=config.num_blocks, dropout=config.dropout, heads=config.heads,
            decoder=config.decoder, regularization=config.regularization,
            feature_dims=feature_dims(inputs.features),
            attribute_input=config.attribute_input, residual=config.residual,
            residual_gate=config.residual_gate, reciprocal=config.reciprocal,
            entity_dropout=config.entity_dropout, relation_dropout=config.relation_dropout,
            n3=config.n3, label_smoothing=config.label_smoothing,
            relation_prediction=config.relation_prediction,
            init_scale=config.init_scale)
    except ValueError as exc:
        raise KGOpsError(f"train: {exc}; see `kgops train --help`") from exc


def _check_resume(config: TrainConfig, mcfg) -> tuple[TrainConfig, int]:
    """``--resume`` resolved to one checkpoint whose model matches this run's (fails early),
    and that checkpoint's epoch (0 without ``--resume``). Read once: on a large graph a
    checkpoint holds gigabytes of embeddings and optimiser state."""
    from kg_ops.models.link_predictor import ModelConfig
    from kg_ops.train.checkpoints import load_checkpoint

    if not config.resume:
        return config, 0
    state = load_checkpoint(config.resume)
    # Through ModelConfig, so a checkpoint written before a field existed compares with that
    # field's default.
    if ModelConfig.from_dict(state["model_config"]).to_dict() != mcfg.to_dict():
        raise KGOpsError(f"--resume {state['uri']}: the checkpoint's model "
                         f"({state['model_config']}) differs from this run's "
                         f"({mcfg.to_dict()}); use the same model options")
    return config.replace(resume=state["uri"]), int(state["epoch"])


_SECRET_NAMES = ("AWS_", "SECRET", "TOKEN", "PASSWORD", "CREDENTIAL", "_KEY")


def refuse_secrets(env: dict[str, str]) -> None:
    """Credentials must never travel in a Ray runtime_env (they would land in the cluster's
    logs and State API): the Ray nodes bring their own."""
    leaking = sorted(k for k in env if any(s in k.upper() for s in _SECRET_NAMES))
    if leaking:
        raise KGOpsError(f"worker_env holds {', '.join(leaking)}: credentials are never sent to "
                         "Ray workers; give the Ray nodes their own (environment, profile or "
                         "instance role; see the README)")


def _warm_start(st, config: TrainConfig, inputs: _TrainInputs, mcfg) -> str | None:
    """Run the drift guard (:mod:`kg_ops.train.warm`); record its decision and the entity
    mapping; return the URI of the re-indexed initial weights, or None (from scratch)."""
    from kg_ops.config.fold_in import FoldIn
    from kg_ops.train.checkpoints import save_torch
    from kg_ops.train.warm import plan_warm_start

    with st.phase("warm_start"):
        warm = plan_warm_start(config.init_from, inputs.graph, mcfg.to_dict(), inputs.features,
                               config.max_drift, config.retrain_every, config.optimizer,
                               FoldIn(steps=config.warm_fold_in_steps))
        st.outputs["entity_map"] = st.uri("entity_map.parquet")
        st.store.write_parquet(st.outputs["entity_map"], warm.entity_map)
        st.extra["warm_start"] = warm.info
        st.counts.update({f"entities_{k}": v for k, v in warm.info["entities"].items()
                          if k in ("kept", "new", "removed")})
        if warm.state is None:
            return None
        uri = st.uri("warm_start", "init.pt")
        save_torch(uri, {"model": warm.state, "optimizer": warm.optimizer})
        return uri


def _fit(config: TrainConfig, run, workers: int, worker_env: dict[str, str] | None,
         train_loop: Callable[[dict], None] | None, callbacks: list | None = None) -> None:
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from kg_ops.raycluster import init_ray
    from kg_ops.train.allocator import step_env
    from kg_ops.train.loop import train_worker
    from kg_ops.train.worker_errors import raise_reported

    init_ray(config.ray_address, num_cpus=max(2, workers * config.threads))
    storage = config.ray_storage or os.path.join(tempfile.gettempdir(), "kgops-ray-train")
    trainer = TorchTrainer(
        train_loop or train_worker, train_loop_config={"config": config, "run": run},
        torch_config=TorchConfig(backend="gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=False,
                                               resources_per_worker={"CPU": config.threads}),
        run_config=ray.train.RunConfig(
            name=f"kgops-train-{run.run_id}", storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=config.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            # Ray Train's INFO lines (resources, checkpoints) would flood the relayed log.
            logging_config=ray.train.LoggingConfig(log_level="WARNING"), callbacks=callbacks,
            worker_runtime_env={"env_vars": step_env(worker_env)}))
    try:
        with _ray_train_env():
            result = trainer.fit()
    except Exception as exc:  # Ray wraps worker errors; surface a user error's own message
        cause = root_cause(exc)
        if isinstance(cause, KGOpsError):
            raise KGOpsError(f"training worker failed: {cause}") from exc
        raise
    raise_reported(result)       # a deterministic error the workers settled without retries


PREEMPTION_WATCHER = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"


@contextlib.contextmanager
def _ray_train_env():
    """Ray Train's settings for one fit. Its preemption watcher (an actor that watches for
    nodes being drained, so a run can move off them) keeps 4-5 % of a core busy whatever its
    poll interval (``benchmarks/bench_ray_overhead.py``); on a one-node cluster there is no
    node to move to, so there it is off unless the environment sets it. Ray Train reads the
    variable when ``fit`` starts its controller."""
    import ray

    alive = sum(1 for node in ray.nodes() if node.get("Alive"))
    if PREEMPTION_WATCHER in os.environ or alive != 1:
        yield
        return
    log.info("one-node Ray cluster: Ray Train's preemption watcher is off (set %s=1 to keep "
             "it)", PREEMPTION_WATCHER)
    os.environ[PREEMPTION_WATCHER] = "0"
    try:
        yield
    finally:
        os.environ.pop(PREEMPTION_WATCHER, None)


def _fanouts(text: str | None, partition_fanouts: list[int], num_layers: int,
             uri: str) -> list[int]:
    from kg_ops.sampling import parse_fanouts

    if text is None:
        return list(partition_fanouts)
    try:
        fanouts = parse_fanouts(text)
    except ValueError as exc:
        raise KGOpsError(f"--fanout: {exc}") from exc
    if len(fanouts) != num_layers:
        raise KGOpsError(f"--fanout {text!r} has {len(fanouts)} hops but {uri} was expanded "
                         f"for {num_layers} (one per GNN layer)")
    for f, pf in zip(fanouts, partition_fanouts, strict=True):
        if pf != -1 and (f == -1 or f > pf):
            raise KGOpsError(f"--fanout {text!r} exceeds the fanouts {partition_fanouts} the "
                             f"partitions at {uri} were expanded with: their neighbourhoods "
                             "would be incomplete. Use smaller fanouts or repartition.")
    return fanouts


def feature_dims(features_uri: str | None) -> dict[str, int]:
    if not features_uri:
        return {}
    from kg_ops.encode.features import read_index
    from kg_ops.models.attributes import block_key

    return {block_key(b["node_type"], b["attribute"]): int(b["dim"])
            for b in read_index(features_uri)["blocks"]}


def _finish(st, config: TrainConfig, mcfg, inputs: _TrainInputs, recorded: dict,
            run_id: str) -> dict[str, Any]:
    """Write model.pt (best epoch), model_config.json and history.json; return the metrics."""
    import numpy as np

    from kg_ops.train.checkpoints import CheckpointError, load_checkpoint, save_torch
    from kg_ops.train.validation import validation_kind

    try:
        last = load_checkpoint(config.out)
    except CheckpointError:
        last = None
    if last is None or last.get("run_id") != run_id:
        if config.resume is None:
            raise KGOpsError(f"{config.out}: training ended without writing a checkpoint of this run")
        last = load_checkpoint(config.resume)   # nothing left to train after the resume
    history = last["history"]
    save_torch(st.uri("model.pt"), last["best_model"])
    st.store.write_json(st.uri("model_config.json"), {
        "format": ARTIFACT_FORMAT, **mcfg.to_dict(), "graph": inputs.graph,
        "partitions": config.partitions, "features": inputs.features, "training": recorded,
        "epoch": int(last["best_epoch"] if last["best_valid_mrr"] >= 0 else last["epoch"]),
        "best_valid_mrr": last["best_valid_mrr"]})
    st.store.write_json(st.uri("history.json"), history)
    st.outputs.update({"model": st.uri("model.pt"), "model_config": st.uri("model_config.json"),
                       "history": st.uri("history.json"), "checkpoints": st.uri("checkpoints")})
    trained = [h for h in history if h["epoch"] > 0]    # a warm start's epoch 0 trains nothing
    epoch_s = [h["epoch_s"] for h in trained]
    eps = [h["edges_per_s"] for h in trained]
    return {"epochs": len(trained), "best_epoch": int(last["best_epoch"]),
            "best_valid_mrr": float(last["best_valid_mrr"]),
            "valid_mrr_kind": validation_kind(config.valid_ranking, mcfg.num_nodes,
                                              mcfg.out_dim),
            "final_loss": float(trained[-1]["loss"]) if trained else None,
            "epoch_s": float(np.mean(epoch_s)) if epoch_s else None,
            "edges_per_s": float(np.mean(eps)) if eps else None,
            "steps": trained[-1].get("steps") if trained else None,   # per epoch, as run
            "step_s": _mean_step_times(trained),
            "workers": inputs.parts, "stopped_early": bool(last["stopped_early"]),
            "precision": trained[-1].get("precision") if trained else None,
            "table_exchange": trained[-1].get("table_exchange") if trained else None}


def _mean_step_times(trained: list[dict]) -> dict[str, float] | None:
    """The epochs' mean split of a step (:mod:`kg_ops.train.steptime`); None when no epoch
    recorded one (runs checkpointed before it was measured)."""
    rows = [h["step_s"] for h in trained if h.get("step_s")]
    return {k: sum(r.get(k, 0.0) for r in rows) / len(rows) for k in rows[0]} if rows else None

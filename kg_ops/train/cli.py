"""``kgops train``: data-parallel GNN training on Ray Train, one worker per partition.

Writes under ``--out``: ``model.pt`` (the best epoch's state_dict), ``model_config.json``,
``history.json`` (one row per epoch), ``checkpoints/`` and ``_manifest.json`` last. See
:mod:`kg_ops.train.loop` for what a worker does and :mod:`kg_ops.models.trained` for loading
the result.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import uuid
from typing import Any

from kg_ops.errors import KGOpsError

HELP = ("Train an RGCN or relation-attention GCN link predictor with Ray Train, one worker per "
        "partition (1 worker on 1 partition = the non-distributed baseline).")
log = logging.getLogger(__name__)

ARTIFACT_FORMAT = "kgops-train/1"
LOSSES = ("bce", "softmax")
DEFAULT_NEGATIVES = {"bce": 1, "softmax": 512}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--partitions", required=True, help="URI of a `kgops partition` output")
    p.add_argument("--model", choices=("rgcn", "relgnn"), default="rgcn")
    p.add_argument("--workers", type=int, default=None,
                   help="Ray Train workers; must equal the number of partitions (default)")
    p.add_argument("--epochs", type=int, default=20, help="maximum epochs (default 20)")
    p.add_argument("--out", required=True, help="output URI (local path, file:// or s3://)")
    p.add_argument("--resume", default=None,
                   help="checkpoint (.pt URI) or earlier training output to continue from; "
                        "training continues up to --epochs in total")
    p.add_argument("--init-from", default=None,
                   help="warm start: an earlier `kgops train` output (of an earlier graph "
                        "version); weights mapped by entity key, new entities initialised as "
                        "in `kgops embed`. Falls back to training from scratch past the drift "
                        "guard (see --max-drift, --retrain-every); the manifest says which")
    p.add_argument("--max-drift", type=float, default=None,
                   help="with --init-from: train from scratch when (new + removed) entities "
                        "or (added + removed) training edges exceed this fraction (default "
                        "0.2)")
    p.add_argument("--retrain-every", type=int, default=None,
                   help="with --init-from: train from scratch when this run would be the "
                        "N-th in a row warm-started (default 7; 0 = never)")
    p.add_argument("--lr", type=float, default=None, help="default: rgcn 0.01, relgnn 0.001")
    p.add_argument("--weight-decay", type=float, default=None,
                   help="default: rgcn 0, relgnn 1e-4")
    p.add_argument("--regularization", type=float, default=None,
                   help="L2 weight on embeddings and relation vectors (rgcn 0.01, relgnn 0.001)")
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--batch-size", type=int, default=256,
                   help="global batch of edges, split across workers (default 256)")
    p.add_argument("--fanout", default=None,
                   help="neighbours per hop, e.g. 25,10 (default: the partitions' fanouts; "
                        "each must be <= the partitions' unless they were built with -1)")
    p.add_argument("--loss", choices=LOSSES, default="bce",
                   help="bce: binary cross-entropy over positives and corrupted triples (the "
                        "published system); softmax: each positive ranked against candidates "
                        "shared by the batch, both directions (much better MRR per second)")
    p.add_argument("--negatives", type=int, default=None,
                   help="type-constrained negatives: bce, per positive edge (default 1); "
                        "softmax, candidates per node type shared by the batch (default 512)")
    p.add_argument("--embedding-dim", type=int, default=64)
    p.add_argument("--hidden-dim", type=int, default=64)
    p.add_argument("--out-dim", type=int, default=32)
    p.add_argument("--residual", action="store_true",
                   help="add each node's input embedding to the encoder output (a skip "
                        "connection; needs --embedding-dim equal to --out-dim)")
    p.add_argument("--num-bases", type=int, default=4, help="RGCN basis decomposition")
    p.add_argument("--num-blocks", type=int, default=None,
                   help="RGCN block decomposition instead of bases (PyG RGCNConv; slower)")
    p.add_argument("--heads", type=int, default=2, help="relation-attention heads (relgnn)")
    p.add_argument("--decoder", choices=("distmult", "complex"), default="distmult")
    p.add_argument("--patience", type=int, default=5,
                   help="early stopping: epochs without a better validation MRR (0 = off)")
    p.add_argument("--valid-triples", type=int, default=1000,
                   help="validation triples ranked per epoch (sampled MRR; 0 = all)")
    p.add_argument("--valid-candidates", type=int, default=200,
                   help="sampled candidates per node type for the validation MRR")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--max-failures", type=int, default=2,
                   help="worker failures Ray Train recovers from (restart at last checkpoint)")
    p.add_argument("--keep-checkpoints", type=int, default=3,
                   help="epoch checkpoints kept (each also holds the best weights)")
    p.add_argument("--ray-address", default=None, help="Ray cluster (default: RAY_ADDRESS or "
                                                       "a local Ray instance)")
    p.add_argument("--ray-storage", default=None,
                   help="Ray Train's run storage (small pointer files; shared or s3:// on a "
                        "multi-node cluster; default: a local temp directory)")


def run(args: argparse.Namespace) -> int:
    train(args.partitions, args.out, model=args.model, workers=args.workers,
          epochs=args.epochs, resume=args.resume, init_from=args.init_from,
          max_drift=args.max_drift, retrain_every=args.retrain_every, lr=args.lr, weight_decay=args.weight_decay,
          regularization=args.regularization, dropout=args.dropout, batch_size=args.batch_size,
          fanout=args.fanout, loss=args.loss, negatives=args.negatives,
          embedding_dim=args.embedding_dim,
          hidden_dim=args.hidden_dim, out_dim=args.out_dim, residual=args.residual,
          num_bases=args.num_bases,
          num_blocks=args.num_blocks, heads=args.heads, decoder=args.decoder,
          patience=args.patience, valid_triples=args.valid_triples,
          valid_candidates=args.valid_candidates, seed=args.seed, threads=args.threads,
          max_failures=args.max_failures, keep_checkpoints=args.keep_checkpoints,
          ray_address=args.ray_address, ray_storage=args.ray_storage)
    return 0


_SECRET_NAMES = ("AWS_", "SECRET", "TOKEN", "PASSWORD", "CREDENTIAL", "_KEY")


def refuse_secrets(env: dict[str, str]) -> None:
    """Credentials must never travel in a Ray runtime_env (they would land in the cluster's
    logs and State API): the Ray nodes bring their own."""
    leaking = sorted(k for k in env if any(s in k.upper() for s in _SECRET_NAMES))
    if leaking:
        raise KGOpsError(f"worker_env holds {', '.join(leaking)}: credentials are never sent to "
                         "Ray workers; give the Ray nodes their own (environment, profile or "
                         "instance role; see the README)")


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


def train(partitions: str, out: str, *, model: str = "rgcn", workers: int | None = None,
          epochs: int = 20, resume: str | None = None, init_from: str | None = None,
          max_drift: float | None = None, retrain_every: int | None = None,
          lr: float | None = None,
          weight_decay: float | None = None, regularization: float | None = None,
          dropout: float = 0.2, batch_size: int = 256, fanout: str | None = None,
          loss: str = "bce", negatives: int | None = None, embedding_dim: int = 64,
          hidden_dim: int = 64, out_dim: int = 32, residual: bool = False,
          num_bases: int | None = 4, num_blocks: int | None = None, heads: int = 2,
          decoder: str = "distmult", patience: int = 5, valid_triples: int = 1000,
          valid_candidates: int = 200, seed: int = 0, threads: int = 1, max_failures: int = 2,
          keep_checkpoints: int = 3, ray_address: str | None = None,
          ray_storage: str | None = None, worker_env: dict[str, str] | None = None,
          force: bool = False) -> dict[str, Any]:
    """Run the train stage; returns its manifest. ``worker_env``: extra environment variables
    for the Ray Train workers (fault injection in tests, library switches); never credentials:
    workers use the Ray nodes' own (see the README)."""
    from kg_ops.graph.kg import load_schema
    from kg_ops.manifest import Stage
    from kg_ops.models.link_predictor import MODEL_DEFAULTS, ModelConfig
    from kg_ops.partition.io import load_partitions_manifest, part_dir
    from kg_ops.store import get_store, join, normalize
    from kg_ops.train.checkpoints import load_checkpoint

    refuse_secrets(worker_env or {})
    partitions, out = normalize(partitions), normalize(out)
    pm = load_partitions_manifest(partitions)
    parts = int(pm["outputs"]["parts"])
    workers = workers or parts
    if workers != parts:
        raise KGOpsError(f"--workers {workers} but {partitions} has {parts} partitions: training "
                         "runs one worker per partition. Pass --workers "
                         f"{parts} or repartition with `kgops partition --parts {workers}`.")
    if loss not in LOSSES:
        raise KGOpsError(f"--loss must be one of {LOSSES}, not {loss!r}")
    negatives = DEFAULT_NEGATIVES[loss] if negatives is None else negatives
    if epochs < 1 or batch_size < 1 or negatives < 1:
        raise KGOpsError("--epochs, --batch-size and --negatives must be positive")
    store = get_store(partitions)
    for p in range(parts):
        if not store.exists(join(part_dir(partitions, p), "meta.json")):
            raise KGOpsError(f"partition {p} is missing: {part_dir(partitions, p)}/meta.json "
                             "does not exist although the partition manifest lists it. Rerun "
                             "`kgops --force partition`.")
    meta0 = store.read_json(join(part_dir(partitions, 0), "meta.json"))
    graph_uri = pm["inputs"]["graph"]["uri"]
    features_uri = pm["outputs"].get("features_uri")
    schema = load_schema(graph_uri)
    sampling = meta0["sampling"]
    fanouts = _fanouts(fanout, list(sampling["fanouts"]), int(sampling["hops"]), partitions)
    defaults = MODEL_DEFAULTS[model]
    hyper = {"lr": defaults["lr"] if lr is None else lr,
             "weight_decay": defaults["weight_decay"] if weight_decay is None else weight_decay,
             "regularization": (defaults["regularization"] if regularization is None
                                else regularization)}
    try:
        mcfg = ModelConfig(model=model, num_nodes=schema.num_nodes,
                           num_relations=schema.num_relations, embedding_dim=embedding_dim,
                           hidden_dim=hidden_dim, out_dim=out_dim, num_layers=len(fanouts),
                           num_bases=None if num_blocks else num_bases, num_blocks=num_blocks,
                           dropout=dropout, heads=heads, decoder=decoder,
                           regularization=hyper["regularization"],
                           feature_dims=feature_dims(features_uri), residual=residual)
    except ValueError as exc:
        raise KGOpsError(f"train: {exc}; see `kgops train --help`") from exc
    if resume:
        state = load_checkpoint(resume)    # fail early, with a clear message
        # Through ModelConfig, so a checkpoint written before a field existed compares with
        # that field's default.
        if ModelConfig.from_dict(state["model_config"]).to_dict() != mcfg.to_dict():
            raise KGOpsError(f"--resume {state['uri']}: the checkpoint's model "
                             f"({state['model_config']}) differs from this run's "
                             f"({mcfg.to_dict()}); use the same model options")
        resume = state["uri"]
    config = {"model": mcfg.to_dict(), "workers": workers, "epochs": epochs,
              "batch_size": batch_size, "fanouts": fanouts,
              "sample_seed": int(sampling["seed"]), "loss": loss,
              "negatives": negatives, "patience": patience, "valid_triples": valid_triples,
              "valid_candidates": valid_candidates, "seed": seed, "resume": resume, **hyper}
    inputs = {"partitions": partitions}
    if init_from:
        inputs["init_from"] = init_from
        config["warm_start"] = {"max_drift": max_drift, "retrain_every": retrain_every}
    with Stage("train", out, config=config, inputs=inputs, force=force) as st:
        if st.reused:
            return st.manifest
        run_id = uuid.uuid4().hex[:12]
        init_state = _warm_start(st, init_from, graph_uri, mcfg, features_uri, max_drift,
                                 retrain_every) if init_from and not resume else None
        loop_config = {**hyper, "partitions": partitions, "graph": graph_uri,
                       "features": features_uri, "out": out, "model_config": mcfg.to_dict(),
                       "epochs": epochs, "batch_size": batch_size, "fanouts": fanouts,
                       "sample_seed": int(sampling["seed"]), "loss": loss,
                       "negatives": negatives,
                       "patience": patience, "valid_triples": valid_triples,
                       "valid_candidates": valid_candidates, "seed": seed, "threads": threads,
                       "resume": resume, "init_state": init_state, "run_id": run_id,
                       "keep_checkpoints": keep_checkpoints,
                       "log_every_s": 10.0}
        with st.phase("fit"):
            _fit(loop_config, workers, threads, max_failures, ray_address,
                 ray_storage or os.path.join(tempfile.gettempdir(), "kgops-ray-train"), run_id,
                 worker_env)
        with st.phase("write"):
            final = _finish(st, out, mcfg, graph_uri, partitions, features_uri, config, run_id)
        st.metrics.update(final)
        st.counts.update({"nodes": schema.num_nodes, "relations": schema.num_relations,
                          "partitions": parts})
    return st.manifest


def _warm_start(st, init_from: str, graph_uri: str, mcfg, features_uri: str | None,
                max_drift: float | None, retrain_every: int | None) -> str | None:
    """Run the drift guard (:mod:`kg_ops.train.warm`); record its decision and the entity
    mapping; return the URI of the re-indexed initial weights, or None (from scratch)."""
    from kg_ops.train.checkpoints import save_torch
    from kg_ops.train.warm import DEFAULT_MAX_DRIFT, DEFAULT_RETRAIN_EVERY, plan_warm_start

    with st.phase("warm_start"):
        warm = plan_warm_start(
            init_from, graph_uri, mcfg.to_dict(), features_uri,
            DEFAULT_MAX_DRIFT if max_drift is None else max_drift,
            DEFAULT_RETRAIN_EVERY if retrain_every is None else retrain_every)
        st.outputs["entity_map"] = st.uri("entity_map.parquet")
        st.store.write_parquet(st.outputs["entity_map"], warm.entity_map)
        st.extra["warm_start"] = warm.info
        st.counts.update({f"entities_{k}": v for k, v in warm.info["entities"].items()
                          if k in ("kept", "new", "removed")})
        if warm.state is None:
            return None
        uri = st.uri("warm_start", "init.pt")
        save_torch(uri, warm.state)
        return uri


def _fit(loop_config: dict, workers: int, threads: int, max_failures: int,
         ray_address: str | None, ray_storage: str, run_id: str,
         worker_env: dict[str, str] | None = None) -> None:
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from kg_ops.raycluster import init_ray
    from kg_ops.train.loop import train_worker

    init_ray(ray_address, num_cpus=max(2, workers * threads))
    trainer = TorchTrainer(
        train_worker, train_loop_config=loop_config,
        torch_config=TorchConfig(backend="gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=False,
                                               resources_per_worker={"CPU": threads}),
        run_config=ray.train.RunConfig(
            name=f"kgops-train-{run_id}", storage_path=ray_storage,
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            # Ray Train's INFO lines (resources, checkpoints) would flood the relayed log.
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
            worker_runtime_env={"env_vars": dict(worker_env)} if worker_env else None))
    try:
        trainer.fit()
    except Exception as exc:  # Ray wraps worker errors; surface a user error's own message
        cause = exc
        while cause is not None and not isinstance(cause, KGOpsError):
            cause = cause.__cause__ or getattr(cause, "cause", None)
        if isinstance(cause, KGOpsError):
            raise KGOpsError(f"training worker failed: {cause}") from exc
        raise


def _finish(st, out: str, mcfg, graph_uri: str, partitions: str, features_uri: str | None,
            config: dict, run_id: str) -> dict[str, Any]:
    """Write model.pt (best epoch), model_config.json and history.json; return the metrics."""
    import numpy as np

    from kg_ops.train.checkpoints import CheckpointError, load_checkpoint, save_torch

    try:
        last = load_checkpoint(out)
    except CheckpointError:
        last = None
    if last is None or last.get("run_id") != run_id:
        if config["resume"] is None:
            raise KGOpsError(f"{out}: training ended without writing a checkpoint of this run")
        last = load_checkpoint(config["resume"])   # nothing left to train after the resume
    history = last["history"]
    save_torch(st.uri("model.pt"), last["best_model"])
    st.store.write_json(st.uri("model_config.json"), {
        "format": ARTIFACT_FORMAT, **mcfg.to_dict(), "graph": graph_uri,
        "partitions": partitions, "features": features_uri, "training": config,
        "epoch": int(last["best_epoch"] or last["epoch"]),
        "best_valid_mrr": last["best_valid_mrr"]})
    st.store.write_json(st.uri("history.json"), history)
    st.outputs.update({"model": st.uri("model.pt"), "model_config": st.uri("model_config.json"),
                       "history": st.uri("history.json"), "checkpoints": st.uri("checkpoints")})
    epoch_s = [h["epoch_s"] for h in history]
    eps = [h["edges_per_s"] for h in history]
    return {"epochs": len(history), "best_epoch": int(last["best_epoch"]),
            "best_valid_mrr": float(last["best_valid_mrr"]),
            "valid_mrr_kind": "sampled (type-constrained candidates, unfiltered)",
            "final_loss": float(history[-1]["loss"]) if history else None,
            "epoch_s": float(np.mean(epoch_s)) if epoch_s else None,
            "edges_per_s": float(np.mean(eps)) if eps else None,
            "workers": int(config["workers"]), "stopped_early": bool(last["stopped_early"])}

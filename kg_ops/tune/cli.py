"""``kgops tune``: search the training recipe with Ray Tune, each trial a Ray Train run of
``kgops train`` on the same partitions.

Random search over the declared space (:mod:`kg_ops.tune.space`, Tune's seeded
``BasicVariantGenerator``; the first trial trains the base recipe when the space holds it),
ASHA stopping trials whose best validation MRR trails at a rung, within ``--budget-s`` and
``--trials``. Writes under ``--out``: ``trials/<id>/`` (each trial's
train output; complete trials carry their own manifest), ``trials.json``, ``report.html`` +
``trials.png`` and ``_manifest.json`` last, with every trial (options, epochs, best validation
MRR, status) and the best recipe. The best trial's folder is always a complete ``kgops train``
output (``kgops evaluate --model`` takes it); ``kgops train --tuned <out>`` trains with the
best recipe.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
import uuid
from typing import Any

from kg_ops.config import TrainConfig
from kg_ops.config.tune import TRAIN_OPTIONS_NOT_TUNED, TuneConfig
from kg_ops.errors import KGOpsError

HELP = ("Tune the training recipe with Ray Tune (ASHA early stopping, a time and trial budget), "
        "each trial a Ray Train run of `kgops train` on the same partitions; writes every trial, "
        "the best recipe, its model and a report.")
log = logging.getLogger("kg_ops.tune")


def add_arguments(p: argparse.ArgumentParser) -> None:
    TuneConfig.add_arguments(p)
    group = p.add_argument_group("the recipe every trial starts from (`kgops train` options; "
                                 "the space overrides those it samples)")
    TrainConfig.add_arguments(group, exclude=(*TRAIN_OPTIONS_NOT_TUNED, *TuneConfig.names()))


def run(args: argparse.Namespace) -> int:
    config = TuneConfig.from_args(args)
    base = {n: getattr(args, n) for n in TrainConfig.names()
            if hasattr(args, n) and n not in TRAIN_OPTIONS_NOT_TUNED}
    tune(config, TrainConfig(partitions=config.partitions, out=config.out, **base),
         force=args.force)
    return 0


def tune(config: TuneConfig, base: TrainConfig | None = None, *,
         force: bool = False) -> dict[str, Any]:
    """Run the tune stage; returns its manifest. ``base``: the recipe trials start from
    (default: `kgops train`'s defaults)."""
    from kg_ops.manifest import Stage, require_manifest
    from kg_ops.store import normalize
    from kg_ops.tune.space import SearchSpace

    config = config.replace(partitions=normalize(config.partitions), out=normalize(config.out))
    base = (base or TrainConfig(partitions="", out="")).replace(
        partitions=config.partitions, out=config.out, seed=config.seed,
        ray_address=config.ray_address, ray_storage=config.ray_storage)
    space = SearchSpace.load(config.space, base)
    parts = int(require_manifest(config.partitions, "partition")["outputs"]["parts"])
    recorded = {**config.recorded(), "space": space.domains, "recipe": base.recorded()}
    with Stage("tune", config.out, config=recorded, inputs={"partitions": config.partitions},
               force=force) as st:
        if st.reused:
            return st.manifest
        removed = st.store.delete_prefix(st.uri("trials"))
        if removed:
            log.info("tune: removed %d file(s) of an earlier search's trials in %s", removed,
                     config.out)
        with st.phase("search"):
            records = _search(config, base, space, parts)
        with st.phase("best"):
            trials, best = _settle(records, config, base)
        with st.phase("report"):
            from kg_ops.tune.report import write_report

            st.store.write_json(st.uri("trials.json"), trials)
            st.outputs.update(write_report(config.out, trials, best, context={
                "partitions": config.partitions, "space": space.source,
                "budget_s": config.budget_s, "trials": config.trials,
                "search_s": st.timings.get("search_s")}))
        st.outputs.update({"model": best["model"], "trials": st.uri("trials.json")})
        st.extra.update({"best": best, "trials": [_summary(t) for t in trials]})
        st.metrics.update(_metrics(trials, best, config))
        st.counts.update({"trials": len(trials), "partitions": parts})
    return st.manifest


def _search(config: TuneConfig, base: TrainConfig, space, parts: int) -> list:
    """Run the Tune experiment; the records of every trial that started."""
    import ray
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from kg_ops.raycluster import init_ray
    from kg_ops.tune.trials import METRIC, recorder_and_scheduler, run_trial

    per_trial = parts * base.threads
    init_ray(config.ray_address, num_cpus=max(os.cpu_count() or 2, per_trial))
    cpus = int(ray.cluster_resources().get("CPU", 1))
    if cpus < per_trial:
        raise KGOpsError(f"a trial needs {per_trial} CPUs ({parts} Ray Train workers x "
                         f"--threads {base.threads}) but the Ray cluster has {cpus}")
    concurrent = config.concurrent or max(1, cpus // per_trial)
    grace = min(config.grace_epochs, base.epochs)
    recorder, scheduler = recorder_and_scheduler(base, space, config.out, grace,
                                                 config.reduction_factor)
    storage = config.ray_storage or os.path.join(tempfile.gettempdir(), "kgops-ray-tune")
    # The trial itself only drives its Ray Train run: the training workers hold the CPUs, as
    # with the train stage's driver. Tune refuses an empty request, and any fraction of a CPU
    # would keep the last whole CPU from a worker (2 CPUs ran 1 trial at a time): a token
    # 1 MiB of Ray's memory resource instead.
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=base, space=space, out=config.out),
        {"cpu": 0, "memory": 1 << 20})
    first = space.base_point(base)
    log.info("tune: the first trial trains %s", "the base recipe (the defaults and the options "
             "given)" if first else "a sampled recipe: the base recipe lies outside the space")
    tuner = tune.Tuner(
        trainable, param_space=space.param_space(),
        tune_config=tune.TuneConfig(
            metric=METRIC, mode="max", scheduler=scheduler, num_samples=config.trials,
            time_budget_s=config.budget_s,
            # (Tune ignores TuneConfig.max_concurrent_trials with this search algorithm)
            search_alg=BasicVariantGenerator(random_state=config.seed,
                                             max_concurrent=concurrent,
                                             points_to_evaluate=[first] if first else None)),
        run_config=tune.RunConfig(name=f"kgops-tune-{uuid.uuid4().hex[:12]}",
                                  storage_path=storage, callbacks=[recorder], verbose=0))
    log.info("tune: up to %d trials, %d at a time, budget %.0fs, ASHA grace %d epochs, "
             "reduction %d, %d epochs max per trial; space: %s", config.trials, concurrent,
             config.budget_s, grace, config.reduction_factor, base.epochs,
             space.source)
    t0 = time.perf_counter()
    tuner.fit()
    log.info("tune: search ended after %.0fs", time.perf_counter() - t0)
    return list(recorder.trials.values())


def _settle(records: list, config: TuneConfig, base: TrainConfig):
    """Each trial's final status, and the best trial made a complete train output."""
    from kg_ops.manifest import read_manifest
    from kg_ops.tune.space import tunable_options
    from kg_ops.tune.trials import trial_recipe

    trials = []
    for rec in records:
        manifest = read_manifest(rec.out) if rec.status != "error" else None
        if rec.status == "error":
            status = "error"
        elif manifest is not None:
            status = ("completed (early stop: patience)"
                      if manifest["metrics"].get("stopped_early") else "completed")
        elif rec.stopped_by:
            status = f"stopped by {rec.stopped_by}"
        else:
            status = "stopped at the time budget"
        trials.append({**rec.to_dict(), "status": status, "complete": manifest is not None})
    ranked = [t for t in trials if t["best_valid_mrr"] is not None]
    if not ranked:
        errors = "; ".join(f"{t['trial_id']}: {t['error']}" for t in trials if t["error"])
        raise KGOpsError(f"tune: no trial finished an epoch within --budget-s "
                         f"{config.budget_s:g} ({len(trials)} started"
                         f"{'; errors: ' + errors if errors else ''}). Raise --budget-s, or "
                         "make trials cheaper (--epochs, smaller dims in the space).")
    best = max(ranked, key=lambda t: t["best_valid_mrr"])
    sealed = not best["complete"]
    if sealed:
        _seal(best, base)
    recipe_config = trial_recipe(base, best["options"])
    return trials, {"trial_id": best["trial_id"], "valid_mrr": best["best_valid_mrr"],
                    "valid_mrr_kind": f"--valid-ranking {recipe_config.valid_ranking} (per "
                                      "epoch; kg_ops.train.validation)",
                    "epochs": best["epochs"], "status": best["status"],
                    "options": best["options"], "model": best["out"],
                    "sealed_from_checkpoint": sealed,
                    "config": {n: getattr(recipe_config, n) for n in tunable_options()}}


def _seal(best: dict, base: TrainConfig) -> None:
    """A best trial stopped before its train stage finished: finish that stage from its newest
    checkpoint without training further (its best epoch's weights), so its folder is a
    complete ``kgops train`` output."""
    from kg_ops.train.checkpoints import latest_pointer
    from kg_ops.train.cli import train
    from kg_ops.tune.trials import trial_recipe

    pointer = latest_pointer(best["out"])
    if pointer is None:
        raise KGOpsError(f"tune: the best trial {best['trial_id']} left no checkpoint in "
                         f"{best['out']}; rerun with a larger --budget-s")
    log.info("tune: best trial %s was stopped after epoch %d; writing its train output from "
             "that checkpoint", best["trial_id"], pointer["epoch"])
    config = trial_recipe(base, best["options"]).replace(
        out=best["out"], resume=pointer["uri"], epochs=pointer["epoch"])
    train(config, announce=False)
    best["complete"] = True


def _summary(trial: dict) -> dict[str, Any]:
    """A trial in the manifest (its per-epoch history lives in trials.json)."""
    return {k: v for k, v in trial.items() if k != "history"}


def _metrics(trials: list[dict], best: dict, config: TuneConfig) -> dict[str, Any]:
    count = {"completed": 0, "ASHA": 0, "budget": 0, "error": 0}
    for t in trials:
        key = ("completed" if t["status"].startswith("completed") else "ASHA"
               if "ASHA" in t["status"] else "error" if t["status"] == "error" else "budget")
        count[key] += 1
    return {"best_valid_mrr": best["valid_mrr"], "valid_mrr_kind": best["valid_mrr_kind"],
            "trials_started": len(trials), "trials_requested": config.trials,
            "trials_completed": count["completed"], "trials_stopped_asha": count["ASHA"],
            "trials_stopped_budget": count["budget"], "trials_failed": count["error"],
            "epochs_total": sum(t["epochs"] for t in trials)}

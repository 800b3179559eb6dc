"""``kgops tune`` options. The recipe every trial starts from is a :class:`TrainConfig` (every
``kgops train`` option, given to ``kgops tune`` as to ``kgops train``); the search space then
overrides the options it declares (:mod:`kg_ops.tune.space`)."""

from __future__ import annotations

import dataclasses

from kg_ops.config.options import StageConfig, option

# `kgops train` options a tune run does not take from its command line: the trials' own
# (one output each, one worker per partition, no resume or warm start).
TRAIN_OPTIONS_NOT_TUNED = ("partitions", "out", "workers", "resume", "init_from", "max_drift",
                           "retrain_every", "tuned")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TuneConfig(StageConfig):
    """Search the training recipe with Ray Tune: each trial a `kgops train` run (Ray Train) on
    the same partitions, ASHA stopping poor trials early, within a time and trial budget."""

    stage = "tune"

    partitions: str = option(help="URI of a `kgops partition` output (every trial trains on "
                             "it)", recorded=False)
    out: str = option(help="output URI (local path, file:// or s3://)", recorded=False)
    budget_s: float = option(1800.0, minimum=1, help="wall-clock budget of the search in "
                             "seconds (Ray Tune's time_budget_s): trials still running then "
                             "are stopped and the best so far wins")
    trials: int = option(16, minimum=1, help="trial recipes sampled from the space (the "
                         "budget may end the search sooner)")
    space: str = option("default", help="search space: default, or a JSON file (local or "
                        "s3://) mapping `kgops train` options to domains, e.g. "
                        '{"lr": {"loguniform": [0.0003, 0.003]}, "dropout": {"uniform": '
                        '[0, 0.4]}, "batch_size": {"choice": [512, 1024]}} (README)')
    grace_epochs: int = option(5, minimum=1, help="ASHA: epochs every trial trains before it "
                               "can be stopped early")
    reduction_factor: int = option(3, minimum=2, help="ASHA: 1 in this many trials continues "
                                   "at each rung")
    seed: int = option(0, help="seed of the search (which recipes are sampled) and of every "
                       "trial's training")
    concurrent: int | None = option(None, minimum=1, recorded=False,
                                    help="trials run at once (default: as many as the Ray "
                                         "cluster's CPUs hold, a trial taking one CPU per "
                                         "worker and thread)")
    ray_address: str | None = option(None, recorded=False, help="Ray cluster (default: "
                                     "RAY_ADDRESS or a local Ray instance)")
    ray_storage: str | None = option(None, recorded=False, help="Ray Tune's and Ray Train's "
                                     "run storage (small files; default: a local temp "
                                     "directory)")

"""``kgops train --tuned T``: train with the best recipe a ``kgops tune`` run found (a
platform re-tunes now and then and trains every night with the winner)."""

from __future__ import annotations

import logging

from kg_ops.config import TrainConfig

log = logging.getLogger("kg_ops.train")


def apply_tuned(config: TrainConfig) -> TrainConfig:
    """``config`` with the tune run's best recipe for every option left at its default (an
    option given explicitly wins, as with ``--preset``)."""
    from kg_ops.manifest import require_manifest

    manifest = require_manifest(config.tuned, "tune")
    recipe = dict(manifest["best"]["config"])
    names, defaults = set(TrainConfig.names()), TrainConfig.defaults()
    unknown = sorted(set(recipe) - names)
    if unknown:
        log.warning("train: %s: recipe option(s) %s are not `kgops train` options of this "
                    "version; ignored", config.tuned, ", ".join(unknown))
    changes = {k: v for k, v in recipe.items()
               if k in names and getattr(config, k) == defaults[k] and v != defaults[k]}
    log.info("train: tuned recipe from %s (trial %s, validation MRR %.4f): %s", config.tuned,
             manifest["best"]["trial_id"], manifest["best"]["valid_mrr"],
             ", ".join(f"{k}={v}" for k, v in changes.items()) or "the defaults")
    return config.replace(**changes)

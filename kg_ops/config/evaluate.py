"""``kgops evaluate`` options."""

from __future__ import annotations

import dataclasses

from kg_ops.config.fold_in import FoldIn
from kg_ops.config.options import ConfigError, StageConfig, option

SPLITS = ("test", "valid")


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvaluateConfig(StageConfig):
    """Evaluate a trained model: filtered ranking, ROC-AUC, report, embeddings export."""

    stage = "evaluate"

    model: str = option(help="URI of a `kgops train` output directory", recorded=False)
    graph: str = option(help="URI of the graph the model was trained on", recorded=False)
    out: str = option(help="output URI (local path, file:// or s3://)", recorded=False)
    inductive: bool = option(False, recorded=False,
                             help="--graph is another version of the model's graph (e.g. the "
                                  "full_graph of `kgops split-entities`): entities are matched "
                                  "by key and new ones embedded from their attributes and "
                                  "neighbours, as `kgops embed` does (the protocol records it)")
    features: str | None = option(None, recorded=False,
                                  help="with --inductive: --graph's features encoded with the "
                                       "model's encoders (default: the model's encoders "
                                       "applied here)")
    fold_in_steps: int = option(FoldIn.steps, minimum=0,
                                help="with --inductive: Adagrad steps fitting the new entities' "
                                     "learned rows to their edges, the model frozen (0: keep "
                                     "their type's mean row), as `kgops embed` does")
    fold_in_lr: float = option(FoldIn.lr, minimum=1e-12, help="with --inductive: the fold-in's "
                               "learning rate")
    fold_in_context: float = option(FoldIn.context, minimum=0, help="with --inductive: other "
                                    "training edges sampled per new entity's edge in the "
                                    "fold-in")
    fold_in_norm_quantile: float = option(FoldIn.norm_quantile, minimum=0, maximum=1,
                                          help="with --inductive: the fold-in's norm cap (a "
                                               "quantile of the trained rows' norms)")
    split: str = option("test", choices=SPLITS, help="split to rank")
    batch_size: int | None = option(None, minimum=1, recorded=False,
                                    help="ranking queries per batch (default: from "
                                         "--memory-mib)")
    memory_mib: float = option(256.0, minimum=1, recorded=False,
                               help="working-memory budget for one batch of scores")
    embed_batch_size: int = option(65536, minimum=1, recorded=False,
                                   help="entities per batch during full-graph inference")
    max_queries: int | None = option(None, minimum=1, help="evaluate a seeded random subset "
                                     "of this many triples (recorded)")
    auc_negatives: int = option(1, minimum=1, help="type-constrained negatives per positive "
                                "for ROC-AUC")
    seed: int = option(0, help="seed of the query subset and the AUC negatives")
    threads: int = option(0, minimum=0, recorded=False,
                          help="torch CPU threads (0: torch default)")

    def validate(self) -> None:
        if self.features and not self.inductive:
            raise ConfigError("--features is only read with --inductive")

    @property
    def fold_in(self) -> FoldIn:
        return FoldIn(self.fold_in_steps, self.fold_in_lr, self.fold_in_context,
                      self.fold_in_norm_quantile)

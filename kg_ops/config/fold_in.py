"""The fold-in's settings (:mod:`kg_ops.models.fold_in`), shared by ``kgops embed`` and
``kgops evaluate --inductive``; torch-free so that option parsing and DAG files stay light."""

from __future__ import annotations

from dataclasses import dataclass

from kg_ops.config.options import ConfigError


@dataclass(frozen=True)
class FoldIn:
    """``steps`` full-batch Adagrad steps at ``lr`` (0 steps: no fold-in); ``context`` other
    training edges sampled per new entity's edge, which stand for the rest of the graph in the
    objective (0: the new entities' edges alone); ``norm_quantile``: after each step a new row
    longer than this quantile of its type's trained rows' norms is scaled back to it (None: no
    cap). The defaults are the best measured on a
    held-out entity split (``benchmarks/bench_warm_start.py --sections inductive``)."""

    steps: int = 10
    lr: float = 0.1
    context: float = 0.25
    norm_quantile: float | None = 0.5

    def __post_init__(self) -> None:
        if self.norm_quantile is not None and not 0 <= self.norm_quantile <= 1:
            raise ConfigError(f"fold-in: norm_quantile must be in [0, 1], not "
                              f"{self.norm_quantile}")
        if self.steps < 0 or not self.lr > 0 or self.context < 0:
            raise ConfigError(f"fold-in: steps must be >= 0, lr > 0 and context >= 0 (got "
                              f"steps {self.steps}, lr {self.lr}, context {self.context})")

    def to_dict(self) -> dict:
        return {"steps": self.steps, "lr": self.lr, "context": self.context,
                "norm_quantile": self.norm_quantile}

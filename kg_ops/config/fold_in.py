"""The fold-in's settings (:mod:`kg_ops.models.fold_in`), shared by ``kgops embed`` and
``kgops evaluate --inductive``; torch-free so that option parsing and DAG files stay light."""

from __future__ import annotations

from dataclasses import dataclass

from kg_ops.config.options import ConfigError


@dataclass(frozen=True)
class FoldIn:
    """``steps`` full-batch Adagrad steps at ``lr`` (0 steps: no fold-in). The default is the
    best measured on a held-out entity split (``benchmarks/bench_warm_start.py --sections
    inductive``)."""

    steps: int = 10
    lr: float = 0.1

    def __post_init__(self) -> None:
        if self.steps < 0 or not self.lr > 0:
            raise ConfigError(f"fold-in: steps must be >= 0 and lr > 0 (got steps "
                              f"{self.steps}, lr {self.lr})")

    def to_dict(self) -> dict:
        return {"steps": self.steps, "lr": self.lr}

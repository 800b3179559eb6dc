"""The optimiser of a training run: the entity embedding table is updated row-wise by Adagrad
(the default, :class:`RowAdagrad`) or Adam (:class:`RowAdam`); every other (dense) parameter
(GNN weights, relation vectors) by Adam.

The embedding table gets sparse gradients (only the rows a step's computation graph touched);
the row-wise optimisers update only those rows, so a step costs what its batch touches, not what
the graph holds. Weight decay applies to the dense parameters; embeddings are kept small by the
loss's L2 / N3 terms on the embeddings a batch uses.

Why Adagrad for the table: it is what tuned KGE uses (LibKGE's searches settle on it for most
models), and on CoDEx it reaches a given validation MRR in a fraction of Adam's epochs; the
GNN's dense weights train better with Adam at 1e-3 than with Adagrad at the table's rate
(``benchmarks/bench_train.py``, the optimiser rows).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from kg_ops.config.train import OPTIMIZERS
from kg_ops.errors import KGOpsError


class RowAdam(torch.optim.SparseAdam):
    """``SparseAdam`` with the same arithmetic (and state, so checkpoints load either way), on
    the touched rows gathered once with index ops instead of ``sparse_mask`` and sparse
    additions: the embedding table's update is a large part of a step on a big graph."""

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("RowAdam takes no closure")
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, group, beta1, beta2)

    def _update(self, p, group, beta1: float, beta2: float) -> None:
        grad = p.grad if not group.get("maximize", False) else -p.grad
        if not grad.is_sparse:
            raise RuntimeError("RowAdam needs sparse gradients; use Adam for dense ones")
        state = self.state[p]
        if len(state) == 0:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        state["step"] += 1
        grad = grad.coalesce()
        rows, values = grad.indices()[0], grad.values()
        if values.numel() == 0:
            return
        exp_avg, exp_avg_sq, step = state["exp_avg"], state["exp_avg_sq"], state["step"]
        old_avg = exp_avg.index_select(0, rows)
        avg_update = values.sub(old_avg).mul_(1 - beta1)
        old_sq = exp_avg_sq.index_select(0, rows)
        sq_update = values.pow(2).sub_(old_sq).mul_(1 - beta2)
        numer = avg_update.add_(old_avg)
        exp_avg.index_copy_(0, rows, numer)
        denom = sq_update.add_(old_sq)
        exp_avg_sq.index_copy_(0, rows, denom)
        denom = denom.sqrt().add_(group["eps"])
        step_size = float(group["lr"]) * math.sqrt(1 - beta2 ** step) / (1 - beta1 ** step)
        p.index_add_(0, rows, -step_size * numer.div_(denom))


class RowAdagrad(torch.optim.Adagrad):
    """``Adagrad`` on sparse gradients with the same arithmetic and state as torch's (so
    checkpoints load either way), on the touched rows gathered once with index ops instead of
    ``sparse_mask`` and sparse additions."""

    def __init__(self, params, lr: float = 0.1, eps: float = 1e-10):
        super().__init__(params, lr=lr, eps=eps)

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("RowAdagrad takes no closure")
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, group)

    def _update(self, p, group) -> None:
        grad = p.grad if not group.get("maximize", False) else -p.grad
        if not grad.is_sparse:
            raise RuntimeError("RowAdagrad needs sparse gradients; use Adagrad for dense ones")
        state = self.state[p]
        state["step"] += 1
        grad = grad.coalesce()
        rows, values = grad.indices()[0], grad.values()
        if values.numel() == 0:
            return
        clr = group["lr"] / (1 + (float(state["step"]) - 1) * group["lr_decay"])
        total = state["sum"].index_select(0, rows).add_(values.pow(2))
        state["sum"].index_copy_(0, rows, total)
        p.index_add_(0, rows, values.div_(total.sqrt_().add_(group["eps"])), alpha=-clr)


def sparse_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters with sparse gradients (``nn.Embedding(sparse=True)`` tables)."""
    return [m.weight for m in model.modules() if isinstance(m, nn.Embedding) and m.sparse]


class TrainingOptimizer:
    """One object with ``zero_grad`` / ``step`` / ``state_dict`` / ``load_state_dict`` over
    the dense and the sparse optimiser. ``optimizer`` (one of :data:`OPTIMIZERS`) and ``lr``
    are the embedding table's; the dense parameters use Adam at ``dense_lr`` (default ``lr``)."""

    def __init__(self, model: nn.Module, lr: float, weight_decay: float = 0.0,
                 optimizer: str = "adagrad", dense_lr: float | None = None):
        if optimizer not in OPTIMIZERS:
            raise KGOpsError(f"optimizer {optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
        sparse = sparse_parameters(model)
        ids = {id(p) for p in sparse}
        dense = [p for p in model.parameters() if id(p) not in ids]
        self.name = optimizer
        self.dense = torch.optim.Adam(dense, lr=lr if dense_lr is None else dense_lr,
                                      weight_decay=weight_decay)
        table = RowAdam if optimizer == "adam" else RowAdagrad
        self.sparse = table(sparse, lr=lr) if sparse else None

    def zero_grad(self) -> None:
        self.dense.zero_grad(set_to_none=True)
        if self.sparse is not None:
            self.sparse.zero_grad(set_to_none=True)

    def step(self) -> None:
        self.dense.step()
        if self.sparse is not None:
            self.sparse.step()

    def scale_lr(self, factor: float) -> float:
        """Multiply every learning rate by ``factor`` (the plateau schedule); returns the new
        rate of the embedding table (of the dense optimiser when there is no table). Rates live in the optimisers' state, so a resumed run
        continues with the decayed rate."""
        for opt in (self.dense, self.sparse):
            for group in opt.param_groups if opt is not None else ():
                group["lr"] *= factor
        return float((self.sparse or self.dense).param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        return {"dense": self.dense.state_dict(), "name": self.name,
                "sparse": self.sparse.state_dict() if self.sparse is not None else None}

    def load_state_dict(self, state: dict[str, Any], source: str = "checkpoint") -> None:
        if not {"dense", "sparse"} <= set(state):
            raise KGOpsError(f"{source}: optimiser state of an older kg_ops version (one "
                             "dense Adam); it cannot continue with sparse embeddings. "
                             "Retrain without --resume.")
        saved = state.get("name", "adam")        # states before the choice were Adam's
        if saved != self.name:
            raise KGOpsError(f"{source}: the checkpoint was trained with --optimizer {saved}, "
                             f"this run uses --optimizer {self.name}. Resume with "
                             f"--optimizer {saved}, or retrain without --resume.")
        self.dense.load_state_dict(state["dense"])
        if self.sparse is not None and state["sparse"] is not None:
            self.sparse.load_state_dict(state["sparse"])

"""The optimisers of a training run (:class:`TrainingOptimizer`): the shallow KGE part of the
model (entity embedding table, relation vectors) by Adagrad (the default) or Adam, the GNN's
dense weights by Adam.

The embedding table gets sparse gradients (only the rows a step's computation graph touched);
the row-wise optimisers (:class:`RowAdagrad`, :class:`RowAdam`) update only those rows, so a
step costs what its batch touches, not what the graph holds. Weight decay applies to the dense
parameters; embeddings are kept small by the loss's L2 / N3 terms on the embeddings a batch
uses.

Why (``benchmarks/bench_train.py``, CoDEx-S, filtered validation MRR at epoch 5): Adagrad 0.1
on the table and relations reaches in 5 epochs what Adam 1e-3 reaches in 10-15 (tuned KGE's
choice too: LibKGE's searches settle on it for most models); the relation vectors need the
table's rate (under Adam 1e-3 the shallow ComplEx lost 0.05); the GNN's weights train better
with Adam 1e-3 than with Adagrad at the table's rate.
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
    the optimisers of a model's three kinds of parameters:

    * ``table``: the entity embedding table (sparse rows), by ``optimizer`` at ``lr``;
    * ``decoder``: the relation vectors, by the same optimiser at ``lr`` (they are the other
      half of the shallow KGE model and learn at its pace);
    * ``encoder``: every other (dense) weight, the GNN's, by Adam at ``dense_lr``."""

    def __init__(self, model: nn.Module, lr: float, weight_decay: float = 0.0,
                 optimizer: str = "adagrad", dense_lr: float | None = None):
        if optimizer not in OPTIMIZERS:
            raise KGOpsError(f"optimizer {optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
        self.name = optimizer
        table = sparse_parameters(model)
        decoder = list(model.decoder.parameters())
        taken = {id(p) for p in table + decoder}
        encoder = [p for p in model.parameters() if id(p) not in taken]
        row_opt, dense_opt = ((RowAdam, torch.optim.Adam) if optimizer == "adam"
                              else (RowAdagrad, torch.optim.Adagrad))
        self.parts: dict[str, torch.optim.Optimizer] = {}
        if table:
            self.parts["table"] = row_opt(table, lr=lr)
        if decoder:
            self.parts["decoder"] = dense_opt(decoder, lr=lr, weight_decay=weight_decay)
        if encoder:
            self.parts["encoder"] = torch.optim.Adam(
                encoder, lr=lr if dense_lr is None else dense_lr, weight_decay=weight_decay)

    def zero_grad(self) -> None:
        for opt in self.parts.values():
            opt.zero_grad(set_to_none=True)

    def step(self) -> None:
        for opt in self.parts.values():
            opt.step()

    def scale_lr(self, factor: float) -> float:
        """Multiply every learning rate by ``factor`` (the plateau schedule); returns the new
        rate of the embedding table. Rates live in the optimisers' state, so a resumed run
        continues with the decayed rate."""
        for opt in self.parts.values():
            for group in opt.param_groups:
                group["lr"] *= factor
        return float(next(iter(self.parts.values())).param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "parts": {k: o.state_dict() for k, o in self.parts.items()}}

    def load_state_dict(self, state: dict[str, Any], source: str = "checkpoint") -> None:
        if "parts" not in state:
            raise KGOpsError(f"{source}: optimiser state of an older kg_ops version; it "
                             "cannot continue with this version's optimisers. Retrain "
                             "without --resume.")
        if state["name"] != self.name:
            raise KGOpsError(f"{source}: the checkpoint was trained with --optimizer "
                             f"{state['name']}, this run uses --optimizer {self.name}. Resume "
                             f"with --optimizer {state['name']}, or retrain without --resume.")
        if set(state["parts"]) != set(self.parts):
            raise KGOpsError(f"{source}: optimiser state for {sorted(state['parts'])}, this "
                             f"model has {sorted(self.parts)}; it is not this model's "
                             "checkpoint. Retrain without --resume.")
        for k, opt in self.parts.items():
            opt.load_state_dict(state["parts"][k])

    def carry_state(self, state: dict[str, Any], source: str) -> None:
        """Load an earlier run's state (a warm start) but keep this run's learning rates."""
        rates = {k: [g["lr"] for g in o.param_groups] for k, o in self.parts.items()}
        self.load_state_dict(state, source=source)
        for k, opt in self.parts.items():
            for group, lr in zip(opt.param_groups, rates[k], strict=True):
                group["lr"] = lr

"""The optimiser of a training run: ``SparseAdam`` for the entity embedding table, ``Adam``
for every other (dense) parameter.

The embedding table gets sparse gradients (only the rows a step's computation graph touched);
``SparseAdam`` updates only those rows ("lazy Adam"), so a step costs what its batch touches,
not what the graph holds. Weight decay applies to the dense parameters; embeddings are kept
small by the loss's L2 term on the embeddings a batch uses.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kg_ops.errors import KGOpsError


def sparse_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters with sparse gradients (``nn.Embedding(sparse=True)`` tables)."""
    return [m.weight for m in model.modules() if isinstance(m, nn.Embedding) and m.sparse]


class TrainingOptimizer:
    """One object with ``zero_grad`` / ``step`` / ``state_dict`` / ``load_state_dict`` over
    the dense and the sparse optimiser."""

    def __init__(self, model: nn.Module, lr: float, weight_decay: float = 0.0):
        sparse = sparse_parameters(model)
        ids = {id(p) for p in sparse}
        dense = [p for p in model.parameters() if id(p) not in ids]
        self.dense = torch.optim.Adam(dense, lr=lr, weight_decay=weight_decay)
        self.sparse = torch.optim.SparseAdam(sparse, lr=lr) if sparse else None

    def zero_grad(self) -> None:
        self.dense.zero_grad(set_to_none=True)
        if self.sparse is not None:
            self.sparse.zero_grad(set_to_none=True)

    def step(self) -> None:
        self.dense.step()
        if self.sparse is not None:
            self.sparse.step()

    def state_dict(self) -> dict[str, Any]:
        return {"dense": self.dense.state_dict(),
                "sparse": self.sparse.state_dict() if self.sparse is not None else None}

    def load_state_dict(self, state: dict[str, Any], source: str = "checkpoint") -> None:
        if set(state) != {"dense", "sparse"}:
            raise KGOpsError(f"{source}: optimiser state of an older kg_ops version (one "
                             "dense Adam); it cannot continue with sparse embeddings. "
                             "Retrain without --resume.")
        self.dense.load_state_dict(state["dense"])
        if self.sparse is not None and state["sparse"] is not None:
            self.sparse.load_state_dict(state["sparse"])

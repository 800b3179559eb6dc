"""The input layer: an entity's first representation, from its attributes and a learned row.

The published system's attribute-embedding layer is a 1-hop aggregation over the entity's
attribute "neighbours" without a self-loop: every attribute type (a ``node_type/attribute``
block of encoded features) has its own weight matrix, and the mean of an entity's transformed
attribute blocks is its attribute vector. Two ways of using it (``ATTRIBUTE_INPUTS``):

* ``add`` (the default): input = learned row + attribute vector. The learned row keeps what the
  entity's own edges taught (a shallow KGE model's whole input); the attribute vector adds what
  entities with similar attributes share, and is all a new entity has beyond its type's mean row
  (:mod:`kg_ops.models.inductive`).
* ``replace`` (the published system): input = attribute vector, the learned row only for an
  entity without attributes. Where every entity has attributes (CoDEx's types, Debian's
  sections) no entity has a parameter of its own, and entities with the same attributes are
  indistinguishable before message passing (bench_attributes measures what that costs).

With no features given, every entity's input is its learned row.

Features are data, not parameters: :class:`NodeFeatures` aligns the encoded blocks to an id
space (a partition's local ids, or the graph's global ids for inference) and is passed in.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from kg_ops.config.train import ATTRIBUTE_INPUTS
from kg_ops.errors import KGOpsError


class FeatureMismatchError(KGOpsError):
    """Encoded features do not match what the model was built for."""


def block_key(node_type: str, attribute: str) -> str:
    return f"{node_type}/{attribute}"


def _module_name(key: str) -> str:
    """ModuleDict keys may not contain dots; keep them readable and unique."""
    if not re.search(r"[^0-9A-Za-z_]", key):
        return key
    return re.sub(r"[^0-9A-Za-z_]", "_", key) + "_" + hashlib.sha1(key.encode()).hexdigest()[:8]


def _blocks_of(blocks: Any) -> list[Any]:
    """Accept the encode stage's ``FeatureBlocks`` container or any iterable of blocks."""
    if blocks is None:
        return []
    inner = getattr(blocks, "blocks", None)
    return list(inner if inner is not None else blocks) if not isinstance(blocks, dict) \
        else list(blocks.values())


@dataclass
class NodeFeatures:
    """Encoded attribute blocks aligned to an id space of ``size`` ids.

    ``rows[k][i]`` is the row of id ``i`` in ``values[k]`` or -1 when id ``i`` has no value for
    block ``keys[k]``."""

    keys: list[str]
    rows: list[torch.Tensor]
    values: list[torch.Tensor]
    size: int
    source: str = ""
    kinds: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_blocks(cls, blocks: Any, node_ids: np.ndarray, source: str = "") -> NodeFeatures:
        """``node_ids[i]`` is the global id of position ``i`` of the id space. Each block has
        ``node_type``, ``attribute``, ``kind``, ``node_ids`` (global) and ``values`` (n, dim)."""
        node_ids = np.asarray(node_ids, dtype=np.int64)
        order = np.argsort(node_ids, kind="stable")
        sorted_ids = node_ids[order]
        keys, rows, values, kinds = [], [], [], {}
        for b in _blocks_of(blocks):
            key = block_key(b.node_type, b.attribute)
            vals = np.asarray(b.values, dtype=np.float32)
            ids = np.asarray(b.node_ids, dtype=np.int64)
            if vals.ndim != 2 or len(vals) != len(ids):
                raise FeatureMismatchError(f"{source}: feature block {key} has values of shape "
                                           f"{vals.shape} for {len(ids)} nodes; re-run "
                                           "`kgops encode`")
            row = np.full(len(node_ids), -1, dtype=np.int64)
            if len(sorted_ids) and len(ids):
                pos = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
                hit = sorted_ids[pos] == ids
                row[order[pos[hit]]] = np.flatnonzero(hit)
            keys.append(key)
            rows.append(torch.from_numpy(row))
            values.append(torch.from_numpy(np.ascontiguousarray(vals)))
            kinds[key] = str(getattr(b, "kind", ""))
        return cls(keys=keys, rows=rows, values=values, size=len(node_ids), source=source,
                   kinds=kinds)

    @property
    def dims(self) -> dict[str, int]:
        return {k: int(v.shape[1]) for k, v in zip(self.keys, self.values, strict=True)}

    def __iter__(self) -> Iterable[tuple[str, torch.Tensor, torch.Tensor]]:
        return iter(zip(self.keys, self.rows, self.values, strict=True))


class AttributeEmbedding(nn.Module):
    """Input features of entities: a learned row plus (``add``) or instead of (``replace``) the
    mean of per-attribute-type linear maps of their attribute blocks (see the module docstring).

    The embedding table has sparse gradients: a training step touches only the rows of its
    computation graph, and with millions of entities a dense gradient and a dense Adam update
    of the whole table cost seconds per step (2.8M x 64 here: 3 s dense, 0.15 s sparse with
    ``SparseAdam``). Training pairs it with ``torch.optim.SparseAdam`` (see
    :mod:`kg_ops.train.optim`)."""

    def __init__(self, num_nodes: int, dim: int, block_dims: dict[str, int] | None = None,
                 mode: str = "add"):
        super().__init__()
        if mode not in ATTRIBUTE_INPUTS:
            raise ValueError(f"attribute input must be one of {ATTRIBUTE_INPUTS}, not {mode!r}")
        self.num_nodes, self.dim, self.mode = int(num_nodes), int(dim), mode
        self.block_dims = dict(block_dims or {})
        self.embedding = nn.Embedding(self.num_nodes, self.dim, sparse=True)
        self.names = {k: _module_name(k) for k in self.block_dims}
        self.blocks = nn.ModuleDict({self.names[k]: nn.Linear(d, self.dim)
                                     for k, d in self.block_dims.items()})
        nn.init.xavier_uniform_(self.embedding.weight)

    def check(self, features: NodeFeatures | None) -> None:
        """Fail clearly when the features are not the ones the model was built for."""
        got = features.dims if features is not None else {}
        if got == self.block_dims:
            return
        where = features.source if features is not None and features.source else "features"
        missing = sorted(set(self.block_dims) - set(got))
        extra = sorted(set(got) - set(self.block_dims))
        wrong = sorted(f"{k} (model {self.block_dims[k]}, features {got[k]})"
                       for k in set(got) & set(self.block_dims) if got[k] != self.block_dims[k])
        parts = ([f"blocks missing from the features: {', '.join(missing)}"] if missing else []) \
            + ([f"blocks the model does not know: {', '.join(extra)}"] if extra else []) \
            + ([f"dimension mismatch: {', '.join(wrong)}"] if wrong else [])
        raise FeatureMismatchError(f"{where}: encoded features do not match the model "
                                   f"({'; '.join(parts)}). Use the encode output the model "
                                   "was trained with, or retrain.")

    def forward(self, index: torch.Tensor, global_ids: torch.Tensor,
                features: NodeFeatures | None = None) -> torch.Tensor:
        """Inputs of the nodes at positions ``index`` of the features' id space, whose global
        ids are ``global_ids`` (for the learned embeddings)."""
        out = self.embedding(global_ids)
        if not self.block_dims or features is None:
            return out
        acc = torch.zeros_like(out)
        count = torch.zeros(len(index), dtype=out.dtype, device=out.device)
        for key, rows, values in features:
            r = rows[index]
            has = r >= 0
            if has.any():
                sel = has.nonzero(as_tuple=True)[0]
                mapped = self.blocks[self.names[key]](values[r[sel]])   # bf16 under autocast
                acc = acc.index_add(0, sel, mapped.to(acc.dtype))
                count = count + has.to(out.dtype)
        attrs = acc / count.clamp(min=1).unsqueeze(1)       # zero rows without attributes
        if self.mode == "add":
            return out + attrs
        return torch.where((count > 0).unsqueeze(1), attrs, out)

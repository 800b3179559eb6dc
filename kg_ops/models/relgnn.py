"""Relation-attention GCN: a GCN whose neighbour aggregation is weighted by relation-aware
attention.

This is the "RelGNN" of the published system we reproduce -- *not* RelBench's RelGNN (Chen et
al. 2025, composite message passing over relational-database schemas), which is an unrelated
model; hence the name :class:`RelationAttentionGCN`.

One layer, for a message ``j -r-> i``: the neighbour is composed with its relation,
``m_ij = W_n x_j + W_r e_r``; the attention logit comes from the centre node, the neighbour and
the relation, ``a^T LeakyReLU([W_c x_i || m_ij])``, normalised over ``i``'s incoming messages
(softmax, per head); ``h_i = W_root x_i + sum_j alpha_ij m_ij``. Relation embeddings ``e_r``
(``2R`` of them: relations and inverses) are learned jointly with the rest.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.nn import MessagePassing
from torch_geometric.utils import softmax


class RelationAttentionConv(MessagePassing):
    """One relation-attention layer on bipartite inputs ``(x_src, x_dst)``."""

    def __init__(self, in_dim: int, out_dim: int, rel_dim: int, heads: int = 2,
                 attention_dropout: float = 0.0):
        super().__init__(aggr="sum", node_dim=0)
        if out_dim % heads:
            raise ValueError(f"out_dim {out_dim} must be divisible by heads {heads}")
        self.heads, self.head_dim = heads, out_dim // heads
        self.lin_neighbour = nn.Linear(in_dim, out_dim, bias=False)
        self.lin_centre = nn.Linear(in_dim, out_dim, bias=False)
        self.lin_relation = nn.Linear(rel_dim, out_dim, bias=False)
        self.lin_root = nn.Linear(in_dim, out_dim)
        self.att = nn.Parameter(torch.empty(heads, 2 * self.head_dim))
        self.attention_dropout = attention_dropout
        nn.init.xavier_uniform_(self.att)

    def forward(self, x: tuple[torch.Tensor, torch.Tensor], edge_index: torch.Tensor,
                edge_type: torch.Tensor, rel_emb: torch.Tensor) -> torch.Tensor:
        x_src, x_dst = x
        msg = (self.lin_neighbour(x_src)[edge_index[0]]
               + self.lin_relation(rel_emb)[edge_type]).view(-1, self.heads, self.head_dim)
        centre = self.lin_centre(x_dst).view(-1, self.heads, self.head_dim)
        out = self.propagate(edge_index, msg=msg, centre=centre,
                             size=(x_src.size(0), x_dst.size(0)))
        return out.reshape(-1, self.heads * self.head_dim) + self.lin_root(x_dst)

    def message(self, msg: torch.Tensor, centre_i: torch.Tensor, index: torch.Tensor,
                size_i: int | None) -> torch.Tensor:
        logit = (F.leaky_relu(torch.cat([centre_i, msg], dim=-1), 0.2) * self.att).sum(-1)
        alpha = softmax(logit, index, num_nodes=size_i)
        alpha = F.dropout(alpha, p=self.attention_dropout, training=self.training)
        return msg * alpha.unsqueeze(-1)


class RelationAttentionGCN(nn.Module):
    """The published system's "RelGNN" encoder (see the module docstring for the name)."""

    def __init__(self, in_dim: int, num_relations: int, hidden_dim: int = 64,
                 out_dim: int = 32, num_layers: int = 2, rel_dim: int = 32, heads: int = 2,
                 dropout: float = 0.2):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.relation = nn.Embedding(2 * num_relations, rel_dim)
        self.convs = nn.ModuleList(
            RelationAttentionConv(dims[i], dims[i + 1], rel_dim, heads=heads)
            for i in range(num_layers))
        self.dropout = dropout
        self.out_dim = out_dim
        nn.init.xavier_uniform_(self.relation.weight)

    @property
    def num_layers(self) -> int:
        return len(self.convs)

    def layer(self, i: int, x_src: torch.Tensor, x_dst: torch.Tensor,
              edge_index: torch.Tensor, edge_type: torch.Tensor) -> torch.Tensor:
        h = self.convs[i]((x_src, x_dst), edge_index, edge_type, self.relation.weight)
        if i < self.num_layers - 1:
            h = F.dropout(F.elu(h), p=self.dropout, training=self.training)
        return h

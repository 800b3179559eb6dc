"""Factorisation decoders: a score for ``(head, relation, tail)`` from entity embeddings.

Both expose the scoring shapes evaluation needs: ``score(h[B,d], rel[B], t[B,d]) -> [B]``,
``score_tails(h[B,d], rel[B], cand[N,d]) -> [B,N]`` (all tails of ``(h, r, ?)``) and
``score_heads(t[B,d], rel[B], cand[N,d]) -> [B,N]`` (all heads of ``(?, r, t)``).
"""

from __future__ import annotations

import torch
from torch import nn


class DistMult(nn.Module):
    """``<h, w_r, t>`` (Yang et al. 2015): symmetric in head and tail."""

    def __init__(self, num_relations: int, dim: int):
        super().__init__()
        self.rel = nn.Parameter(torch.empty(num_relations, dim))
        nn.init.xavier_uniform_(self.rel)

    def score(self, h: torch.Tensor, rel: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (h * self.rel[rel] * t).sum(-1)

    def score_tails(self, h: torch.Tensor, rel: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        return (h * self.rel[rel]) @ cand.t()

    def score_heads(self, t: torch.Tensor, rel: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        return (t * self.rel[rel]) @ cand.t()


class ComplEx(nn.Module):
    """``Re(<h, w_r, conj(t)>)`` (Trouillon et al. 2016) with the first half of each vector
    the real part and the second half the imaginary part: models asymmetric relations."""

    def __init__(self, num_relations: int, dim: int):
        super().__init__()
        if dim % 2:
            raise ValueError(f"ComplEx needs an even embedding dimension, got {dim}")
        self.rel = nn.Parameter(torch.empty(num_relations, dim))
        nn.init.xavier_uniform_(self.rel)

    @staticmethod
    def _split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.chunk(2, dim=-1)

    def _head_query(self, h: torch.Tensor, rel: torch.Tensor) -> torch.Tensor:
        """q with score(h, r, t) = <q, t>: q = h * w_r (complex product)."""
        hr, hi = self._split(h)
        rr, ri = self._split(self.rel[rel])
        return torch.cat([hr * rr - hi * ri, hr * ri + hi * rr], dim=-1)

    def _tail_query(self, t: torch.Tensor, rel: torch.Tensor) -> torch.Tensor:
        """q with score(h, r, t) = <q, h>: q = conj(w_r) * t."""
        tr, ti = self._split(t)
        rr, ri = self._split(self.rel[rel])
        return torch.cat([rr * tr + ri * ti, rr * ti - ri * tr], dim=-1)

    def score(self, h: torch.Tensor, rel: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (self._head_query(h, rel) * t).sum(-1)

    def score_tails(self, h: torch.Tensor, rel: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        return self._head_query(h, rel) @ cand.t()

    def score_heads(self, t: torch.Tensor, rel: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        return self._tail_query(t, rel) @ cand.t()


DECODERS = {"distmult": DistMult, "complex": ComplEx}

"""Factorisation decoders: a score for ``(head, relation, tail)`` from entity embeddings.

Both expose the scoring shapes evaluation needs: ``score(h[B,d], rel[B], t[B,d]) -> [B]``,
``score_tails(h[B,d], rel[B], cand[N,d]) -> [B,N]`` (all tails of ``(h, r, ?)``) and
``score_heads(t[B,d], rel[B], cand[N,d]) -> [B,N]`` (all heads of ``(?, r, t)``). Both are a
*query* vector dotted with the candidates (``tail_query`` / ``head_query``), so the training
loss and evaluation share one computation.

``reciprocal=True`` (Lacroix et al., ICML 2018; Kazemi & Poole 2018): the decoder holds a second
vector per relation, ``r^-1`` (row ``r + R``), and answers the head query ``(?, r, t)`` as the
tail query ``(t, r^-1, ?)``; ``score(h, r, t)`` stays the forward direction. Each direction then
gets parameters of its own, which tuned KGE baselines rely on.

``relation_dropout`` drops entries of the relation vectors during training (LibKGE's
``relation_embedder.dropout``).

``score_relations(h[B,d], t[B,d]) -> [B,R]`` (``[B,2R]`` with reciprocal relations) scores
every relation vector for ``(h, ?, t)``: the relation-prediction objective of Chen et al.
(AKBC 2021).
"""

from __future__ import annotations

import torch
from torch import nn


class _Decoder(nn.Module):
    def __init__(self, num_relations: int, dim: int, reciprocal: bool = False,
                 relation_dropout: float = 0.0):
        super().__init__()
        self.num_relations = num_relations
        self.reciprocal = reciprocal
        self.rel = nn.Parameter(torch.empty(num_relations * (2 if reciprocal else 1), dim))
        nn.init.xavier_uniform_(self.rel)
        self.drop = nn.Dropout(relation_dropout)

    def relation(self, rel: torch.Tensor, inverse: bool = False) -> torch.Tensor:
        """Relation vectors of ``rel`` (their reciprocal ``r^-1`` with ``inverse``)."""
        return self.drop(self.rel[rel + self.num_relations if inverse else rel])

    def tail_query(self, h: torch.Tensor, rel: torch.Tensor) -> torch.Tensor:
        """q with ``score(h, r, t) = <q, t>``."""
        return self._forward_query(h, self.relation(rel))

    def head_query(self, t: torch.Tensor, rel: torch.Tensor) -> torch.Tensor:
        """q whose dot product with a candidate ``c`` is the score of head ``c`` for
        ``(?, r, t)``: ``score(c, r, t)``, or with reciprocal relations ``score(t, r^-1, c)``."""
        if self.reciprocal:
            return self._forward_query(t, self.relation(rel, inverse=True))
        return self._backward_query(t, self.relation(rel))

    def query(self, anchor: torch.Tensor, rel: torch.Tensor, tail_side: bool) -> torch.Tensor:
        return self.tail_query(anchor, rel) if tail_side else self.head_query(anchor, rel)

    def score(self, h: torch.Tensor, rel: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (self.tail_query(h, rel) * t).sum(-1)

    def score_tails(self, h: torch.Tensor, rel: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        return self.tail_query(h, rel) @ cand.t()

    def score_heads(self, t: torch.Tensor, rel: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        return self.head_query(t, rel) @ cand.t()

    def score_relations(self, h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``[B, rows]``: ``score(h, r, t)`` for every row ``r`` of the relation table (the
        reciprocal vectors included)."""
        return self._pair_query(h, t) @ self.drop(self.rel).t()


class DistMult(_Decoder):
    """``<h, w_r, t>`` (Yang et al. 2015): symmetric in head and tail."""

    def _forward_query(self, h: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        return h * r

    _backward_query = _forward_query

    @staticmethod
    def _pair_query(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """q with ``score(h, r, t) = <q, w_r>``."""
        return h * t

    @staticmethod
    def magnitudes(x: torch.Tensor) -> torch.Tensor:
        """Per-coordinate moduli, for the N3 penalty."""
        return x.abs()


class ComplEx(_Decoder):
    """``Re(<h, w_r, conj(t)>)`` (Trouillon et al. 2016) with the first half of each vector
    the real part and the second half the imaginary part: models asymmetric relations."""

    def __init__(self, num_relations: int, dim: int, reciprocal: bool = False,
                 relation_dropout: float = 0.0):
        if dim % 2:
            raise ValueError(f"ComplEx needs an even embedding dimension, got {dim}")
        super().__init__(num_relations, dim, reciprocal, relation_dropout)

    @staticmethod
    def _split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.chunk(2, dim=-1)

    def _forward_query(self, h: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """h * w_r (complex product): score = <q, t>."""
        hr, hi = self._split(h)
        rr, ri = self._split(r)
        return torch.cat([hr * rr - hi * ri, hr * ri + hi * rr], dim=-1)

    def _backward_query(self, t: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """conj(w_r) * t: score = <q, h>."""
        tr, ti = self._split(t)
        rr, ri = self._split(r)
        return torch.cat([rr * tr + ri * ti, rr * ti - ri * tr], dim=-1)

    def _pair_query(self, h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """h * conj(t): score = <q, w_r>."""
        hr, hi = self._split(h)
        tr, ti = self._split(t)
        return torch.cat([hr * tr + hi * ti, hr * ti - hi * tr], dim=-1)

    @classmethod
    def magnitudes(cls, x: torch.Tensor) -> torch.Tensor:
        """Moduli of the complex coordinates, for the N3 penalty."""
        re, im = cls._split(x)
        return torch.sqrt(re * re + im * im + 1e-12)


DECODERS = {"distmult": DistMult, "complex": ComplEx}

"""The pieces of the training objective that tuned KGE baselines rely on (Ruffinelli et al.,
ICLR 2020; Lacroix et al., ICML 2018), as plain functions of scores and embeddings.

* :func:`candidate_cross_entropy`: each query's answer against its allowed candidates
  (``[true, candidates]``, softmax cross-entropy), optionally label-smoothed. With every entity
  of the expected type as a candidate this is the "1-vs-all" loss.
* :func:`table_cross_entropy`: the same loss when the answers are columns of the scores (every
  entity a candidate, each once: the 1-vs-all table of :mod:`kg_ops.train.layerwise`). It
  needs no concatenation and, when every candidate has the expected type, no mask.
* :func:`n3_penalty`: the weighted nuclear 3-norm of the factors each query uses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def candidate_cross_entropy(true: torch.Tensor, scores: torch.Tensor, ok: torch.Tensor,
                            label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean over queries of the cross-entropy of the answer's score ``true[B]`` against the
    candidate scores ``scores[B, M]`` where ``ok[B, M]`` (the expected type, not the answer).

    With ``label_smoothing`` = e the target puts ``1 - e`` on the answer and spreads ``e``
    uniformly over the answer and its allowed candidates (PyTorch's convention, restricted to
    the classes a query has)."""
    allowed = torch.cat([torch.ones_like(ok[:, :1]), ok], dim=1)
    logits = torch.cat([true.unsqueeze(1), scores], dim=1).masked_fill(~allowed, float("-inf"))
    logp = F.log_softmax(logits, dim=1)
    nll = -logp[:, 0]
    if not label_smoothing:
        return nll.mean()
    uniform = -logp.masked_fill(~allowed, 0.0).sum(1) / allowed.sum(1)
    return ((1.0 - label_smoothing) * nll + label_smoothing * uniform).mean()


def table_cross_entropy(scores: torch.Tensor, answer: torch.Tensor,
                        ok: torch.Tensor | None = None,
                        label_smoothing: float = 0.0) -> torch.Tensor:
    """:func:`candidate_cross_entropy` when each query's answer is one of the candidates:
    ``answer[B]`` is its column of ``scores[B, M]``; ``ok[B, M]``: the columns of the expected
    type (the answer's included), ``None`` when all are. On CoDEx-M's 1-vs-all table (512
    queries, 17,050 entities) forward and backward take half the time of building the masks
    and the ``[true, candidates]`` logits."""
    if ok is None:
        return F.cross_entropy(scores, answer, label_smoothing=label_smoothing)
    logp = F.log_softmax(scores.masked_fill(~ok, float("-inf")), dim=1)
    nll = -logp.gather(1, answer[:, None]).squeeze(1)
    if not label_smoothing:
        return nll.mean()
    uniform = -logp.masked_fill(~ok, 0.0).sum(1) / ok.sum(1)
    return ((1.0 - label_smoothing) * nll + label_smoothing * uniform).mean()


def n3_penalty(magnitudes, anchor: torch.Tensor, relation: torch.Tensor,
               answer: torch.Tensor) -> torch.Tensor:
    """``mean over queries of sum_i |anchor_i|^3 + |r_i|^3 + |answer_i|^3`` where ``|.|`` is
    the decoder's coordinate modulus (``magnitudes``: absolute value for DistMult, complex
    modulus for ComplEx): the N3 regulariser of Lacroix et al. (2018), weighted by how often
    each entity and relation appears in the batch."""
    cube = [magnitudes(x).pow(3).sum(-1) for x in (anchor, relation, answer)]
    return (cube[0] + cube[1] + cube[2]).mean()

"""Filtered link-prediction ranking: MRR and Hits@k, both directions, realistic ties.

Every test triple (h, r, t) gives two queries: a tail query (h, r, ?) whose answer is t and a head
query (?, r, t) whose answer is h. A query's candidates are ALL entities; the other known true
answers (from train+valid+test, see :class:`FilterIndex`) are removed before counting.

Ranks (``s_c`` = score of candidate c, ``s*`` = score of the answer, C = unfiltered candidates
other than the answer)::

    optimistic  = 1 + #{c in C : s_c >  s*}
    pessimistic = 1 + #{c in C : s_c >= s*}
    realistic   = (optimistic + pessimistic) / 2          <- the reported rank

so constant scores give (1 + |C| + 1) / 2, i.e. (1 + N_unfiltered) / 2 with the answer counted.
MRR = mean(1 / realistic), Hits@k = mean(realistic <= k), over both directions.

Optionally the same ranks among type-constrained candidates (entities of the node type the
relation expects on that side), reported under ``tc_*`` names.

The core never sees a model: it takes entity embeddings and any object with
``score_tails(h_emb[B,d], rel[B], cand[N,d]) -> [B,N]`` and ``score_heads(t_emb, rel, cand)``.
Queries run in batches of B so the B x N score matrix fits a memory budget; filtering gathers the
batch's known answers from the CSR index once and corrects the counts, never looping per query.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from kg_ops.errors import KGOpsError
from kg_ops.evaluate.filters import FilterIndex
from kg_ops.progress import Progress

log = logging.getLogger(__name__)

KS = (1, 3, 10)
TAIL, HEAD = 0, 1
TIE_POLICY = ("realistic: rank = (optimistic + pessimistic) / 2 with optimistic = 1 + #{unfiltered "
              "candidates scoring > answer}, pessimistic = 1 + #{unfiltered candidates scoring >= "
              "answer} (answer itself excluded from both counts); MRR = mean(1/rank), "
              "Hits@k = mean(rank <= k)")
# Bytes of working memory per cell of the B x N score matrix: float32 scores, two boolean
# comparison results, and headroom for the scorer's own intermediates.
BYTES_PER_CELL = 16
# Batches beyond ~4M cells get slower, not faster (fresh large buffers per batch fall out of
# cache and page-fault); measured on CoDEx-M in benchmarks/bench_evaluate.py.
TARGET_CELLS = 4_000_000


class Scorer(Protocol):
    def score_tails(self, h_emb, rel, cand): ...

    def score_heads(self, t_emb, rel, cand): ...


@dataclass
class RankResult:
    """Per-query ranks; query i is triple ``triple_index[i]`` asked from ``side[i]``."""

    triple_index: np.ndarray
    relation: np.ndarray
    side: np.ndarray            # TAIL: (h, r, ?) ; HEAD: (?, r, t)
    optimistic: np.ndarray
    pessimistic: np.ndarray
    tc_optimistic: np.ndarray | None = None
    tc_pessimistic: np.ndarray | None = None

    @property
    def realistic(self) -> np.ndarray:
        return (self.optimistic + self.pessimistic) / 2.0

    @property
    def tc_realistic(self) -> np.ndarray | None:
        if self.tc_optimistic is None:
            return None
        return (self.tc_optimistic + self.tc_pessimistic) / 2.0


def candidate_ranges(schema) -> np.ndarray:
    """``(R, 2, 2)`` id ranges ``[lo, hi)`` of the candidates each relation expects:
    ``[r, TAIL]`` for tail queries (the tail type), ``[r, HEAD]`` for head queries."""
    offsets = schema.offsets()
    head_types, tail_types = schema.relation_head_tail_types()
    out = np.empty((schema.num_relations, 2, 2), dtype=np.int64)
    out[:, TAIL, 0], out[:, TAIL, 1] = offsets[tail_types], offsets[tail_types + 1]
    out[:, HEAD, 0], out[:, HEAD, 1] = offsets[head_types], offsets[head_types + 1]
    return out


def batch_size_for(num_candidates: int, memory_mib: float) -> int:
    """Queries per batch: about TARGET_CELLS scores, never more than the memory budget."""
    n = max(num_candidates, 1)
    return max(1, min(TARGET_CELLS // n, int(memory_mib * 2**20 // (n * BYTES_PER_CELL))))


def rank_queries(emb, scorer: Scorer, triples: np.ndarray, filters: FilterIndex, *,
                 ranges: np.ndarray | None = None, batch_size: int | None = None,
                 memory_mib: float = 256.0, progress: Progress | None = None) -> RankResult:
    """Filtered ranks of both directions of every triple. ``emb``: ``[N, d]`` tensor of all
    entities; ``ranges``: :func:`candidate_ranges` to add type-constrained ranks."""
    import torch

    triples = np.asarray(triples, dtype=np.int64).reshape(-1, 3)
    n = int(emb.shape[0])
    if n != filters.num_nodes:
        raise KGOpsError(f"the model embeds {n} entities but the graph has {filters.num_nodes}; "
                         "evaluate the model against the graph it was trained on")
    if len(triples) and (triples[:, [0, 2]].max() >= n or triples[:, 1].max()
                         >= filters.num_relations):
        raise KGOpsError("evaluation triples refer to entities or relations outside the graph")
    bs = batch_size or batch_size_for(n, memory_mib)
    if progress is None:      # a caller with its own progress reports for itself
        progress = Progress("evaluate/rank", total=2 * len(triples), unit="queries")
        log.info("ranking %d queries against %d entities in batches of %d", 2 * len(triples),
                 n, bs)

    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("idx", "side", "opt", "pess", "tc_opt",
                                                        "tc_pess")}
    with torch.inference_mode():
        for side in (TAIL, HEAD):
            order = np.arange(len(triples))
            if ranges is not None:  # batches of one expected type slice the candidates cleanly
                order = np.argsort(ranges[triples[:, 1], side, 0], kind="stable")
            for start in range(0, len(order), bs):
                idx = order[start:start + bs]
                ranks = _rank_batch(emb, scorer, triples[idx], side, filters, ranges)
                cols["idx"].append(idx)
                cols["side"].append(np.full(len(idx), side, dtype=np.int8))
                for name, r in zip(("opt", "pess", "tc_opt", "tc_pess"), ranks, strict=False):
                    cols[name].append(r)
                progress.update(len(idx))
    progress.done()
    cat = {k: np.concatenate(v) if v else np.zeros(0, np.int64) for k, v in cols.items()}
    typed = ranges is not None
    return RankResult(triple_index=cat["idx"], relation=triples[cat["idx"], 1],
                      side=cat["side"], optimistic=cat["opt"], pessimistic=cat["pess"],
                      tc_optimistic=cat["tc_opt"] if typed else None,
                      tc_pessimistic=cat["tc_pess"] if typed else None)


def _rank_batch(emb, scorer: Scorer, batch: np.ndarray, side: int, filters: FilterIndex,
                ranges: np.ndarray | None) -> tuple[np.ndarray, ...]:
    import torch

    tail_side = side == TAIL
    anchor, rel = batch[:, 0 if tail_side else 2], batch[:, 1]
    answer = batch[:, 2 if tail_side else 0]
    b = len(batch)
    rel_t = torch.from_numpy(rel)
    a_emb = emb[torch.from_numpy(anchor)]
    score_fn = scorer.score_tails if tail_side else scorer.score_heads
    scores = score_fn(a_emb, rel_t, emb)
    if tuple(scores.shape) != (b, emb.shape[0]):
        raise KGOpsError(f"scorer returned shape {tuple(scores.shape)}, expected "
                         f"({b}, {emb.shape[0]})")
    # Counting runs in numpy: np.count_nonzero over a boolean row is several times faster than
    # torch's bool reduction on CPU, and this is the hot loop.
    scores = scores.detach().float().cpu().numpy()
    target = scores[np.arange(b), answer]
    if not np.isfinite(target).all():
        raise KGOpsError("the model produced non-finite scores (NaN/inf); the checkpoint is "
                         "corrupt or training diverged")
    tcol = target[:, None]
    greater = np.count_nonzero(scores > tcol, axis=1)
    geq = np.count_nonzero(scores >= tcol, axis=1)          # includes the answer itself

    # Known true answers other than the query's own answer: subtract them from the counts.
    f_rows, f_ents = filters.known(anchor, rel, tail_side)
    keep = f_ents != answer[f_rows]
    f_rows, f_ents = f_rows[keep], f_ents[keep]
    f_scores, f_target = scores[f_rows, f_ents], target[f_rows]
    f_gt, f_ge = f_scores > f_target, f_scores >= f_target
    opt = 1 + greater - np.bincount(f_rows[f_gt], minlength=b)
    pess = geq - np.bincount(f_rows[f_ge], minlength=b)
    out = [opt, pess]

    if ranges is not None:
        lo, hi = ranges[rel, side, 0], ranges[rel, side, 1]
        tc_greater = np.zeros(b, np.int64)
        tc_geq = np.zeros(b, np.int64)
        for a, z in np.unique(np.stack([lo, hi], 1), axis=0):  # one pass per node type
            sel = np.flatnonzero((lo == a) & (hi == z))
            sub, t_sub = scores[sel, a:z], tcol[sel]
            tc_greater[sel] = np.count_nonzero(sub > t_sub, axis=1)
            tc_geq[sel] = np.count_nonzero(sub >= t_sub, axis=1)
        in_range = (answer >= lo) & (answer < hi)
        f_in = (f_ents >= lo[f_rows]) & (f_ents < hi[f_rows])
        tc_opt = 1 + tc_greater - np.bincount(f_rows[f_gt & f_in], minlength=b)
        tc_pess = 1 + tc_geq - in_range - np.bincount(f_rows[f_ge & f_in], minlength=b)
        out += [tc_opt, tc_pess]
    return tuple(out)


# --- summaries -------------------------------------------------------------------------------
def rank_metrics(ranks: np.ndarray, ks: tuple[int, ...] = KS) -> dict[str, float]:
    ranks = np.asarray(ranks, dtype=np.float64)
    if not len(ranks):
        return {"mrr": float("nan"), **{f"hits@{k}": float("nan") for k in ks},
                "mean_rank": float("nan")}
    return {"mrr": float(np.mean(1.0 / ranks)),
            **{f"hits@{k}": float(np.mean(ranks <= k)) for k in ks},
            "mean_rank": float(np.mean(ranks))}


def overall_metrics(res: RankResult, ks: tuple[int, ...] = KS) -> dict[str, float]:
    """Headline metrics (both directions), per-direction MRR, the tie bounds and, if computed,
    the type-constrained variants."""
    real = res.realistic
    out = rank_metrics(real, ks)
    out["mrr_tail"] = rank_metrics(real[res.side == TAIL], ks)["mrr"]
    out["mrr_head"] = rank_metrics(real[res.side == HEAD], ks)["mrr"]
    out["mrr_optimistic"] = rank_metrics(res.optimistic, ks)["mrr"]
    out["mrr_pessimistic"] = rank_metrics(res.pessimistic, ks)["mrr"]
    if res.tc_optimistic is not None:
        out.update({f"tc_{k}": v for k, v in rank_metrics(res.tc_realistic, ks).items()})
    out["queries"] = len(real)
    return out


COLD_DEGREE = 3     # an entity with at most this many training edges is "cold"


def cold_triples(triples: np.ndarray, train_edges: np.ndarray, num_nodes: int,
                 max_degree: int = COLD_DEGREE) -> np.ndarray:
    """Mask of the triples whose head or tail has at most ``max_degree`` training edges."""
    degree = np.bincount(np.asarray(train_edges)[:, [0, 2]].ravel(), minlength=num_nodes)
    triples = np.asarray(triples, dtype=np.int64).reshape(-1, 3)
    return (degree[triples[:, 0]] <= max_degree) | (degree[triples[:, 2]] <= max_degree)


def cold_metrics(res: RankResult, triples: np.ndarray, train_edges: np.ndarray,
                 num_nodes: int, max_degree: int = COLD_DEGREE,
                 ks: tuple[int, ...] = KS) -> dict[str, float]:
    """Headline metrics over the *cold* triples only: those whose head or tail has at most
    ``max_degree`` training edges (both directions counted), each asked both ways. Sparse
    entities are where attributes must help; the overall MRR hides them."""
    cold = cold_triples(triples, train_edges, num_nodes, max_degree)
    ranks = res.realistic[cold[res.triple_index]]
    out = {f"cold_{k}": v for k, v in rank_metrics(ranks, ks).items() if k != "mean_rank"}
    out["cold_queries"] = int(len(ranks))
    return out


def per_relation_metrics(res: RankResult, relation_names: list[str],
                         ks: tuple[int, ...] = KS, labels: list[str] | None = None,
                         ) -> list[dict]:
    """One row per relation (both directions pooled, plus MRR per direction); relations without
    evaluation triples get ``queries = 0`` and NaN metrics, so the table lists every relation."""
    num_rel = len(relation_names)
    real = res.realistic
    rel = res.relation

    def mean_by(values: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        m = np.ones(len(rel), bool) if mask is None else mask
        cnt = np.bincount(rel[m], minlength=num_rel)
        tot = np.bincount(rel[m], weights=values[m], minlength=num_rel)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(cnt > 0, tot / np.maximum(cnt, 1), np.nan)

    counts = np.bincount(rel, minlength=num_rel)
    cols = {"mrr": mean_by(1.0 / real)}
    for k in ks:
        cols[f"hits@{k}"] = mean_by((real <= k).astype(np.float64))
    cols["mrr_tail"] = mean_by(1.0 / real, res.side == TAIL)
    cols["mrr_head"] = mean_by(1.0 / real, res.side == HEAD)
    if res.tc_optimistic is not None:
        cols["tc_mrr"] = mean_by(1.0 / res.tc_realistic)
    labels = labels or [""] * num_rel
    return [{"relation_id": r, "relation": relation_names[r], "label": labels[r],
             "queries": int(counts[r]),
             **{k: float(v[r]) for k, v in cols.items()}} for r in range(num_rel)]

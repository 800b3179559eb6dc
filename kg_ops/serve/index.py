"""The in-process link-prediction engine behind the service (and the benchmark's floor).

A :class:`LinkIndex` holds one model version: the exported entity embeddings, the decoder of
the model that produced them, the graph's schema (node types own contiguous id ranges, each
relation declares its head and tail type) and the evaluator's :class:`FilterIndex` of every
known true triple (train + valid + test).

Top-k is exact: the queries of a batch that want the same candidate type (head and tail
queries alike: each is a query vector dotted with the candidates) are scored with one matrix
product against that type's rows (chunked only when the score matrix would exceed
``memory_mib``), known true answers are masked out (unless the query keeps them), and
``torch.topk`` picks the best. Entities are named by their source keys.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from kg_ops.errors import KGOpsError
from kg_ops.evaluate.filters import FilterIndex
from kg_ops.graph.kg import load_edges, load_nodes, load_schema
from kg_ops.graph.schema import SPLITS
from kg_ops.serve.version import ModelVersion, open_version
from kg_ops.store import get_store

log = logging.getLogger(__name__)

LABEL_COLUMNS = ("label", "name", "title")  # the first string column present names an entity


class QueryError(KGOpsError):
    """A query the service cannot answer; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Query:
    """A resolved top-k query: ``(anchor, rel, ?)`` when ``tail_side`` else ``(?, rel, anchor)``."""

    anchor: int
    rel: int
    tail_side: bool
    k: int
    filter_known: bool = True


def _load_embeddings(uri: str, num_nodes: int) -> tuple[torch.Tensor, np.ndarray]:
    """``[N, d]`` float32 embeddings in id order and the keys, from the evaluate export."""
    table = get_store(uri).read_parquet(uri, columns=["id", "key", "embedding"])
    ids = table.column("id").to_numpy()
    if len(ids) != num_nodes or not np.array_equal(ids, np.arange(num_nodes)):
        raise KGOpsError(f"{uri}: {len(ids)} rows whose ids are not 0..{num_nodes - 1} in "
                         "order; the embeddings do not belong to this graph")
    col = table.column("embedding").combine_chunks()
    dim = col.type.list_size
    # One writable copy (Arrow's buffers are read-only); the table is released on return.
    emb = np.array(col.values.to_numpy(zero_copy_only=False).reshape(num_nodes, dim),
                   dtype=np.float32, copy=True)
    keys = table.column("key").to_numpy(zero_copy_only=False).astype(object)
    return torch.from_numpy(emb), keys


def _load_labels(graph_uri: str, schema) -> np.ndarray | None:
    """Per node, its label where its node table has a label column (else None)."""
    labels, found = np.full(schema.num_nodes, None, dtype=object), False
    for t in schema.node_types:
        table = load_nodes(graph_uri, t.name)
        name = next((c for c in LABEL_COLUMNS if c in table.schema.names
                     and pa.types.is_string(table.schema.field(c).type)), None)
        if name is None:
            continue
        labels[table.column("id").to_numpy()] = table.column(name).to_numpy(
            zero_copy_only=False)
        found = True
    return labels if found else None


class LinkIndex:
    """One model version, ready to answer (see the module docstring)."""

    def __init__(self, version: ModelVersion, *, memory_mib: float = 256.0):
        from kg_ops.models.trained import load_decoder

        t0 = time.perf_counter()
        self.version, self.memory_mib = version, float(memory_mib)
        self.schema = load_schema(version.graph_uri)
        self.emb, self.keys = _load_embeddings(version.embeddings_uri, self.schema.num_nodes)
        self.key_index = {k: i for i, k in enumerate(self.keys)}
        if len(self.key_index) != len(self.keys):
            raise KGOpsError(f"{version.embeddings_uri}: entity keys are not unique")
        self.labels = _load_labels(version.graph_uri, self.schema)
        self.decoder, self.model_config = load_decoder(version.model_uri)
        if self.model_config.get("num_relations") != self.schema.num_relations:
            raise KGOpsError(f"{version.model_uri} scores {self.model_config.get('num_relations')}"
                             f" relations but {version.graph_uri} has "
                             f"{self.schema.num_relations}")
        self.relations = self.schema.relation_index()
        self.offsets = self.schema.offsets()
        self.head_types, self.tail_types = self.schema.relation_head_tail_types()
        self.type_names = [t.name for t in self.schema.node_types]
        self.filters = FilterIndex(
            np.concatenate([load_edges(version.graph_uri, s) for s in SPLITS]),
            self.schema.num_nodes, self.schema.num_relations)
        self.load_s = time.perf_counter() - t0
        log.info("model version %s loaded in %.1f s: %d entities x %d dims, %d relations, %d "
                 "known triples", version.id, self.load_s, *self.emb.shape,
                 self.schema.num_relations, self.filters.num_triples)

    @classmethod
    def open(cls, uri: str, **kwargs: Any) -> LinkIndex:
        return cls(open_version(uri), **kwargs)

    # --- resolving names ----------------------------------------------------------------------
    def entity(self, key: str, role: str = "entity") -> int:
        try:
            return self.key_index[key]
        except (KeyError, TypeError):
            raise QueryError(404, f"unknown {role} key {key!r}: no entity with this key in graph "
                                  f"{self.schema.name}") from None

    def relation(self, name: str) -> int:
        try:
            return self.relations[name]
        except (KeyError, TypeError):
            shown = ", ".join(list(self.relations)[:20])
            more = " ..." if len(self.relations) > 20 else ""
            raise QueryError(404, f"unknown relation {name!r}; graph {self.schema.name} has "
                                  f"{len(self.relations)} relations: {shown}{more}") from None

    def _check_type(self, node: int, rel: int, head_side: bool) -> None:
        want = int((self.head_types if head_side else self.tail_types)[rel])
        have = int(self.schema.type_of(np.array([node]))[0])
        if have != want:
            side = "heads" if head_side else "tails"
            raise QueryError(422, f"entity {self.keys[node]!r} is a {self.type_names[have]!r} but "
                                  f"relation {self.schema.relations[rel].name!r} takes "
                                  f"{self.type_names[want]!r} {side}")

    def query(self, *, relation: str, head: str | None = None, tail: str | None = None,
              k: int = 10, filter_known: bool = True) -> Query:
        """Resolve a request body's fields into a :class:`Query` (or a :class:`QueryError`)."""
        if (head is None) == (tail is None):
            raise QueryError(422, "give exactly one of 'head' (to predict tails) or 'tail' (to "
                                  "predict heads)")
        rel = self.relation(relation)
        tail_side = head is not None
        anchor = self.entity(head if tail_side else tail, "head" if tail_side else "tail")
        self._check_type(anchor, rel, head_side=tail_side)
        return Query(anchor=anchor, rel=rel, tail_side=tail_side, k=int(k),
                     filter_known=bool(filter_known))

    # --- answering ----------------------------------------------------------------------------
    def candidate_range(self, rel: int, tail_side: bool) -> tuple[int, int]:
        t = int((self.tail_types if tail_side else self.head_types)[rel])
        return int(self.offsets[t]), int(self.offsets[t + 1])

    @torch.inference_mode()
    def topk(self, queries: list[Query]) -> list[list[dict[str, Any]]]:
        """The answers of each query, best first: ``{key, score[, label], type}``."""
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, q in enumerate(queries):
            groups[self.candidate_range(q.rel, q.tail_side)].append(i)
        out: list[list[dict[str, Any]]] = [[] for _ in queries]
        for (lo, hi), rows in groups.items():
            group = [queries[i] for i in rows]
            scores, ids = self._topk_group(group, lo, hi)
            for i, q, s, e in zip(rows, group, scores, ids, strict=True):
                out[i] = self._entities(e[:q.k], s[:q.k])
        return out

    def _topk_group(self, group: list[Query], lo: int, hi: int,
                    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Top-k of queries sharing the candidate rows ``lo:hi``, head and tail queries alike:
        one product reads the candidate rows once for the whole group."""
        k = min(max(q.k for q in group), hi - lo)
        query, mask_rows, mask_ents = self._query_vectors(group, lo, hi)
        step = max(1, int(self.memory_mib * 2**20 // (4 * len(group))))
        best_s, best_i = [], []
        for start in range(lo, hi, step):
            stop = min(hi, start + step)
            s = query @ self.emb[start:stop].t()
            sel = (mask_ents >= start) & (mask_ents < stop)
            s[mask_rows[sel], mask_ents[sel] - start] = -math.inf
            v, p = torch.topk(s, min(k, stop - start), dim=1)
            best_s.append(v)
            best_i.append(p + start)
        vals, ids = torch.cat(best_s, 1), torch.cat(best_i, 1)
        if len(best_s) > 1:
            vals, pos = torch.topk(vals, k, dim=1)
            ids = torch.gather(ids, 1, pos)
        vals, ids = vals.numpy(), ids.numpy()
        finite = np.isfinite(vals)  # a filtered-out candidate is never an answer
        return ([v[f] for v, f in zip(vals, finite, strict=True)],
                [i[f] for i, f in zip(ids, finite, strict=True)])

    def _query_vectors(self, group: list[Query], lo: int, hi: int,
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``[B, d]`` query vectors (``score = <query, candidate>``) and the (row, candidate
        id) pairs of the known true answers to mask, for the queries that filter."""
        anchors = np.fromiter((q.anchor for q in group), np.int64, len(group))
        rels = np.fromiter((q.rel for q in group), np.int64, len(group))
        tails = np.fromiter((q.tail_side for q in group), bool, len(group))
        filtering = np.fromiter((q.filter_known for q in group), bool, len(group))
        query = torch.empty(len(group), self.emb.shape[1], dtype=self.emb.dtype)
        mask_rows, mask_ents = [], []
        for tail_side in (True, False):
            pos = np.flatnonzero(tails == tail_side)
            if not len(pos):
                continue
            query[torch.from_numpy(pos)] = self.decoder.query(
                self.emb[torch.from_numpy(anchors[pos])], torch.from_numpy(rels[pos]),
                tail_side)
            rows, ents = self.filters.known(anchors[pos], rels[pos], tail_side)
            keep = filtering[pos][rows] & (ents >= lo) & (ents < hi)
            mask_rows.append(pos[rows[keep]])
            mask_ents.append(ents[keep])
        return (query, torch.from_numpy(np.concatenate(mask_rows)),
                torch.from_numpy(np.concatenate(mask_ents)))

    def _entities(self, ids: np.ndarray, scores: np.ndarray) -> list[dict[str, Any]]:
        types = self.schema.type_of(ids)
        out = []
        for i, s, t in zip(ids.tolist(), scores.tolist(), types.tolist(), strict=True):
            row = {"key": self.keys[i], "score": s, "type": self.type_names[t]}
            if self.labels is not None and self.labels[i] is not None:
                row["label"] = self.labels[i]
            out.append(row)
        return out

    @torch.inference_mode()
    def score(self, triples: list[tuple[str, str, str]]) -> list[dict[str, Any]]:
        """Score and probability (sigmoid of the score) of each ``(head, relation, tail)``,
        and whether it is a known true triple."""
        ids = np.empty((len(triples), 3), dtype=np.int64)
        for n, (h, r, t) in enumerate(triples):
            try:
                ids[n] = (self.entity(h, "head"), self.relation(r), self.entity(t, "tail"))
            except QueryError as exc:
                raise QueryError(exc.status, f"triple {n}: {exc}") from None
        ts = torch.from_numpy(ids)
        s = self.decoder.score(self.emb[ts[:, 0]], ts[:, 1], self.emb[ts[:, 2]])
        known = self.filters.contains(ids[:, 0], ids[:, 1], ids[:, 2])
        return [{"head": h, "relation": r, "tail": t, "score": float(v),
                 "probability": float(p), "known": bool(kn)}
                for (h, r, t), v, p, kn in zip(triples, s.tolist(), torch.sigmoid(s).tolist(),
                                               known, strict=True)]

    def probe(self) -> None:
        """Answer one top-1 query (the first relation, from its first head-type entity): a
        version that loads but cannot score fails here, before it is served."""
        lo, hi = self.candidate_range(0, tail_side=False)
        if hi > lo:
            self.topk([Query(anchor=lo, rel=0, tail_side=True, k=1, filter_known=False)])

    def info(self) -> dict[str, Any]:
        """What ``GET /version`` answers: the version, its metrics and its graph."""
        return {**self.version.to_dict(),
                "graph": {"name": self.schema.name, "entities": self.schema.num_nodes,
                          "relations": self.schema.num_relations,
                          "node_types": self.type_names,
                          "known_triples": self.filters.num_triples},
                "model": {k: self.model_config.get(k) for k in ("model", "decoder", "out_dim")},
                "embedding_dim": int(self.emb.shape[1]),
                "probability": "sigmoid of the decoder score",
                "load_s": round(self.load_s, 3)}

"""``kgops split-entities``: hold out a seeded fraction of entities for inductive evaluation.

Writes two graphs under ``--out``:

* ``train_graph``: the held-out entities removed with all their edges (ids re-assigned densely,
  keys kept). Train on it (import -> encode -> partition -> train) as on any graph; its
  valid/test splits are the transductive evaluation.
* ``full_graph``: every entity with its attributes (the original ids). The held-out entities
  come back with a seeded ``--revealed`` fraction of their edges (at least one each) as
  training edges, the context a new entity arrives with; their other edges are the ``test``
  split: ranking them is the inductive evaluation (``kgops evaluate --model M --graph
  full_graph``: entities are matched by key, the held-out ones embedded inductively). ``valid``
  holds every other known valid/test triple, so filtering sees all known triples; no split
  puts an inductive edge where the model could have trained on it.

``_manifest.json`` counts held-out entities and revealed / ranked edges.
"""

from __future__ import annotations

import argparse

import numpy as np
import pyarrow as pa

from kg_ops.errors import KGOpsError
from kg_ops.graph.kg import KnowledgeGraph
from kg_ops.graph.schema import SPLITS, GraphSchema, NodeType

HELP = ("Hold out a seeded fraction of entities with all their edges (inductive evaluation): "
        "a training graph without them and a full graph ranking their edges.")


def subgraph(kg: KnowledgeGraph, keep: np.ndarray) -> KnowledgeGraph:
    """The entities with ``keep[id]`` True, re-numbered densely per type in their old order,
    and the edges among them (every split)."""
    keep = np.asarray(keep, dtype=bool)
    new_id = np.cumsum(keep) - 1
    types, nodes = [], {}
    for t in kg.schema.node_types:
        sel = keep[t.offset:t.offset + t.count]
        offset = sum(x.count for x in types)
        types.append(NodeType(t.name, int(sel.sum()), offset, t.attributes, t.description))
        table = kg.nodes.get(t.name)
        if table is None:
            table = pa.table({"id": np.arange(t.offset, t.offset + t.count),
                              "key": pa.array(np.arange(t.offset, t.offset + t.count)
                                              .astype(str))})
        ids = table.column("id").to_numpy()
        table = table.filter(pa.array(keep[ids])).sort_by("id")
        nodes[t.name] = table.set_column(0, "id", pa.array(new_id[table.column("id")
                                                                  .to_numpy()]))
    schema = GraphSchema(kg.schema.name, types, kg.schema.relations, dict(kg.schema.source))
    edges = {}
    for s, e in kg.edges.items():
        e = e[keep[e[:, 0]] & keep[e[:, 2]]]
        edges[s] = np.stack([new_id[e[:, 0]], e[:, 1], new_id[e[:, 2]]], 1) if len(e) else \
            np.empty((0, 3), np.int64)
    return KnowledgeGraph(schema, edges, nodes)


def pick_entities(num_nodes: int, fraction: float, seed: int) -> np.ndarray:
    """A seeded boolean mask of ``round(fraction * num_nodes)`` entities."""
    if not 0 < fraction < 1:
        raise KGOpsError(f"--fraction must be in (0, 1), not {fraction}")
    picked = np.zeros(num_nodes, dtype=bool)
    picked[np.random.default_rng(seed).choice(num_nodes, int(round(fraction * num_nodes)),
                                              replace=False)] = True
    return picked


def reveal_edges(edges: np.ndarray, held: np.ndarray, revealed: float,
                 seed: int) -> np.ndarray:
    """Which of ``edges`` (each touching a held-out entity) come back as context: per held-out
    entity (the head's if both ends are held out), a seeded ``ceil(revealed * degree)`` of its
    edges, so every such entity keeps at least one."""
    owner = np.where(held[edges[:, 0]], edges[:, 0], edges[:, 2])
    order = np.lexsort((np.random.default_rng(seed).random(len(edges)), owner))
    sorted_owner = owner[order]
    start = np.r_[0, np.flatnonzero(sorted_owner[1:] != sorted_owner[:-1]) + 1]
    size = np.diff(np.r_[start, len(order)])
    rank = np.arange(len(order)) - np.repeat(start, size)
    quota = np.ceil(revealed * np.repeat(size, size))
    out = np.zeros(len(edges), dtype=bool)
    out[order] = rank < quota
    return out


def hold_out(kg: KnowledgeGraph, fraction: float, seed: int = 0, revealed: float = 0.5,
             ) -> tuple[KnowledgeGraph, KnowledgeGraph, dict]:
    """``(train_graph, full_graph, counts)`` (see the module docstring)."""
    if not 0 <= revealed < 1:
        raise KGOpsError(f"--revealed must be in [0, 1), not {revealed}")
    held = pick_entities(kg.num_nodes, fraction, seed)
    touches = {s: held[e[:, 0]] | held[e[:, 2]] for s, e in kg.edges.items()}
    theirs = np.concatenate([kg.edges[s][touches[s]] for s in SPLITS])
    theirs = np.unique(theirs, axis=0) if len(theirs) else theirs
    shown = reveal_edges(theirs, held, revealed, seed)
    base = {s: kg.edges[s][~touches[s]] for s in SPLITS}
    full = KnowledgeGraph(kg.schema, {
        "train": np.concatenate([base["train"], theirs[shown]]),
        "valid": np.concatenate([base["valid"], base["test"]]),
        "test": theirs[~shown]}, kg.nodes)
    with_edges = np.zeros(kg.num_nodes, dtype=bool)
    with_edges[theirs.ravel()] = True
    counts = {"entities": kg.num_nodes, "held_out": int(held.sum()),
              "held_out_with_edges": int((held & with_edges).sum()),
              "held_out_edges": int(len(theirs)), "revealed_edges": int(shown.sum()),
              "ranked_edges": int((~shown).sum())}
    return subgraph(kg, ~held), full, counts


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--graph", required=True, help="URI of an imported graph")
    p.add_argument("--out", required=True,
                   help="output URI: writes train_graph/ and full_graph/ under it")
    p.add_argument("--fraction", type=float, default=0.1,
                   help="fraction of entities held out (default 0.1)")
    p.add_argument("--revealed", type=float, default=0.5,
                   help="fraction of each held-out entity's edges given back as context "
                        "(at least one; default 0.5); the others are ranked")
    p.add_argument("--seed", type=int, default=0)


def split_entities(graph: str, out: str, *, fraction: float = 0.1, revealed: float = 0.5,
                   seed: int = 0, force: bool = False) -> dict:
    from kg_ops.manifest import Stage, require_manifest
    from kg_ops.store import join, normalize

    graph = normalize(graph)
    require_manifest(graph)
    config = {"fraction": fraction, "revealed": revealed, "seed": seed}
    with Stage("split-entities", out, config=config, inputs={"graph": graph},
               force=force) as st:
        if st.reused:
            return st.manifest
        train_kg, full_kg, counts = hold_out(KnowledgeGraph.load(graph), fraction, seed,
                                             revealed)
        for name, kg in (("train_graph", train_kg), ("full_graph", full_kg)):
            uri = join(st.out, name)
            with Stage("import", uri, config={"split_entities": config},
                       inputs={"graph": graph}, force=True, announce=False) as sub:
                kg.save(uri)
                sub.counts.update({"nodes": kg.num_nodes, **kg.edge_counts()})
            st.outputs[name] = uri
        st.counts.update(counts)
    return st.manifest


def run(args: argparse.Namespace) -> int:
    m = split_entities(args.graph, args.out, fraction=args.fraction, revealed=args.revealed,
                       seed=args.seed, force=args.force)
    c = m["counts"]
    print(f"held out {c['held_out']} of {c['entities']} entities: {c['revealed_edges']} of "
          f"their edges revealed, {c['ranked_edges']} to rank -> {m['outputs']['full_graph']}")
    return 0


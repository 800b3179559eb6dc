"""Fixtures for the warm-start tests: small attributed graph versions built from keys."""

from __future__ import annotations

import numpy as np

from kg_ops.graph.builder import GraphBuilder
from kg_ops.graph.schema import Attribute
from kg_ops.manifest import Stage

COLORS = ["red", "green", "blue", "black"]


def base_items(n: int = 60, seed: int = 0) -> dict:
    """``n`` items with a categorical and a numeric attribute (a few without any), and
    2-relation edges among them, as keyed rows."""
    rng = np.random.default_rng(seed)
    keys = [f"item-{i}" for i in range(n)]
    color = [COLORS[i % 4] for i in range(n)]
    size = list(rng.normal(10, 3, n).round(2))
    for i in range(0, n, 10):          # every 10th item has no attribute at all
        color[i], size[i] = None, None
    edges = set()
    while len(edges) < 4 * n:
        h, t = rng.integers(n, size=2)
        if h != t:
            edges.add((keys[h], ("near", "like")[int(rng.integers(2))], keys[t]))
    return {"keys": keys, "color": color, "size": size, "edges": sorted(edges)}


def save_version(uri: str, v: dict, valid: int = 10, test: int = 10) -> str:
    """Write graph version ``v`` (see :func:`base_items`); its first edges are test, then
    valid, the rest train."""
    b = GraphBuilder("items")
    b.add_node_type("item", v["keys"], {"color": v["color"], "size": v["size"]},
                    [Attribute("color", "categorical"), Attribute("size", "numeric")])
    for rel in ("near", "like"):
        b.add_relation(rel, "item", "item")
    edges = list(v["edges"])
    for split, rows in (("test", edges[:test]), ("valid", edges[test:test + valid]),
                        ("train", edges[test + valid:])):
        for rel in ("near", "like"):
            sel = [e for e in rows if e[1] == rel]
            if sel:
                b.add_edges(split, [e[0] for e in sel], [e[2] for e in sel], rel)
    with Stage("import", uri, announce=False):
        b.build().save(uri)
    return uri

"""Fixtures for the encode tests: a real local Ray instance and tiny hand-built graphs."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa

from kg_ops.graph.kg import KnowledgeGraph
from kg_ops.graph.schema import Attribute, GraphSchema, NodeType, Relation
from kg_ops.manifest import Stage

TEXTS = ["A small command-line tool for parsing JSON.", "Library for image decoding",
         "   ", "Documentation for the tool", "", "Kernel module utilities and firmware"]


def item_table(n: int, seed: int = 0, offset: int = 0, *, unknown: bool = False) -> pa.Table:
    """``n`` items with all five attribute kinds and missing values of every sort."""
    rng = np.random.default_rng(seed)
    price = rng.lognormal(3, 1, n)
    price[rng.random(n) < 0.1] = np.nan
    price_arr = pa.array(price, mask=rng.random(n) < 0.05)  # nulls as well as NaNs
    secs = rng.integers(0, 2_000_000_000, n)
    released = pa.array([dt.datetime.fromtimestamp(int(s), dt.UTC) for s in secs],
                        type=pa.timestamp("s", tz="UTC"), mask=rng.random(n) < 0.1)
    cats = np.array(["main", "contrib", "non-free", "games", "x11", "net", ""])
    section = rng.choice(cats, n, p=[0.4, 0.2, 0.1, 0.1, 0.1, 0.05, 0.05]).astype(object)
    if unknown:
        section[::7] = "brand-new-section"
    section[rng.random(n) < 0.1] = None
    vocab = [f"tag{i}" for i in range(12)] + (["never-seen"] if unknown else [])
    tags = [list(rng.choice(vocab, rng.integers(0, 4), replace=False)) for _ in range(n)]
    for i in range(0, n, 9):
        tags[i] = None
    if unknown:
        tags[1] = ["tag1", "never-seen"]
    text = [TEXTS[i % len(TEXTS)] if i < 2 * len(TEXTS) else None for i in range(n)]
    ids = np.arange(offset, offset + n, dtype=np.int64)
    return pa.table({"id": ids, "key": pa.array([f"item-{i}" for i in range(n)]),
                     "price": price_arr, "released": released,
                     "section": pa.array(section, type=pa.string()),
                     "tags": pa.array(tags, type=pa.list_(pa.string())),
                     "description": pa.array(text, type=pa.string())})


ITEM_ATTRS = [Attribute("price", "numeric"), Attribute("released", "date"),
              Attribute("section", "categorical"), Attribute("tags", "multilabel"),
              Attribute("description", "text")]


def save_graph(uri: str, items: pa.Table, n_tags: int = 3, text: bool = True) -> str:
    """A two-type graph: ``tag`` (no attributes) then ``item`` (the table above); ``text=False``
    drops the text attribute (no BERT model to load: fast)."""
    n = items.num_rows
    attrs = list(ITEM_ATTRS) if text else [a for a in ITEM_ATTRS if a.kind != "text"]
    if not text:
        items = items.drop_columns(["description"])
    items = items.set_column(0, "id", pa.array(np.arange(n_tags, n_tags + n, dtype=np.int64)))
    schema = GraphSchema(
        name="tiny", node_types=[NodeType("tag", n_tags, 0),
                                 NodeType("item", n, n_tags, attrs)],
        relations=[Relation("has_tag", "item", "tag")])
    edges = np.stack([np.arange(n_tags, n_tags + n), np.zeros(n, np.int64),
                      np.arange(n) % n_tags], axis=1)
    kg = KnowledgeGraph(schema=schema, edges={"train": edges, "valid": edges[:1],
                                              "test": edges[1:2]}, nodes={"item": items})
    with Stage("import", uri, config={"test": "tiny"}, announce=False) as st:
        kg.save(uri)
        st.counts["nodes"] = schema.num_nodes
    return uri

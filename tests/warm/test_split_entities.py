"""``kgops split-entities`` against brute force over key triples."""

from __future__ import annotations

from collections import Counter

from kg_ops.graph.kg import KnowledgeGraph
from kg_ops.graph.split_entities import split_entities
from kg_ops.store import join

from .conftest import base_items, save_version


def _keyed(uri):
    kg = KnowledgeGraph.load(uri)
    key = {}
    for t in kg.nodes.values():
        key.update(zip(t.column("id").to_pylist(), t.column("key").to_pylist(), strict=True))
    rel = [r.name for r in kg.schema.relations]
    return kg, {s: {(key[h], rel[r], key[t]) for h, r, t in e.tolist()}
                for s, e in kg.edges.items()}, key


def test_hold_out_entities(tmp_path):
    v = base_items(80, seed=1)
    graph = save_version(str(tmp_path / "g"), v)
    m = split_entities(graph, str(tmp_path / "split"), fraction=0.1, revealed=0.5, seed=4)
    _, orig, keys = _keyed(graph)
    tr_kg, tr, tr_keys = _keyed(join(m["outputs"]["train_graph"]))
    full_kg, full, full_keys = _keyed(join(m["outputs"]["full_graph"]))
    held = set(keys.values()) - set(tr_keys.values())
    assert len(held) == 8 == m["counts"]["held_out"]
    assert full_keys == keys                                   # full graph: original ids
    # the training graph: every edge not touching a held-out entity, same split
    for s in ("train", "valid", "test"):
        assert tr[s] == {e for e in orig[s] if e[0] not in held and e[2] not in held}
    theirs = {e for s in orig.values() for e in s if e[0] in held or e[2] in held}
    revealed = full["train"] - tr["train"]
    assert revealed | full["test"] == theirs and not revealed & full["test"]
    assert full["valid"] == tr["valid"] | tr["test"]           # filter sees every triple
    # every held-out entity with edges comes back with ceil(half) of them
    deg = Counter(e[0] if e[0] in held else e[2] for e in theirs)
    shown = Counter(e[0] if e[0] in held else e[2] for e in revealed)
    for k, d in deg.items():
        assert shown[k] == -(-d // 2), k
    assert m["counts"]["revealed_edges"] == len(revealed)
    assert m["counts"]["ranked_edges"] == len(full["test"])
    # attributes travel with the keys
    for name, kg in (("train", tr_kg), ("full", full_kg)):
        t = kg.nodes["item"].to_pylist()
        assert all(v["color"][int(r["key"].split("-")[1])] == r["color"] for r in t), name

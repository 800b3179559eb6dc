"""Entity identity across graph versions (kg_ops.graph.versions) against brute-force dicts."""

from __future__ import annotations

import numpy as np

from kg_ops.graph.builder import GraphBuilder
from kg_ops.graph.versions import EntityMapping, edge_drift, match_graphs
from kg_ops.manifest import Stage


def _graph(tmp_path, name, people, items, edges):
    """Two node types (so keys only need to be unique per type); ``edges``: (head person key,
    relation, tail item key)."""
    b = GraphBuilder(name)
    b.add_node_type("person", people)
    b.add_node_type("item", items)
    b.add_relation("likes", "person", "item")
    b.add_relation("owns", "person", "item")
    for rel in ("likes", "owns"):
        sel = [e for e in edges if e[1] == rel]
        b.add_edges("train", [e[0] for e in sel], [e[2] for e in sel], rel)
    uri = str(tmp_path / name)
    with Stage("import", uri, config={}) as st:
        b.build().save(uri)
        st.counts["nodes"] = len(people) + len(items)
    return uri


def test_mapping_matches_brute_force_dict(tmp_path):
    rng = np.random.default_rng(3)
    people = [f"p{i}" for i in range(40)]
    items = [f"p{i}" for i in range(30)]           # same strings as people: a different type
    old_edges = [(people[rng.integers(40)], ["likes", "owns"][rng.integers(2)],
                  items[rng.integers(30)]) for _ in range(200)]
    # today: 5 people and 3 items removed, 6 people and 4 items added, everything reordered
    new_people = [p for p in people if p not in {"p1", "p7", "p8", "p20", "p39"}] \
        + [f"p{i}" for i in range(100, 106)]
    new_items = [p for p in items if p not in {"p0", "p5", "p29"}] + ["q1", "q2", "q3", "q4"]
    new_people = list(rng.permutation(new_people))
    new_items = list(rng.permutation(new_items))
    alive = [e for e in old_edges if e[0] in new_people and e[2] in new_items]
    new_edges = alive[:150] + [(new_people[rng.integers(len(new_people))], "owns",
                                new_items[rng.integers(len(new_items))]) for _ in range(30)]
    old_uri = _graph(tmp_path, "old", people, items, old_edges)
    new_uri = _graph(tmp_path, "new", new_people, new_items, new_edges)

    mapping, table = match_graphs(old_uri, new_uri)

    # brute force: a dict from (type, key) to id in each version
    def ids(uri):
        from kg_ops.graph.kg import KnowledgeGraph
        kg = KnowledgeGraph.load(uri)
        return {(t, k): int(i) for t, tab in kg.nodes.items()
                for i, k in zip(tab.column("id").to_pylist(), tab.column("key").to_pylist(),
                                strict=True)}
    old_ids, new_ids = ids(old_uri), ids(new_uri)
    for (t, k), i in new_ids.items():
        assert mapping.new_to_old[i] == old_ids.get((t, k), -1)
    removed = sorted(i for tk, i in old_ids.items() if tk not in new_ids)
    assert mapping.removed.tolist() == removed
    assert mapping.counts() == {"old_entities": 70, "new_entities": 72, "kept": 62, "new": 10,
                                "removed": 8}
    # the stored table round-trips and names every entity of both versions once
    assert table.num_rows == 72 + 8
    back = EntityMapping.from_table(table, mapping.old_num_nodes)
    assert np.array_equal(back.new_to_old, mapping.new_to_old)
    assert np.array_equal(back.removed, mapping.removed)
    rows = table.to_pylist()
    assert {(r["node_type"], r["key"]) for r in rows if r["status"] == "removed"} == \
        {tk for tk in old_ids if tk not in new_ids}
    o2n = mapping.old_to_new()
    for (t, k), i in old_ids.items():
        assert o2n[i] == new_ids.get((t, k), -1)

    # edge drift against sets of key triples
    def keyset(edges):
        return set(edges)
    old_set, new_set = keyset(old_edges), keyset(new_edges)
    drift = edge_drift(old_uri, new_uri, mapping)
    assert drift["old_edges"] == len(old_set) and drift["new_edges"] == len(new_set)
    assert drift["kept"] == len(old_set & new_set)
    assert drift["added"] == len(new_set - old_set)
    assert drift["removed"] == len(old_set - new_set)


def test_unchanged_graph_is_identity(tmp_path):
    people, items = ["a", "b", "c"], ["x", "y"]
    edges = [("a", "likes", "x"), ("b", "owns", "y")]
    old_uri = _graph(tmp_path, "old", people, items, edges)
    new_uri = _graph(tmp_path, "new", people, items, edges)
    mapping, _ = match_graphs(old_uri, new_uri)
    assert mapping.new_to_old.tolist() == [0, 1, 2, 3, 4]
    assert mapping.changed_fraction() == 0.0
    assert edge_drift(old_uri, new_uri, mapping)["changed_fraction"] == 0.0

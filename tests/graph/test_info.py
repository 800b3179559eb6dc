"""``kgops info``: counts of a hand-built heterogeneous graph, local and on S3, as JSON and as
a table; counts checked against the edge list written in the test."""

from __future__ import annotations

import json
from collections import Counter

from kg_ops.cli import main
from kg_ops.graph.builder import GraphBuilder
from kg_ops.graph.info import summarize
from kg_ops.graph.schema import Attribute
from kg_ops.graph.validate import BadRows
from kg_ops.manifest import Stage
from kg_ops.store import join

EDGES = {
    "train": [("ann", "works_at", "acme"), ("bob", "works_at", "acme"), ("ann", "knows", "bob"),
              ("cid", "works_at", "bolt"), ("bob", "knows", "cid")],
    "valid": [("cid", "knows", "ann")],
    "test": [("ann", "works_at", "bolt"), ("cid", "knows", "bob")],
}
TYPE_OF = {"ann": "person", "bob": "person", "cid": "person", "acme": "company",
           "bolt": "company"}


def build_and_save(uri: str) -> None:
    b = GraphBuilder("people", bad_rows=BadRows("fail"))
    b.add_node_type("person", ["ann", "bob", "cid"], {"age": [31, 45, 28],
                                                      "skills": [["py"], [], ["go", "sql"]]},
                    [Attribute("age", "numeric"), Attribute("skills", "multilabel")])
    b.add_node_type("company", ["acme", "bolt"], {"sector": ["retail", "energy"]},
                    [Attribute("sector", "categorical")])
    b.add_relation("works_at", "person", "company", label="employed by")
    b.add_relation("knows", "person", "person")
    for split, rows in EDGES.items():
        h, r, t = zip(*rows, strict=True)
        b.add_edges(split, list(h), list(t), list(r))
    kg = b.build()
    with Stage("import", uri, announce=False) as st:
        kg.save(uri)
        st.counts.update(summarize(kg.schema, kg.edges))


def test_info_json(artifact_root, capsys):
    uri = join(artifact_root, "people")
    build_and_save(uri)
    capsys.readouterr()
    assert main(["info", uri, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    all_edges = [e for rows in EDGES.values() for e in rows]
    assert info["nodes"] == len(TYPE_OF) and info["relations"] == 2
    assert info["edges"] == {s: len(rows) for s, rows in EDGES.items()}
    assert info["node_types"] == dict(Counter(TYPE_OF.values()))
    assert info["relation_types"] == dict(Counter(r for _, r, _ in all_edges))
    assert info["attributes"] == {"person": {"age": "numeric", "skills": "multilabel"},
                                  "company": {"sector": "categorical"}}
    assert info["relation_signatures"] == {"works_at": "person -> company",
                                           "knows": "person -> person"}
    assert info["relation_labels"] == {"works_at": "employed by"}
    assert info["stage"] == "import" and info["bad_rows"] == 0


def test_info_table(tmp_path, capsys):
    uri = str(tmp_path / "people")
    build_and_save(uri)
    capsys.readouterr()
    assert main(["info", uri]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1] == "  5 nodes, 2 relations, 8 edges (train 5 / valid 1 / test 2)"
    assert "  person              3  age (numeric), skills (multilabel)" in out
    assert "  company             2  sector (categorical)" in out
    assert "  works_at           4  person -> company  (employed by)" in out
    assert "  knows              4  person -> person" in out


def test_info_on_missing_graph_is_a_clear_error(tmp_path, capsys):
    uri = str(tmp_path / "nope")
    assert main(["info", uri]) == 2
    assert capsys.readouterr().err.strip().endswith(
        f"{uri} has no _manifest.json: it does not exist or is incomplete (an interrupted run). "
        f"Run the 'import' stage into {uri} first.")

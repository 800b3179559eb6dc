"""Validation: the BadRows collector, the builder's row checks, and ``kgops validate`` on stored
graphs broken on purpose, one defect at a time, each with the exact message a user reads."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kg_ops.cli import main
from kg_ops.graph.builder import GraphBuilder
from kg_ops.graph.kg import edges_to_table
from kg_ops.graph.schema import Attribute
from kg_ops.graph.validate import BadRows, BadRowsError
from kg_ops.manifest import Stage, read_manifest
from kg_ops.store import get_store, join

HINT = "re-run with --on-bad-rows quarantine to set bad rows aside."


def tiny_builder(bad: BadRows | None = None) -> GraphBuilder:
    """person(a, b, c) --knows--> person; person --lives_in--> city(x, y); ages numeric."""
    b = GraphBuilder("tiny", bad_rows=bad or BadRows("fail"))
    b.add_node_type("person", ["a", "b", "c"], {"age": [30, 41, None],
                                                "born": ["1990-01-02", None, "1985-06-30"]},
                    [Attribute("age", "numeric"), Attribute("born", "date")])
    b.add_node_type("city", ["x", "y"], {"name": ["Xan", "Yor"]}, [Attribute("name", "text")])
    b.add_relation("knows", "person", "person")
    b.add_relation("lives_in", "person", "city")
    b.add_edges("train", ["a", "b", "a", "b", "c"], ["b", "c", "x", "y", "x"],
                ["knows", "knows", "lives_in", "lives_in", "lives_in"])
    b.add_edges("valid", ["a"], ["c"], "knows")
    b.add_edges("test", ["c"], ["y"], "lives_in")
    return b


def save(uri: str, kg) -> str:
    """Write a graph the way an import does (files, then the manifest)."""
    from kg_ops.graph.info import summarize

    with Stage("import", uri, announce=False) as st:
        kg.save(uri)
        st.counts.update(summarize(kg.schema, kg.edges))
    return uri


def validate_error(capsys, uri: str) -> str:
    assert main(["validate", uri]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("kgops validate: error: "), err
    return err[len("kgops validate: error: "):]


# --- BadRows ----------------------------------------------------------------------------------
def test_bad_rows_fail_mode_raises_first_problem_with_tally():
    bad = BadRows("fail")
    bad.add("column_count", "f.tsv", [4, 9], ["a", "b\tc"], "expected 3 columns", "Fix the line")
    bad.add("empty_field", "f.tsv", [12], ["\tr\tt"], ["empty head"], "Fix the line")
    with pytest.raises(BadRowsError) as exc:
        bad.check()
    assert str(exc.value) == (f"f.tsv line 4: expected 3 columns: 'a'. Fix the line or {HINT} "
                              "(3 bad rows in all; column_count: 2, empty_field: 1)")
    BadRows("fail").check()     # nothing bad: no error


def test_bad_rows_quarantine_report(artifact_root):
    out = join(artifact_root, "g")
    bad = BadRows("quarantine")
    bad.check()                 # quarantine mode never raises
    assert bad.write(out) == {"mode": "quarantine", "bad_rows": 0, "by_check": {}}
    assert not get_store(out).exists(join(out, "quarantine", "bad_rows.parquet"))
    bad.add("unknown_node", "e.tsv", [2], ["a\tr\tzz"], ["tail 'zz' is not a known node"],
            "Fix the line")
    entry = bad.write(out)
    assert entry["by_check"] == {"unknown_node": 1}
    rows = get_store(out).read_parquet(entry["report"]["rows"]).to_pylist()
    assert rows == [{"check": "unknown_node", "file": "e.tsv", "unit": "line", "line": 2,
                     "problem": "tail 'zz' is not a known node", "fix": "Fix the line",
                     "row": "a\tr\tzz"}]
    summary = get_store(out).read_json(entry["report"]["summary"])
    assert summary["first_messages"] == [
        f"e.tsv line 2: tail 'zz' is not a known node: 'a\\tr\\tzz'. Fix the line or {HINT}"]


# --- builder row checks -----------------------------------------------------------------------
def test_builder_ids_are_dense_and_contiguous_per_type():
    kg = tiny_builder().build()
    assert [(t.name, t.offset, t.count) for t in kg.schema.node_types] == [
        ("person", 0, 3), ("city", 3, 2)]
    assert kg.edges["train"].tolist() == [[0, 0, 1], [1, 0, 2], [0, 1, 3], [1, 1, 4],
                                          [2, 1, 3]]
    assert kg.nodes["person"].column("age").type == pa.float64()
    assert kg.nodes["person"].column("born").type == pa.timestamp("s", tz="UTC")
    assert kg.nodes["person"].column("born").to_pylist()[2].isoformat() == \
        "1985-06-30T00:00:00+00:00"


def test_builder_reports_type_violations_unknown_nodes_and_bad_values():
    bad = BadRows("quarantine")
    b = GraphBuilder("t", bad_rows=bad)
    b.add_node_type("person", ["a", "b"], {"age": ["31", "old"], "born": ["2001-02-03", "soon"]},
                    [Attribute("age", "numeric"), Attribute("born", "date")],
                    origin="people.csv", lines=[2, 3])
    b.add_node_type("city", ["x"])
    b.add_relation("lives_in", "person", "city")
    b.add_edges("train", ["a", "x", "b", "a"], ["x", "x", "q", "x"],
                ["lives_in", "lives_in", "lives_in", "visits"], origin="edges.tsv",
                lines=[1, 2, 3, 4])
    b.add_edges("valid", np.array([0, 5]), np.array([0, 0]), "lives_in")
    kg = b.build()
    assert bad.messages() == [
        f"people.csv line 3: age of person 'b' is not a number: 'old'. Fix the value or {HINT}",
        "people.csv line 3: born of person 'b' is not a date (ISO 8601 expected): 'soon'. "
        f"Fix the value or {HINT}",
        f"edges.tsv line 4: unknown relation 'visits': 'a\\tvisits\\tx'. Fix the line or {HINT}",
        "edges.tsv line 2: head 'x' is a city node but relation 'lives_in' expects a person "
        f"head: 'x\\tlives_in\\tx'. Fix the line or {HINT}",
        "edges.tsv line 3: tail 'q' is not a known city node: 'b\\tlives_in\\tq'. Fix the "
        f"line or {HINT}",
        "valid edges: head 5 is not a known person node position: '5\\tlives_in\\t0'. Fix the "
        f"line or {HINT}",
    ]
    assert kg.edges["train"].tolist() == [[0, 0, 2]]
    assert kg.edges["valid"].tolist() == [[0, 0, 2]]
    assert kg.nodes["person"].column("age").to_pylist() == [31.0, None]


# --- kgops validate on stored graphs ----------------------------------------------------------
def test_valid_graph_passes_local_and_s3(artifact_root, capsys):
    uri = save(join(artifact_root, "tiny"), tiny_builder().build())
    assert main(["validate", uri]) == 0
    assert f"validate {uri}: OK; 0 warnings" in capsys.readouterr().out
    m = read_manifest(join(uri, "validation"))
    assert m["stage"] == "validate" and m["counts"]["errors"] == 0
    assert m["inputs"]["graph"]["uri"] == uri


def _corrupt_edges(uri: str, split: str, edges) -> None:
    get_store(uri).write_parquet(join(uri, "edges", f"{split}.parquet"),
                                 edges_to_table(np.asarray(edges)))


def test_edge_to_unknown_node(tmp_path, capsys):
    uri = save(str(tmp_path / "g"), tiny_builder().build())
    _corrupt_edges(uri, "test", [[2, 1, 9]])
    assert validate_error(capsys, uri) == (
        f"{uri}/edges/test.parquet row 0: node id 9 is outside 0..4. The graph files are "
        "inconsistent: re-import the graph.")


def test_relation_violating_declared_types(tmp_path, capsys):
    uri = save(str(tmp_path / "g"), tiny_builder().build())
    _corrupt_edges(uri, "valid", [[3, 0, 2]])        # city --knows--> person
    assert validate_error(capsys, uri) == (
        f"{uri}/edges/valid.parquet row 0: edge (3, knows, 2) links a city to a person but "
        "relation 'knows' is declared person -> person. The graph files are inconsistent: "
        "re-import the graph.")


def test_unknown_relation_id(tmp_path, capsys):
    uri = save(str(tmp_path / "g"), tiny_builder().build())
    _corrupt_edges(uri, "test", [[2, 7, 4]])
    assert validate_error(capsys, uri) == (
        f"{uri}/edges/test.parquet row 0: relation id 7 is not one of the schema's 2 "
        "relations. The graph files are inconsistent: re-import the graph.")


def test_duplicate_node_keys_in_stored_table(tmp_path, capsys):
    uri = save(str(tmp_path / "g"), tiny_builder().build())
    t = pq.read_table(join(uri, "nodes", "city.parquet"))
    t = t.set_column(1, "key", pa.array(["x", "x"]))
    pq.write_table(t, join(uri, "nodes", "city.parquet"))
    assert validate_error(capsys, uri) == (
        f"{uri}/nodes/city.parquet row 1: duplicate city key 'x' (1 duplicates). Keys must be "
        "unique per node type; fix the input and re-import.")


def test_numbers_stored_as_strings(tmp_path, capsys):
    uri = save(str(tmp_path / "g"), tiny_builder().build())
    t = pq.read_table(join(uri, "nodes", "person.parquet"))
    t = t.set_column(2, "age", pa.array(["30", "41", None]))
    pq.write_table(t, join(uri, "nodes", "person.parquet"))
    assert validate_error(capsys, uri) == (
        f"{uri}/nodes/person.parquet: column 'age' is stored as string but a numeric attribute "
        "must be double (unparsed numbers or dates?). Re-import the graph.")


def test_missing_file_and_missing_manifest(tmp_path, capsys):
    uri = save(str(tmp_path / "g"), tiny_builder().build())
    (tmp_path / "g" / "edges" / "valid.parquet").unlink()
    assert validate_error(capsys, uri) == (
        f"{uri}: missing edges/valid.parquet. The graph is incomplete; re-import it.")
    (tmp_path / "g" / "_manifest.json").unlink()
    assert validate_error(capsys, uri) == (
        f"{uri} has no _manifest.json: it does not exist or is incomplete (an interrupted run). "
        f"Run the 'import' stage into {uri} first.")
    empty = str(tmp_path / "nothing")
    assert validate_error(capsys, empty) == (
        f"{empty}/schema.json is missing: {empty} is not a kg_ops graph. Run `kgops import "
        "...` into it first.")


def test_edges_changed_after_import(tmp_path, capsys):
    uri = save(str(tmp_path / "g"), tiny_builder().build())
    _corrupt_edges(uri, "train", [[0, 0, 1]])
    assert validate_error(capsys, uri) == (
        f"{uri}/edges/train.parquet has 1 edges but the import's manifest recorded 5: the file "
        "was changed after the import. Re-import the graph.")


def test_quarantine_mode_writes_offending_rows(tmp_path, capsys):
    uri = save(str(tmp_path / "g"), tiny_builder().build())
    _corrupt_edges(uri, "valid", [[3, 0, 2]])
    _corrupt_edges(uri, "test", [[2, 1, 4], [2, 1, 99]])
    report = str(tmp_path / "report")
    assert main(["validate", uri, "--on-bad-rows", "quarantine", "--report", report]) == 0
    out = capsys.readouterr().out
    assert f"validate {uri}: 3 problems; 0 warnings; 2 rows set aside in {report}/quarantine/" \
        "bad_rows.parquet" in out
    m = read_manifest(report)
    # 3 errors: a type violation and an unknown node (rows, set aside) and test's edge count
    # disagreeing with the import manifest (a file-level error, no row to set aside)
    assert m["counts"]["errors"] == 3 and m["counts"]["bad_rows"] == 2
    assert m["counts"]["checks"]["relation_type_violation"] == 1
    assert m["counts"]["checks"]["unknown_node"] == 1
    rows = pq.read_table(join(report, "quarantine", "bad_rows.parquet")).to_pandas()
    assert sorted(zip(rows["file"], rows["line"], rows["check"], strict=True)) == sorted([
        (f"{uri}/edges/valid.parquet", 0, "relation_type_violation"),
        (f"{uri}/edges/test.parquet", 1, "unknown_node"),
    ])


def test_warnings_for_duplicates_and_leakage(tmp_path, capsys):
    kg = tiny_builder().build()
    kg.edges["train"] = np.concatenate([kg.edges["train"], kg.edges["train"][:1]])
    kg.edges["test"] = np.concatenate([kg.edges["test"], kg.edges["train"][:1]])
    uri = save(str(tmp_path / "g"), kg)
    assert main(["validate", uri]) == 0
    out = capsys.readouterr().out
    assert f"warning: {uri}/edges/train.parquet: 1 duplicate edges (kept; they weigh double " \
        "in training)" in out
    assert f"warning: {uri}/edges/test.parquet: 1 edges also occur in train (test leakage)" in out
    checks = json.loads(json.dumps(read_manifest(join(uri, "validation"))["counts"]["checks"]))
    assert checks["duplicate_edges_train"] == 1 and checks["test_in_train"] == 1

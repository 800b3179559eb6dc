"""Importers: exact published counts (CoDEx), hand-written triples/deb822 inputs checked edge by
edge against an independent reading, malformed inputs -> the exact message a user gets,
quarantine reports, S3 output, and the seeded split."""

from __future__ import annotations

import json
import lzma
import shutil
import subprocess

import numpy as np
import pyarrow.parquet as pq
import pytest

from kg_ops.cli import main
from kg_ops.config import DebianImportConfig, TriplesImportConfig
from kg_ops.graph.importers.debian import apt_dumpavail, build_debian_graph, import_debian
from kg_ops.graph.importers.triples import import_triples
from kg_ops.graph.kg import KnowledgeGraph
from kg_ops.graph.validate import BadRows
from kg_ops.manifest import read_manifest
from kg_ops.store import get_store, join

HINT = "re-run with --on-bad-rows quarantine to set bad rows aside."


def keyed_edges(uri: str, split: str) -> set[tuple[str, str, str]]:
    """A split as (head key, relation name, tail key) triples, read back from the files."""
    kg = KnowledgeGraph.load(uri)
    keys = np.concatenate([kg.nodes[t.name].column("key").to_numpy(zero_copy_only=False)
                           for t in kg.schema.node_types])
    rels = [r.name for r in kg.schema.relations]
    return {(keys[h], rels[r], keys[t]) for h, r, t in kg.edges[split].tolist()}


def write(path, text: str | bytes) -> str:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


def kgops_error(capsys, *argv: str) -> str:
    """Run kgops expecting a user error; return the message it printed."""
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    prefix = f"kgops {argv[0]}: error: "
    assert err.startswith(prefix), err
    return err[len(prefix):]


# --- CoDEx ------------------------------------------------------------------------------------
@pytest.mark.parametrize("size,train,valid,test,entities,relations", [
    ("s", 32_888, 1_827, 1_828, 2_034, 42),
    ("m", 185_584, 10_310, 10_311, 17_050, 51),
])
def test_codex_exact_counts(datasets, tmp_path, size, train, valid, test, entities, relations):
    out = str(tmp_path / f"codex-{size}")
    assert main(["import", "codex", "--root", str(datasets / "codex"), "--size", size,
                 "--out", out]) == 0
    m = read_manifest(out)
    assert m["counts"]["edges"] == {"train": train, "valid": valid, "test": test}
    assert m["counts"]["nodes"] == entities and m["counts"]["relations"] == relations
    assert m["counts"]["bad_rows"] == 0 and m["counts"]["negatives_valid"] == valid
    # Independent reading of the raw files: same triples, same types, same labels.
    raw = (datasets / "codex" / "data" / "triples" / f"codex-{size}" / "test.txt").read_text()
    assert keyed_edges(out, "test") == {tuple(x.split("\t")) for x in raw.splitlines()}
    kg = KnowledgeGraph.load(out)
    e2t = json.loads((datasets / "codex" / "data" / "types" / "entity2types.json").read_text())
    nodes = kg.nodes["entity"].to_pandas()
    assert all(list(t) == e2t[k] for k, t in zip(nodes["key"], nodes["types"], strict=True))
    rel_en = json.loads((datasets / "codex" / "data" / "relations" / "en" /
                         "relations.json").read_text())
    assert all(r.label == rel_en[r.name]["label"] for r in kg.schema.relations)
    types_en = json.loads((datasets / "codex" / "data" / "types" / "en" / "types.json")
                          .read_text())
    row = nodes.iloc[0]
    assert list(row["type_labels"]) == [types_en[t]["label"] for t in row["types"]]


def test_packaged_codex_s_is_the_same_graph_as_the_full_copy(datasets, tmp_path):
    """The CoDEx-S shipped in the package (default without --root) imports to exactly the graph
    the full repository copy gives: same nodes in the same order, types, labels, every split,
    the hard negatives; and its licence notice ships beside it."""
    from kg_ops.datasets import PACKAGED_CODEX

    full, packaged = str(tmp_path / "full"), str(tmp_path / "packaged")
    assert main(["import", "codex", "--root", str(datasets / "codex"), "--size", "s",
                 "--out", full]) == 0
    assert main(["import", "codex", "--size", "s", "--out", packaged]) == 0
    a, b = KnowledgeGraph.load(full), KnowledgeGraph.load(packaged)
    assert a.nodes["entity"].equals(b.nodes["entity"])
    sa, sb = a.schema.to_dict(), b.schema.to_dict()
    # The full copy's type-label table also covers types of CoDEx-M/L entities; the packaged
    # one keeps exactly the types CoDEx-S entities carry.
    la, lb = sa["source"].pop("type_labels"), sb["source"].pop("type_labels")
    assert sa == sb
    used = {t for ts in b.nodes["entity"].column("types").to_pylist() for t in ts}
    assert set(lb) == used and all(la[t] == lb[t] for t in lb)
    for split in ("train", "valid", "test"):
        assert np.array_equal(a.edges[split], b.edges[split]), split
    for split in ("valid", "test"):
        neg = f"negatives/{split}.parquet"
        assert pq.read_table(join(full, neg)).equals(pq.read_table(join(packaged, neg)))
    assert "MIT License" in (PACKAGED_CODEX / "LICENSE").read_text()
    assert "Safavi" in (PACKAGED_CODEX / "README.md").read_text()


def test_packaged_codex_holds_only_s(tmp_path, capsys):
    msg = kgops_error(capsys, "import", "codex", "--size", "m", "--out", str(tmp_path / "g"))
    assert "holds CoDEx-S only" in msg and "--root" in msg


def test_codex_missing_root_is_a_clear_error(tmp_path, capsys):
    msg = kgops_error(capsys, "import", "codex", "--root", str(tmp_path), "--size", "s",
                      "--out", str(tmp_path / "g"))
    assert msg == (f"{tmp_path} does not look like the CoDEx repository: {tmp_path}/data is "
                   "missing. Pass --root pointing at the folder that holds data/triples.")


# --- TSV triples ------------------------------------------------------------------------------
def test_triples_crlf_blank_lines_header(tmp_path):
    train = write(tmp_path / "train.tsv",
                  "head\trelation\ttail\r\n\r\na\tlikes\tb\r\nb\tlikes\tc\r\n \r\nc\thates\ta\r\n")
    valid = write(tmp_path / "valid.tsv", "head\trelation\ttail\na\tlikes\tc\n\n")
    test = write(tmp_path / "test.tsv", "head\trelation\ttail\nb\thates\ta")  # no final newline
    out = str(tmp_path / "g")
    assert main(["import", "triples", "--train", train, "--valid", valid, "--test", test,
                 "--header", "--out", out]) == 0
    assert keyed_edges(out, "train") == {("a", "likes", "b"), ("b", "likes", "c"),
                                         ("c", "hates", "a")}
    assert keyed_edges(out, "valid") == {("a", "likes", "c")}
    assert keyed_edges(out, "test") == {("b", "hates", "a")}
    kg = KnowledgeGraph.load(out)
    assert [t.name for t in kg.schema.node_types] == ["entity"]
    assert all((r.head, r.tail) == ("entity", "entity") for r in kg.schema.relations)
    # ids follow first appearance: a, b, c
    assert kg.nodes["entity"].column("key").to_pylist() == ["a", "b", "c"]


def test_triples_without_header_flag_reads_header_as_data(tmp_path, caplog):
    train = write(tmp_path / "t.tsv", "head\trelation\ttail\na\tr\tb\n")
    out = str(tmp_path / "g")
    import_triples(TriplesImportConfig(out=out, train=train, split="1,0,0"))
    assert ("head", "relation", "tail") in keyed_edges(out, "train")
    assert "looks like a header" in caplog.text


def test_single_file_split_is_deterministic_and_valid_test_entities_are_in_train(tmp_path):
    rng = np.random.default_rng(3)
    lines = [f"e{h}\tr{r}\te{t}" for h, r, t in zip(rng.integers(0, 60, 600),
                                                      rng.integers(0, 4, 600),
                                                      rng.integers(0, 60, 600), strict=True)]
    lines += [f"lonely{i}\tr0\te0" for i in range(20)]   # entities seen once: must go to train
    train = write(tmp_path / "all.tsv", "\n".join(lines) + "\n")
    a, b, c = (str(tmp_path / n) for n in "abc")
    import_triples(TriplesImportConfig(out=a, train=train, seed=5))
    import_triples(TriplesImportConfig(out=b, train=train, seed=5))
    import_triples(TriplesImportConfig(out=c, train=train, seed=6))
    for split in ("train", "valid", "test"):
        assert np.array_equal(KnowledgeGraph.load(a).edges[split],
                              KnowledgeGraph.load(b).edges[split])
    assert not np.array_equal(KnowledgeGraph.load(a).edges["test"],
                              KnowledgeGraph.load(c).edges["test"])
    m = read_manifest(a)
    assert sum(m["counts"]["edges"].values()) == 620
    assert m["config"]["split"] == [0.8, 0.1, 0.1] and m["counts"]["moved_to_train"] > 0
    train_set = keyed_edges(a, "train")
    seen = {h for h, _, _ in train_set} | {t for _, _, t in train_set}
    for split in ("valid", "test"):
        assert all(h in seen and t in seen for h, _, t in keyed_edges(a, split))
    # every input line is in exactly one split (duplicates in the input collapse in a set)
    union = keyed_edges(a, "train") | keyed_edges(a, "valid") | keyed_edges(a, "test")
    assert union == {tuple(x.split("\t")) for x in lines}


def test_import_to_s3_and_read_back(s3_bucket, tmp_path, capsys):
    train = f"{s3_bucket}/raw/train.tsv"          # inputs may live in S3 too
    get_store(train).write_bytes(train, b"a\tr\tb\r\nb\tr\tc\r\nc\ts\ta\r\n")
    valid = write(tmp_path / "valid.tsv", "a\tr\tc\n")
    test = write(tmp_path / "test.tsv", "b\ts\ta\n")
    out = f"{s3_bucket}/graphs/tiny"
    assert main(["import", "triples", "--train", train, "--valid", valid, "--test", test,
                 "--out", out]) == 0
    store = get_store(out)
    assert store.exists(join(out, "_manifest.json"))
    assert read_manifest(out)["inputs"]["train"]["uri"] == train
    assert keyed_edges(out, "train") == {("a", "r", "b"), ("b", "r", "c"), ("c", "s", "a")}
    capsys.readouterr()
    assert main(["info", out, "--json"]) == 0
    info = json.loads(capsys.readouterr().out.split("\n", 0)[0])
    assert info["edges"] == {"train": 3, "valid": 1, "test": 1} and info["nodes"] == 3


# --- malformed inputs: the exact message a user gets ----------------------------------------
def _malformed_cases(tmp):
    ok = write(tmp / "ok.tsv", "Q1\tP31\tQ2\n")
    return [
        (["--train", write(tmp / "cols.tsv", "Q1\tP31\tQ2\nQ1\tP31\n")],
         f"{tmp}/cols.tsv line 2: expected 3 tab-separated columns (head, relation, tail), "
         f"found 2: 'Q1\\tP31'. Fix the line or {HINT}"),
        (["--train", write(tmp / "four.tsv", "Q1\tP31\tQ2\tx\n")],
         f"{tmp}/four.tsv line 1: expected 3 tab-separated columns (head, relation, tail), "
         f"found 4: 'Q1\\tP31\\tQ2\\tx'. Fix the line or {HINT}"),
        (["--train", write(tmp / "emptyf.tsv", "Q1\tP31\tQ2\r\nQ1\t\tQ3\r\n")],
         f"{tmp}/emptyf.tsv line 2: empty relation: 'Q1\\t\\tQ3'. Fix the line or {HINT}"),
        (["--train", write(tmp / "empty.tsv", "")],
         f"{tmp}/empty.tsv is empty. Check the path, or that the file was fully written."),
        (["--train", write(tmp / "blank.tsv", "\n \r\n")],
         f"{tmp}/blank.tsv is empty. Check the path, or that the file was fully written."),
        (["--train", write(tmp / "hdr.tsv", "head\trelation\ttail\n"), "--header"],
         f"{tmp}/hdr.tsv has no triples after the header line. Check the path, or that the "
         "file was fully written."),
        (["--train", str(tmp / "missing.tsv")],
         f"train triples file not found: {tmp}/missing.tsv. Check the path."),
        (["--train", ok, "--valid", ok, "--test", str(tmp)],
         f"test triples file not found: {tmp} (it is a directory). Check the path."),
        (["--train", write(tmp / "latin1.tsv", b"Q1\tP31\tQ2\nM\xfcnchen\tP31\tQ2\n")],
         f"{tmp}/latin1.tsv line 2 column 2: not valid UTF-8 (byte b'\\xfc'). Re-encode the "
         "file as UTF-8."),
        (["--train", write(tmp / "unkrel.tsv", "Q1\tP31\tQ2\nQ1\tP99\tQ2\n"),
          "--relations", write(tmp / "rels.txt", "P31\tinstance of\n")],
         f"{tmp}/unkrel.tsv line 2: unknown relation 'P99': 'Q1\\tP99\\tQ2'. Fix the line or "
         f"add the name to {tmp}/rels.txt; or {HINT}"),
        (["--train", write(tmp / "unkent.tsv", "Q1\tP31\tQ2\nQ1\tP31\tQ9\n"),
          "--entities", write(tmp / "ents.txt", "Q1\nQ2\n")],
         f"{tmp}/unkent.tsv line 2: tail 'Q9' is not a known entity node: 'Q1\\tP31\\tQ9'. "
         f"Fix the line or add the name to {tmp}/ents.txt; or {HINT}"),
        (["--train", ok, "--entities", write(tmp / "dup.txt", "Q1\nQ2\n\nQ1\n")],
         f"{tmp}/dup.txt line 4: duplicate entity key (first defined at line 1): 'Q1'. "
         f"Remove the duplicate or {HINT}"),
        (["--train", ok, "--valid", ok],
         "give both --valid and --test, or neither (then --train is split 80/10/10, or as "
         "--split says)"),
        (["--train", write(tmp / "hdronly.tsv", "head\trelation\ttail\n")],
         f"{tmp}/hdronly.tsv holds only a header line ('head\\trelation\\ttail') and no "
         "triples. Check the path, or that the file was fully written."),
        (["--train", write(tmp / "bom.tsv", "\ufeffQ1\tP31\tQ2\nQ2\tP31\tQ3\n\ufeffQ3\tP31\tQ1\n")],
         f"{tmp}/bom.tsv line 3: byte-order mark (U+FEFF) inside the file (files concatenated "
         f"with their BOMs?): '\\ufeffQ3\\tP31\\tQ1'. Remove the character or {HINT}"),
        (["--train", write(tmp / "nul.tsv", "Q1\tP31\tQ2\nQ\x002\tP31\tQ3\n")],
         f"{tmp}/nul.tsv line 2: NUL byte in the line (binary data or a damaged file): "
         f"'Q\\x002\\tP31\\tQ3'. Remove the character or {HINT}"),
        (["--train", write(tmp / "long.tsv", "Q1\tP31\tQ2\n" + "x" * 5000 + "\tP31\tQ3\n")],
         f"{tmp}/long.tsv line 2: a field is longer than 2048 characters (not a key: a broken "
         f"line or a glued file?): '{'x' * 119}... (5011 characters). Fix the line or {HINT}"),
        (["--train", ok, "--split", "0.5,0.5"],
         "--split '0.5,0.5': expected three fractions train,valid,test that sum to 1, e.g. "
         "0.8,0.1,0.1"),
    ]


def test_malformed_inputs_give_exact_messages(tmp_path, capsys):
    out = tmp_path / "out"
    for argv, expected in _malformed_cases(tmp_path):
        msg = kgops_error(capsys, "import", "triples", *argv, "--out", str(out))
        assert msg == expected
        assert read_manifest(str(out)) is None     # nothing that looks complete


def test_bad_rows_report_counts_all_problems_in_fail_mode(tmp_path, capsys):
    train = write(tmp_path / "t.tsv", "a\tr\tb\na\tr\nb\t\tc\nc\tr\n")
    msg = kgops_error(capsys, "import", "triples", "--train", train, "--out",
                      str(tmp_path / "g"))
    assert msg.endswith("(3 bad rows in all; column_count: 2, empty_field: 1)")


def test_quarantine_sets_bad_rows_aside_with_reasons(tmp_path):
    train = write(tmp_path / "train.tsv", "a\tr\tb\nb\tr\tc\nbroken line\nc\tr\t\n"
                                          "c\tr\ta\nd\tr\ta\n")
    valid = write(tmp_path / "valid.tsv", "a\tr\tc\n")
    test = write(tmp_path / "test.tsv", "b\tr\ta\n\tr\tb\n")
    out = str(tmp_path / "g")
    assert main(["import", "triples", "--train", train, "--valid", valid, "--test", test,
                 "--on-bad-rows", "quarantine", "--out", out]) == 0
    m = read_manifest(out)
    assert m["counts"]["bad_rows"] == 3
    assert m["counts"]["bad_rows_by_check"] == {"column_count": 1, "empty_field": 2}
    assert m["counts"]["edges"] == {"train": 4, "valid": 1, "test": 1}
    assert m["counts"]["rows_read"] == 9    # 6 good + 3 set aside: nothing vanished
    rows = pq.read_table(join(out, "quarantine", "bad_rows.parquet")).to_pandas()
    got = sorted(zip(rows["file"], rows["line"], rows["check"], rows["problem"], rows["row"],
                     strict=True))
    assert got == sorted([
        (train, 3, "column_count",
         "expected 3 tab-separated columns (head, relation, tail), found 1", "broken line"),
        (train, 4, "empty_field", "empty tail", "c\tr\t"),
        (test, 2, "empty_field", "empty head", "\tr\tb"),
    ])
    summary = json.loads((tmp_path / "g" / "quarantine" / "summary.json").read_text())
    assert summary["bad_rows"] == 3 and len(summary["first_messages"]) == 3
    assert m["validation"]["report"]["rows"] == join(out, "quarantine", "bad_rows.parquet")


# --- Debian -----------------------------------------------------------------------------------
STANZAS = """\
Package: alpha
Version: 1.0-1
Installed-Size: 120
Maintainer: Jane Doe <jane@example.org>
Architecture: amd64
Depends: libc6 (>= 2.34), beta | gamma-virtual, libc6:any, mta [amd64] <!nocheck>
Provides: alpha-api (= 1.0)
Conflicts: beta
Description: the alpha tool
Description-md5: 11111111111111111111111111111111
Tag: role::program,
 use::editing
Section: utils
Priority: optional

Package: beta
Source: beta-src (2.0-1)
Version: 2.0-1+b1
Installed-Size: 7
Maintainer: Debian Go Team <team+go@tracker.debian.org>
Architecture: all
Provides: gamma-virtual, mta
Built-Using: golang-1.19 (= 1.19.8-2), beta-src (= 2.0-1)
Multi-Arch: foreign
Description: the beta library
Section: golang
Priority: optional

Package: libc6
Installed-Size: 12000
Maintainer: GNU Libc Maintainers <debian-glibc@lists.debian.org>
Architecture: amd64
Description: GNU C Library
Section: libs
Priority: required
Essential: yes
"""
TRANSLATION = """\
Package: alpha
Description-md5: 11111111111111111111111111111111
Description-en: the alpha tool
 Alpha edits things.
 .
 It is fast.
"""


def test_debian_parser_on_hand_written_stanzas():
    bad = BadRows("fail")
    b, counts = build_debian_graph(STANZAS, "dumpavail.txt", {"tr": TRANSLATION}, bad, {})
    kg = b.build()
    assert len(bad) == 0
    assert {t.name: t.count for t in kg.schema.node_types} == {
        "package": 3, "virtual": 3, "maintainer": 3, "source": 4, "section": 3, "tag": 2}
    keys = {t.name: kg.nodes[t.name].column("key").to_pylist() for t in kg.schema.node_types}
    assert keys["virtual"] == ["gamma-virtual", "mta", "alpha-api"]
    assert keys["source"] == ["alpha", "beta-src", "libc6", "golang-1.19"]
    allkeys = sum(keys.values(), [])
    rels = [r.name for r in kg.schema.relations]
    got = {(allkeys[h], rels[r], allkeys[t]) for h, r, t in kg.edges["train"].tolist()}
    assert got == {
        ("alpha", "depends", "libc6"), ("alpha", "depends", "beta"),
        ("alpha", "depends_virtual", "gamma-virtual"), ("alpha", "depends_virtual", "mta"),
        ("alpha", "provides_virtual", "alpha-api"), ("alpha", "conflicts", "beta"),
        ("beta", "provides_virtual", "gamma-virtual"), ("beta", "provides_virtual", "mta"),
        ("beta", "built_using", "golang-1.19"), ("beta", "built_using", "beta-src"),
        ("alpha", "maintained_by", "Jane Doe <jane@example.org>"),
        ("beta", "maintained_by", "Debian Go Team <team+go@tracker.debian.org>"),
        ("libc6", "maintained_by", "GNU Libc Maintainers <debian-glibc@lists.debian.org>"),
        ("alpha", "built_from", "alpha"), ("beta", "built_from", "beta-src"),
        ("libc6", "built_from", "libc6"),
        ("alpha", "in_section", "utils"), ("beta", "in_section", "golang"),
        ("libc6", "in_section", "libs"),
        ("alpha", "tagged", "role::program"), ("alpha", "tagged", "use::editing"),
    }
    pkg = kg.nodes["package"].to_pandas().set_index("key")
    assert pkg.loc["alpha", "description"] == ("the alpha tool\nAlpha edits things.\n\n"
                                               "It is fast.")
    assert pkg.loc["beta", "description"] == "the beta library"     # no translation: synopsis
    assert list(pkg.loc["alpha", "debtags"]) == ["role::program", "use::editing"]
    assert pkg.loc["beta", "debtags"] is None
    assert pkg["installed_size"].tolist() == [120.0, 7.0, 12000.0]
    assert pkg["multi_arch"].tolist() == ["no", "foreign", "no"]
    assert pkg["essential"].tolist() == ["no", "no", "yes"]
    maint = kg.nodes["maintainer"].to_pandas()
    assert maint["kind"].tolist() == ["person", "team", "team"]
    assert maint["email_domain"].tolist() == ["example.org", "tracker.debian.org",
                                              "lists.debian.org"]
    virt = kg.nodes["virtual"].to_pandas()
    assert virt["status"].tolist() == ["provided", "provided", "provided"]
    assert counts["long_descriptions"] == 1


BAD_STANZAS = """\
Package: good
Installed-Size: 12
Depends: missing-thing, Bad_Name
Maintainer: X <x@y.z>
Section: misc

Version: 1.0

Package: sizeless
Installed-Size: twelve
Maintainer: X <x@y.z>
this line has no colon
Section: misc

Package: good
Maintainer: X <x@y.z>
Section: misc
"""


def test_debian_bad_stanzas_are_reported_with_lines():
    bad = BadRows("quarantine")
    b, _ = build_debian_graph(BAD_STANZAS, "dumpavail.txt", {}, bad, {})
    kg = b.build()
    assert bad.messages() == [
        "dumpavail.txt line 12: not a 'Field: value' line: 'this line has no colon'. Fix the "
        f"line (fields are 'Name: value'; continuation lines start with a space) or {HINT}",
        "dumpavail.txt line 7: stanza without a Package field: 'Version: 1.0'. Add the "
        f"Package field or delete the stanza; or {HINT}",
        "dumpavail.txt line 15: duplicate package key (first defined at line 1): 'good'. "
        f"Remove the duplicate or {HINT}",
        "dumpavail.txt line 10: installed_size of package 'sizeless' is not a number: "
        f"'twelve'. Fix the value or {HINT}",
        "dumpavail.txt line 3: Depends of 'good' names something that is not a package name: "
        f"'Bad_Name'. Fix the field or {HINT}",
    ]
    assert kg.schema.node_type("package").count == 2
    # good: depends_virtual missing-thing, maintained_by, in_section, built_from; sizeless: the
    # last three. The second 'good' stanza is set aside whole, edges included.
    assert len(kg.edges["train"]) == 7
    assert kg.nodes["package"].column("installed_size").to_pylist() == [12.0, None]


@pytest.mark.slow
def test_debian_full_import_matches_readme_facts(datasets, tmp_path):
    out = str(tmp_path / "debian")
    m = import_debian(DebianImportConfig(out=out, root=str(datasets / "debian"), seed=0))
    c = m["counts"]
    # README "Verified counts" (their throwaway parser; ours is independent)
    assert c["node_types"]["package"] == 63_666 and c["node_types"]["maintainer"] == 2_249
    assert c["node_types"]["section"] == 58 and c["node_types"]["tag"] == 597
    assert c["relation_types"]["tagged"] == 109_889
    readme_edges = {"depends": 282_167, "pre_depends": 1_031, "recommends": 30_431,
                    "suggests": 28_526, "enhances": 2_065, "conflicts": 6_891,
                    "breaks": 11_602, "replaces": 11_032, "provides": 37_582}
    for rel, n in readme_edges.items():
        assert c["relation_types"][rel] + c["relation_types"][f"{rel}_virtual"] == n, rel
    assert c["relation_types"]["built_using"] == 10_038
    # sources: 34,172 named by Source/Package, plus sources only named in Built-Using
    assert c["node_types"]["source"] >= 34_172
    assert c["relation_types"]["built_from"] == c["relation_types"]["in_section"] == 63_666
    assert c["long_descriptions"] == 63_664 and c["bad_rows"] == 0
    total = sum(c["relation_types"].values())
    assert sum(c["edges"].values()) == total
    assert abs(c["edges"]["valid"] / total - 0.1) < 0.02
    assert m["validation"]["ok"] and m["validation"]["checks"]["relation_type_violation"] == 0


@pytest.mark.skipif(shutil.which("apt-cache") is None, reason="needs a Debian machine's apt")
def test_from_apt_reads_this_machines_dumpavail():
    """What --from-apt adds over --root is reading apt; the full import of it runs in
    benchmarks/bench_import.py (same code path as --root after this point)."""
    dump = subprocess.run(["apt-cache", "dumpavail"], capture_output=True, text=True,
                          check=True).stdout
    expected = sum(1 for line in dump.splitlines() if line.startswith("Package: "))
    text = apt_dumpavail()
    assert expected > 0
    assert sum(1 for line in text.splitlines() if line.startswith("Package: ")) == expected


def test_debian_multiarch_stanzas_get_arch_qualified_keys():
    text = ("Package: libfoo1\nArchitecture: amd64\nMaintainer: X <x@y.z>\nSection: libs\n\n"
            "Package: libfoo1\nArchitecture: i386\nMaintainer: X <x@y.z>\nSection: libs\n\n"
            "Package: app\nArchitecture: amd64\nDepends: libfoo1:i386\nSection: misc\n")
    bad = BadRows("fail")
    kg = build_debian_graph(text, "dumpavail", {}, bad, {})[0].build()
    assert len(bad) == 0
    assert kg.nodes["package"].column("key").to_pylist() == ["libfoo1", "libfoo1:i386", "app"]
    depends = kg.schema.relation_index()["depends"]
    assert kg.edges["train"][kg.edges["train"][:, 1] == depends].tolist() == [[2, depends, 0]]


def test_debian_root_reads_xz(tmp_path):
    root = tmp_path / "deb"
    root.mkdir()
    (root / "dumpavail.txt.xz").write_bytes(lzma.compress(STANZAS.encode()))
    (root / "x_Translation-en.xz").write_bytes(lzma.compress(TRANSLATION.encode()))
    m = import_debian(DebianImportConfig(out=str(tmp_path / "g"), root=str(root), seed=1))
    assert m["counts"]["node_types"]["package"] == 3 and m["counts"]["long_descriptions"] == 1
    assert sum(m["counts"]["edges"].values()) == 21


def test_self_loops_are_counted_and_huge_lines_give_short_messages(tmp_path, capsys):
    train = write(tmp_path / "t.tsv", "a\tr\tb\nb\tr\tb\nc\tr\tc\nb\tr\tc\nc\tr\ta\n")
    out = str(tmp_path / "g")
    assert main(["import", "triples", "--train", train, "--valid", train, "--test", train,
                 "--out", out]) == 0
    assert read_manifest(out)["counts"]["self_loops"] == {"train": 2, "valid": 2, "test": 2}
    big = write(tmp_path / "big.tsv", "a\tr\tb\n" + "y" * 10_000_000 + "\n")
    msg = kgops_error(capsys, "import", "triples", "--train", big, "--out", str(tmp_path / "h"))
    assert len(msg) < 400 and "(10000002 characters)" in msg

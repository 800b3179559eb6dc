"""The distributed transform (real local Ray, 2 workers) equals a single-process transform row for
row; it writes to a real local S3 server; fitted encoders are reused unchanged for new nodes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kg_ops.config import EncodeConfig
from kg_ops.encode.cli import encode
from kg_ops.encode.features import load_feature_blocks, read_index
from kg_ops.encode.fit import EncodeSettings, load_encoders
from kg_ops.encode.transform import encode_in_process
from kg_ops.errors import KGOpsError
from kg_ops.graph.kg import load_schema
from kg_ops.manifest import read_manifest
from kg_ops.store import get_store, join
from tests.encode.conftest import item_table, save_graph

N = 90
SETTINGS = EncodeSettings(bins=5, max_categories=4, max_labels=8)
OPTIONS = {"bins": 5, "max_categories": 4, "max_labels": 8}    # SETTINGS as config options


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    return save_graph(str(tmp_path_factory.mktemp("g") / "graph"), item_table(N, seed=7))


@pytest.fixture(scope="module")
def local_run(graph, ray_local, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("enc") / "features")
    manifest = encode(EncodeConfig(graph=graph, out=out, workers=2, threads_per_worker=1,
                                   text_chunk=4, text_batch_size=3, tabular_min_cells=1,
                                   **OPTIONS))
    return out, manifest


def _blocks(uri, **kw):
    return {f"{b.node_type}/{b.attribute}": b for b in load_feature_blocks(uri, **kw)}


def test_distributed_equals_single_process(graph, local_run):
    out, manifest = local_run
    encoders, _ = load_encoders(out)
    reference = encode_in_process(graph, load_schema(graph), encoders, threads=1)
    blocks = _blocks(out)
    assert set(blocks) == set(reference) == {"item/price", "item/released", "item/section",
                                             "item/tags", "item/description"}
    for name, (ids, values) in reference.items():
        b = blocks[name]
        np.testing.assert_array_equal(b.node_ids, ids)
        assert b.values.shape == (len(ids), b.dim) and b.values.dtype == np.float32
        if b.kind == "text":  # different batch composition: float noise only
            np.testing.assert_allclose(b.values, values, atol=2e-6)
        else:
            np.testing.assert_array_equal(b.values, values)
    index = read_index(out)
    assert all(len(b["shards"]) > 1 for b in index["blocks"])  # really split across items
    busy = manifest["metrics"]["worker_busy_s"]
    assert len(busy) == 2 and min(busy) > 0  # both workers did some of the work


def test_missing_policy_and_manifest(graph, local_run):
    out, manifest = local_run
    table = item_table(N, seed=7)
    blocks = _blocks(out)
    offset = 3  # the attribute-less "tag" type comes first
    text = table.column("description").to_pylist()
    have_text = [offset + i for i, t in enumerate(text) if t and t.strip()]
    np.testing.assert_array_equal(blocks["item/description"].node_ids, have_text)
    assert blocks["item/description"].dim == 384
    np.testing.assert_allclose(np.linalg.norm(blocks["item/description"].values, axis=1), 1,
                               atol=1e-5)
    tags = table.column("tags").to_pylist()
    np.testing.assert_array_equal(blocks["item/tags"].node_ids,
                                  [offset + i for i, t in enumerate(tags) if t])
    m = manifest["metrics"]
    assert m["nodes"] == N + 3 and m["workers"] == 2
    assert m["missing"]["item/description"] == N - len(have_text)
    assert m["dims"]["item/description"] == 384 and m["dims"]["item/price"] == 5
    for key in ("nodes_per_s", "wall_s", "worker_net_s", "overhead_fraction"):
        assert m[key] is not None
    assert 0 < m["worker_net_s"] <= m["transform_wall_s"]
    for phase in ("fit_s", "startup_s", "tabular_s", "text_s", "write_s"):
        assert phase in manifest["timings"]
    assert read_manifest(out)["outputs"]["encoders_sha256"] == read_index(out)["encoders_sha256"]


def test_filter_by_node_ids(local_run):
    out, _ = local_run
    full = _blocks(out)
    want = np.array([0, 5, 6, 40, 77, 10_000])
    part = _blocks(out, node_ids=want)
    assert set(part) == set(full)
    for name, b in part.items():
        keep = np.isin(full[name].node_ids, want)
        np.testing.assert_array_equal(b.node_ids, full[name].node_ids[keep])
        np.testing.assert_array_equal(b.values, full[name].values[keep])
    assert _blocks(out, node_types=["tag"]) == {}


def test_s3_input_and_output(ray_local, s3_bucket, tmp_path):
    """Graph on S3, features to S3 (workers read S3 with the Ray node's own environment:
    nothing is forwarded), equal to a local run of the same graph. Tabular only: quick."""
    table = item_table(N, seed=8)
    graph_s3 = save_graph(join(s3_bucket, "graph"), table, text=False)
    graph_local = save_graph(str(tmp_path / "graph"), table, text=False)
    out = join(s3_bucket, "run", "encode")
    manifest = encode(EncodeConfig(graph=graph_s3, out=out, workers=2, threads_per_worker=1,
                                   tabular_min_cells=1, **OPTIONS))
    assert get_store(out).exists(join(out, "_manifest.json"))
    assert manifest["uri"] == out and manifest["metrics"]["workers"] == 2
    out_local = str(tmp_path / "enc")
    encode(EncodeConfig(graph=graph_local, out=out_local, workers=1, threads_per_worker=1,
                        **OPTIONS))
    s3_blocks, local_blocks = _blocks(out), _blocks(out_local)
    assert set(s3_blocks) == set(local_blocks) and len(local_blocks) == 4
    for name, b in local_blocks.items():
        np.testing.assert_array_equal(s3_blocks[name].node_ids, b.node_ids)
        np.testing.assert_array_equal(s3_blocks[name].values, b.values)
    assert "testing" not in json.dumps(manifest)  # the throwaway secret never lands in it


def test_reuse_encoders_for_new_nodes(ray_local, tmp_path):
    first = save_graph(str(tmp_path / "first"), item_table(N, seed=7), text=False)
    out = str(tmp_path / "enc1")
    encode(EncodeConfig(graph=first, out=out, workers=2, threads_per_worker=1, **OPTIONS))
    new_graph = save_graph(str(tmp_path / "new"), item_table(30, seed=99, unknown=True),
                           text=False)
    out2 = str(tmp_path / "enc2")
    manifest = encode(EncodeConfig(graph=new_graph, out=out2, workers=1, threads_per_worker=1,
                                   encoders=out))
    assert (get_store(out).read_bytes(join(out, "encoders.json"))
            == get_store(out2).read_bytes(join(out2, "encoders.json")))
    dims = {b["attribute"]: b["dim"] for b in read_index(out)["blocks"]}
    assert {b["attribute"]: b["dim"] for b in read_index(out2)["blocks"]} == dims
    assert manifest["metrics"]["unknown"]["item/section"] > 0
    assert manifest["metrics"]["unknown"]["item/tags"] > 0
    encoders, _ = load_encoders(out)
    reference = encode_in_process(new_graph, load_schema(new_graph), encoders, threads=1)
    for name, b in _blocks(out2).items():
        np.testing.assert_array_equal(b.node_ids, reference[name][0])
    # --encoders naming the file itself is checked like its folder: an edited file is caught
    enc = tmp_path / "enc1" / "encoders.json"
    enc.write_bytes(enc.read_bytes().replace(b"5", b"6", 1))       # same size, other bytes
    with pytest.raises(KGOpsError, match=r"enc1/encoders.json: content differs from the "
                                         r"SHA-256 .*Rerun the 'encode' stage"):
        encode(EncodeConfig(graph=new_graph, out=str(tmp_path / "enc3"), workers=1,
                            threads_per_worker=1, encoders=str(enc)))
    with pytest.raises(KGOpsError, match=r"holds a graph \(kgops import / synth\), not "
                                         r"features \(kgops encode\)"):
        encode(EncodeConfig(graph=new_graph, out=str(tmp_path / "enc3"), workers=1,
                            threads_per_worker=1, encoders=first))


def test_cli_bad_values_exit_2(ray_local, tmp_path, capsys):
    import pyarrow as pa

    from kg_ops.cli import main

    table = item_table(20, seed=3)
    price = table.column("price").to_pandas().to_numpy(float).copy()
    price[4] = np.inf
    uri = save_graph(str(tmp_path / "g"), table.set_column(2, "price", pa.array(price)),
                     text=False)
    out = str(tmp_path / "enc")
    assert main(["encode", "--graph", uri, "--out", out, "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert "row 4 (key 'item-4')" in err and "--on-bad skip" in err
    assert not get_store(out).exists(join(out, "_manifest.json"))
    assert main(["encode", "--graph", uri, "--out", out, "--workers", "1",
                 "--on-bad", "skip"]) == 0
    m = read_manifest(out)
    assert m["metrics"]["bad"] == {"item/price": 1}
    price_block = next(b for b in read_index(out)["blocks"] if b["attribute"] == "price")
    assert price_block["bad_examples"] == ["item-4"] and price_block["bad"] == 1
    ids = _blocks(out)["item/price"].node_ids
    assert 3 + 4 not in ids


def _schema(count: int, text: bool = True):
    from kg_ops.encode.fit import FittedEncoder
    from kg_ops.graph.schema import Attribute, GraphSchema, NodeType

    attrs = [Attribute("price", "numeric"), Attribute("section", "categorical")]
    attrs += [Attribute("description", "text")] if text else []
    schema = GraphSchema(name="plan", node_types=[NodeType("item", count, 0, attrs)],
                         relations=[])
    encoders = [FittedEncoder("item", a.name, a.kind, 3) for a in attrs]
    return schema, encoders


def test_text_items_cut_at_equal_token_counts():
    """Long texts first (as when a table is sorted): equal-row items would give the first
    worker most of the tokens; token-balanced items stay contiguous, cover every row once and
    each carries about 1/parts of the tokens."""
    from kg_ops.encode.transform import plan_items

    n, workers = 1000, 2
    cost = np.where(np.arange(n) < 100, 200, 10)
    schema, encoders = _schema(n)
    items = plan_items(schema, encoders, workers, text_chunk=512,
                       text_costs={"item": cost}).items["text"]
    spans = sorted((i.start, i.stop) for i in items)
    assert spans[0][0] == 0 and spans[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
    per_item = [cost[a:b].sum() for a, b in spans]
    assert len(spans) == 8 * workers
    assert max(per_item) <= cost.sum() / len(spans) + cost.max()
    equal_rows = [cost[a:a + n // 16].sum() for a in range(0, n, n // 16)]
    assert max(equal_rows) > 2 * max(per_item)  # what the row split would have done
    # without token counts (1 worker): equal rows, as before
    plain = plan_items(schema, encoders, 1, text_chunk=512).items["text"]
    assert sorted(i.rows for i in plain) == [125] * 8


def test_tabular_items_sized_by_work():
    """A small table is one item (not worth a dispatch per worker); a big one is cut into
    ~2 items per worker, largest first; rows are covered exactly once either way."""
    from kg_ops.encode.transform import plan_items

    schema, encoders = _schema(10_000, text=False)
    assert [(i.start, i.stop) for i in plan_items(schema, encoders, 2).items["tabular"]] \
        == [(0, 10_000)]
    items = plan_items(schema, encoders, 2, min_tabular_cells=1000).items["tabular"]
    assert len(items) == 4 and sum(i.rows for i in items) == 10_000
    assert [i.rows for i in items] == sorted((i.rows for i in items), reverse=True)
    assert sorted((i.start, i.stop) for i in items)[-1][1] == 10_000


def test_token_costs_count_what_the_model_sees(graph, tmp_path):
    """Tokens per row (after truncation; 0 for missing texts) against the tokenizer called one
    text at a time."""
    from transformers import AutoTokenizer

    from kg_ops.encode.fit import fit_encoders
    from kg_ops.encode.text import resolve_model_path
    from kg_ops.encode.transform import text_token_costs

    schema = load_schema(graph)
    encoders, _ = fit_encoders(graph, schema, SETTINGS)
    costs = text_token_costs(graph, schema, encoders)
    assert set(costs) == {"item"}
    tok = AutoTokenizer.from_pretrained(resolve_model_path(None))
    text = item_table(N, seed=7).column("description").to_pylist()
    expect = [len(tok(t.strip(), truncation=True, max_length=256)["input_ids"])
              if t and t.strip() else 0 for t in text]
    np.testing.assert_array_equal(costs["item"], expect)
    # a model directory without tokenizer.json: transformers' tokenizer, same counts
    model = resolve_model_path(None)
    other = tmp_path / "model"
    other.mkdir()
    for f in model.iterdir():
        if f.name != "tokenizer.json":
            (other / f.name).symlink_to(f)
    text_enc = next(e for e in encoders if e.kind == "text")
    text_enc.params = {**text_enc.params, "model": str(other)}
    np.testing.assert_array_equal(text_token_costs(graph, schema, encoders)["item"], expect)


def test_first_items_go_to_different_workers(ray_local):
    """Items are handed out largest first, one per worker in turn: the two big items must not
    queue up on one worker while the other gets the small ones."""
    import time

    from kg_ops.encode.transform import WorkItem, run_items

    @ray_local.remote(num_cpus=0)
    class Recorder:
        def __init__(self, i):
            self.i = i

        def run(self, item):
            time.sleep(item.rows / 1000)
            return {"worker": self.i, "rows": item.rows, "start": item.start}

    actors = [Recorder.remote(i) for i in range(2)]
    items = [WorkItem("t", 0, 300, ["a"], "tabular"), WorkItem("t", 300, 600, ["a"], "tabular"),
             WorkItem("t", 600, 610, ["a"], "tabular"), WorkItem("t", 610, 620, ["a"], "tabular")]
    results = {r["start"]: r["worker"] for r in run_items(actors, items, "tabular", in_flight=2)}
    assert sorted(results) == [0, 300, 600, 610]
    assert results[0] != results[300]

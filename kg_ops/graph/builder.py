"""Turn keyed nodes and edges into a :class:`KnowledgeGraph` with dense, per-type contiguous ids.

Every importer (and ``kgops synth``) speaks in its own keys -- Wikidata ids, package names,
row numbers -- and hands them to a :class:`GraphBuilder`::

    b = GraphBuilder("codex-s", bad_rows=BadRows(mode))
    b.add_node_type("entity", keys, {"types": lists}, [Attribute("types", "multilabel")])
    b.add_relation("P31", "entity", "entity", label="instance of")
    b.add_edges("train", heads, tails, relations, origin="train.txt", lines=lines)
    kg = b.build()

Node type ``t`` gets ids ``[offset_t, offset_t + n_t)`` in the order types were added; inside a
type, ids follow first appearance of the keys. Edge ends are looked up in the node type their
relation declares, so a key only has to be unique within its type. Ends may be given as keys
(strings) or as integer positions into the keys passed to ``add_node_type`` (what a generator
that never had names uses). All of it is vectorised: one hash lookup per node type per chunk,
no Python loop per node or edge.

Rows that cannot be used (duplicate node keys, unknown relations, edges to unknown nodes or to a
node of the wrong type, unparseable numbers or dates) go to the :class:`BadRows` collector with
their file and line; the caller decides whether that fails the import or is quarantined.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from kg_ops.graph.kg import KnowledgeGraph
from kg_ops.graph.schema import SPLITS, Attribute, GraphSchema, NodeType, Relation
from kg_ops.graph.split import split_edges
from kg_ops.graph.validate import BadRows

log = logging.getLogger(__name__)

ARROW_TYPES = {
    "text": pa.string(),
    "categorical": pa.string(),
    "numeric": pa.float64(),
    "date": pa.timestamp("s", tz="UTC"),
    "multilabel": pa.list_(pa.string()),
}


@dataclass
class _Nodes:
    name: str
    index: pd.Index                      # unique keys, position = local id
    columns: dict[str, pa.Array]
    specs: list[Attribute]
    description: str
    position_to_local: np.ndarray | None  # original position -> local id (only if duplicates)
    n_given: int


@dataclass
class _Edges:
    split: str
    head: np.ndarray
    tail: np.ndarray
    relation: str | np.ndarray
    origin: str
    lines: np.ndarray | None
    raw: np.ndarray | None
    fix: str


@dataclass
class GraphBuilder:
    name: str
    bad_rows: BadRows = field(default_factory=BadRows)
    source: dict[str, Any] = field(default_factory=dict)
    _nodes: dict[str, _Nodes] = field(default_factory=dict)
    _relations: dict[str, Relation] = field(default_factory=dict)
    _edges: list[_Edges] = field(default_factory=list)

    # --- input ------------------------------------------------------------------------------
    def add_node_type(self, name: str, keys: Any, attributes: Mapping[str, Any] | pa.Table | None
                      = None, specs: Sequence[Attribute] = (), description: str = "",
                      origin: str = "", lines: Any = None) -> None:
        """Add a node type. ``keys`` are unique names (converted to str); ``attributes`` maps
        attribute name -> column aligned with ``keys`` (array, list, pandas or Arrow), converted
        to the Arrow type of its kind in ``specs``. ``origin``/``lines`` locate each key in the
        input for error messages (``lines`` may also map attribute name -> line of each value,
        with ``"key"`` for the keys). Duplicate keys keep their first row; the others are bad
        rows."""
        if name in self._nodes:
            raise ValueError(f"node type {name!r} added twice")
        keys = _as_str_array(keys)
        attr_lines = dict(lines) if isinstance(lines, Mapping) else {}
        lines = attr_lines.get("key") if isinstance(lines, Mapping) else lines
        lines = None if lines is None else np.asarray(lines, dtype=np.int64)
        codes, uniques = pd.factorize(keys, use_na_sentinel=False)
        keep = None
        if len(uniques) != len(keys):
            first = np.zeros(len(uniques), dtype=np.int64)
            first[codes[::-1]] = np.arange(len(keys))[::-1]   # first position of every key
            dup = np.ones(len(keys), dtype=bool)
            dup[first] = False
            where = (first[codes[dup]] if lines is None else lines[first[codes[dup]]])
            self.bad_rows.add(
                "duplicate_node_key", origin or f"{name} nodes",
                None if lines is None else lines[dup], keys[dup],
                [f"duplicate {name} key (first defined at {'row' if lines is None else 'line'} "
                 f"{w})" for w in where],
                "Remove the duplicate", unit="line" if lines is not None else "row")
            keep = ~dup
        attributes = _columns(attributes)
        cols: dict[str, pa.Array] = {}
        spec_by_name = {a.name: a for a in specs}
        for attr, values in attributes.items():
            if attr not in spec_by_name:
                raise ValueError(f"node type {name!r}: attribute {attr!r} has no spec")
            spec = spec_by_name[attr]
            arr, bad = coerce(spec.kind, values)
            if bad is not None and bad.any():
                vals = np.asarray(_to_pandas(values), dtype=object)[bad]
                where = attr_lines.get(attr, lines)
                self.bad_rows.add(
                    f"unparseable_{'date' if spec.kind == 'date' else 'number'}",
                    origin or f"{name} nodes",
                    None if where is None else np.asarray(where, np.int64)[bad], vals,
                    [f"{attr} of {name} {k!r} is not a "
                     f"{'date (ISO 8601 expected)' if spec.kind == 'date' else 'number'}"
                     for k in keys[bad]],
                    "Fix the value",
                    unit="line" if lines is not None else "row")
            if keep is not None:
                arr = arr.filter(pa.array(keep))
            cols[attr] = arr
        for spec in specs:
            if spec.name not in cols:
                cols[spec.name] = pa.nulls(len(uniques), ARROW_TYPES[spec.kind])
        self._nodes[name] = _Nodes(name, pd.Index(uniques, dtype=object), cols, list(specs),
                                   description, codes if keep is not None else None, len(keys))

    def add_relation(self, name: str, head: str, tail: str, label: str = "") -> None:
        if name in self._relations:
            raise ValueError(f"relation {name!r} added twice")
        self._relations[name] = Relation(name=name, head=head, tail=tail, label=label)

    def add_edges(self, split: str, head: Any, tail: Any, relation: str | Any, *,
                  origin: str = "", lines: Any = None, raw: Any = None,
                  fix: str = "Fix the line") -> None:
        """Add edges of one split. ``relation`` is one relation name for all rows or one per row;
        ``head``/``tail`` are keys (strings) or integer positions into the node type's keys.
        ``raw`` is the input text of each row, shown in messages about bad rows."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
        rel = relation if isinstance(relation, str) else _as_str_array(relation)
        self._edges.append(_Edges(
            split, _ends(head), _ends(tail), rel, origin or f"{split} edges",
            None if lines is None else np.asarray(lines, dtype=np.int64),
            None if raw is None else np.asarray(raw, dtype=object), fix))

    def key_index(self, node_type: str) -> pd.Index:
        """The unique keys of a node type; position = id - offset of the type."""
        return self._nodes[node_type].index

    # --- output -----------------------------------------------------------------------------
    def build(self) -> KnowledgeGraph:
        """Assign ids and resolve edges. Bad rows are recorded in ``bad_rows``, never raised
        here: call ``bad_rows.check()`` (fail mode) before writing anything."""
        node_types, offset = [], 0
        for n in self._nodes.values():
            node_types.append(NodeType(n.name, len(n.index), offset, n.specs, n.description))
            offset += len(n.index)
        schema = GraphSchema(self.name, node_types, list(self._relations.values()),
                             source=self.source)
        schema.validate()
        parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
        for chunk in self._edges:
            parts[chunk.split].append(self._resolve(schema, chunk))
        edges = {s: (np.concatenate(p) if p else np.empty((0, 3), np.int64))
                 for s, p in parts.items()}
        nodes = {}
        for t, n in zip(node_types, self._nodes.values(), strict=True):
            ids = np.arange(t.offset, t.offset + t.count, dtype=np.int64)
            nodes[t.name] = pa.table({"id": ids,
                                      "key": pa.array(n.index.to_numpy(), pa.string()),
                                      **n.columns})
        return KnowledgeGraph(schema=schema, edges=edges, nodes=nodes)

    def _resolve(self, schema: GraphSchema, c: _Edges) -> np.ndarray:
        """(E, 3) global ids for one chunk; unusable rows go to bad_rows and are left out."""
        n = len(c.head)
        rel_names = list(self._relations)
        if isinstance(c.relation, str):
            rel = np.full(n, rel_names.index(c.relation) if c.relation in self._relations else -1)
        else:
            rel = pd.Index(rel_names, dtype=object).get_indexer(c.relation)
        ok = rel >= 0
        if not ok.all():
            bad = ~ok
            names = np.broadcast_to(np.asarray(c.relation, dtype=object), (n,))[bad]
            self._bad(c, bad, "unknown_relation",
                      [f"unknown relation {r!r}" for r in names])
        head_t, tail_t = schema.relation_head_tail_types()
        out = np.empty((n, 3), dtype=np.int64)
        out[:, 1] = rel
        for col, ends, end_types, end_name in ((0, c.head, head_t, "head"),
                                               (2, c.tail, tail_t, "tail")):
            types = np.where(ok, end_types[np.maximum(rel, 0)], -1)
            for ti, t in enumerate(schema.node_types):
                sel = np.flatnonzero(types == ti)
                if not len(sel):
                    continue
                local = self._lookup(t.name, ends[sel])
                out[sel, col] = t.offset + local
                miss = sel[local < 0]
                if len(miss):
                    mask = np.zeros(n, dtype=bool)
                    mask[miss] = True
                    ok &= ~mask
                    self._bad_ends(c, miss, ends, rel, end_name, t.name)
        return out[ok]

    def _lookup(self, node_type: str, ends: np.ndarray) -> np.ndarray:
        nodes = self._nodes[node_type]
        if ends.dtype.kind in "iu":
            local = np.full(len(ends), -1, dtype=np.int64)
            inside = (ends >= 0) & (ends < nodes.n_given)
            pos = ends[inside].astype(np.int64)
            local[inside] = pos if nodes.position_to_local is None else nodes.position_to_local[pos]
            return local
        return nodes.index.get_indexer(ends)

    def _bad_ends(self, c: _Edges, miss: np.ndarray, ends: np.ndarray, rel: np.ndarray,
                  end_name: str, type_name: str) -> None:
        """Explain edge ends that are not nodes of the declared type: of another type (a type
        violation) or of none (an unknown node)."""
        keys = ends[miss]
        other = np.full(len(miss), "", dtype=object)
        if keys.dtype.kind not in "iu":
            for name, nodes in self._nodes.items():
                if name != type_name:
                    hit = (other == "") & (nodes.index.get_indexer(keys) >= 0)
                    other[hit] = name
        rel_names = list(self._relations)
        problems = [
            (f"{end_name} {k!r} is a {o} node but relation {rel_names[r]!r} expects a "
             f"{type_name} {end_name}") if o else
            (f"{end_name} {k!r} is not a known {type_name} node"
             + ("" if keys.dtype.kind not in "iu" else " position"))
            for k, o, r in zip(keys.tolist(), other, rel[miss], strict=True)]
        violation = other != ""
        for check, sel in (("relation_type_violation", violation), ("unknown_node", ~violation)):
            if sel.any():
                mask = np.zeros(len(c.head), dtype=bool)
                mask[miss[sel]] = True
                self._bad(c, mask, check, [p for p, s in zip(problems, sel, strict=True) if s])

    def _bad(self, c: _Edges, mask: np.ndarray, check: str, problems: list[str]) -> None:
        if c.raw is not None:
            rows = c.raw[mask]
        else:
            rel = np.broadcast_to(np.asarray(c.relation, dtype=object), (len(c.head),))
            rows = np.array([f"{h}\t{r}\t{t}" for h, r, t in
                             zip(c.head[mask], rel[mask], c.tail[mask], strict=True)], object)
        self.bad_rows.add(check, c.origin, None if c.lines is None else c.lines[mask], rows,
                          problems, c.fix, unit="line" if c.lines is not None else "row")


def resplit(kg: KnowledgeGraph, seed: int, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
            ) -> int:
    """Replace ``kg.edges`` by a seeded split of all its edges; returns how many valid/test edges
    were moved to train so their entities occur there (record it in the manifest)."""
    allx = np.concatenate([kg.edges[s] for s in SPLITS if s in kg.edges])
    kg.edges, moved = split_edges(allx, kg.num_nodes, kg.schema.num_relations, seed=seed,
                                  fractions=fractions)
    return moved


# --- column conversion ----------------------------------------------------------------------
def coerce(kind: str, values: Any) -> tuple[pa.Array, np.ndarray | None]:
    """``values`` as the Arrow type of ``kind`` and, for numeric/date, a mask of values that
    were present but could not be parsed (they become null)."""
    target = ARROW_TYPES[kind]
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.Array) and (values.type == target or kind == "multilabel"):
        return values.cast(target), None
    if kind == "multilabel":
        return pa.array(_to_pandas(values).tolist(), type=target, from_pandas=True), None
    s = _to_pandas(values)
    if kind in ("text", "categorical"):
        return pa.array(s.astype(object).where(s.notna(), None), type=target), None
    present = s.notna()
    if s.dtype == object or pd.api.types.is_string_dtype(s.dtype):
        present &= s.astype(str).str.strip() != ""
    if kind == "numeric":
        parsed = pd.to_numeric(s, errors="coerce").astype("float64")
    else:
        if pd.api.types.is_datetime64_any_dtype(s.dtype):
            parsed = s if s.dt.tz is not None else s.dt.tz_localize("UTC")
        else:
            parsed = pd.to_datetime(s.where(present, None), errors="coerce", utc=True,
                                    format="ISO8601")
    bad = (present & parsed.isna()).to_numpy()
    return pa.array(parsed, type=target, from_pandas=True), bad


def _to_pandas(values: Any) -> pd.Series:
    if isinstance(values, pa.ChunkedArray | pa.Array):
        return values.to_pandas()
    if isinstance(values, pd.Series):
        return values.reset_index(drop=True)
    if isinstance(values, np.ndarray) and values.ndim == 1:
        return pd.Series(values)
    return pd.Series(list(values), dtype=object)


def _columns(attributes: Mapping[str, Any] | pa.Table | None) -> dict[str, Any]:
    if attributes is None:
        return {}
    if isinstance(attributes, pa.Table):
        return {name: attributes.column(name) for name in attributes.column_names}
    if isinstance(attributes, pd.DataFrame):
        return {name: attributes[name] for name in attributes.columns}
    return dict(attributes)


def _as_str_array(values: Any) -> np.ndarray:
    if isinstance(values, pa.ChunkedArray | pa.Array):
        values = values.to_numpy(zero_copy_only=False)
    arr = np.asarray(values)
    if arr.dtype != object:
        arr = arr.astype(str).astype(object)
    return arr


def _ends(values: Any) -> np.ndarray:
    if isinstance(values, pa.ChunkedArray | pa.Array):
        values = values.to_numpy(zero_copy_only=False)
    arr = np.asarray(values)
    return arr if arr.dtype.kind in "iu" else _as_str_array(arr)

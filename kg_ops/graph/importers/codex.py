"""``kgops import codex``: CoDEx-S/M (Safavi & Koutra, EMNLP 2020) from a copy of its repository.

Entities are the Wikidata items of the size's triples (one node type, ``entity``); each carries
its Wikidata types as two multilabel attributes, ``types`` (Q-ids, from entity2types.json) and
``type_labels`` (their English labels, from types/en/types.json). Relations keep their English
label (``Relation.label``); descriptions of relations and types go to ``schema.source``. A triple
whose relation is not in relations/en/relations.json is a bad row. The hard negatives
(``{valid,test}_negatives.txt``) are written to ``negatives/{valid,test}.parquet`` in the same
id space, for triple classification.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from kg_ops.config.importers import CODEX_SIZES, CodexImportConfig
from kg_ops.graph.builder import GraphBuilder
from kg_ops.graph.importers.common import InputError, finish_import, read_text, require_files
from kg_ops.graph.importers.triples import ENTITY, build_triples_graph, read_triples
from kg_ops.graph.kg import KnowledgeGraph, edges_to_table
from kg_ops.graph.schema import Attribute
from kg_ops.graph.validate import BadRows
from kg_ops.manifest import Stage
from kg_ops.store import get_store, join

SPECS = [Attribute("types", "multilabel", "Wikidata types (Q-ids) of the entity"),
         Attribute("type_labels", "multilabel", "English labels of the entity's types")]


def codex_files(root: str, size: str) -> dict[str, str]:
    if size not in CODEX_SIZES:
        raise InputError(f"--size must be one of {', '.join(CODEX_SIZES)} (CoDEx-L's train file is "
                         f"not in this copy), not {size!r}")
    if not root:
        from kg_ops.datasets import packaged_codex_root

        if size != "s":
            raise InputError(f"the CoDEx copy shipped in kg_ops holds CoDEx-S only: pass --root "
                             f"<a CoDEx repository copy> for CoDEx-{size.upper()}")
        root = packaged_codex_root()
    data = Path(root) / "data"
    if not data.is_dir():
        raise InputError(f"{root} does not look like the CoDEx repository: {data} is missing. "
                         "Pass --root pointing at the folder that holds data/triples.")
    tri = data / "triples" / f"codex-{size}"
    files = {"train": tri / "train.txt", "valid": tri / "valid.txt", "test": tri / "test.txt",
             "valid_negatives": tri / "valid_negatives.txt",
             "test_negatives": tri / "test_negatives.txt",
             "relations": data / "relations" / "en" / "relations.json",
             "entity2types": data / "types" / "entity2types.json",
             "types": data / "types" / "en" / "types.json"}
    return {k: str(_maybe_xz(v)) for k, v in files.items()}


def _maybe_xz(path: Path) -> Path:
    """The file, or its ``.xz`` twin when only that exists (the packaged copy is compressed)."""
    xz = path.with_name(path.name + ".xz")
    return xz if not path.exists() and xz.exists() else path


def _json(path: str, what: str) -> dict:
    try:
        return json.loads(read_text(path, what))
    except json.JSONDecodeError as exc:
        raise InputError(f"{path} line {exc.lineno}: not valid JSON ({exc.msg}). The file is "
                         "damaged; restore it from the CoDEx repository.") from exc


def type_attributes(keys: np.ndarray, entity2types: dict, types: dict) -> tuple[dict, int]:
    """``types`` and ``type_labels`` list columns aligned with ``keys``, vectorised via
    explode/map; returns the columns and the number of entities without a types entry."""
    per_entity = pd.Series(entity2types, dtype=object).reindex(keys)
    missing = int(per_entity.isna().sum())
    per_entity = per_entity.where(per_entity.notna(), pd.Series([[]] * len(keys), index=keys))
    lengths = per_entity.map(len).to_numpy()
    flat = per_entity.explode().dropna().astype(str)
    labels = pd.Series({k: v.get("label") or k for k, v in types.items()}, dtype=object)
    flat_labels = flat.map(labels).fillna(flat)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    cols = {"types": pa.ListArray.from_arrays(offsets, pa.array(flat.to_numpy(), pa.string())),
            "type_labels": pa.ListArray.from_arrays(offsets, pa.array(flat_labels.to_numpy(),
                                                                      pa.string()))}
    return cols, missing


def import_codex(config: CodexImportConfig, *, force: bool = False) -> dict:
    """Import CoDEx-``config.size`` into ``config.out``; returns the manifest."""
    files = codex_files(config.root, config.size)
    name = f"codex-{config.size}"
    t0 = time.perf_counter()
    require_files({f"CoDEx {k.replace('_', ' ')}": v for k, v in files.items()
                   if "negatives" not in k})
    inputs = {k: v for k, v in files.items() if "negatives" not in k or Path(v).is_file()}
    with Stage("import", config.out, config={**config.recorded(), "name": name}, inputs=inputs,
               force=force) as st:
        if st.reused:
            return st.manifest
        bad = BadRows(config.on_bad_rows)
        with st.phase("parse"):
            frames = read_triples({s: files[s] for s in ("train", "valid", "test")}, bad, False)
            for split, f in frames.items():
                f.attrs["origin"] = files[split]
            relations = _json(files["relations"], "CoDEx relations")
            entity2types = _json(files["entity2types"], "CoDEx entity types")
            types = _json(files["types"], "CoDEx type labels")
        with st.phase("build"):
            ends = [f[c].to_numpy(object) for f in frames.values() for c in ("head", "tail")]
            keys = pd.unique(np.concatenate(ends))
            attrs, untyped = type_attributes(keys, entity2types, types)
            rel = pd.DataFrame({"name": list(relations),
                                "label": [v.get("label", "") for v in relations.values()]})
            used = pd.unique(np.concatenate([f["relation"].to_numpy(object)
                                             for f in frames.values()]))
            rel = rel[rel["name"].isin(used)]   # declare only relations the triples use
            used_types = pd.unique(np.concatenate([a for a in entity2types.values()] or [[]]))
            source = {"dataset": name, "paper": "Safavi & Koutra, EMNLP 2020",
                      "relation_descriptions": {k: relations[k].get("description", "")
                                                for k in rel["name"]},
                      "type_labels": {t: types[t].get("label", "") for t in used_types
                                      if t in types}}
            b = build_triples_graph(
                name, frames, bad, relations=rel, source=source, attributes=attrs, specs=SPECS,
                fix=f"Fix the line, or add the relation to {files['relations']}")
            kg = b.build()
        rows = sum(len(f) for f in frames.values()) + bad.counts().get("column_count", 0) + \
            bad.counts().get("empty_field", 0)
        with st.phase("negatives"):
            negatives, counts = _negatives(files, kg, b, bad)
        finish_import(st, kg, bad, rows_read=rows, started=t0,
                      extra_counts={"entities_without_types": untyped, **counts})
        store = get_store(st.out)
        for split, e in negatives.items():
            st.outputs[f"negatives/{split}"] = join(st.out, "negatives", f"{split}.parquet")
            store.write_parquet(st.outputs[f"negatives/{split}"], edges_to_table(e))
    return st.manifest


def _negatives(files: dict[str, str], kg: KnowledgeGraph, b: GraphBuilder, bad: BadRows,
               ) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """The hard negatives in the graph's id space. Negatives naming an entity or relation
    outside this graph are counted, not kept (they cannot be scored)."""
    ent = b.key_index(ENTITY)
    rel = pd.Index([r.name for r in kg.schema.relations], dtype=object)
    arrays, counts = {}, {}
    for split in ("valid", "test"):
        path = files[f"{split}_negatives"]
        if not Path(path).is_file():
            counts[f"negatives_{split}"] = 0
            continue
        f = read_triples({split: path}, bad, False)[split]
        h, r, t = (ent.get_indexer(f["head"]), rel.get_indexer(f["relation"]),
                   ent.get_indexer(f["tail"]))
        ok = (h >= 0) & (r >= 0) & (t >= 0)
        arrays[split] = np.stack([h[ok], r[ok], t[ok]], axis=1).astype(np.int64)
        counts[f"negatives_{split}"] = int(ok.sum())
        counts[f"negatives_{split}_outside_graph"] = int((~ok).sum())
    return arrays, counts

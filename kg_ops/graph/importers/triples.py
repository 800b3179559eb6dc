"""``kgops import triples``: head<TAB>relation<TAB>tail files (FB15k-237, CoDEx, WN18RR style).

One node type, ``entity``; every relation is typed entity -> entity. Entities get ids in order of
first appearance (train, then valid, then test), or the order of an ``--entities`` file, which
then also defines which entities exist (edges to others are bad rows). Likewise ``--relations``
declares the relation vocabulary. Given only ``--train``, the edges are split 80/10/10 with a seed.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd

from kg_ops.config.importers import TriplesImportConfig
from kg_ops.graph.builder import GraphBuilder, resplit
from kg_ops.graph.importers.common import finish_import, parse_tsv, read_text, require_files
from kg_ops.graph.validate import BadRows
from kg_ops.manifest import Stage

log = logging.getLogger(__name__)

COLUMNS = ("head", "relation", "tail")
ENTITY = "entity"


def read_triples(files: dict[str, str], bad: BadRows, header: bool) -> dict[str, pd.DataFrame]:
    """Parse each split's file into head/relation/tail/line/raw (bad rows go to ``bad``)."""
    return {split: parse_tsv(read_text(path, f"{split} triples"), path, COLUMNS, bad,
                             header=header, what="triples")
            for split, path in files.items()}


def read_vocabulary(path: str, what: str) -> pd.DataFrame:
    """First column = name, optional second column = label; one per line, blanks skipped."""
    from kg_ops.graph.importers.common import split_lines

    lines = split_lines(read_text(path, what))
    lines = lines[lines.str.strip() != ""]
    parts = lines.str.split("\t", n=1, expand=True)
    return pd.DataFrame({"name": parts[0].str.strip().to_numpy(),
                         "label": (parts[1].fillna("").str.strip().to_numpy()
                                   if parts.shape[1] > 1 else ""),
                         "line": lines.index.to_numpy()})


def build_triples_graph(name: str, frames: dict[str, pd.DataFrame], bad: BadRows,
                        entities: pd.DataFrame | None = None, entities_origin: str = "",
                        relations: pd.DataFrame | None = None,
                        relation_labels: dict[str, str] | None = None, fix: str = "Fix the line",
                        source: dict | None = None, attributes=None, specs=()) -> GraphBuilder:
    """A builder holding the parsed triples as one ``entity`` node type (also used by CoDEx)."""
    b = GraphBuilder(name, bad_rows=bad, source=dict(source or {}))
    if entities is None:
        ends = [f[c] for f in frames.values() for c in ("head", "tail")]
        keys = pd.unique(np.concatenate([e.to_numpy(dtype=object) for e in ends])) if ends else []
        b.add_node_type(ENTITY, keys, attributes, specs)
    else:
        b.add_node_type(ENTITY, entities["name"].to_numpy(), attributes, specs,
                        origin=entities_origin, lines=entities["line"].to_numpy())
    if relations is None:
        names = pd.unique(np.concatenate([f["relation"].to_numpy(dtype=object)
                                          for f in frames.values()]))
        labels = relation_labels or {}
        for r in names:
            b.add_relation(r, ENTITY, ENTITY, label=labels.get(r, ""))
    else:
        for r, label in zip(relations["name"], relations["label"], strict=True):
            b.add_relation(r, ENTITY, ENTITY, label=label)
    for split, f in frames.items():
        b.add_edges(split, f["head"].to_numpy(object), f["tail"].to_numpy(object),
                    f["relation"].to_numpy(object), origin=f.attrs.get("origin", split),
                    lines=f["line"].to_numpy(), raw=f["raw"].to_numpy(), fix=fix)
    return b


def import_triples(config: TriplesImportConfig, *, force: bool = False) -> dict:
    """Import TSV triples into ``config.out``; returns the manifest."""
    fractions = config.fractions()
    files = {"train": config.train} | (
        {"valid": config.valid, "test": config.test} if config.valid else {})
    relations, entities = config.relations, config.entities
    inputs = {k: v for k, v in {**files, "relations": relations, "entities": entities}.items()
              if v is not None}
    t0 = time.perf_counter()
    require_files({"train triples": config.train, "valid triples": config.valid,
                   "test triples": config.test, "relations": relations, "entities": entities})
    with Stage("import", config.out, config=config.recorded(), inputs=inputs,
               force=force) as st:
        if st.reused:
            return st.manifest
        bad = BadRows(config.on_bad_rows)
        with st.phase("parse"):
            frames = read_triples(files, bad, config.header)
            for split_name, f in frames.items():
                f.attrs["origin"] = files[split_name]
            ent = read_vocabulary(entities, "entities") if entities else None
            rel = read_vocabulary(relations, "relations") if relations else None
        vocab = [v for v in (relations, entities) if v]
        fix = "Fix the line" + (f" or add the name to {' / '.join(vocab)}" if vocab else "")
        with st.phase("build"):
            b = build_triples_graph(config.graph_name(), frames, bad, ent, entities or "", rel,
                                    fix=fix, source={"format": "triples", "files": files})
            kg = b.build()
            moved = resplit(kg, config.seed, fractions) if fractions else None
        parse_bad = bad.counts()
        rows = sum(len(f) for f in frames.values()) + sum(
            parse_bad.get(k, 0) for k in ("column_count", "empty_field"))
        finish_import(st, kg, bad, rows_read=rows, started=t0, moved=moved)
    return st.manifest

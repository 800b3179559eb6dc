"""What every importer shares: reading input files, parsing tab-separated rows, and the end of
an import (check bad rows, validate, write graph + quarantine report, fill the manifest)."""

from __future__ import annotations

import bz2
import gzip
import logging
import lzma
import time
from pathlib import Path

import numpy as np
import pandas as pd

from kg_ops.errors import KGOpsError, snippet
from kg_ops.graph.info import summarize
from kg_ops.graph.kg import KnowledgeGraph
from kg_ops.graph.validate import BadRows, GraphInvalidError, validate_graph
from kg_ops.manifest import Stage
from kg_ops.store import get_store, is_s3, join

log = logging.getLogger(__name__)

MAX_KEY_CHARS = 2048   # longer entity/relation keys are bad rows (a glued file, not a name)
HEADER_WORDS = {"head", "relation", "tail", "subject", "predicate", "object", "h", "r", "t",
                "s", "p", "o", "source", "target", "src", "dst", "rel"}
_DECOMPRESS = {".xz": lzma.decompress, ".gz": gzip.decompress, ".bz2": bz2.decompress}


class InputError(KGOpsError):
    """An input file is missing, empty or unreadable."""


def require_files(files: dict[str, str | None]) -> None:
    """Fail early, with the role of the file in the message, if a local input is missing (before
    the Stage fingerprints inputs). ``None`` entries are optional inputs that were not given."""
    for what, path in files.items():
        if path is not None and not is_s3(path) and not Path(path).is_file():
            hint = " (it is a directory)" if Path(path).is_dir() else ""
            raise InputError(f"{what} file not found: {path}{hint}. Check the path.")


def read_text(uri: str, what: str) -> str:
    """The decoded text of a local or s3:// file (``.xz``/``.gz``/``.bz2`` decompressed).
    ``what`` names the file's role in messages ("train triples")."""
    if not is_s3(uri) and not Path(uri).is_file():
        hint = " (it is a directory)" if Path(uri).is_dir() else ""
        raise InputError(f"{what} file not found: {uri}{hint}. Check the path.")
    try:
        data = get_store(uri).read_bytes(uri)
    except FileNotFoundError as exc:
        raise InputError(f"{what} file not found: {uri}. Check the path.") from exc
    suffix = Path(uri).suffix
    if suffix in _DECOMPRESS:
        try:
            data = _DECOMPRESS[suffix](data)
        except (OSError, EOFError, lzma.LZMAError) as exc:
            raise InputError(f"{uri}: cannot decompress {suffix} data ({exc}). The file is "
                             "truncated or not really compressed; check it.") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        column = exc.start - data.rfind(b"\n", 0, exc.start)
        raise InputError(f"{uri} line {line} column {column}: not valid UTF-8 (byte "
                         f"{data[exc.start:exc.start + 1]!r}). Re-encode the file as UTF-8."
                         ) from exc
    if not text.strip():
        raise InputError(f"{uri} is empty. Check the path, or that the file was fully "
                         f"written.")
    return text.lstrip("\ufeff")


def split_lines(text: str) -> pd.Series:
    """Lines of a text with CRLF or LF endings (1-based line numbers as the index)."""
    lines = pd.Series(text.replace("\r\n", "\n").split("\n"), dtype=object)
    if len(lines) and lines.iloc[-1] == "":
        lines = lines.iloc[:-1]
    lines.index = np.arange(1, len(lines) + 1)
    return lines


def parse_tsv(text: str, origin: str, columns: tuple[str, ...], bad: BadRows,
              header: bool = False, what: str = "rows") -> pd.DataFrame:
    """Rows of a tab-separated text as a frame with ``columns`` plus ``line`` and ``raw``.
    Blank lines are skipped; fields are stripped of surrounding spaces; rows with the wrong
    number of columns or an empty field go to ``bad``. Raises if nothing is left."""
    lines = split_lines(text)
    content = lines[lines.str.strip() != ""]
    if header and len(content):
        content = content.iloc[1:]
    elif len(content):
        first = content.iloc[0].strip().lower().split("\t")
        if len(first) == len(columns) and all(f.strip() in HEADER_WORDS for f in first):
            if len(content) == 1:
                raise InputError(f"{origin} holds only a header line ({snippet(content.iloc[0])}"
                                 f") and no {what}. Check the path, or that the file was fully "
                                 "written.")
            log.warning("%s line %d looks like a header (%r) and is read as data; pass "
                        "--header if it is one", origin, content.index[0], content.iloc[0])
    content = _set_aside_damaged(content, origin, bad)
    n = len(columns)
    found = content.str.count("\t").to_numpy() + 1
    wrong = found != n
    if wrong.any():
        names = ", ".join(columns)
        bad.add("column_count", origin, content.index[wrong], content[wrong].to_numpy(),
                [f"expected {n} tab-separated columns ({names}), found {k}"
                 for k in found[wrong]], "Fix the line")
    good = content[~wrong]
    parts = good.str.split("\t", expand=True) if len(good) else pd.DataFrame(
        columns=range(n), dtype=object)
    frame = pd.DataFrame({c: parts[i].str.strip() if len(good) else pd.Series(dtype=object)
                          for i, c in enumerate(columns)})
    frame["line"] = good.index.to_numpy()
    frame["raw"] = good.to_numpy()
    long = np.column_stack([frame[c].str.len().to_numpy() > MAX_KEY_CHARS for c in columns]) \
        if len(frame) else np.zeros((0, n), bool)
    if long.any():
        rows = long.any(axis=1)
        bad.add("key_too_long", origin, frame["line"][rows], frame["raw"][rows],
                f"a field is longer than {MAX_KEY_CHARS} characters (not a key: a broken line "
                "or a glued file?)", "Fix the line")
        frame = frame[~rows]
    empty = (frame[list(columns)] == "").to_numpy()
    if empty.any():
        rows = empty.any(axis=1)
        which = [", ".join(c for c, e in zip(columns, r, strict=True) if e) for r in empty[rows]]
        bad.add("empty_field", origin, frame["line"][rows], frame["raw"][rows],
                [f"empty {w}" for w in which], "Fix the line")
        frame = frame[~rows]
    if not len(frame) and not len(content):
        raise InputError(f"{origin} has no {what}" + (" after the header line" if header else "")
                         + ". Check the path, or that the file was fully written.")
    return frame.reset_index(drop=True)


_DAMAGE = (("nul_byte", "\x00", "NUL byte in the line (binary data or a damaged file)"),
           ("byte_order_mark", "\ufeff", "byte-order mark (U+FEFF) inside the file (files "
            "concatenated with their BOMs?)"))


def _set_aside_damaged(content: pd.Series, origin: str, bad: BadRows) -> pd.Series:
    """Lines with NUL bytes or a byte-order mark after the start of the file go to ``bad``:
    kept, they would become entities whose keys hold invisible characters."""
    for check, char, problem in _DAMAGE:
        hit = content.str.contains(char, regex=False).to_numpy()
        if hit.any():
            bad.add(check, origin, content.index[hit], content[hit].to_numpy(), problem,
                    "Remove the character")
            content = content[~hit]
    return content


def finish_import(st: Stage, kg: KnowledgeGraph, bad: BadRows, *, rows_read: int,
                  started: float, moved: int | None = None,
                  extra_counts: dict | None = None) -> dict:
    """The end of every import: fail on bad rows (fail mode) before anything is written, check
    the built graph, write it and the quarantine report, and fill the manifest (counts of every
    kind of set-aside row included, so nothing disappears without a number)."""
    bad.check()
    if not len(kg.edges.get("train", ())):
        first = f" First: {bad.messages(1)[0]}" if len(bad) else ""
        raise InputError(f"no usable train edges are left: {len(bad)} bad rows were set aside "
                         f"({', '.join(f'{k}: {v}' for k, v in bad.counts().items())}).{first}"
                         if len(bad) else "the input holds no edges to train on. Check the "
                         "input files.")
    with st.phase("validate"):
        report = validate_graph(kg.schema, kg.edges, kg.nodes)
    if not report.ok:   # the importer built something inconsistent: a bug, not bad input
        raise GraphInvalidError("the imported graph failed validation: "
                                + " | ".join(report.errors))
    for w in report.warnings:
        log.warning("%s", w)
    with st.phase("write"):
        store = get_store(st.out)
        for stale in ("quarantine", "validation", "negatives"):   # from an earlier run
            store.delete_prefix(join(st.out, stale))
        st.outputs.update(kg.save(st.out))
        quarantine = bad.write(st.out)
    if "report" in quarantine:
        st.outputs["quarantine"] = quarantine["report"]
        log.warning("%d bad rows set aside in %s (%s)", quarantine["bad_rows"],
                    quarantine["report"]["rows"],
                    ", ".join(f"{k}: {v}" for k, v in quarantine["by_check"].items()))
    summary = summarize(kg.schema, kg.edges)
    st.counts.update({k: summary[k] for k in ("nodes", "relations", "edges", "node_types",
                                              "relation_types")})
    st.counts["rows_read"] = rows_read
    loops = {split: int((e[:, 0] == e[:, 2]).sum()) for split, e in kg.edges.items()}
    st.counts["self_loops"] = loops        # kept (a real relation can relate a node to itself)
    if sum(loops.values()):
        log.info("%d self-loop edges (head == tail) kept: %s", sum(loops.values()), loops)
    st.counts["bad_rows"] = quarantine["bad_rows"]
    st.counts["bad_rows_by_check"] = quarantine["by_check"]
    if moved is not None:
        st.counts["moved_to_train"] = moved
    st.counts.update(extra_counts or {})
    st.extra["validation"] = {**quarantine, **report.to_dict()}
    elapsed = max(time.perf_counter() - started, 1e-9)
    st.metrics["rows_per_s"] = round(rows_read / elapsed, 1)
    st.metrics["edges_per_s"] = round(sum(summary["edges"].values()) / elapsed, 1)
    return summary

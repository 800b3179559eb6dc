"""Graph validation: bad input rows (collected while importing) and checks of a stored graph.

Importers never drop a row silently: every row they cannot use goes into :class:`BadRows` with
the file, line/row, the problem and the raw text. ``--on-bad-rows fail`` (the default) stops at
the end of parsing with the first problem spelled out; ``--on-bad-rows quarantine`` keeps going
and writes the rows with their reasons to ``{out}/quarantine/`` and their counts to the manifest.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from kg_ops.config.importers import ON_BAD_ROWS
from kg_ops.errors import KGOpsError, snippet
from kg_ops.store import get_store, join

QUARANTINE_HINT = "re-run with --on-bad-rows quarantine to set bad rows aside"


class BadRowsError(KGOpsError):
    """Input rows that cannot be imported (``--on-bad-rows fail``)."""


class GraphInvalidError(KGOpsError):
    """A stored graph fails validation."""


class BadRows:
    """Rows set aside during an import, with the reason for each.

    ``add`` takes whole arrays (one call per kind of problem and file), so collecting bad rows
    stays vectorised; messages are formatted only for the rows a user actually reads.
    """

    COLUMNS = ("check", "file", "unit", "line", "problem", "fix", "row")

    def __init__(self, mode: str = "fail"):
        if mode not in ON_BAD_ROWS:
            raise KGOpsError(f"--on-bad-rows must be one of {', '.join(ON_BAD_ROWS)}, not {mode!r}")
        self.mode = mode
        self._parts: list[pd.DataFrame] = []

    def add(self, check: str, file: str, lines: Sequence[int] | np.ndarray | None,
            rows: Sequence[Any] | np.ndarray, problem: str | Sequence[str], fix: str,
            unit: str = "line") -> None:
        """Record bad rows. ``check`` is a short code (e.g. ``column_count``) used for counts;
        ``problem`` is one string or one per row; ``fix`` says what to do (e.g. "Fix the line");
        ``unit`` names what ``lines`` count ("line" in text files, "row" in tables)."""
        rows = np.asarray(rows, dtype=object)
        n = len(rows)
        if n == 0:
            return
        line = np.full(n, -1, dtype=np.int64) if lines is None else np.asarray(lines, np.int64)
        self._parts.append(pd.DataFrame({
            "check": check, "file": str(file), "unit": unit, "line": line,
            "problem": problem if isinstance(problem, str) else np.asarray(problem, object),
            "fix": fix, "row": rows.astype(str),
        }))

    def __len__(self) -> int:
        return sum(len(p) for p in self._parts)

    def frame(self) -> pd.DataFrame:
        if not self._parts:
            return pd.DataFrame({c: pd.Series(dtype=object) for c in self.COLUMNS})
        return pd.concat(self._parts, ignore_index=True)

    def counts(self) -> dict[str, int]:
        """Number of bad rows per check (every check seen, even at zero, is worth recording)."""
        if not self._parts:
            return {}
        return {k: int(v) for k, v in self.frame()["check"].value_counts(sort=False).items()}

    @staticmethod
    def message(rec: dict[str, Any]) -> str:
        where = rec["file"] if rec["line"] < 0 else f"{rec['file']} {rec['unit']} {rec['line']}"
        glue = "; or" if " or " in rec["fix"] else " or"
        return (f"{where}: {rec['problem']}: {snippet(rec['row'])}. {rec['fix']}{glue} "
                f"{QUARANTINE_HINT}.")

    def messages(self, limit: int | None = None) -> list[str]:
        df = self.frame()
        if limit is not None:
            df = df.head(limit)
        return [self.message(rec) for rec in df.to_dict("records")]

    def check(self) -> None:
        """In ``fail`` mode, raise with the first problem (and a tally of the rest)."""
        if self.mode != "fail" or not len(self):
            return
        msg = self.messages(limit=1)[0]
        total = len(self)
        if total > 1:
            tally = ", ".join(f"{k}: {v}" for k, v in self.counts().items())
            msg += f" ({total} bad rows in all; {tally})"
        raise BadRowsError(msg)

    def write(self, out: str) -> dict[str, Any]:
        """Write the quarantine report under ``{out}/quarantine/`` (only if there is something to
        report) and return the manifest entry: counts per check and the report's URIs."""
        counts = self.counts()
        entry: dict[str, Any] = {"mode": self.mode, "bad_rows": len(self), "by_check": counts}
        if not len(self):
            return entry
        store = get_store(out)
        df = self.frame()
        rows_uri = join(out, "quarantine", "bad_rows.parquet")
        store.write_parquet(rows_uri, _to_arrow(df))
        summary_uri = join(out, "quarantine", "summary.json")
        store.write_json(summary_uri, {**entry, "first_messages": self.messages(limit=20)})
        entry["report"] = {"rows": rows_uri, "summary": summary_uri}
        return entry


def _to_arrow(df: pd.DataFrame):
    import pyarrow as pa

    return pa.Table.from_pandas(df.astype({"line": "int64"}), preserve_index=False)


# --- checks of a graph (in memory after an import, or stored: `kgops validate`) ---------------
class Report:
    """Result of :func:`validate_graph`: errors make a graph unusable, warnings are facts worth
    knowing (duplicate edges, train/test overlap) that a user may accept."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.warnings: list[str] = []
        self.checks: dict[str, int] = {}    # check name -> number of offending rows (0 = passed)
        self.bad_rows = BadRows("quarantine")

    @property
    def ok(self) -> bool:
        return not self.errors

    def record(self, check: str, n: int, message: str | None = None,
               warning: bool = False) -> None:
        self.checks[check] = self.checks.get(check, 0) + int(n)
        if n and message:
            (self.warnings if warning else self.errors).append(message)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "errors": self.errors, "warnings": self.warnings,
                "checks": self.checks}


def validate_graph(schema, edges: dict[str, np.ndarray], nodes: dict[str, Any] | None = None,
                   where: str = "", node_schemas: dict[str, Any] | None = None) -> Report:
    """Structural checks, vectorised over the edge arrays: ids in range, relation ids known,
    head/tail types as declared, node tables consistent with the schema (ids, unique non-null
    keys, attribute storage types); plus warnings for duplicate edges and split overlap.
    ``where`` prefixes file names in messages (the graph URI). ``node_schemas`` (Arrow schemas
    per node type) lets a caller check attribute storage types without reading the columns."""
    rep = Report()
    pre = f"{where.rstrip('/')}/" if where else ""
    schema.validate()
    for t in schema.node_types:
        table = (nodes or {}).get(t.name)
        if table is not None:
            file = f"{pre}nodes/{t.name}.parquet"
            if _check_node_table(rep, t, table, file):
                _check_attributes(rep, t, (node_schemas or {}).get(t.name, table.schema), file)
    encoded = _check_splits(rep, schema, edges, pre)
    if "train" in encoded:
        for split in ("valid", "test"):
            if split in encoded and len(encoded[split]):
                leak = _count_in(encoded[split], encoded["train"])
                rep.record(f"{split}_in_train", leak,
                           f"{pre}edges/{split}.parquet: {leak} edges also occur in train "
                           "(test leakage)", warning=True)
    return rep


def _check_node_table(rep: Report, t, table, file: str) -> bool:
    """Row count, ids in order, unique non-null keys; False when the row count is wrong (the
    other checks would only repeat it)."""
    if table.num_rows != t.count:
        rep.record("node_count", abs(table.num_rows - t.count),
                   f"{file}: {table.num_rows} rows but schema.json says {t.count} "
                   f"{t.name} nodes. Re-import the graph; the files do not belong together.")
        return False
    ids = table.column("id").to_numpy()
    wrong = np.flatnonzero(ids != np.arange(t.offset, t.offset + t.count))
    rep.record("node_ids", len(wrong),
               f"{file} row {wrong[0] if len(wrong) else 0}: id "
               f"{ids[wrong[0]] if len(wrong) else 0} but ids of {t.name} must run "
               f"{t.offset}..{t.offset + t.count - 1} in order. Re-import the graph.")
    keys = table.column("key").to_pandas()
    dup = np.flatnonzero(keys.duplicated().to_numpy())
    rep.record("duplicate_node_key", len(dup),
               f"{file} row {dup[0] if len(dup) else 0}: duplicate {t.name} key "
               f"{keys.iloc[dup[0]] if len(dup) else ''!r} ({len(dup)} duplicates). "
               "Keys must be unique per node type; fix the input and re-import.")
    rep.bad_rows.add("duplicate_node_key", file, dup, keys.iloc[dup].to_numpy(dtype=object),
                     f"duplicate {t.name} key", "Fix the input and re-import", unit="row")
    null = np.flatnonzero(keys.isna().to_numpy())
    rep.record("null_node_key", len(null),
               f"{file} row {null[0] if len(null) else 0}: {t.name} node without a key. "
               "Fix the input and re-import.")
    return True


def _check_attributes(rep: Report, t, arrow_schema, file: str) -> None:
    """Every declared attribute column exists with its kind's storage type."""
    from kg_ops.graph.builder import ARROW_TYPES

    for a in t.attributes:
        if a.name not in arrow_schema.names:
            rep.record("attribute_missing", 1,
                       f"{file}: attribute column {a.name!r} ({a.kind}) declared in "
                       "schema.json is missing. Re-import the graph.")
        elif not storage_ok(a.kind, arrow_schema.field(a.name).type):
            rep.record("attribute_type", 1,
                       f"{file}: column {a.name!r} is stored as "
                       f"{arrow_schema.field(a.name).type} but a {a.kind} attribute must be "
                       f"{ARROW_TYPES[a.kind]} (unparsed numbers or dates?). Re-import "
                       "the graph.")


def _check_splits(rep: Report, schema, edges: dict[str, np.ndarray], pre: str,
                  ) -> dict[str, np.ndarray]:
    """Each split's edges (present, in range, typed, duplicates, entities unseen in train);
    returns each split's sorted edge codes for the leakage check."""
    from kg_ops.graph.schema import SPLITS

    seen_train: np.ndarray | None = None
    encoded: dict[str, np.ndarray] = {}
    for split in SPLITS:
        e = edges.get(split)
        file = f"{pre}edges/{split}.parquet"
        if e is None:
            rep.record("missing_split", 1, f"{file} is missing. Re-import the graph.")
            continue
        if split == "train" and not len(e):
            rep.record("empty_train", 1, f"{file} has no edges: nothing to train on. Check the "
                       "import's input files.")
        fine = _check_edges(rep, schema, e, file)
        # sorted codes: duplicate and overlap checks by sorting (numpy's hash-based unique is
        # an order of magnitude slower on tens of millions of int64)
        code = np.sort(_encode(e, schema.num_nodes, schema.num_relations))
        encoded[split] = code
        dups = int((code[1:] == code[:-1]).sum())
        rep.record(f"duplicate_edges_{split}", dups,
                   f"{file}: {dups} duplicate edges (kept; they weigh double in training)",
                   warning=True)
        h, tl = np.where(fine, e[:, 0], 0), np.where(fine, e[:, 2], 0)
        if split == "train":
            seen_train = np.zeros(schema.num_nodes, dtype=bool)
            seen_train[h[fine]] = True
            seen_train[tl[fine]] = True
        elif seen_train is not None and len(e):
            unseen = int((fine & ~(seen_train[h] & seen_train[tl])).sum())
            rep.record(f"unseen_in_train_{split}", unseen,
                       f"{file}: {unseen} edges have an entity that never occurs in train "
                       "(a model cannot rank it)", warning=True)
    return encoded


def _check_edges(rep: Report, schema, e: np.ndarray, file: str) -> np.ndarray:
    """Ids in range, relation known, head/tail of the declared types; returns the rows that
    passed the range checks."""
    n_nodes, n_rel = schema.num_nodes, schema.num_relations
    head_t, tail_t = schema.relation_head_tail_types()
    type_names = np.array([t.name for t in schema.node_types], dtype=object)
    rel_names = np.array([r.name for r in schema.relations], dtype=object)
    h, r, tl = e[:, 0], e[:, 1], e[:, 2]
    bad_rel = (r < 0) | (r >= n_rel)
    _first(rep, "unknown_relation", bad_rel, file,
           lambda i: f"relation id {r[i]} is not one of the schema's {n_rel} relations")
    bad_h = (h < 0) | (h >= n_nodes)
    bad_t = (tl < 0) | (tl >= n_nodes)
    _first(rep, "unknown_node", bad_h | bad_t, file,
           lambda i: f"node id {h[i] if bad_h[i] else tl[i]} is outside 0..{n_nodes - 1}")
    fine = ~(bad_rel | bad_h | bad_t)
    rr = np.where(fine, r, 0)
    ht = schema.type_of(np.where(fine, h, 0))
    tt = schema.type_of(np.where(fine, tl, 0))
    viol = fine & ((ht != head_t[rr]) | (tt != tail_t[rr]))
    _first(rep, "relation_type_violation", viol, file, lambda i: (
        f"edge ({h[i]}, {rel_names[r[i]]}, {tl[i]}) links a {type_names[ht[i]]} to a "
        f"{type_names[tt[i]]} but relation {rel_names[r[i]]!r} is declared "
        f"{type_names[head_t[r[i]]]} -> {type_names[tail_t[r[i]]]}"))
    return fine


def storage_ok(kind: str, typ) -> bool:
    """Whether an Arrow column type stores ``kind`` as documented in schema.py. Dates may come
    back from Parquet in another unit than written (Parquet has no seconds unit): any UTC
    timestamp is fine."""
    import pyarrow as pa

    if kind == "date":
        return pa.types.is_timestamp(typ) and typ.tz in ("UTC", "+00:00")
    if kind == "numeric":
        return pa.types.is_floating(typ)
    if kind == "multilabel":
        return (pa.types.is_list(typ) or pa.types.is_large_list(typ)) and \
            (pa.types.is_string(typ.value_type) or pa.types.is_large_string(typ.value_type))
    return pa.types.is_string(typ) or pa.types.is_large_string(typ)


def _first(rep: Report, check: str, mask: np.ndarray, file: str, describe) -> None:
    """Record a row-level check: count every offending row, spell out the first, and keep all
    of them (row numbers) in the report's quarantine table."""
    bad = np.flatnonzero(mask)
    if not len(bad):
        rep.record(check, 0)
        return
    i = int(bad[0])
    more = f" ({len(bad)} such rows)" if len(bad) > 1 else ""
    rep.record(check, len(bad), f"{file} row {i}: {describe(i)}{more}. The graph files are "
               "inconsistent: re-import the graph.")
    rep.bad_rows.add(check, file, bad, bad.astype(str), [describe(int(j)) for j in bad[:100_000]]
                     if len(bad) <= 100_000 else describe(i) + " (first of many)",
                     "Re-import the graph", unit="row")


def _count_in(values: np.ndarray, sorted_pool: np.ndarray) -> int:
    """How many of ``values`` occur in the sorted array ``sorted_pool``."""
    if not len(sorted_pool):
        return 0
    idx = np.minimum(np.searchsorted(sorted_pool, values), len(sorted_pool) - 1)
    return int((sorted_pool[idx] == values).sum())


def _encode(e: np.ndarray, n_nodes: int, n_rel: int) -> np.ndarray:
    """One int64 per (head, relation, tail), for duplicate and overlap checks."""
    n, r = max(n_nodes, 1), max(n_rel, 1)
    if float(n) * n * r < 2 ** 62:
        return (e[:, 0] * r + e[:, 1]) * n + e[:, 2]
    return pd.util.hash_pandas_object(pd.DataFrame(e), index=False).to_numpy().view(np.int64)

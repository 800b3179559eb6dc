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

from kg_ops.errors import KGOpsError
from kg_ops.store import get_store, join

ON_BAD_ROWS = ("fail", "quarantine")
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
        return (f"{where}: {rec['problem']}: {rec['row']!r}. "
                f"{rec['fix']} or {QUARANTINE_HINT}.")

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

"""A vectorised deb822 (Debian control file) reader: ``apt-cache dumpavail``, Packages,
Translation-en.

Instead of walking 1.2M lines in Python, continuation lines are folded into their field line
with one ``str.replace`` (a marker where the newline was), the text is split once, and names,
values and stanza numbers come from pandas string ops and cumulative sums. Original line numbers
survive folding, so a bad line is still reported where the user's editor shows it.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from kg_ops.graph.validate import BadRows

_FOLD = "\x00"   # never occurs in a text file; marks a folded continuation line


def parse_deb822(text: str, origin: str, fields: Iterable[str], bad: BadRows,
                 ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row per stanza with one column per wanted field (``None`` when absent; multi-line
    values keep their newlines and the continuation lines' leading space), and a frame of the
    same shape with each field's line number. Both carry the stanza's first line as column
    ``line``; ``values`` also has the stanza's ``first_field`` ("Name: value") for messages. Malformed lines and repeated fields go to ``bad``."""
    fields = list(fields)
    text = text.replace("\r\n", "\n")
    folded = text.replace("\n ", _FOLD + " ").replace("\n\t", _FOLD + "\t")
    lines = pa.array(folded.split("\n"), pa.large_string())
    folds = pc.count_substring(lines, _FOLD).to_numpy()
    lineno = np.arange(1, len(lines) + 1) + np.cumsum(folds) - folds
    blank = pc.match_substring_regex(lines, r"^\s*$").to_numpy(zero_copy_only=False)
    stanza = np.cumsum(blank)
    comment = pc.starts_with(lines, "#").to_numpy(zero_copy_only=False)
    parts = pc.extract_regex(lines, r"^(?P<name>[^:\s\x00]+):(?P<value>.*)$")
    valid = parts.is_valid().to_numpy(zero_copy_only=False)
    malformed = ~blank & ~comment & ~valid
    if malformed.any():
        bad_lines = pc.filter(lines, pa.array(malformed))
        orphan = pc.starts_with(bad_lines, _FOLD).to_numpy(zero_copy_only=False)
        bad.add("malformed_line", origin, lineno[malformed],
                pc.replace_substring(bad_lines, _FOLD, "\n").to_numpy(zero_copy_only=False),
                np.where(orphan, "continuation line outside a field (a blank line before it?)",
                         "not a 'Field: value' line"),
                "Fix the line (fields are 'Name: value'; continuation lines start with a space)")
    keep = valid & ~blank & ~comment
    kept = pc.filter(parts, pa.array(keep))
    name = kept.field("name").to_numpy(zero_copy_only=False)
    value = pc.replace_substring(pc.utf8_trim_whitespace(kept.field("value")), _FOLD, "\n")
    df = pd.DataFrame({"stanza": stanza[keep], "name": name,
                       "value": value.to_numpy(zero_copy_only=False), "line": lineno[keep]})
    first = df.drop_duplicates("stanza").set_index("stanza")
    starts = first["line"]
    first_text = (first["name"] + ": " + first["value"]).to_numpy(dtype=object)
    df = df[df["name"].isin(fields)]
    dup = df.duplicated(["stanza", "name"]).to_numpy()
    if dup.any():
        d = df[dup]
        bad.add("duplicate_field", origin, d["line"].to_numpy(),
                (d["name"] + ": " + d["value"]).to_numpy(),
                [f"field {n} repeated in one stanza (the first one is used)" for n in d["name"]],
                "Remove the repeated field")
        df = df[~dup]
    values = df.pivot(index="stanza", columns="name", values="value")
    line_of = df.pivot(index="stanza", columns="name", values="line")
    values = values.reindex(index=starts.index, columns=fields)
    line_of = line_of.reindex(index=starts.index, columns=fields)
    values = values.astype(object).where(values.notna(), None)
    values.insert(0, "line", starts.to_numpy())
    values.insert(1, "first_field", first_text)
    line_of = line_of.fillna(-1).astype(np.int64)
    line_of.insert(0, "line", starts.to_numpy())
    return values.reset_index(drop=True), line_of.reset_index(drop=True)


def description_text(values: pd.Series) -> pd.Series:
    """Turn deb822 multi-line descriptions into plain text: the synopsis line, then the long
    description with the leading space removed and ' .' lines as blank lines."""
    return (values.str.replace(r"\n \.(?=\n|$)", "\n", regex=True)
            .str.replace("\n ", "\n", regex=False))

"""``kgops import debian``: the Debian package graph, a heterogeneous KG with every attribute kind
a real enterprise graph has (text, numeric, categorical, multilabel; the archive index has no
per-package date).

Input: ``apt-cache dumpavail`` (deb822, one stanza per package) plus ``Translation-en`` files for
long descriptions, joined on ``Description-md5`` -- from ``--root`` (the shared snapshot) or from
this machine's apt (``--from-apt``; without Translation files the one-line synopsis is used).

Node types: ``package``, ``virtual`` (names that packages depend on, conflict with or provide but
that are no package here: virtual names, old or removed packages), ``maintainer``, ``source``,
``section``, ``tag`` (debtags). A relation has one head and one tail type, so each dependency
field yields two relations: ``depends`` (package -> package) and ``depends_virtual``
(package -> virtual); likewise pre_depends, recommends, suggests, enhances, conflicts, breaks,
replaces, provides. ``built_using`` points at source packages. Alternatives ``a | b`` count as
an edge to each; version constraints, architecture qualifiers and build profiles are dropped;
repeated edges are kept once. The archive has no split: edges are split 80/10/10 with a seed.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from kg_ops.config.importers import DEFAULT_SPLIT, DebianImportConfig
from kg_ops.graph.builder import GraphBuilder, resplit
from kg_ops.graph.importers.common import InputError, finish_import, read_text
from kg_ops.graph.importers.deb822 import description_text, parse_deb822
from kg_ops.graph.schema import Attribute
from kg_ops.graph.validate import BadRows
from kg_ops.manifest import Stage

log = logging.getLogger(__name__)

# dependency-like fields -> relation name (each also gets a *_virtual twin)
DEPENDENCY_FIELDS = {"Depends": "depends", "Pre-Depends": "pre_depends",
                     "Recommends": "recommends", "Suggests": "suggests", "Enhances": "enhances",
                     "Conflicts": "conflicts", "Breaks": "breaks", "Replaces": "replaces",
                     "Provides": "provides"}
FIELDS = ["Package", "Source", "Version", "Installed-Size", "Size", "Maintainer",
          "Architecture", "Multi-Arch", "Essential", "Section", "Priority", "Description",
          "Description-md5", "Homepage", "Tag", "Built-Using", *DEPENDENCY_FIELDS]
TRANSLATION_FIELDS = ["Package", "Description-md5", "Description-en"]
# Debian policy 5.6.7: lower case letters, digits, + - . ; at least two characters.
NAME_RE = r"[a-z0-9][a-z0-9+.\-]+"

PACKAGE_SPECS = [
    Attribute("description", "text", "long description (Translation-en), else the synopsis"),
    Attribute("installed_size", "numeric", "Installed-Size in KiB"),
    Attribute("download_size", "numeric", "Size of the .deb in bytes"),
    Attribute("priority", "categorical", "Priority"),
    Attribute("section", "categorical", "Section"),
    Attribute("architecture", "categorical", "Architecture (amd64, all, ...)"),
    Attribute("multi_arch", "categorical", "Multi-Arch (no when absent)"),
    Attribute("essential", "categorical", "Essential (yes/no)"),
    Attribute("debtags", "multilabel", "debtags (facet::tag)"),
    Attribute("homepage_host", "categorical", "host name of the Homepage URL"),
]
VIRTUAL_SPECS = [Attribute("status", "categorical",
                           "provided (some package Provides it) or missing (nothing does)")]
MAINTAINER_SPECS = [Attribute("name", "text", "maintainer's name"),
                    Attribute("email_domain", "categorical", "domain of the e-mail address"),
                    Attribute("kind", "categorical", "team (a list or team address) or person")]
TAG_SPECS = [Attribute("facet", "categorical", "debtags facet (the part before ::)")]

LABELS = {"maintained_by": "Maintainer field", "built_from": "Source field (binary -> source)",
          "built_using": "Built-Using (statically embeds code of a source package)",
          "in_section": "Section field", "tagged": "Tag field (debtags)"}


# --- inputs ---------------------------------------------------------------------------------
def root_inputs(root: str) -> dict[str, str]:
    base = Path(root)
    if not base.is_dir():
        raise InputError(f"--root {root}: no such directory. Point it at the folder holding "
                         "dumpavail.txt.xz (and *_Translation-en.xz).")
    for name in ("dumpavail.txt.xz", "dumpavail.txt", "dumpavail.txt.gz"):
        if (base / name).is_file():
            dump = base / name
            break
    else:
        raise InputError(f"{root}: no dumpavail.txt(.xz|.gz) found. Create one with "
                         "`apt-cache dumpavail > dumpavail.txt`, or use --from-apt.")
    files = {"dumpavail": str(dump)}
    for i, tr in enumerate(sorted(p for p in base.glob("*Translation-en*") if p.is_file())):
        files[f"translation_{i}"] = str(tr)
    return files


def apt_dumpavail() -> str:
    """``apt-cache dumpavail`` of this machine."""
    exe = shutil.which("apt-cache")
    if exe is None:
        raise InputError("--from-apt needs apt-cache (a Debian/Ubuntu machine); it is not on "
                         "PATH here. Use --root with a saved dumpavail.txt instead.")
    proc = subprocess.run([exe, "dumpavail"], capture_output=True, check=False)
    if proc.returncode != 0:
        raise InputError(f"`apt-cache dumpavail` failed ({proc.returncode}): "
                         f"{proc.stderr.decode(errors='replace')[-500:]}. Run `apt-get update` "
                         "first, or use --root.")
    text = proc.stdout.decode("utf-8", errors="replace")
    if not text.strip():
        raise InputError("`apt-cache dumpavail` printed nothing: the package lists are empty. "
                         "Run `apt-get update` first, or use --root.")
    return text


def apt_translations(lists: str = "/var/lib/apt/lists") -> dict[str, str]:
    """Translation-en texts from apt's lists (any compression apt uses; lz4 via apt-helper)."""
    out = {}
    for path in sorted(p for p in Path(lists).glob("*_Translation-en*") if p.is_file()):
        if path.suffix in ("", ".xz", ".gz", ".bz2"):
            out[str(path)] = read_text(str(path), "apt Translation-en")
            continue
        helper = Path("/usr/lib/apt/apt-helper")
        if helper.exists():
            proc = subprocess.run([str(helper), "cat-file", str(path)], capture_output=True,
                                  check=False)
            if proc.returncode == 0:
                out[str(path)] = proc.stdout.decode("utf-8", errors="replace")
                continue
        log.warning("%s: cannot decompress %s (apt-helper missing or failed); its long "
                    "descriptions are not used", path, path.suffix)
    return out


# --- parsing --------------------------------------------------------------------------------
def dependency_targets(values: pd.Series, lines: pd.Series, origin: str, field: str,
                       packages: np.ndarray, bad: BadRows) -> pd.DataFrame:
    """Explode a dependency field into one row per (package position, target name); version
    constraints ``(...)``, architecture lists ``[...]``, build profiles ``<...>`` and
    ``:arch`` qualifiers are dropped; names that are not valid package names are bad rows."""
    present = values.notna().to_numpy()
    s = pd.Series(values[present].to_numpy(dtype=object), index=np.flatnonzero(present))
    tok = s.str.split(",").explode().str.split("|").explode().str.strip()
    tok = tok[tok.notna() & (tok != "")]
    name = (tok.str.replace(r"\([^)]*\)|\[[^\]]*\]|<[^>]*>", "", regex=True).str.strip()
            .str.replace(r":[a-z0-9-]+$", "", regex=True))
    ok = name.str.fullmatch(NAME_RE).fillna(False).to_numpy(dtype=bool)
    if not ok.all():
        pos = tok.index.to_numpy()[~ok]
        bad.add("unparseable_dependency", origin, lines.to_numpy()[pos], tok[~ok].to_numpy(),
                [f"{field} of {p!r} names something that is not a package name"
                 for p in packages[pos]], "Fix the field")
    out = pd.DataFrame({"pos": tok.index.to_numpy()[ok], "target": name[ok].to_numpy()})
    return out.drop_duplicates(ignore_index=True)


def package_frame(text: str, origin: str, bad: BadRows) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Package stanzas (one row per package with a valid name) and their field line numbers."""
    values, lines = parse_deb822(text, origin, FIELDS, bad)
    missing = values["Package"].isna().to_numpy()
    if missing.any():
        bad.add("missing_package_field", origin, values["line"][missing],
                values["first_field"][missing],
                "stanza without a Package field", "Add the Package field or delete the stanza")
    name_ok = values["Package"].str.fullmatch(NAME_RE).fillna(False).to_numpy(dtype=bool)
    invalid = ~missing & ~name_ok
    if invalid.any():
        bad.add("invalid_package_name", origin, lines["Package"][invalid],
                values["Package"][invalid], "not a valid Debian package name (lower case "
                "letters, digits, + - . ; at least two characters)", "Fix the name")
    # Multi-arch machines list a name once per architecture: the first stanza keeps the plain
    # name, another architecture's becomes "name:arch" (dependencies on "name:arch" are read as
    # the plain name, like apt's default).
    first_arch = values["Package"].map(values.drop_duplicates("Package").set_index("Package")
                                       ["Architecture"])
    other_arch = (name_ok & values["Package"].duplicated().to_numpy()
                  & values["Architecture"].notna().to_numpy()
                  & (values["Architecture"].fillna("") != first_arch.fillna("")).to_numpy())
    if other_arch.any():
        values.loc[other_arch, "Package"] = (values["Package"][other_arch] + ":"
                                             + values["Architecture"][other_arch])
    dup = name_ok & values["Package"].duplicated().to_numpy()
    if dup.any():   # a second stanza of a name is set aside whole: its edges too
        first = pd.Series(lines["Package"][name_ok & ~dup].to_numpy(),
                          index=values["Package"][name_ok & ~dup].to_numpy())
        bad.add("duplicate_node_key", origin, lines["Package"][dup], values["Package"][dup],
                [f"duplicate package key (first defined at line {first[p]})"
                 for p in values["Package"][dup]], "Remove the duplicate")
    keep = name_ok & ~dup
    if not keep.any():
        raise InputError(f"{origin} holds no package stanzas. Is it really the output of "
                         "`apt-cache dumpavail`?")
    return values[keep].reset_index(drop=True), lines[keep].reset_index(drop=True)


def descriptions(pkgs: pd.DataFrame, translations: dict[str, str], bad: BadRows,
                 ) -> tuple[pd.Series, int]:
    """Long descriptions joined on Description-md5, else the synopsis; and how many are long."""
    frames = [parse_deb822(text, origin, TRANSLATION_FIELDS, bad)[0]
              for origin, text in translations.items()]
    long = pd.Series(dtype=object)
    if frames:
        tr = pd.concat(frames, ignore_index=True).dropna(subset=["Description-md5",
                                                                 "Description-en"])
        tr = tr.drop_duplicates("Description-md5")
        long = pd.Series(description_text(tr["Description-en"]).to_numpy(),
                         index=tr["Description-md5"].to_numpy())
    joined = pkgs["Description-md5"].map(long) if len(long) else pd.Series(
        [None] * len(pkgs), dtype=object)
    n_long = int(joined.notna().sum())
    return joined.where(joined.notna(), pkgs["Description"]), n_long


# --- graph ----------------------------------------------------------------------------------
def list_column(rows: np.ndarray, values: np.ndarray, n: int) -> pa.ListArray:
    """A list<string> column of ``n`` rows from (row, value) pairs sorted by row; rows without
    values get null."""
    counts = np.bincount(rows, minlength=n)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    mask = pa.array(counts == 0)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, pa.string()), mask=mask)


def build_debian_graph(dump: str, origin: str, translations: dict[str, str], bad: BadRows,
                       source: dict) -> tuple[GraphBuilder, dict[str, int]]:
    pkgs, lines = package_frame(dump, origin, bad)
    names = pkgs["Package"].to_numpy(dtype=object)
    b = GraphBuilder("debian", bad_rows=bad, source=source)
    counts: dict[str, int] = {"stanzas": len(pkgs)}
    desc, counts["long_descriptions"] = descriptions(pkgs, translations, bad)
    tags = pkgs["Tag"].str.split(",").explode().str.strip()
    tags = tags[tags.notna() & (tags != "")]
    _add_packages(b, pkgs, lines, names, desc, tags, origin)
    deps = {f: dependency_targets(pkgs[f], lines[f], origin, f, names, bad)
            for f in DEPENDENCY_FIELDS}
    built_using = dependency_targets(pkgs["Built-Using"], lines["Built-Using"], origin,
                                     "Built-Using", names, bad)
    is_pkg = pd.Index(pd.unique(names), dtype=object)
    _add_virtuals(b, deps, is_pkg)
    _add_maintainers(b, pkgs)
    src = pkgs["Source"].str.replace(r"\s*\(.*\)\s*$", "", regex=True).fillna(pkgs["Package"])
    sources = pd.unique(np.concatenate([src.to_numpy(dtype=object),
                                        built_using["target"].to_numpy(dtype=object)]))
    b.add_node_type("source", sources, description="source packages")
    sections = pd.unique(pkgs["Section"].dropna().to_numpy())
    b.add_node_type("section", sections, description="archive sections")
    tag_keys = pd.unique(tags.to_numpy())
    b.add_node_type("tag", tag_keys, {"facet": pd.Series(tag_keys, dtype=object)
                                      .str.split("::").str[0]}, TAG_SPECS, "debtags")
    _add_dependency_edges(b, deps, is_pkg, lines, origin, counts)
    _add_package_edges(b, pkgs, lines, built_using, src, tags, origin)
    return b, counts


def _add_packages(b: GraphBuilder, pkgs: pd.DataFrame, lines: pd.DataFrame, names: np.ndarray,
                  desc: pd.Series, tags: pd.Series, origin: str) -> None:
    """The package nodes and their attributes (bad values reported at their lines)."""
    tag_lists = list_column(tags.index.to_numpy(), tags.to_numpy(dtype=object), len(pkgs))
    host = (pkgs["Homepage"].str.extract(r"^[A-Za-z][A-Za-z0-9+.-]*://(?:www\.)?([^/:?#]+)",
                                         expand=False).str.lower())
    b.add_node_type("package", names, {
        "description": desc, "installed_size": pkgs["Installed-Size"],
        "download_size": pkgs["Size"], "priority": pkgs["Priority"], "section": pkgs["Section"],
        "architecture": pkgs["Architecture"], "multi_arch": pkgs["Multi-Arch"].fillna("no"),
        "essential": pkgs["Essential"].fillna("no"), "debtags": tag_lists,
        "homepage_host": host}, PACKAGE_SPECS, "binary packages (one stanza each)", origin,
        {"key": lines["Package"], "installed_size": lines["Installed-Size"],
         "download_size": lines["Size"]})


def _add_virtuals(b: GraphBuilder, deps: dict[str, pd.DataFrame], is_pkg: pd.Index) -> None:
    """Dependency targets that are no package here, and whether some package provides them."""
    all_targets = pd.concat([d["target"] for d in deps.values()], ignore_index=True)
    virtual = pd.unique(all_targets[is_pkg.get_indexer(all_targets) < 0].to_numpy())
    provided = pd.Index(virtual, dtype=object).isin(deps["Provides"]["target"])
    b.add_node_type("virtual", virtual, {"status": np.where(provided, "provided", "missing")},
                    VIRTUAL_SPECS, "names depended on, conflicted with or provided that are no "
                    "package here: virtual names, removed or other-archive packages")


def _add_maintainers(b: GraphBuilder, pkgs: pd.DataFrame) -> None:
    """One node per Maintainer value: its name, e-mail domain, and person or team."""
    maint = pd.Series(pd.unique(pkgs["Maintainer"].dropna().to_numpy()), dtype=object)
    parts = maint.str.extract(r"^\s*(?P<name>.*?)\s*<(?P<email>[^>]*)>\s*$")
    mname = parts["name"].fillna(maint).str.strip('"')
    domain = parts["email"].str.extract(r"@(.+)$", expand=False).str.lower()
    team = (mname.str.contains(r"team|maintainers|group|packagers|developers", case=False)
            | parts["email"].str.contains(r"lists\.|alioth", case=False)).fillna(False)
    b.add_node_type("maintainer", maint.to_numpy(), {
        "name": mname, "email_domain": domain,
        "kind": np.where(team.to_numpy(dtype=bool), "team", "person")}, MAINTAINER_SPECS,
        "Maintainer field values (a person or a team address)")


def _edges(b: GraphBuilder, origin: str, rel: str, head_pos, tail, tail_type: str, label: str,
           line) -> None:
    """Training edges package -> ``tail_type`` of relation ``rel`` (declared on first use)."""
    if not len(head_pos):
        return
    b.add_relation(rel, "package", tail_type, label=label)
    b.add_edges("train", np.asarray(head_pos, np.int64), np.asarray(tail, object), rel,
                origin=origin, lines=line, fix="Fix the field")


def _add_dependency_edges(b: GraphBuilder, deps: dict[str, pd.DataFrame], is_pkg: pd.Index,
                          lines: pd.DataFrame, origin: str, counts: dict[str, int]) -> None:
    """Each dependency field: to packages, and (``<rel>_virtual``) to virtual names."""
    for field, rel in DEPENDENCY_FIELDS.items():
        d = deps[field]
        real = is_pkg.get_indexer(d["target"]) >= 0
        fl = lines[field].to_numpy()
        _edges(b, origin, rel, d["pos"][real], d["target"][real], "package",
               f"{field} (on a package)", fl[d["pos"][real]])
        _edges(b, origin, f"{rel}_virtual", d["pos"][~real], d["target"][~real], "virtual",
               f"{field} (on a virtual or missing name)", fl[d["pos"][~real]])
        counts[f"edges_{rel}_total"] = len(d)


def _add_package_edges(b: GraphBuilder, pkgs: pd.DataFrame, lines: pd.DataFrame,
                       built_using: pd.DataFrame, src: pd.Series, tags: pd.Series,
                       origin: str) -> None:
    """Built-Using, maintainer, source, section and debtags edges."""
    _edges(b, origin, "built_using", built_using["pos"], built_using["target"], "source",
           LABELS["built_using"], lines["Built-Using"].to_numpy()[built_using["pos"]])
    has = pkgs["Maintainer"].notna().to_numpy()
    _edges(b, origin, "maintained_by", np.flatnonzero(has), pkgs["Maintainer"][has],
           "maintainer", LABELS["maintained_by"], lines["Maintainer"][has])
    _edges(b, origin, "built_from", np.arange(len(pkgs)), src, "source", LABELS["built_from"],
           lines["Package"])
    has = pkgs["Section"].notna().to_numpy()
    _edges(b, origin, "in_section", np.flatnonzero(has), pkgs["Section"][has], "section",
           LABELS["in_section"], lines["Section"][has])
    tag_pairs = tags.reset_index().drop_duplicates()
    _edges(b, origin, "tagged", tag_pairs["index"].to_numpy(), tag_pairs["Tag"].to_numpy(),
           "tag", LABELS["tagged"], lines["Tag"].to_numpy()[tag_pairs["index"].to_numpy()])


def import_debian(config: DebianImportConfig, *, force: bool = False) -> dict:
    """Import the Debian package graph into ``config.out``; returns the manifest."""
    t0 = time.perf_counter()
    from_apt = config.from_apt
    recorded = {**config.recorded(), "split": list(DEFAULT_SPLIT)}
    if from_apt:
        dump, origin = apt_dumpavail(), "apt-cache dumpavail"
        translations = apt_translations()
        inputs = {}
        recorded["from_apt"] = {"dumpavail_sha256": hashlib.sha256(dump.encode()).hexdigest(),
                                "translations": sorted(translations)}
    else:
        inputs = root_inputs(config.root)
    with Stage("import", config.out, config=recorded, inputs=inputs, force=force) as st:
        if st.reused:
            return st.manifest
        bad = BadRows(config.on_bad_rows)
        with st.phase("read"):
            if not from_apt:
                origin = inputs["dumpavail"]
                dump = read_text(origin, "dumpavail")
                translations = {v: read_text(v, "Translation-en") for k, v in inputs.items()
                                if k.startswith("translation_")}
            if not translations:
                log.warning("no Translation-en files: package descriptions are the one-line "
                            "synopsis only")
        with st.phase("parse_build"):
            b, counts = build_debian_graph(dump, origin, translations, bad,
                                           {"dataset": "debian", "origin": origin,
                                            "translations": sorted(translations)})
            kg = b.build()
        with st.phase("split"):
            moved = resplit(kg, config.seed, DEFAULT_SPLIT)
        counts["packages_without_long_description"] = counts["stanzas"] - \
            counts["long_descriptions"]
        finish_import(st, kg, bad, rows_read=counts["stanzas"], started=t0, moved=moved,
                      extra_counts=counts)
    return st.manifest

"""``kgops import {triples,codex,debian}``: one sub-command per source format."""

from __future__ import annotations

import argparse

from kg_ops.graph.validate import ON_BAD_ROWS

HELP = "Import a graph (TSV triples, CoDEx, the Debian package graph) into the canonical format."


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output graph URI (local path or s3://)")
    p.add_argument("--on-bad-rows", choices=ON_BAD_ROWS, default="fail",
                   help="fail (default): stop at the first bad input row; quarantine: set bad "
                        "rows aside in {out}/quarantine/ with reasons, counted in the manifest")
    # SUPPRESS: when not given here, `kgops --force import ...`'s value stands
    p.add_argument("--force", action="store_true", default=argparse.SUPPRESS,
                   help="recompute even if a complete import with the same inputs exists")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="source", required=True, metavar="SOURCE")

    p = sub.add_parser("triples", help="head<TAB>relation<TAB>tail files",
                       description="Import TSV triples (CRLF and blank lines tolerated).")
    p.add_argument("--train", required=True, help="train triples (or all triples, to be split)")
    p.add_argument("--valid", help="validation triples")
    p.add_argument("--test", help="test triples")
    p.add_argument("--header", action="store_true", help="each file starts with a header line")
    p.add_argument("--split", help="train,valid,test fractions for a single --train file "
                                   "(default 0.8,0.1,0.1 when --valid/--test are absent)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    p.add_argument("--relations", help="file of allowed relation names (one per line, optional "
                                       "TAB label); other relations are bad rows")
    p.add_argument("--entities", help="file of entity keys (one per line); edges to other "
                                      "entities are bad rows")
    p.add_argument("--name", help="graph name (default: last part of --out)")
    _common(p)
    p.set_defaults(import_func=_run_triples)

    p = sub.add_parser("codex", help="CoDEx-S/M (Safavi & Koutra 2020)",
                       description="Import CoDEx-S or CoDEx-M with entity types and labels.")
    p.add_argument("--root", default="",
                   help="a CoDEx repository copy (has data/); default: the CoDEx-S copy shipped "
                        "in the package (MIT licence, kg_ops/datasets/codex/LICENSE)")
    p.add_argument("--size", choices=("s", "m"), required=True)
    _common(p)
    p.set_defaults(import_func=_run_codex)

    p = sub.add_parser("debian", help="the Debian package graph (apt-cache dumpavail)",
                       description="Import the Debian package graph: packages, virtual names, "
                                   "maintainers, source packages, sections, debtags.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--root", help="directory with dumpavail.txt[.xz] and *Translation-en* files")
    src.add_argument("--from-apt", action="store_true",
                     help="read this machine's `apt-cache dumpavail` and /var/lib/apt/lists")
    p.add_argument("--seed", type=int, default=0, help="seed of the 80/10/10 edge split")
    _common(p)
    p.set_defaults(import_func=_run_debian)


def run(args: argparse.Namespace) -> int:
    return args.import_func(args)


def _run_triples(args: argparse.Namespace) -> int:
    from kg_ops.graph.importers.triples import import_triples

    import_triples(args.out, args.train, args.valid, args.test, header=args.header,
                   on_bad_rows=args.on_bad_rows, split=args.split, seed=args.seed,
                   relations=args.relations, entities=args.entities, name=args.name,
                   force=args.force)
    return 0


def _run_codex(args: argparse.Namespace) -> int:
    from kg_ops.graph.importers.codex import import_codex

    import_codex(args.out, args.root, args.size, on_bad_rows=args.on_bad_rows, force=args.force)
    return 0


def _run_debian(args: argparse.Namespace) -> int:
    from kg_ops.graph.importers.debian import import_debian

    import_debian(args.out, root=args.root, from_apt=args.from_apt, seed=args.seed,
                  on_bad_rows=args.on_bad_rows, force=args.force)
    return 0

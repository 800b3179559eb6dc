"""``kgops import {triples,codex,debian}``: one sub-command per source format, its parser
generated from the source's config (:mod:`kg_ops.config.importers`)."""

from __future__ import annotations

import argparse
import importlib

from kg_ops.config.importers import IMPORTERS

HELP = "Import a graph (TSV triples, CoDEx, the Debian package graph) into the canonical format."
SOURCE_HELP = {"triples": "head<TAB>relation<TAB>tail files",
               "codex": "CoDEx-S/M (Safavi & Koutra 2020)",
               "debian": "the Debian package graph (apt-cache dumpavail)"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="source", required=True, metavar="SOURCE")
    for source, config_class in IMPORTERS.items():
        p = sub.add_parser(source, help=SOURCE_HELP[source],
                           description=" ".join(config_class.__doc__.split()))
        config_class.add_arguments(p)
        # SUPPRESS: when not given here, `kgops --force import ...`'s value stands
        p.add_argument("--force", action="store_true", default=argparse.SUPPRESS,
                       help="recompute even if a complete import with the same inputs exists")


def run(args: argparse.Namespace) -> int:
    config = IMPORTERS[args.source].from_args(args)
    # the importer's module loads pandas and pyarrow: only when an import runs
    module = importlib.import_module(f"kg_ops.graph.importers.{args.source}")
    getattr(module, f"import_{args.source}")(config, force=args.force)
    return 0

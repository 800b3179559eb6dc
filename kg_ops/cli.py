"""``kgops``: one command per pipeline stage (the bridge between Airflow and Ray).

Each stage lives in its own module exposing ``HELP``, ``add_arguments(parser)`` and
``run(args)``; this file only dispatches. Stage modules keep heavy imports (torch, Ray) inside
functions so ``kgops --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback

from kg_ops import __version__
from kg_ops.errors import explain

COMMANDS: dict[str, str] = {
    "import": "kg_ops.graph.importers.cli",
    "synth": "kg_ops.graph.synth",
    "validate": "kg_ops.graph.validate_cmd",
    "info": "kg_ops.graph.info",
    "split-entities": "kg_ops.graph.split_entities",
    "encode": "kg_ops.encode.cli",
    "partition": "kg_ops.partition.cli",
    "train": "kg_ops.train.cli",
    "tune": "kg_ops.tune.cli",
    "evaluate": "kg_ops.evaluate.cli",
    "embed": "kg_ops.embed.cli",
    "serve": "kg_ops.serve.cli",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kgops", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"kg_ops {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of an error (debug logging too)")
    parser.add_argument("--force", action="store_true",
                        help="recompute the stage even if a complete identical run exists")
    parser.add_argument("--ray-timeout", type=float, default=None, metavar="SECONDS",
                        help="deadline for connecting to the Ray cluster (default 60; env "
                             "KGOPS_RAY_CONNECT_TIMEOUT)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if not (exc.name and (module_name + ".").startswith(exc.name + ".")):
                raise
            continue  # stage not installed in this build
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(func=module.run)
    return parser


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is *now* (pytest and Ray swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup_logging(verbose: bool = False) -> None:
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler],
                        force=True)


def main(argv: list[str] | None = None) -> int:
    """Run one command. Every error ends as one message (what, where, the fix) and exit status
    2 (bad input or environment) or 1 (a bug); ``--debug`` adds the traceback."""
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose or args.debug)
    if args.ray_timeout is not None:
        os.environ["KGOPS_RAY_CONNECT_TIMEOUT"] = str(args.ray_timeout)  # kg_ops.raycluster
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        print(f"kgops {args.command}: interrupted; no manifest was written for the unfinished "
              "stage (rerun it)", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 -- the one place errors become messages
        message, status = explain(exc)
        if args.debug:
            traceback.print_exc()
        print(f"kgops {args.command}: error: {message}", file=sys.stderr)
        return status
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())

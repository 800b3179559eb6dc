"""``kgops import codex|debian|triples`` options: one config per source, sharing the options
every import has (:class:`ImportConfig`)."""

from __future__ import annotations

import dataclasses
from pathlib import PurePosixPath
from typing import Any, ClassVar

from kg_ops.config.options import ConfigError, StageConfig, option

ON_BAD_ROWS = ("fail", "quarantine")
CODEX_SIZES = ("s", "m")   # CoDEx-L's train file is not in the repository copy
DEFAULT_SPLIT = (0.8, 0.1, 0.1)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImportConfig(StageConfig):
    """The options of every importer."""

    stage = "import"
    importer: ClassVar[str] = ""

    out: str = option(help="output graph URI (local path or s3://)", recorded=False)
    on_bad_rows: str = option("fail", choices=ON_BAD_ROWS,
                              help="fail: stop at the first bad input row; quarantine: set bad "
                                   "rows aside in {out}/quarantine/ with reasons, counted in "
                                   "the manifest")

    def recorded(self) -> dict[str, Any]:
        return {"importer": self.importer, **super().recorded()}


@dataclasses.dataclass(frozen=True, kw_only=True)
class CodexImportConfig(ImportConfig):
    """Import CoDEx-S or CoDEx-M with entity types and labels."""

    importer = "codex"

    root: str = option("", recorded=False,
                       help="a CoDEx repository copy (has data/); default: the CoDEx-S copy "
                            "shipped in the package (MIT licence, kg_ops/datasets/codex/LICENSE)")
    size: str = option(choices=CODEX_SIZES, help="CoDEx-S or CoDEx-M")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DebianImportConfig(ImportConfig):
    """Import the Debian package graph: packages, virtual names, maintainers, source packages,
    sections, debtags."""

    importer = "debian"
    #: where the archive index comes from: exactly one of these
    SOURCES: ClassVar[tuple[str, ...]] = ("root", "from_apt")

    root: str | None = option(None, recorded=False,
                              help="directory with dumpavail.txt[.xz] and *Translation-en* files")
    from_apt: bool = option(False, recorded=False,
                            help="read this machine's `apt-cache dumpavail` and "
                                 "/var/lib/apt/lists")
    seed: int = option(0, help="seed of the 80/10/10 edge split")

    def validate(self) -> None:
        if bool(self.root) == self.from_apt:
            raise ConfigError("give exactly one of --root DIR or --from-apt")

    @classmethod
    def add_arguments(cls, parser, exclude=()) -> None:
        """As every config, with --root and --from-apt mutually exclusive (one required)."""
        others = [n for n in cls.names() if n not in cls.SOURCES]
        group = parser.add_mutually_exclusive_group(required=True)
        super().add_arguments(group, exclude={*exclude, *others})
        super().add_arguments(parser, exclude={*exclude, *cls.SOURCES})


@dataclasses.dataclass(frozen=True, kw_only=True)
class TriplesImportConfig(ImportConfig):
    """Import TSV triples (CRLF and blank lines tolerated)."""

    importer = "triples"

    train: str = option(help="train triples (or all triples, to be split)", recorded=False)
    valid: str | None = option(None, help="validation triples", recorded=False)
    test: str | None = option(None, help="test triples", recorded=False)
    header: bool = option(False, help="each file starts with a header line")
    split: str | None = option(None, help="train,valid,test fractions for a single --train file "
                                          "(default 0.8,0.1,0.1 when --valid/--test are absent)")
    seed: int = option(0, help="seed of the split")
    relations: str | None = option(None, recorded=False,
                                   help="file of allowed relation names (one per line, optional "
                                        "TAB label); other relations are bad rows")
    entities: str | None = option(None, recorded=False,
                                  help="file of entity keys (one per line); edges to other "
                                       "entities are bad rows")
    name: str | None = option(None, help="graph name (default: last part of --out)")

    def validate(self) -> None:
        if (self.valid is None) != (self.test is None):
            raise ConfigError("give both --valid and --test, or neither (then --train is split "
                              "80/10/10, or as --split says)")
        if self.valid is not None and self.split is not None:
            raise ConfigError("--split splits a single --train file; it cannot be combined "
                              "with --valid/--test")
        self.fractions()

    def fractions(self) -> tuple[float, float, float] | None:
        """The split of a single --train file; None when --valid/--test are given."""
        if self.valid is not None:
            return None
        if self.split is None:
            return DEFAULT_SPLIT
        try:
            parts = tuple(float(x) for x in self.split.split(","))
        except ValueError:
            parts = ()
        if len(parts) != 3 or min(parts) < 0 or abs(sum(parts) - 1.0) > 1e-6 or parts[0] == 0:
            raise ConfigError(f"--split {self.split!r}: expected three fractions "
                              "train,valid,test that sum to 1, e.g. 0.8,0.1,0.1")
        return parts  # type: ignore[return-value]

    def graph_name(self) -> str:
        return self.name or PurePosixPath(self.out.rstrip("/")).name or "triples"

    def recorded(self) -> dict[str, Any]:
        fractions = self.fractions()
        return {**super().recorded(), "name": self.graph_name(),
                "split": list(fractions) if fractions else "given"}


#: ``kgops import <source>``: the config of each source
IMPORTERS: dict[str, type[ImportConfig]] = {"triples": TriplesImportConfig,
                                            "codex": CodexImportConfig,
                                            "debian": DebianImportConfig}

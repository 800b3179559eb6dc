"""Small public datasets shipped inside the package, each under its licence (notice beside it).

``codex/``: CoDEx-S (Safavi & Koutra, EMNLP 2020; MIT licence, ``codex/LICENSE``), the demo's
and the refresh DAG's default source. It keeps the CoDEx repository's layout so ``kgops import
codex`` reads it like a full copy; files are xz-compressed and the type/relation tables are cut
down to what CoDEx-S uses (``python -m kg_ops.datasets.make_codex_s`` rebuilds it).
"""

from __future__ import annotations

from pathlib import Path

PACKAGED_CODEX = Path(__file__).resolve().parent / "codex"


def packaged_codex_root() -> str:
    """The shipped CoDEx copy (CoDEx-S only)."""
    return str(PACKAGED_CODEX)

"""Rebuild the packaged CoDEx-S copy from a full CoDEx repository copy.

    python -m kg_ops.datasets.make_codex_s /path/to/codex

Copies CoDEx-S's triples (and hard negatives), the English relation labels, and the entity
types and type labels restricted to CoDEx-S's entities, xz-compressed, plus the licence. The
importer reads the result exactly as it reads the full copy (same graph, same ids).
"""

from __future__ import annotations

import argparse
import json
import lzma
import shutil
import sys
from pathlib import Path

from kg_ops.datasets import PACKAGED_CODEX

SPLITS = ("train", "valid", "test", "valid_negatives", "test_negatives")


def _write_xz(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME))


def _compact_json(obj: dict) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()  # order kept


def build(src: Path, out: Path) -> None:
    data = src / "data"
    triples = data / "triples" / "codex-s"
    entities: set[str] = set()
    for split in SPLITS:
        raw = (triples / f"{split}.txt").read_bytes()
        _write_xz(out / "data" / "triples" / "codex-s" / f"{split}.txt.xz", raw)
        for line in raw.decode().splitlines():
            parts = line.split("\t")
            if len(parts) == 3:
                entities.update((parts[0], parts[2]))
    e2t = json.loads((data / "types" / "entity2types.json").read_text())
    e2t = {e: t for e, t in e2t.items() if e in entities}
    used = {t for ts in e2t.values() for t in ts}
    types = json.loads((data / "types" / "en" / "types.json").read_text())
    types = {t: v for t, v in types.items() if t in used}
    relations = json.loads((data / "relations" / "en" / "relations.json").read_text())
    _write_xz(out / "data" / "types" / "entity2types.json.xz", _compact_json(e2t))
    _write_xz(out / "data" / "types" / "en" / "types.json.xz", _compact_json(types))
    _write_xz(out / "data" / "relations" / "en" / "relations.json.xz", _compact_json(relations))
    shutil.copyfile(src / "LICENSE", out / "LICENSE")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("src", help="a copy of the CoDEx repository (has data/ and LICENSE)")
    p.add_argument("--out", default=str(PACKAGED_CODEX))
    args = p.parse_args(argv)
    build(Path(args.src), Path(args.out))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Training checkpoints in the artifact store (local or S3), loaded safely.

``{out}/checkpoints/epoch-00003.pt`` holds everything needed to continue after epoch 3: model
and optimiser state, the epoch, the history so far and the early-stopping state including the
best epoch's weights (``best_model``), so any checkpoint alone can finish a run.
``latest.json`` points at the newest epoch checkpoint. Files are written with ``torch.save`` and read only with
``torch.load(..., weights_only=True)`` (no pickled code is ever executed).
"""

from __future__ import annotations

import io
from typing import Any

from kg_ops.errors import KGOpsError
from kg_ops.store import get_store, join, normalize

FORMAT = "kgops-train-checkpoint/1"
DIR = "checkpoints"


class CheckpointError(KGOpsError):
    pass


def checkpoint_uri(out: str, epoch: int) -> str:
    return join(out, DIR, f"epoch-{epoch:05d}.pt")


def save_torch(uri: str, obj: Any) -> None:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    get_store(uri).write_bytes(uri, buf.getvalue())


def load_torch(uri: str, what: str = "checkpoint") -> Any:
    """``torch.load(weights_only=True)`` of an artifact, with clear errors."""
    import torch

    try:
        data = get_store(uri).read_bytes(uri)
    except FileNotFoundError as exc:
        raise CheckpointError(f"{what} not found: {uri}") from exc
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # any parse failure of these bytes means a damaged file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{uri}: the {what} is corrupt or not a kg_ops {what} "
                              f"({first}). Restore it, resume from an earlier checkpoint, or "
                              "retrain.") from exc


def save_checkpoint(out: str, state: dict[str, Any], keep_last: int = 3) -> str:
    """Write the epoch checkpoint, then move ``latest.json`` to it and prune older epoch
    checkpoints beyond ``keep_last``."""
    state = {"format": FORMAT, **state}
    uri = checkpoint_uri(out, int(state["epoch"]))
    save_torch(uri, state)
    store = get_store(out)
    store.write_json(join(out, DIR, "latest.json"),
                     {"epoch": int(state["epoch"]), "uri": uri, "run_id": state.get("run_id")})
    epochs = sorted(u for u in store.list(join(out, DIR)) if u.rsplit("/", 1)[-1]
                    .startswith("epoch-"))
    for old in epochs[:-keep_last] if keep_last > 0 else []:
        if old != uri:
            store.delete(old)
    return uri


def resolve(uri: str) -> str:
    """A checkpoint file URI, or a ``kgops train`` output directory (its latest checkpoint)."""
    uri = normalize(uri)
    store = get_store(uri)
    if uri.endswith(".pt"):
        return uri
    for pointer in (join(uri, DIR, "latest.json"), join(uri, "latest.json")):
        if store.exists(pointer):
            return store.read_json(pointer)["uri"]
    raise CheckpointError(f"{uri}: no checkpoint here (expected a .pt file or a training "
                          "output with checkpoints/latest.json); pass --resume "
                          "<out>/checkpoints/epoch-NNNNN.pt")


def load_checkpoint(uri: str) -> dict[str, Any]:
    uri = resolve(uri)
    state = load_torch(uri)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{uri}: not a kg_ops training checkpoint (format "
                              f"{state.get('format') if isinstance(state, dict) else None!r}, "
                              f"expected {FORMAT!r})")
    state["uri"] = uri
    return state

"""Training checkpoints in the artifact store (local or S3), loaded safely.

``{out}/checkpoints/epoch-00003.pt`` holds everything needed to continue after epoch 3: model
and optimiser state, the epoch, the history so far and the early-stopping state including the
best epoch's weights (``best_model``), so any checkpoint alone can finish a run.
``latest.json`` names the newest epoch checkpoint *of its own folder* (only its epoch number
counts: it can never point elsewhere). Retention keeps the newest ``--keep-checkpoints`` and the
best epoch's, and never the one just written is deleted, so a restart always finds what it
needs. Files are written with ``torch.save`` and read only with
``torch.load(..., weights_only=True)`` (no pickled code is ever executed).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from typing import Any

from kg_ops.errors import KGOpsError
from kg_ops.store import get_store, join, normalize

log = logging.getLogger(__name__)

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


def epoch_checkpoints(out: str) -> dict[int, str]:
    """The epoch checkpoints present in ``out``: {epoch: uri}."""
    found = {}
    for u in get_store(out).list(join(out, DIR)):
        name = u.rsplit("/", 1)[-1]
        if name.startswith("epoch-") and name.endswith(".pt") and name[6:-3].isdigit():
            found[int(name[6:-3])] = u
    return dict(sorted(found.items()))


def save_checkpoint(out: str, state: dict[str, Any], keep_last: int = 3) -> str:
    """Write the epoch checkpoint, then move ``latest.json`` to it, then prune: kept are the
    newest ``keep_last`` (at least this one) and the best epoch's. Ray Train restarts from
    the newest of its reported pointer and ``latest.json`` (:func:`restart_state`), both among
    the kept ones."""
    state = {"format": FORMAT, **state}
    epoch = int(state["epoch"])
    uri = checkpoint_uri(out, epoch)
    save_torch(uri, state)
    store = get_store(out)
    store.write_json(join(out, DIR, "latest.json"),
                     {"epoch": epoch, "uri": uri, "run_id": state.get("run_id")})
    present = epoch_checkpoints(out)
    keep = {e for e in present if e <= epoch}
    keep = set(sorted(keep)[-max(1, keep_last):]) | {epoch, int(state.get("best_epoch") or 0)}
    for e, old in present.items():
        if e not in keep and e < epoch:
            store.delete(old)
    return uri


def clear_checkpoints(out: str, keep: str | None = None) -> int:
    """Delete the epoch checkpoints and ``latest.json`` of an earlier run in ``out`` (all but
    ``keep``), so a fresh run's retention and pointer never mix with them."""
    store = get_store(out)
    removed = 0
    for old in epoch_checkpoints(out).values():
        if keep is None or normalize(old) != normalize(keep):
            store.delete(old)
            removed += 1
    store.delete(join(out, DIR, "latest.json"))
    return removed


def latest_pointer(out: str) -> dict[str, Any] | None:
    """``{epoch, uri, run_id}`` of ``out``'s newest checkpoint, the URI always inside ``out``."""
    out = normalize(out)
    store = get_store(out)
    pointer = join(out, DIR, "latest.json")
    if not store.exists(pointer):
        return None
    doc = store.read_json(pointer)
    epoch = doc.get("epoch") if isinstance(doc, dict) else None
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 1:
        raise CheckpointError(f"{pointer}: not a kg_ops checkpoint pointer (no positive epoch "
                              "number); delete it, or pass --resume <out>/checkpoints/"
                              "epoch-NNNNN.pt")
    # Only the epoch number is trusted: the pointer can name nothing outside its own folder.
    return {"epoch": epoch, "uri": checkpoint_uri(out, epoch), "run_id": doc.get("run_id")}


def fingerprint(config: dict[str, Any], inputs: dict[str, Any]) -> str:
    """What makes two runs the same run: every recorded option but ``resume``, and the
    inputs' hashes. Checkpoints carry it, so a rerun continues only its own."""
    doc = {"config": {k: v for k, v in config.items() if k != "resume"}, "inputs": inputs}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def continue_from(out: str, run_fingerprint: str, resume: str | None, force: bool) -> str | None:
    """The checkpoint this run starts from: ``--resume`` when given; else, unless forced, the
    latest checkpoint in ``out`` of a run with the same fingerprint (a rerun after a crash
    continues instead of starting over). Every other checkpoint in ``out`` is cleared, so
    retention and ``latest.json`` never mix two runs."""
    if resume:
        clear_checkpoints(out, keep=resume)
        return resume
    pointer = None if force else latest_pointer(out)
    if pointer is not None and get_store(out).exists(pointer["uri"]):
        state = load_checkpoint(pointer["uri"])
        if state.get("fingerprint") == run_fingerprint:
            log.info("resuming from %s (the latest checkpoint of an interrupted run with the "
                     "same options and inputs; `kgops --force train` starts over)",
                     pointer["uri"])
            return pointer["uri"]
        log.info("%s holds checkpoints of a run with other options or inputs; starting over",
                 out)
    removed = clear_checkpoints(out)
    if removed:
        log.info("removed %d checkpoint(s) of an earlier run in %s", removed, out)
    return None


def restart_state(out: str, run_id: str, reported: str | None) -> dict[str, Any]:
    """The state to continue from after a worker failure: the newest of Ray Train's last
    registered checkpoint (``reported``) and this run's ``latest.json``. Ray registers a report
    only once every worker made it, so its pointer can lag one epoch behind the newest complete
    checkpoint (and retention may have pruned that older one)."""
    candidates = {}
    if reported:
        name = reported.rsplit("/", 1)[-1]
        if name.startswith("epoch-") and name[6:-3].isdigit():
            candidates[int(name[6:-3])] = reported
    pointer = latest_pointer(out)
    if pointer is not None and pointer["run_id"] == run_id:
        candidates[pointer["epoch"]] = pointer["uri"]
    store = get_store(out)
    for _epoch, uri in sorted(candidates.items(), reverse=True):
        if store.exists(uri):
            return load_checkpoint(uri)
    raise CheckpointError(f"{out}: no checkpoint of this run is left to restart from (Ray "
                          f"Train's last one was {reported}); rerun the train stage")


def resolve(uri: str) -> str:
    """A checkpoint file URI, or a ``kgops train`` output directory (its latest checkpoint)."""
    uri = normalize(uri)
    if uri.endswith(".pt"):
        return uri
    if uri.rsplit("/", 1)[-1] == DIR:      # the checkpoints folder itself
        uri = uri.rsplit("/", 1)[0]
    pointer = latest_pointer(uri)
    if pointer is not None:
        return pointer["uri"]
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

"""Errors inside Ray Train workers. One that no retry can fix (bad input: a damaged partition
file, a missing checkpoint, missing credentials, an impossible option) stops the run at once
and reaches the driver once, as its own message; anything else (a dead worker, a store that is
down) is left to Ray Train's restarts.

Ray Train retries every worker error up to ``--max-failures`` and then raises a
``WorkerGroupError`` wrapping tracebacks, so the workers settle deterministic setup errors among
themselves: each reports whether its setup failed (one collective every worker reaches), and if
any did, all report the first message and return normally; :func:`raise_reported` turns it into
a KGOpsError on the driver."""

from __future__ import annotations

import json
import os
import tempfile

from kg_ops.errors import KGOpsError, explain
from kg_ops.store import StoreUnavailableError

ERROR_KEY = "kgops_error"


def is_deterministic(exc: BaseException) -> bool:
    """True for errors a restart would only repeat."""
    return not isinstance(exc, StoreUnavailableError | ConnectionError | TimeoutError
                          | MemoryError)


def first_error(world: int, error: str | None) -> str | None:
    """Every worker's setup error exchanged (all workers must call this); the first one."""
    if world == 1:
        return error
    import torch.distributed as dist

    everyone: list[str | None] = [None] * world
    dist.all_gather_object(everyone, error)
    return next((e for e in everyone if e), None)


def report_error(message: str, rank: int) -> None:
    """Report the run's error from every worker (``ray.train.report`` is a barrier): rank 0
    attaches it as a checkpoint, the only report the driver's result keeps."""
    import ray.train

    if rank != 0:
        ray.train.report({ERROR_KEY: message})
        return
    with tempfile.TemporaryDirectory(prefix="kgops-error-") as d:
        with open(os.path.join(d, "error.json"), "w") as fh:
            json.dump({ERROR_KEY: message}, fh)
        ray.train.report({ERROR_KEY: message},
                         checkpoint=ray.train.Checkpoint.from_directory(d))


def describe(exc: BaseException, rank: int) -> str:
    return f"worker {rank}: {explain(exc)[0]}"


def raise_reported(result) -> None:
    """On the driver: the error the workers reported, as a KGOpsError (no retry happened)."""
    message = (getattr(result, "metrics", None) or {}).get(ERROR_KEY)
    if message:
        raise KGOpsError(f"training stopped: {message}")

"""Keep the training log about training: what each Ray Train worker should not print.

The job's log is relayed into the Airflow task log, so per-step noise hides the epoch lines that
users watch. Ray Train's own INFO logs are lowered with ``RunConfig(logging_config=...)`` in
``kg_ops.train.cli``; this covers what that setting does not reach inside the worker.
"""

from __future__ import annotations

import logging


def quiet_worker() -> None:
    """Call first thing in ``train_loop_per_worker``."""
    import torch

    # Sparse gradients are built from coalesced, in-range indices: opt out of the invariant
    # checks explicitly (an implicit opt-out warns once per worker and per process).
    torch.sparse.check_sparse_tensor_invariants.disable()
    # Ray Train's per-report dump ("Reporting training result N: TrainingReport(...)", every
    # epoch and rank) logs through a logger named after its file, outside ``ray.train``, so the
    # RunConfig log level does not reach it.
    from ray.train.v2._internal.execution import context

    logging.getLogger(context.__file__).setLevel(logging.WARNING)

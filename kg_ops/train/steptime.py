"""Where a training epoch's wall time went, per worker, measured in the real run.

The cost planner (:mod:`kg_ops.train.plan`) times a step alone; a run of several workers also
waits: in every collective for the slowest worker, for the bytes, and for the prefetching
sampler. :class:`StepTimes` splits each step of an epoch into

* ``batch``: waiting for the next batch from the prefetching sampler;
* ``compute``: forward, loss and backward, without the collectives inside them;
* ``collectives``: the gathers inside forward and backward and the gradient exchange
  (:meth:`~kg_ops.train.collectives.Collectives.average_gradients`), including their local
  bookkeeping and the wait for the other workers;
* ``optimizer``: the optimiser step.

Steps are synchronised, so a worker whose compute is faster than the slowest worker's waits the
difference in the collectives: ``imbalance`` is that part, ``max over workers of their compute
- own compute``, summed over the steps (one all-gather of the per-step compute times at the end
of the epoch). What is left of ``collectives`` moves the bytes.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import numpy as np

PHASES = ("batch", "compute", "collectives", "optimizer")
# The keys of an epoch's history row that are wall-clock measurements: they differ between
# otherwise identical runs (a resumed run repeats everything else exactly).
TIMED = ("epoch_s", "edges_per_s", "step_s")
# What an epoch reports per step (StepTimes.summary), with its label in the log line.
KEYS = (("compute", "compute"), ("slowest_compute", "slowest worker's compute"),
        ("collectives", "collectives"), ("imbalance", "of which waiting for the slowest worker"),
        ("optimizer", "optimizer"), ("batch", "waiting for batches"))


class StepTimes:
    """Seconds per phase of one epoch on this worker; ``collective`` brackets every
    collective, :meth:`step` every step (its compute is what is not a collective)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.total = dict.fromkeys(PHASES, 0.0)
        self.compute: list[float] = []

    @contextmanager
    def phase(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.total[name] += time.perf_counter() - t0

    def collective(self):
        return self.phase("collectives")

    @contextmanager
    def step(self):
        """Forward, loss and backward of one step: its time minus the collectives in it."""
        t0, c0 = time.perf_counter(), self.total["collectives"]
        try:
            yield
        finally:
            spent = time.perf_counter() - t0 - (self.total["collectives"] - c0)
            self.total["compute"] += spent
            self.compute.append(spent)

    def batches(self, items):
        """``items`` with the wait for each one counted as ``batch``."""
        it = iter(items)
        while True:
            with self.phase("batch"):
                try:
                    item = next(it)
                except StopIteration:
                    return
            yield item

    def running(self) -> dict[str, float]:
        """Seconds per step so far of compute and collectives, for the progress lines."""
        steps = max(len(self.compute), 1)
        return {"compute_s": self.total["compute"] / steps,
                "collectives_s": self.total["collectives"] / steps}

    def summary(self, all_compute: np.ndarray, rank: int) -> dict[str, float]:
        """Seconds per step of this worker; ``all_compute [workers, steps]``: every worker's
        per-step compute (its row ``rank`` is this worker's), for ``imbalance``."""
        steps = max(len(self.compute), 1)
        out = {k: v / steps for k, v in self.total.items()}
        slowest = all_compute.max(axis=0)
        out["slowest_compute"] = float(slowest.sum()) / steps
        out["imbalance"] = float((slowest - all_compute[rank]).sum()) / steps
        return out


def describe(per_worker: np.ndarray, steps: int) -> str:
    """One line for the log: ``per_worker [workers, len(KEYS)]`` of :meth:`StepTimes.summary`
    values, as the workers' mean (and range where they differ)."""
    parts = []
    for i, (_, label) in enumerate(KEYS):
        col = per_worker[:, i]
        text = f"{label} {col.mean():.3g}s"
        if len(col) > 1 and col.max() - col.min() > 0.05 * max(col.max(), 1e-9):
            text += f" ({col.min():.3g}-{col.max():.3g}s across workers)"
        parts.append(text)
    return f"time per step (mean of {steps} steps): " + ", ".join(parts)


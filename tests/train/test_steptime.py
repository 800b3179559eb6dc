"""The split of a training step (:mod:`kg_ops.train.steptime`) on real gloo workers: a worker
whose compute is slower makes the other wait inside the collectives, and the split says so;
the compute excludes that wait."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from kg_ops.train.candidates import CandidateShards
from kg_ops.train.collectives import Collectives
from kg_ops.train.steptime import KEYS, StepTimes, describe

from .gloo import run_gloo

STEPS = 4
WORK = (0.05, 0.25)      # seconds of compute per step, worker 0 and worker 1


def _steps(rank: int, world: int) -> dict[str, float]:
    """``STEPS`` steps as the training loop takes them: compute (a sleep, ``WORK[rank]``)
    around a differentiable gather, then the gradient exchange."""
    comm = Collectives(world)
    shards = CandidateShards(world, rank, slots=3, head_type=torch.zeros(1, dtype=torch.long),
                             tail_type=torch.zeros(1, dtype=torch.long), times=comm.times)
    model = torch.nn.Linear(4, 4)
    times = comm.times
    for _ in times.batches(range(STEPS)):
        with times.step():
            time.sleep(WORK[rank])
            x = model(torch.ones(3, 4))
            shards.gather_rows(x).sum().backward()
        comm.average_gradients(model)
        with times.phase("optimizer"):
            model.zero_grad()
    return times.summary(comm.all_gather_values(times.compute), rank)


def test_the_faster_worker_waits_in_the_collectives_and_its_compute_excludes_it(tmp_path):
    fast, slow = run_gloo(_steps, 2, tmp_path)
    # compute is each worker's own work, not the wait
    assert WORK[0] <= fast["compute"] < WORK[0] + 0.05
    assert WORK[1] <= slow["compute"] < WORK[1] + 0.05
    # the fast worker waited for the slow one's compute inside the collectives
    gap = slow["compute"] - fast["compute"]
    assert fast["imbalance"] == pytest.approx(gap, abs=1e-9)
    assert fast["collectives"] >= 0.9 * gap
    assert slow["imbalance"] == 0.0 and slow["collectives"] < 0.05
    assert fast["slowest_compute"] == slow["slowest_compute"] == pytest.approx(slow["compute"])
    # a step's wall time is its phases: compute + collectives (+ optimizer, batches)
    assert fast["compute"] + fast["collectives"] == pytest.approx(
        slow["compute"] + slow["collectives"], abs=0.03)


def test_waiting_for_batches_is_counted():
    times = StepTimes()

    def slow_batches():
        for i in range(3):
            time.sleep(0.05)
            yield i

    assert list(times.batches(slow_batches())) == [0, 1, 2]
    assert times.total["batch"] >= 0.15 and times.total["compute"] == 0.0


def test_one_worker_has_no_imbalance_and_the_log_line_names_every_phase():
    times = StepTimes()
    for _ in range(2):
        with times.step():
            time.sleep(0.01)
    summary = times.summary(np.asarray([times.compute]), 0)
    assert summary["imbalance"] == 0.0 and summary["compute"] >= 0.01
    per_worker = np.asarray([[summary[k] for k, _ in KEYS]])
    line = describe(per_worker, 2)
    assert line.startswith("time per step (mean of 2 steps): compute ")
    assert all(label in line for _, label in KEYS)


def test_the_log_line_gives_the_workers_range_where_they_differ():
    per_worker = np.asarray([[1.0, 2.0, 1.5, 1.0, 0.1, 0.0],
                             [2.0, 2.0, 0.5, 0.0, 0.1, 0.0]])
    line = describe(per_worker, 10)
    assert "compute 1.5s (1-2s across workers)" in line
    assert "slowest worker's compute 2s," in line          # equal: no range
    assert "of which waiting for the slowest worker 0.5s (0-1s across workers)" in line

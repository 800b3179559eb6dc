"""The cost planner: memory sampling catches a known allocation; calibration measures real
steps; the per-worker plan follows from the measured cost and each partition's size."""

from __future__ import annotations

import dataclasses
import math
import mmap
import time

import numpy as np
import pytest

from kg_ops.config.train import TrainConfig
from kg_ops.partition.io import load_partition, load_partitions_manifest
from kg_ops.train.plan import (
    RSSPeak,
    StepCost,
    against_run,
    calibrate_in_child,
    describe,
    describe_check,
    for_run,
    predict,
    rss_bytes,
)

TRAIN_DEFAULT_BATCH = {f.name: f.default for f in dataclasses.fields(TrainConfig)}["batch_size"]


def test_rss_peak_sees_a_transient_allocation():
    # Fresh pages from the kernel, not from malloc: in a long test process glibc can serve
    # 64 MiB from already-resident free heap, and the resident size would not move.
    size = 64 * 2**20
    with RSSPeak(every_s=0.0005) as mem:
        block = mmap.mmap(-1, size)
        for page in range(0, size, mmap.PAGESIZE):
            block[page] = 1                        # every page touched
        time.sleep(0.3)                            # the watcher thread gets scheduled
        block.close()                              # unmapped: resident size falls back
    assert mem.peak - mem.start >= 60 * 2**20
    assert rss_bytes() - mem.start < 32 * 2**20


def _cost() -> StepCost:
    return StepCost(fixed_s=0.01, per_edge_s=0.001, step_bytes_per_edge=1000.0,
                    peak_bytes=500 * 2**20, data_bytes=100 * 2**20, local_batch=64,
                    measured_on={"part": 0})


def test_prediction_follows_the_cost_model():
    plan = predict(_cost(), core_edges=[3000, 1000], data_bytes=[120 * 2**20, 80 * 2**20],
                   global_batch=100)
    assert plan["steps_per_epoch"] == 40
    w0, w1 = plan["workers"]
    assert w0["local_batch"] == 75.0 and w1["local_batch"] == 25.0
    assert w0["epoch_s"] == pytest.approx(40 * (0.01 + 0.001 * 75))
    assert w1["epoch_s"] == pytest.approx(40 * (0.01 + 0.001 * 25))
    assert plan["epoch_s"] == w0["epoch_s"] and plan["slowest_part"] == 0
    assert w0["peak_bytes"] == 500 * 2**20 + 20 * 2**20 + 1000 * (75 - 64)
    assert w1["peak_bytes"] == 500 * 2**20 - 20 * 2**20 + 1000 * (25 - 64)
    assert plan["edges_per_s_per_worker"] == pytest.approx(2000 / w0["epoch_s"], rel=1e-3)
    assert "2 worker(s)" in describe(plan) and "40 steps/epoch" in describe(plan)


def test_a_run_is_checked_against_the_plan_at_its_own_batch():
    """The plan was measured at global batch 100; the run used 200: half the steps, each
    with twice the edges. The measured compute is the slowest worker's; the collectives
    are what the workers spent in them beyond waiting for it."""
    plan = {**predict(_cost(), [3000, 1000], [120 * 2**20, 80 * 2**20], global_batch=100),
            "recipe": {"loss": "1vsall", "model": {"model": "rgcn"}}}
    step = {"compute": 0.14, "slowest_compute": 0.17, "collectives": 0.05,
            "imbalance": 0.03, "optimizer": 0.01, "batch": 0.0}
    check = against_run(plan, 200, "1vsall", "rgcn", {"epoch_s": 4.4, "step_s": step})
    planned_step = 0.01 + 0.001 * 150                     # 20 steps of 150 edges on part 0
    assert check["predicted_epoch_s"] == pytest.approx(20 * planned_step)
    assert check["predicted_step_s"] == pytest.approx(planned_step)
    assert check["measured_over_predicted"] == pytest.approx(4.4 / (20 * planned_step),
                                                             abs=1e-3)
    assert check["measured_compute_step_s"] == 0.17
    assert check["measured_collectives_step_s"] == pytest.approx(0.02)
    assert check["same_recipe"] and check["threads"] == check["plan_threads"] == 1
    line = describe_check(check)
    assert line.startswith("epoch 4 s against the plan's 3 s (x1.38)")
    assert "compute of the slowest worker 0.17 s against the planned 0.16 s" in line
    assert "thread" not in line
    other = against_run(plan, 200, "softmax", "rgcn", {"epoch_s": 4.4}, threads=2)
    assert not other["same_recipe"] and "measured_compute_step_s" not in other
    assert describe_check(other).endswith("the plan measured another recipe; the plan "
                                          "measured 1 thread(s) per worker, this run has 2")
    assert against_run({"fits": False, "reason": "x"}, 200, "1vsall", "rgcn",
                       {"epoch_s": 4.4}) is None
    cut = against_run(plan, 200, "1vsall", "rgcn", {"epoch_s": 1.0, "steps": 5})  # 5 of 20
    assert cut["predicted_epoch_s"] == pytest.approx(5 * planned_step)
    assert cut["steps"] == 5 and "steps" not in check
    assert describe_check(cut).startswith("epoch 1 s against the plan's 1 s (x1.25) for the "
                                          "5 steps it ran (--limit-steps)")


def test_the_line_before_a_run_rescales_the_plan_and_names_a_step_limit():
    """At global batch 200 the plan of batch 100 has 20 steps of 0.16 s on the slowest
    partition (3.2 s an epoch); --limit-steps 5 trains a quarter of them."""
    plan = {**predict(_cost(), [3000, 1000], [120 * 2**20, 80 * 2**20], global_batch=100),
            "recipe": {"loss": "1vsall", "model": {"model": "rgcn"}}}
    whole = for_run(plan, 200, "1vsall", "rgcn")
    assert "20 steps/epoch at global batch 200: epoch ~3 s" in whole
    assert "limit-steps" not in whole and "rough guide" not in whole
    cut = for_run(plan, 200, "1vsall", "rgcn", limit_steps=5)
    assert cut == whole + "; this run trains the first 5 of them per epoch (--limit-steps): ~1 s"
    assert for_run(plan, 200, "1vsall", "rgcn", limit_steps=20) == whole   # no cut at all
    assert for_run(plan, 200, "softmax", "rgcn").endswith("this run is rgcn/softmax: a rough "
                                                          "guide only")


def test_calibration_measures_real_steps_on_a_partition(planted):
    uri = planted["parts"][2]
    part = load_partition(uri, 1)
    cost = calibrate_in_child(
        part.uri, model_config={"model": "rgcn", "num_nodes": 132, "num_relations": 2},
        loss="bce", negatives=1, fanouts=[10, 5], sample_seed=0, batches=(8, 32), steps=4)
    assert cost.measured_on["batches"] == [8, 32] and cost.measured_on["part"] == 1
    small, large = cost.measured_on["step_s"]
    assert small > 0 and 0 < large < 5
    assert cost.step_s(32) == pytest.approx(large, rel=1e-3, abs=1e-5) or cost.fixed_s == 0
    assert cost.per_edge_s >= 0 and cost.fixed_s >= 0
    # The child's peak holds at least the interpreter, torch and the model.
    assert cost.peak_bytes > 100 * 2**20
    pm = load_partitions_manifest(uri)
    stats = pm["outputs"]["partitions"]
    plan = predict(cost, [s["core_edges"] for s in stats],
                   [s["est_worker_memory_bytes"] for s in stats], 64)
    assert plan["steps_per_epoch"] == math.ceil(sum(s["core_edges"] for s in stats) / 64)
    assert len(part.core_edges) == stats[1]["core_edges"]
    # The partition stage wrote its own plan (train's default recipe) into the manifest.
    recorded = pm["metrics"]["plan"]
    assert [w["core_edges"] for w in recorded["workers"]] == [s["core_edges"] for s in stats]
    assert recorded["recipe"]["batch_size"] == TRAIN_DEFAULT_BATCH and recorded["epoch_s"] > 0


def test_1vsall_calibration_encodes_every_candidate_as_training_does(planted):
    """The default loss: a calibration step ranks against the partition's whole pool of each
    type, as a training step does (it used to take ``negatives`` (1) candidates per type and
    predicted 14 s epochs for 63-127 s measured on a Debian slice)."""
    from kg_ops.train.negatives import TypedNegativeSampler

    part = load_partition(planted["parts"][2], 1)
    pool = TypedNegativeSampler(part.negative_pool, part.relation_head_type,
                                part.relation_tail_type).count.max()
    assert pool > 1
    cost = calibrate_in_child(
        part.uri, model_config={"model": "rgcn", "num_nodes": 132, "num_relations": 2},
        loss="1vsall", negatives=1, fanouts=[10, 5], sample_seed=0, batches=(8, 32), steps=2)
    assert cost.measured_on["negatives"] == pool
    assert cost.measured_on["owned"] is None


def test_1vsall_calibration_on_several_workers_times_one_workers_share(planted):
    """On 2 workers a sharded-1vsall step encodes 1/2 of the graph's entities layer by layer
    and ranks against all of them (kg_ops.train.layerwise): the calibration times that."""
    from kg_ops.train.negatives import TypedNegativeSampler

    part = load_partition(planted["parts"][2], 0)
    ids, _ = TypedNegativeSampler(part.negative_pool, part.relation_head_type,
                                  part.relation_tail_type).pool()
    cost = calibrate_in_child(
        part.uri, model_config={"model": "rgcn", "num_nodes": 132, "num_relations": 2},
        loss="1vsall", negatives=1, fanouts=[10, 5], sample_seed=0, batches=(8, 32), steps=2,
        workers=2)
    assert cost.measured_on["workers"] == 2
    assert cost.measured_on["owned"] == min(len(ids), 66)
    assert min(cost.measured_on["step_s"]) > 0


def test_peak_rss_of_a_child_is_its_own(tmp_path):
    """A child started from a big parent reports its own peak (ru_maxrss would not)."""
    import subprocess
    import sys

    from kg_ops.train.plan import peak_rss_bytes

    block = np.ones(300 * 2**20 // 8)          # the parent holds 300 MiB
    block.sum()
    code = "from kg_ops.train.plan import peak_rss_bytes; print(peak_rss_bytes())"
    child = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                               check=True).stdout)
    assert peak_rss_bytes() >= 300 * 2**20 > child

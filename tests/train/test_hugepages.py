"""Training processes allocate large tensors on transparent huge pages
(:mod:`kg_ops.train.hugepages`): what the setting does, and that the workers get it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kg_ops.config import TrainConfig
from kg_ops.train.cli import train
from kg_ops.train.hugepages import ENV, step_env

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")
PROBE = """
import json, resource
import torch
def faults_of_a_fresh_96mb_tensor():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = torch.ones(24_000_000)       # 96 MB, every page written
    del a
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults_of_a_fresh_96mb_tensor()
print(json.dumps([faults_of_a_fresh_96mb_tensor() for _ in range(3)]))
"""
PAGES = 96_000_000 // 4096


def _faults(env: dict) -> list[int]:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         check=True, env=env)
    return json.loads(out.stdout)


@pytest.mark.skipif(not THP.exists() or "[never]" in THP.read_text(),
                    reason="the kernel has transparent huge pages off")
def test_a_fresh_large_tensor_takes_hundreds_of_times_fewer_page_faults():
    plain = {k: v for k, v in os.environ.items() if k not in ENV}
    system, huge = _faults(plain), _faults(step_env(plain))
    # the C library's default: every freed 96 MB tensor comes back as fresh 4 KiB pages
    assert min(system) > PAGES // 2, system
    # 2 MiB pages: 512 times fewer faults for the same memory
    assert max(huge) < PAGES // 50, huge


def test_a_users_worker_env_still_wins():
    assert step_env({"THP_MEM_ALLOC_ENABLE": "0", "X": "1"}) == {"THP_MEM_ALLOC_ENABLE": "0",
                                                                  "X": "1"}
    assert step_env(None) == ENV


def record_env_then_train(out: str):
    """The real worker loop, after writing the worker's ``THP_MEM_ALLOC_ENABLE`` to ``out``
    (nested: Ray ships it by value)."""

    def train_loop(loop_config: dict) -> None:
        import os

        from kg_ops.train import loop

        with open(out, "w") as fh:
            fh.write(os.environ.get("THP_MEM_ALLOC_ENABLE", "unset"))
        loop.train_worker(loop_config)

    return train_loop


def test_training_workers_run_with_huge_pages(planted, ray_local, tmp_path):
    seen = tmp_path / "thp"
    train(TrainConfig(partitions=planted["parts"][1], out=str(tmp_path / "run"),
                      model="rgcn", preset="paper", epochs=1, batch_size=64, patience=0),
          train_loop=record_env_then_train(str(seen)))
    assert seen.read_text() == "1"

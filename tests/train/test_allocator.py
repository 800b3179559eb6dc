"""Training processes run on an allocator that keeps freed memory (:mod:`kg_ops.train.allocator`):
what the settings do to a large tensor's page faults, and that real workers get them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kg_ops.config import TrainConfig
from kg_ops.train.allocator import HUGE_PAGES, JEMALLOC_CONF, jemalloc_path, step_env
from kg_ops.train.cli import train

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")
PROBE = """
import json, resource
import torch
def faults_of_a_96mb_tensor():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = torch.ones(24_000_000)       # 96 MB, every page written
    del a
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults_of_a_96mb_tensor()
with open("/proc/self/maps") as maps:
    jemalloc = any("libjemalloc" in line for line in maps)
print(json.dumps({"faults": [faults_of_a_96mb_tensor() for _ in range(3)], "jemalloc": jemalloc}))
"""
PAGES = 96_000_000 // 4096
OURS = (*HUGE_PAGES, "LD_PRELOAD", "MALLOC_CONF")
needs_jemalloc = pytest.mark.skipif(jemalloc_path() is None, reason="this Ray has no jemalloc")


def _probe(env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         check=True, env=env)
    return json.loads(out.stdout)


def _plain() -> dict:
    return {k: v for k, v in os.environ.items() if k not in OURS}


@needs_jemalloc
def test_a_freed_large_tensor_is_reused_without_page_faults():
    system, ours = _probe(_plain()), _probe(step_env(_plain()))
    # the C library's default: every freed 96 MB tensor comes back as fresh 4 KiB pages
    assert not system["jemalloc"] and min(system["faults"]) > PAGES // 2, system
    # jemalloc keeps it: the next one takes (almost) no fault at all
    assert ours["jemalloc"] and max(ours["faults"]) < PAGES // 200, ours


@pytest.mark.skipif(not THP.exists() or "[never]" in THP.read_text(),
                    reason="the kernel has transparent huge pages off")
def test_without_jemalloc_huge_pages_still_take_hundreds_of_times_fewer_faults():
    env = step_env({**_plain(), "LD_PRELOAD": ""})       # a user turning jemalloc off
    assert "MALLOC_CONF" not in env and env["THP_MEM_ALLOC_ENABLE"] == "1"
    huge = _probe(env)
    assert not huge["jemalloc"] and max(huge["faults"]) < PAGES // 50, huge


def test_a_users_own_settings_win():
    lib = jemalloc_path()
    assert step_env({"THP_MEM_ALLOC_ENABLE": "0", "X": "1"}) == {
        "THP_MEM_ALLOC_ENABLE": "0", "X": "1",
        **({"LD_PRELOAD": lib, "MALLOC_CONF": JEMALLOC_CONF} if lib else {})}
    # a library of their own: ours is not added, nor its configuration
    assert step_env({"LD_PRELOAD": "/opt/tcmalloc.so"}) == {**HUGE_PAGES,
                                                           "LD_PRELOAD": "/opt/tcmalloc.so"}
    assert step_env({"MALLOC_CONF": "narenas:1"}) == {**HUGE_PAGES, "MALLOC_CONF": "narenas:1"}


def record_allocator_then_train(out: str):
    """The real worker loop, after writing what the worker process runs on to ``out``
    (nested: Ray ships it by value)."""

    def train_loop(loop_config: dict) -> None:
        import json
        import os

        from kg_ops.train import loop

        with open("/proc/self/maps") as maps:
            jemalloc = any("libjemalloc" in line for line in maps)
        with open(out, "w") as fh:
            json.dump({"thp": os.environ.get("THP_MEM_ALLOC_ENABLE"),
                       "malloc_conf": os.environ.get("MALLOC_CONF"), "jemalloc": jemalloc}, fh)
        loop.train_worker(loop_config)

    return train_loop


@needs_jemalloc
def test_training_workers_run_on_jemalloc_with_huge_pages(planted, ray_local, tmp_path):
    seen = tmp_path / "allocator.json"
    train(TrainConfig(partitions=planted["parts"][1], out=str(tmp_path / "run"),
                      model="rgcn", preset="paper", epochs=1, batch_size=64, patience=0),
          train_loop=record_allocator_then_train(str(seen)))
    assert json.loads(seen.read_text()) == {"thp": "1", "malloc_conf": JEMALLOC_CONF,
                                            "jemalloc": True}

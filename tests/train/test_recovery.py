"""No crash loses training. Against an uninterrupted reference run of the same options:
a worker killed (a real ``os._exit``) with ``--keep-checkpoints 1`` recovers and ends
bit-identical; after a driver killed (SIGKILL) mid-run on a Ray cluster, rerunning the same
command into the same ``--out`` resumes from its own latest checkpoint and ends bit-identical
(what Ray Train leaves alive after the kill is printed); ``--force`` starts over. A partition file
damaged under a running job is reported once, as its own message, without retries."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests
import torch

from kg_ops.config import TrainConfig
from kg_ops.devcluster import LocalRayHead
from kg_ops.errors import KGOpsError
from kg_ops.train.checkpoints import epoch_checkpoints, latest_pointer, load_checkpoint
from kg_ops.train.cli import train
from kg_ops.train.steptime import TIMED

from .conftest import crash_once_after

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

KGOPS = str(Path(sys.executable).parent / "kgops")
EPOCHS = 5
OPTS = {"model": "rgcn", "loss": "bce", "epochs": EPOCHS, "batch_size": 64, "patience": 0,
        "max_failures": 2}
CLI = ["--model", "rgcn", "--loss", "bce", "--epochs", str(EPOCHS), "--batch-size", "64",
       "--patience", "0", "--max-failures", "2"]


def assert_identical(got: dict, want: dict) -> None:
    strip = lambda hist: [{k: v for k, v in h.items() if k not in TIMED} for h in hist]  # noqa: E731
    assert got["epoch"] == want["epoch"] == EPOCHS
    assert strip(got["history"]) == strip(want["history"])
    for k, v in want["model"].items():
        assert torch.equal(v, got["model"][k]), k
    for k, v in want["best_model"].items():
        assert torch.equal(v, got["best_model"][k]), k


@pytest.fixture(scope="module")
def reference(planted, ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "model"
    train(TrainConfig(partitions=planted["parts"][2], out=str(out), **OPTS))
    return load_checkpoint(str(out))


def test_worker_death_with_one_kept_checkpoint_recovers_bit_identical(planted, reference,
                                                                      tmp_path):
    marker, out = tmp_path / "died", tmp_path / "model"
    manifest = train(TrainConfig(partitions=planted["parts"][2], out=str(out), **OPTS,
                                 keep_checkpoints=1),
                     train_loop=crash_once_after(str(marker), epoch=2))
    assert marker.exists()                     # a worker really died after epoch 2
    got = load_checkpoint(str(out))
    assert_identical(got, reference)
    # retention kept the newest checkpoint and the best epoch's, nothing else
    assert set(epoch_checkpoints(str(out))) == {EPOCHS, int(got["best_epoch"])}
    assert manifest["metrics"]["epochs"] == EPOCHS


def _state(head: LocalRayHead, kind: str) -> list[dict]:
    r = requests.get(f"{head.dashboard_url}/api/v0/{kind}", params={"detail": "1",
                     "limit": "10000"}, headers={"Authorization": f"Bearer {head.token}"},
                     timeout=60)
    r.raise_for_status()
    return r.json()["data"]["result"]["result"]


def _alive_train_leftovers(head: LocalRayHead) -> list[str]:
    actors = [f"{a['class_name']} {a['state']}" for a in _state(head, "actors")
              if a["state"] != "DEAD"]
    groups = [f"placement group {g['placement_group_id'][:8]} {g['state']}"
              for g in _state(head, "placement_groups") if g["state"] != "REMOVED"]
    return actors + groups


def _train_worker_processes(head: LocalRayHead) -> list[int]:
    """This head's Ray Train worker processes (children of its raylet, titled
    ``ray::RayTrainWorker...``): the State API can list the actors dead while a process is
    still writing the checkpoint of the epoch it was in."""
    pids = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "raylet" not in cmdline or head.temp_dir not in cmdline:
            continue
        for child in proc.children(recursive=True):
            try:
                if "RayTrainWorker" in " ".join(child.cmdline()):
                    pids.append(child.pid)
            except psutil.NoSuchProcess:
                pass
    return pids


def test_driver_killed_then_rerun_resumes_bit_identical(planted, reference, tmp_path):
    out = tmp_path / "model"
    cmd = [KGOPS, "train", "--partitions", planted["parts"][2], *CLI, "--out", str(out)]
    with LocalRayHead(num_cpus=2) as head:
        env = {**os.environ, **head.env()}
        with open(tmp_path / "first.log", "w") as log:
            first = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + 900
        while not epoch_checkpoints(str(out)).keys() & {2, 3} and first.poll() is None:
            assert time.monotonic() < deadline, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.5)
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert len(_train_worker_processes(head)) == 2          # what the wait below watches
        os.killpg(first.pid, signal.SIGKILL)      # the driver (and anything in its session)
        first.wait()
        # The Ray Train workers are actors of the cluster, not the driver's children: they
        # can finish one more epoch (and its checkpoint) before they notice the driver died.
        # Read the newest checkpoint only once none is left, as an actor or as a process
        # (seen in CI: killed after epoch 2, epoch 3 written afterwards; and with 1000-dim
        # embeddings, epoch 3 written after the State API listed the workers dead).
        t0 = time.monotonic()
        while any(a.startswith("RayTrainWorker") for a in _alive_train_leftovers(head)) \
                or _train_worker_processes(head):
            assert time.monotonic() - t0 < 180, (_alive_train_leftovers(head),
                                                 _train_worker_processes(head))
            time.sleep(1)
        killed_at = latest_pointer(str(out))["epoch"]
        assert not (out / "_manifest.json").exists()
        # Finding 8 (not fixed, reported): Ray Train's detached PlacementGroupCleaner asks the
        # State API whether the controller lives; with several Ray clusters on one machine
        # (this one) its address lookup raises ConnectionError ("Found multiple active Ray
        # instances"), its monitor thread dies and the cleaner and the group stay until the
        # cluster stops. Recorded here, not asserted.
        t0, left = time.monotonic(), _alive_train_leftovers(head)
        while left and time.monotonic() - t0 < 60:
            time.sleep(2)
            left = _alive_train_leftovers(head)
        cleanup_s = time.monotonic() - t0
        print(f"after the driver kill, still alive after {cleanup_s:.0f}s: {left}")
        again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        assert again.returncode == 0, again.stderr[-3000:]
        resumed = json.loads((out / "_manifest.json").read_text())
        assert resumed["resumed_from"] == f"{out}/checkpoints/epoch-{killed_at:05d}.pt"
        assert f"resuming from {out}/checkpoints/epoch-{killed_at:05d}.pt" in again.stderr
        assert_identical(load_checkpoint(str(out)), reference)
        print(f"driver killed after epoch {killed_at}; resumed from it")
        # --force starts over (no resumed_from) and computes the same run again
        forced = subprocess.run([KGOPS, "--force", *cmd[1:]], env=env, capture_output=True,
                                text=True, timeout=900)
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert "resumed_from" not in json.loads((out / "_manifest.json").read_text())
    assert_identical(load_checkpoint(str(out)), reference)


def damage_then_train(path: str, runs_log: str):
    """A test-only wrapper of the real worker loop: worker 1 flips a byte of a partition file
    right before it loads it (a fault the driver's check cannot see, as on a shared store
    changed under a running job) and records each start, so a retry would show."""

    def train_loop(loop_config: dict) -> None:
        import ray.train

        from kg_ops.train import loop

        if ray.train.get_context().get_world_rank() == 1:
            with open(runs_log, "a") as fh:
                fh.write("start\n")
            with open(path, "r+b") as fh:
                data = bytearray(fh.read())
                data[len(data) // 2] ^= 0xFF
                fh.seek(0)
                fh.write(bytes(data))
        loop.train_worker(loop_config)

    return train_loop


def test_a_damaged_partition_is_reported_once_without_retries(planted, ray_local, tmp_path):
    import shutil

    parts = tmp_path / "parts"
    shutil.copytree(planted["parts"][2], parts)
    victim = parts / "part-00001" / "core_edges.parquet"
    runs_log = tmp_path / "starts"
    with pytest.raises(KGOpsError) as err:
        train(TrainConfig(partitions=str(parts), out=str(tmp_path / "model"), **OPTS),
              train_loop=damage_then_train(str(victim), str(runs_log)))
    msg = str(err.value)
    assert re.match(r"training stopped: worker [01]: ", msg)
    assert f"{victim}: content differs from the SHA-256" in msg and "Traceback" not in msg
    assert runs_log.read_text() == "start\n"         # no retry (max_failures is 2)
    assert not (tmp_path / "model" / "_manifest.json").exists()

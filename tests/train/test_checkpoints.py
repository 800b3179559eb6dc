"""Checkpoint bookkeeping without Ray: retention never deletes what a restart needs,
``latest.json`` can name nothing outside its folder, and a rerun continues only its own run."""

from __future__ import annotations

import json

import pytest
import torch

from kg_ops.train.checkpoints import (
    checkpoint_uri,
    continue_from,
    epoch_checkpoints,
    fingerprint,
    load_checkpoint,
    resolve,
    restart_state,
    save_checkpoint,
)


def state(epoch: int, best: int, fp: str = "A", run_id: str = "r1") -> dict:
    return {"epoch": epoch, "best_epoch": best, "run_id": run_id, "fingerprint": fp,
            "model": {"w": torch.full((2,), float(epoch))}, "history": []}


def test_retention_keeps_the_newest_and_the_best(tmp_path):
    out = str(tmp_path / "m")
    for epoch, best in [(1, 1), (2, 2), (3, 2), (4, 2), (5, 5), (6, 5)]:
        save_checkpoint(out, state(epoch, best), keep_last=1)
        assert epoch in epoch_checkpoints(out) and best in epoch_checkpoints(out)
    assert set(epoch_checkpoints(out)) == {5, 6}
    save_checkpoint(out, state(7, 5), keep_last=3)
    assert set(epoch_checkpoints(out)) == {5, 6, 7}


def test_latest_json_cannot_point_outside_its_folder(tmp_path):
    out = tmp_path / "m"
    save_checkpoint(str(out), state(1, 1), keep_last=1)
    elsewhere = tmp_path / "elsewhere.pt"
    torch.save({"format": "kgops-train-checkpoint/1", "epoch": 99}, elsewhere)
    (out / "checkpoints" / "latest.json").write_text(json.dumps({"epoch": 1,
                                                                  "uri": str(elsewhere)}))
    assert resolve(str(out)) == checkpoint_uri(str(out), 1)
    assert load_checkpoint(str(out))["epoch"] == 1
    (out / "checkpoints" / "latest.json").write_text(json.dumps({"uri": "/etc/passwd"}))
    with pytest.raises(Exception, match="not a kg_ops checkpoint pointer"):
        resolve(str(out))


def test_restart_takes_the_newest_existing_checkpoint_of_this_run(tmp_path):
    out = str(tmp_path / "m")
    for epoch in (1, 2, 3):
        save_checkpoint(out, state(epoch, 1), keep_last=1)
    # Ray's last registered pointer lags (epoch 2, already pruned): latest.json has epoch 3
    assert restart_state(out, "r1", checkpoint_uri(out, 2))["epoch"] == 3
    # another run's latest.json is not ours: Ray's pointer wins, or a clear error
    with pytest.raises(Exception, match="no checkpoint of this run is left"):
        restart_state(out, "other-run", checkpoint_uri(out, 2))
    assert restart_state(out, "other-run", checkpoint_uri(out, 3))["epoch"] == 3


def test_a_rerun_continues_only_its_own_run(tmp_path):
    out = str(tmp_path / "m")
    fp = fingerprint({"epochs": 5, "resume": None}, {"partitions": {"sha": "x"}})
    assert fp == fingerprint({"epochs": 5, "resume": "a.pt"}, {"partitions": {"sha": "x"}})
    assert fp != fingerprint({"epochs": 6, "resume": None}, {"partitions": {"sha": "x"}})
    for epoch in (1, 2):
        save_checkpoint(out, state(epoch, 1, fp=fp), keep_last=3)
    assert continue_from(out, fp, None, force=False) == checkpoint_uri(out, 2)
    assert set(epoch_checkpoints(out)) == {1, 2}           # kept for the continuation
    assert continue_from(out, "other", None, force=False) is None
    assert epoch_checkpoints(out) == {}                     # another run's: cleared
    for epoch in (1, 2):
        save_checkpoint(out, state(epoch, 1, fp=fp), keep_last=3)
    assert continue_from(out, fp, None, force=True) is None and epoch_checkpoints(out) == {}
    for epoch in (1, 2):
        save_checkpoint(out, state(epoch, 1, fp=fp), keep_last=3)
    explicit = checkpoint_uri(out, 1)
    assert continue_from(out, fp, explicit, force=False) == explicit
    assert set(epoch_checkpoints(out)) == {1}

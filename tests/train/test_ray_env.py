"""Ray Train's settings for a fit (``kg_ops.train.cli._ray_train_env``) on a real local,
one-node Ray instance: the preemption watcher is off there, a user's setting wins, and the
process environment is left as it was."""

from __future__ import annotations

import os

from kg_ops.train.cli import PREEMPTION_WATCHER, _ray_train_env


def test_one_node_cluster_runs_without_the_preemption_watcher(ray_local, monkeypatch):
    assert sum(1 for n in ray_local.nodes() if n["Alive"]) == 1
    monkeypatch.delenv(PREEMPTION_WATCHER, raising=False)
    with _ray_train_env():
        assert os.environ[PREEMPTION_WATCHER] == "0"
    assert PREEMPTION_WATCHER not in os.environ

    monkeypatch.setenv(PREEMPTION_WATCHER, "1")       # the user's choice is kept
    with _ray_train_env():
        assert os.environ[PREEMPTION_WATCHER] == "1"
    assert os.environ[PREEMPTION_WATCHER] == "1"

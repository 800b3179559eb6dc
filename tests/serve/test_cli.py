"""``kgops serve`` argument handling that needs no cluster."""

from __future__ import annotations

import pytest


def test_serve_needs_a_running_cluster(monkeypatch, capsys):
    from kg_ops.cli import main

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert main(["serve", "--status"]) == 2
    assert "RAY_ADDRESS" in capsys.readouterr().err


def test_serve_refuses_a_training_output(tmp_path):
    from kg_ops.cli import main
    from kg_ops.serve.synthetic import write_random_version
    from kg_ops.serve.version import VersionError, open_version

    graph = tmp_path / "g"
    assert main(["synth", "--nodes", "200", "--edges", "1000", "--out", str(graph)]) == 0
    uri = write_random_version(str(graph), str(tmp_path / "v"), dim=8)
    assert open_version(uri).id
    with pytest.raises(VersionError, match="kgops evaluate --model"):
        open_version(str(tmp_path / "v" / "model"))

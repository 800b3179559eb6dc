"""Bad inputs fail before any Ray work starts, with messages that say what to do; a hand-made
training artifact loads, and damaged ones fail clearly."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from kg_ops.config import TrainConfig
from kg_ops.errors import KGOpsError
from kg_ops.manifest import Stage
from kg_ops.models.link_predictor import LinkPredictor, ModelConfig
from kg_ops.models.trained import load_trained
from kg_ops.store import join
from kg_ops.train.checkpoints import CheckpointError, load_torch, save_torch
from kg_ops.train.cli import train

from .conftest import COMMUNITIES, PEOPLE

N_NODES = COMMUNITIES * PEOPLE + COMMUNITIES


def config(partitions: str, tmp_path, **options) -> TrainConfig:
    return TrainConfig(partitions=partitions, out=str(tmp_path / "out"), **options)


def test_workers_must_match_partitions(planted, tmp_path):
    with pytest.raises(KGOpsError, match=r"--workers 1 but .* has 2 partitions.*--workers 2"):
        train(config(planted["parts"][2], tmp_path, workers=1))


def test_missing_partition_is_named(planted, tmp_path):
    parts = tmp_path / "parts"
    shutil.copytree(planted["parts"][2], parts)
    shutil.rmtree(parts / "part-00001")
    with pytest.raises(KGOpsError, match=r"part-00001/\S+ is listed in .*_manifest.json but "
                                         r"missing.*Rerun the 'partition' stage"):
        train(config(str(parts), tmp_path))
    assert not (tmp_path / "out" / "_manifest.json").exists()


def test_unfinished_partition_stage_is_named(tmp_path):
    (tmp_path / "parts").mkdir()
    with pytest.raises(KGOpsError, match=r"has no _manifest.json.*'partition' stage"):
        train(config(str(tmp_path / "parts"), tmp_path))


def test_fanout_beyond_the_partitions_is_refused(planted, tmp_path):
    with pytest.raises(KGOpsError, match=r"exceeds the fanouts \[10, 5\]"):
        train(config(planted["parts"][1], tmp_path, fanout="25,10"))
    with pytest.raises(KGOpsError, match="has 1 hops but"):
        train(config(planted["parts"][1], tmp_path, fanout="5"))


def test_residual_with_unequal_dims_is_refused(planted, tmp_path):
    with pytest.raises(KGOpsError, match=r"residual needs embedding_dim == out_dim, got 1000 "
                                         r"and 32.*kgops train --help"):
        train(config(planted["parts"][1], tmp_path, residual=True, out_dim=32))
    assert not (tmp_path / "out" / "_manifest.json").exists()


def test_corrupt_resume_checkpoint(planted, tmp_path):
    bad = tmp_path / "epoch-00002.pt"
    bad.write_bytes(b"this is not a torch file")
    with pytest.raises(CheckpointError, match=r"epoch-00002.pt: the checkpoint is corrupt"):
        train(config(planted["parts"][1], tmp_path, resume=str(bad)))
    with pytest.raises(CheckpointError, match="no checkpoint here"):
        train(config(planted["parts"][1], tmp_path, resume=str(tmp_path)))


def hand_artifact(uri: str, graph: str, cfg: ModelConfig, state=None) -> str:
    """A training artifact in the published layout, from a freshly initialised model."""
    with Stage("train", uri, announce=False) as st:
        save_torch(st.uri("model.pt"), LinkPredictor(cfg).state_dict() if state is None
                   else state)
        st.store.write_json(st.uri("model_config.json"), {**cfg.to_dict(), "graph": graph})
        st.store.write_json(st.uri("history.json"), [])
    return uri


def test_load_trained_scores_and_embeds(planted, artifact_root):
    cfg = ModelConfig("rgcn", N_NODES, 2, embedding_dim=8, hidden_dim=8, out_dim=6)
    uri = hand_artifact(join(artifact_root, "model"), planted["graph"], cfg)
    tm = load_trained(uri)
    emb = tm.embed_all(batch_size=50)
    assert emb.shape == (N_NODES, 6) and torch.isfinite(emb).all()
    assert not emb.requires_grad
    h, t = emb[:4], emb[4:8]
    rel = torch.tensor([0, 1, 0, 1])
    assert tm.score_tails(h, rel, emb).shape == (4, N_NODES)
    assert torch.allclose(tm.score_tails(h, rel, t).diagonal(), tm.score(h, rel, t), atol=1e-5)
    assert torch.allclose(tm.score_heads(t, rel, h).diagonal(), tm.score(h, rel, t), atol=1e-5)


def test_load_trained_damaged_artifacts(planted, tmp_path):
    cfg = ModelConfig("rgcn", N_NODES, 2, embedding_dim=8, hidden_dim=8, out_dim=6)
    with pytest.raises(KGOpsError, match="no _manifest.json.*'train' stage"):
        load_trained(str(tmp_path / "nothing"))
    uri = hand_artifact(str(tmp_path / "m1"), planted["graph"], cfg)
    (tmp_path / "m1" / "model.pt").write_bytes(b"\x00garbage")
    with pytest.raises(KGOpsError, match=r"m1/model.pt has 8 bytes but .*_manifest.json records "
                                         r"\d+: it changed after the stage wrote it"):
        load_trained(uri)                     # the manifest's file record catches it first
    with pytest.raises(CheckpointError, match=r"m1/model.pt: the model checkpoint is corrupt"):
        load_torch(str(tmp_path / "m1" / "model.pt"), "model checkpoint")
    other = LinkPredictor(ModelConfig("rgcn", N_NODES, 2, embedding_dim=8, hidden_dim=16,
                                      out_dim=6)).state_dict()
    uri = hand_artifact(str(tmp_path / "m2"), planted["graph"], cfg, state=other)
    with pytest.raises(KGOpsError, match="model.pt does not match model_config.json"):
        load_trained(uri)
    uri = hand_artifact(str(tmp_path / "m3"), planted["graph"], cfg,
                        state={"x": np.zeros(3).tolist()})
    with pytest.raises(KGOpsError, match="does not match"):
        load_trained(uri)

"""The serving replica rebuilds only the decoder of a trained model: it must rebuild the one the
model was trained with (reciprocal relations included), or every load of such a model fails."""

from __future__ import annotations

import torch

from kg_ops.cli import main


def test_load_decoder_restores_a_reciprocal_decoder(tmp_path):
    from kg_ops.models.trained import load_decoder
    from kg_ops.serve.synthetic import write_random_version

    graph = str(tmp_path / "graph")
    assert main(["synth", "--nodes", "100", "--edges", "400", "--seed", "1", "--out", graph]) == 0
    version = write_random_version(graph, str(tmp_path / "v"), dim=8, reciprocal=True)
    decoder, config = load_decoder(version.rsplit("/", 1)[0] + "/model")
    saved = torch.load(tmp_path / "v" / "model" / "model.pt", weights_only=True)["decoder.rel"]
    assert config["reciprocal"] and decoder.reciprocal
    assert decoder.rel.shape[0] == 2 * config["num_relations"]
    assert torch.equal(decoder.rel, saved)
    assert not decoder.training            # relation dropout off when serving

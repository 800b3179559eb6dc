"""The command lines the KG operators submit, built from their options without a cluster:
the operator takes the config's options with the config's defaults, checks them before
submitting, and ``kgops`` parses exactly the config the operator built."""

from __future__ import annotations

import shlex

import pytest

from kg_ops.airflow.operators.kg import TrainEmbeddingsOperator
from kg_ops.config import TrainConfig


def train_op(**options) -> TrainEmbeddingsOperator:
    return TrainEmbeddingsOperator(task_id="train", partitions_uri="/runs/p", out_uri="/runs/m",
                                   **options)


def test_train_operator_defaults_are_the_config_defaults():
    op = train_op()
    for name, default in TrainConfig.defaults().items():
        if name not in ("partitions", "out"):
            assert getattr(op, name) == default, name
    assert op.build_entrypoint({}) == "kgops train --partitions /runs/p --out /runs/m"


def test_train_entrypoint_parses_back_to_the_same_config():
    from kg_ops.cli import build_parser

    op = train_op(model="relgnn", epochs="8", loss="softmax", residual="True",
                  embedding_dim=32, force="true")
    argv = shlex.split(op.build_entrypoint({}))
    assert argv[:3] == ["kgops", "--force", "train"]
    args = build_parser().parse_args(argv[1:])
    assert args.force is True
    assert TrainConfig.from_args(args) == TrainConfig(
        partitions="/runs/p", out="/runs/m", model="relgnn", epochs=8, loss="softmax",
        residual=True, embedding_dim=32)


def test_train_operator_refuses_bad_values_before_submitting():
    with pytest.raises(ValueError, match="train: --epochs must be >= 1, got 0"):
        train_op(epochs="0").build_entrypoint({})
    with pytest.raises(ValueError, match="--model must be one of rgcn, relgnn"):
        train_op(model="gat").build_entrypoint({})


def test_every_train_option_is_a_template_field():
    fields = set(TrainEmbeddingsOperator.template_fields)
    assert set(TrainConfig.names()) - {"partitions", "out"} <= fields

"""TrainConfig is the one home of every training option: the CLI parser, the command line an
operator submits, the DAG's Params and the manifest all come from it and agree with it."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from kg_ops.config import ConfigError, TrainConfig, as_bool

REQUIRED = {"partitions": "/p", "out": "/o"}


def parse(*argv: str) -> TrainConfig:
    parser = argparse.ArgumentParser()
    TrainConfig.add_arguments(parser)
    return TrainConfig.from_args(parser.parse_args(list(argv)))


def test_importing_the_config_stays_light():
    """DAG files import it: no torch, pyarrow, pandas or Ray, and no Airflow either."""
    code = ("import sys, json, kg_ops.config\n"
            "print(json.dumps(sorted(m for m in ('torch', 'pyarrow', 'pandas', 'ray', 'numpy',"
            " 'airflow') if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert json.loads(out.stdout) == []


def test_parser_defaults_are_the_dataclass_defaults():
    assert parse("--partitions", "/p", "--out", "/o") == TrainConfig(**REQUIRED)
    cfg = TrainConfig(**REQUIRED)
    assert (cfg.epochs, cfg.model, cfg.loss, cfg.batch_size) == (40, "rgcn", "1vsall", 1024)


def test_to_args_round_trips_through_the_parser():
    cfg = TrainConfig(**REQUIRED, model="relgnn", epochs=7, lr=0.003, residual=True,
                      embedding_dim=32, fanout="5,5", num_blocks=2)
    args = cfg.to_args()
    assert args[:4] == ["--partitions", "/p", "--out", "/o"]
    assert "--epochs" in args and "--batch-size" not in args      # defaults are left out
    assert parse(*args) == cfg
    assert parse(*TrainConfig(**REQUIRED).to_args()) == TrainConfig(**REQUIRED)


def test_template_strings_are_coerced_to_the_option_types():
    cfg = TrainConfig(partitions="/p", out="/o", epochs="8", lr="0.5", residual="True",
                      workers="", resume="")
    assert (cfg.epochs, cfg.lr, cfg.residual, cfg.workers, cfg.resume) == (8, 0.5, True, None,
                                                                            None)


@pytest.mark.parametrize(("options", "message"), [
    ({"epochs": 0}, "--epochs must be >= 1, got 0"),
    ({"epochs": "many"}, "--epochs must be an integer, got 'many'"),
    ({"model": "gat"}, "--model must be one of rgcn, relgnn, complex, distmult; got 'gat'"),
    ({"loss": "hinge"}, "--loss must be one of bce, softmax, 1vsall"),
    ({"preset": "libkge"}, "--preset must be one of paper"),
    ({"n3": -1}, "--n3 must be >= 0"),
    ({"dropout": 1.5}, "--dropout must be <= 0.99"),
    ({"residual": "maybe"}, "--residual must be true or false"),
    ({"partitions": None}, "--partitions needs a value"),
])
def test_bad_values_name_the_option(options, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        TrainConfig(**{**REQUIRED, **options})


def test_cli_reports_bad_values_with_exit_2(tmp_path):
    out = subprocess.run([sys.executable, "-m", "kg_ops.cli", "train", "--partitions", "/p",
                          "--out", str(tmp_path), "--epochs", "0"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2
    assert "kgops train: error: --epochs must be >= 1, got 0" in out.stderr


def test_resolved_fills_per_model_and_per_loss_defaults():
    rgcn = TrainConfig(**REQUIRED).resolved()
    assert (rgcn.lr, rgcn.dense_lr, rgcn.weight_decay, rgcn.regularization,
            rgcn.negatives) == (0.1, 0.001, 0.0, 0.0, 1)
    adam = TrainConfig(**REQUIRED, optimizer="adam").resolved()
    assert (adam.lr, adam.dense_lr) == (0.001, 0.001)      # the optimiser's own default rate
    relgnn = TrainConfig(**REQUIRED, model="relgnn", loss="softmax", lr=0.2).resolved()
    assert (relgnn.lr, relgnn.weight_decay, relgnn.negatives) == (0.2, 0.0, 512)
    assert TrainConfig(**REQUIRED, num_blocks=2).resolved().num_bases is None


def test_default_recipe_is_the_documented_one():
    """The best measured recipe (benchmarks/bench_train.py; README): what `kgops train`,
    the operator and the refresh DAG all use."""
    cfg = TrainConfig(**REQUIRED).resolved()
    want = {"model": "rgcn", "loss": "1vsall", "batch_size": 1024, "embedding_dim": 1000,
            "hidden_dim": 128, "out_dim": 1000, "residual": True, "residual_gate": True,
            "decoder": "complex", "reciprocal": True, "dropout": 0.2, "entity_dropout": 0.0,
            "relation_dropout": 0.0, "n3": 0.01, "init_scale": 0.001, "label_smoothing": 0.0,
            "relation_prediction": 0.0, "optimizer": "adagrad",
            "lr": 0.1, "dense_lr": 0.001, "weight_decay": 0.0, "regularization": 0.0, "lr_decay": 1.0, "epochs": 40,
            "patience": 10, "preset": None, "attribute_input": "add"}
    assert {k: getattr(cfg, k) for k in want} == want


@pytest.mark.parametrize(("model", "lr", "weight_decay", "regularization"),
                         [("rgcn", 0.01, 0.0, 0.01), ("relgnn", 0.001, 1e-4, 0.001)])
def test_preset_paper_is_the_published_system(model, lr, weight_decay, regularization):
    """--preset paper: bce with 1 negative, 64/64/32, DistMult, batch 256, dropout 0.2, the
    published per-model learning rates; no tuned-KGE technique."""
    cfg = parse("--partitions", "/p", "--out", "/o", "--preset", "paper", "--model",
                model).resolved()
    want = {"loss": "bce", "negatives": 1, "batch_size": 256, "embedding_dim": 64,
            "hidden_dim": 64, "out_dim": 32, "decoder": "distmult", "dropout": 0.2,
            "residual": False, "residual_gate": False, "reciprocal": False,
            "entity_dropout": 0.0, "relation_dropout": 0.0, "n3": 0.0, "label_smoothing": 0.0,
            "relation_prediction": 0.0, "lr_decay": 1.0, "patience": 5, "epochs": 20, "optimizer": "adam", "lr": lr,
            "dense_lr": lr,
            "weight_decay": weight_decay, "regularization": regularization,
            "attribute_input": "replace", "precision": "fp32"}
    assert {k: getattr(cfg, k) for k in want} == want
    assert cfg.preset == "paper" and cfg.resolved() == cfg          # idempotent


def test_options_given_explicitly_win_over_the_preset():
    cfg = parse("--partitions", "/p", "--out", "/o", "--preset", "paper", "--epochs", "7",
                "--loss", "softmax", "--lr", "0.05").resolved()
    assert (cfg.epochs, cfg.loss, cfg.lr, cfg.negatives, cfg.out_dim) == (7, "softmax", 0.05,
                                                                          512, 32)
    # the operator submits only non-default options, so the preset reaches the CLI intact
    assert "--preset" in TrainConfig(**REQUIRED, preset="paper").to_args()


def test_recorded_leaves_out_where_and_how_fast():
    rec = TrainConfig(**REQUIRED, threads=4, ray_address="auto").recorded()
    assert "epochs" in rec and "model" in rec
    assert not {"partitions", "out", "threads", "ray_address", "max_failures"} & set(rec)


def test_from_dict_refuses_unknown_options():
    with pytest.raises(ConfigError, match="unknown train option.*epoch"):
        TrainConfig.from_dict({**REQUIRED, "epoch": 3})


def test_one_boolean_parser():
    assert [as_bool(v) for v in (True, "true", "1", "on", "Yes", 1)] == [True] * 6
    assert [as_bool(v) for v in (False, "false", "0", "off", "no", 0)] == [False] * 6
    with pytest.raises(ConfigError, match="flag must be true or false"):
        as_bool("", "flag")

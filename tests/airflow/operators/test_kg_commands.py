"""The command lines the KG operators submit, built from their options without a cluster:
the operator takes the config's options with the config's defaults, checks them before
submitting, and ``kgops`` parses exactly the config the operator built."""

from __future__ import annotations

import re
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


def encode_op(**options):
    from kg_ops.airflow.operators.kg import EncodeAttributesOperator

    return EncodeAttributesOperator(task_id="encode", graph_uri="/runs/g", out_uri="/runs/f",
                                    **options)


def evaluate_op(**options):
    from kg_ops.airflow.operators.kg import EvaluateEmbeddingsOperator

    return EvaluateEmbeddingsOperator(task_id="evaluate", model_uri="/runs/m",
                                      graph_uri="/runs/g", out_uri="/runs/e", **options)


@pytest.mark.parametrize("make", [encode_op, evaluate_op])
def test_encode_and_evaluate_operators_take_their_config_with_its_defaults(make):
    op = make()
    uris = set(op.uri_options.values())
    for name, default in op.config_class.defaults().items():
        assert getattr(op, name) == default, name
    assert set(op.config_class.names()) - uris <= set(type(op).template_fields)


def test_encode_entrypoint_parses_back_to_the_same_config():
    from kg_ops.cli import build_parser
    from kg_ops.config import EncodeConfig

    assert encode_op().build_entrypoint({}) == "kgops encode --graph /runs/g --out /runs/f"
    op = encode_op(workers="2", text_model="/models/minilm", on_bad="skip",
                   extra_args=["--encoders=/runs/old-f"])
    argv = shlex.split(op.build_entrypoint({}))
    assert EncodeConfig.from_args(build_parser().parse_args(argv[1:])) == EncodeConfig(
        graph="/runs/g", out="/runs/f", workers=2, text_model="/models/minilm", on_bad="skip",
        encoders="/runs/old-f")
    # a template that renders empty (no earlier encoders, no text model) is "not given"
    assert encode_op(text_model="", encoders="").stage_config() == EncodeConfig(
        graph="/runs/g", out="/runs/f")
    with pytest.raises(ValueError, match="encode: --bins must be >= 2, got 1"):
        encode_op(bins="1").build_entrypoint({})


def test_evaluate_entrypoint_parses_back_to_the_same_config():
    from kg_ops.cli import build_parser
    from kg_ops.config import EvaluateConfig

    assert (evaluate_op().build_entrypoint({})
            == "kgops evaluate --model /runs/m --graph /runs/g --out /runs/e")
    op = evaluate_op(split="valid", max_queries="500", inductive="True", force=True)
    argv = shlex.split(op.build_entrypoint({}))
    assert argv[:3] == ["kgops", "--force", "evaluate"]
    assert EvaluateConfig.from_args(build_parser().parse_args(argv[1:])) == EvaluateConfig(
        model="/runs/m", graph="/runs/g", out="/runs/e", split="valid", max_queries=500,
        inductive=True)
    with pytest.raises(ValueError, match="evaluate: --split must be one of test, valid"):
        evaluate_op(split="train").build_entrypoint({})


def test_import_synth_entrypoint_is_checked_by_the_synth_config():
    from kg_ops.airflow.operators.kg import ImportGraphOperator

    def synth(**options) -> str:
        return ImportGraphOperator(task_id="import", out_uri="/runs/g", source="synth",
                                   **options).build_entrypoint({})

    assert synth() == "kgops synth --nodes 3000 --edges 24000 --out /runs/g"
    assert (synth(synth_nodes="400", synth_edges="2400", synth_seed="3")
            == "kgops synth --nodes 400 --edges 2400 --seed 3 --out /runs/g")
    with pytest.raises(ValueError, match="import: --nodes must be >= 50, got 10"):
        synth(synth_nodes=10)


def partition_op(**options):
    from kg_ops.airflow.operators.kg import PartitionGraphOperator

    return PartitionGraphOperator(task_id="partition", graph_uri="/runs/g", out_uri="/runs/p",
                                  **options)


def test_partition_entrypoint_parses_back_and_skips_features_never_encoded(tmp_path):
    from kg_ops.cli import build_parser
    from kg_ops.config import PartitionConfig
    from kg_ops.manifest import Stage

    op = partition_op(parts="4", fanout="10,5", seed="3", features_uri=str(tmp_path / "f"))
    for name, default in PartitionConfig.defaults().items():
        if name not in ("features", "fanout", "seed"):
            assert getattr(partition_op(), name) == default, name
    argv = shlex.split(op.build_entrypoint({}))
    assert "--features" not in argv                 # the encode stage was skipped
    expected = PartitionConfig(graph="/runs/g", out="/runs/p", parts=4, fanout="10,5", seed=3)
    assert PartitionConfig.from_args(build_parser().parse_args(argv[1:])) == expected
    with Stage("encode", str(tmp_path / "f"), announce=False):
        pass                                        # a finished encode stage
    argv = shlex.split(op.build_entrypoint({}))
    assert PartitionConfig.from_args(build_parser().parse_args(argv[1:])) == expected.replace(
        features=str(tmp_path / "f"))
    with pytest.raises(ValueError, match="partition: --parts needs a value"):
        partition_op().build_entrypoint({})
    with pytest.raises(ValueError, match="--method must be one of metis, random"):
        partition_op(parts=2, method="kmeans").build_entrypoint({})


def test_driver_cpus_follow_where_each_stage_computes():
    from kg_ops.airflow.operators.kg import (
        EncodeAttributesOperator,
        EvaluateEmbeddingsOperator,
        ImportGraphOperator,
        PartitionGraphOperator,
    )

    common = {"out_uri": "/o"}
    cpus = {type(op).__name__: op.entrypoint_num_cpus for op in (
        ImportGraphOperator(task_id="i", **common),
        EncodeAttributesOperator(task_id="e", graph_uri="/g", **common),
        PartitionGraphOperator(task_id="p", graph_uri="/g", **common),
        train_op(),
        EvaluateEmbeddingsOperator(task_id="v", model_uri="/m", graph_uri="/g", **common))}
    assert cpus == {"ImportGraphOperator": 1, "EncodeAttributesOperator": 0,
                    "PartitionGraphOperator": 1, "TrainEmbeddingsOperator": 0,
                    "EvaluateEmbeddingsOperator": 1}
    assert train_op(entrypoint_num_cpus=2).entrypoint_num_cpus == 2     # configurable


def tune_op(**options):
    from kg_ops.airflow.operators.kg import TuneEmbeddingsOperator

    return TuneEmbeddingsOperator(task_id="tune", partitions_uri="/runs/p", out_uri="/runs/t",
                                  **options)


def test_tune_entrypoint_parses_back_to_the_tune_config_and_the_recipe():
    from kg_ops.cli import build_parser
    from kg_ops.config import TuneConfig

    op = tune_op(budget_s="900", trials="4", space="s3://b/space.json",
                 train_options={"model": "complex", "epochs": "12"})
    assert op.entrypoint_num_cpus == 0
    argv = shlex.split(op.build_entrypoint({}))
    assert argv[:2] == ["kgops", "tune"]
    args = build_parser().parse_args(argv[1:])
    assert TuneConfig.from_args(args) == TuneConfig(partitions="/runs/p", out="/runs/t",
                                                    budget_s=900, trials=4,
                                                    space="s3://b/space.json")
    assert (args.model, args.epochs) == ("complex", 12)
    assert tune_op().build_entrypoint({}) == "kgops tune --partitions /runs/p --out /runs/t"


def test_tune_operator_refuses_bad_values_before_submitting():
    with pytest.raises(ValueError, match="tune: --budget-s must be >= 1, got 0"):
        tune_op(budget_s=0).build_entrypoint({})
    with pytest.raises(ValueError, match="tune: train_options: unknown train option"):
        tune_op(train_options={"learning_rate": 0.1}).build_entrypoint({})
    with pytest.raises(ValueError, match="train_options seed, workers: options of the tune"):
        tune_op(train_options={"workers": 2, "seed": 1}).build_entrypoint({})
    with pytest.raises(ValueError, match="--epochs must be >= 1"):
        tune_op(train_options={"epochs": 0}).build_entrypoint({})


def test_tune_operator_disabled_skips_without_a_job():
    assert tune_op(enabled="False").execute({}) == {"skipped": True}


def import_op(source: str, **options):
    from kg_ops.airflow.operators.kg import ImportGraphOperator

    return ImportGraphOperator(task_id="import", out_uri="/runs/g", source=source, **options)


def test_import_operator_takes_the_importers_options_with_their_defaults():
    from kg_ops.airflow.operators.kg import IMPORT_OPTIONS, ImportGraphOperator
    from kg_ops.config import IMPORTERS

    op = import_op("codex-s")
    taken = set(IMPORT_OPTIONS)
    derived = {"out", "root", "size", "train", "valid", "test"}
    for config_class in IMPORTERS.values():
        for name, default in config_class.defaults().items():
            if name not in derived:        # an option of several importers: one default
                assert getattr(op, name) == default, (config_class.__name__, name)
        assert set(config_class.names()) - derived <= taken
    assert taken <= set(ImportGraphOperator.template_fields)


@pytest.mark.parametrize(("source", "options", "expected"), [
    ("codex-s", {}, "kgops import codex --size s --out /runs/g"),
    ("codex-m", {"datasets_root": "/data", "on_bad_rows": "quarantine"},
     "kgops import codex --on-bad-rows quarantine --root /data/codex --size m --out /runs/g"),
    ("debian", {"datasets_root": "/data", "seed": "3"},
     "kgops import debian --root /data/debian --seed 3 --out /runs/g"),
    ("debian", {"from_apt": "True", "datasets_root": "/data"},
     "kgops import debian --from-apt --out /runs/g"),
    ("triples", {"triples": {"train": "/t", "valid": "", "test": None}, "header": "true",
                 "split": "0.7,0.2,0.1", "seed": 2, "relations": "/r", "name": "n"},
     "kgops import triples --train /t --header --split 0.7,0.2,0.1 --seed 2 --relations /r "
     "--name n --out /runs/g"),
    ("triples", {"triples": {"train": "/t", "valid": "/v", "test": "/s"}, "force": True},
     "kgops --force import triples --train /t --valid /v --test /s --out /runs/g"),
])
def test_import_entrypoint_parses_back_to_the_same_config(source, options, expected):
    from kg_ops.cli import build_parser
    from kg_ops.config import IMPORTERS

    op = import_op(source, **options)
    entrypoint = op.build_entrypoint({})
    assert entrypoint == expected
    args = build_parser().parse_args(shlex.split(entrypoint)[1:])
    assert args.force is bool(options.get("force"))
    config = IMPORTERS[args.source].from_args(args)
    assert config == op.import_config()
    assert config.out == "/runs/g"


@pytest.mark.parametrize(("source", "options", "message"), [
    ("codex-s", {"on_bad_rows": "skip"}, "--on-bad-rows must be one of fail, quarantine"),
    ("debian", {"datasets_root": "/d", "seed": "x"}, "--seed must be an integer, got 'x'"),
    ("debian", {}, "source='debian' needs datasets_root"),
    ("triples", {"triples": {"train": "/t", "valid": "/v"}},
     "give both --valid and --test, or neither"),
    ("triples", {"triples": {"train": "/t"}, "split": "0.5,0.5"}, "--split '0.5,0.5'"),
    ("triples", {"triples": {"validation": "/v"}}, "source='triples' needs triples="),
    ("codex-s", {"seed": 3}, "--seed is not read by source 'codex-s' (only by triples, debian)"),
    ("synth", {"header": True}, "--header is not read by source 'synth' (only by triples)"),
    ("graph", {"graph_uri": "/g", "on_bad_rows": "x"}, "--on-bad-rows must be one of"),
    ("codex-l", {}, "unknown source 'codex-l'"),
])
def test_import_operator_refuses_bad_values_before_submitting(source, options, message):
    with pytest.raises(ValueError, match=f"import: {re.escape(message)}"):
        import_op(source, **options).build_entrypoint({})


def test_import_operator_keeps_synth_and_graph_commands():
    assert import_op("synth", on_bad_rows="quarantine").build_entrypoint({}) == (
        "kgops synth --nodes 3000 --edges 24000 --out /runs/g")
    assert import_op("graph", graph_uri="/g", on_bad_rows="quarantine").build_entrypoint(
        {}) == "kgops validate /g --on-bad-rows quarantine"

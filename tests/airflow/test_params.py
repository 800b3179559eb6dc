"""The DAG form's fields are generated from the stage configs: type, default, allowed values,
bounds and help come from the one declaration of each option."""

from __future__ import annotations

from kg_ops.airflow.params import option_param, stage_params
from kg_ops.config import EvaluateConfig, SynthConfig, TrainConfig
from kg_ops.config.train import MODELS


def test_form_fields_carry_the_options_declaration():
    epochs = option_param(TrainConfig, "epochs")
    assert epochs.value == TrainConfig.option("epochs").default
    assert epochs.schema == {"type": "integer", "minimum": 1}
    assert epochs.description == TrainConfig.option("epochs").help
    assert stage_params(TrainConfig, "model")["model"].schema["enum"] == list(MODELS)
    subset = option_param(EvaluateConfig, "max_queries")
    assert subset.value is None and subset.schema["type"] == ["integer", "null"]


def test_a_required_option_takes_the_forms_default():
    nodes = option_param(SynthConfig, "nodes", default=3000)
    assert nodes.value == 3000 and nodes.schema["minimum"] == SynthConfig.option("nodes").minimum
    nodes.resolve(3000)                                        # validates
    assert option_param(TrainConfig, "epochs", default=5).value != 5   # not required: its own

"""TuneConfig and the search space of ``kgops tune``: the declared space is checked against the
``kgops train`` options before any trial runs, a sample maps onto the declared bounds (checked
against the formula), and bad input (an empty space file, a budget of 0, ...) is one clear
line with exit status 2."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys

import pytest

from kg_ops.config import ConfigError, TrainConfig, TuneConfig
from kg_ops.tune.space import DEFAULT_SPACE, SearchSpace, SpaceError, tunable_options

BASE = TrainConfig(partitions="/p", out="/o")


def kgops(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kg_ops.cli", *args], capture_output=True,
                          text=True, timeout=120)


def space_file(tmp_path, content) -> str:
    path = tmp_path / "space.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def test_the_default_space_is_valid_and_samples_only_training_options():
    space = SearchSpace.load("default", BASE)
    assert space.domains == DEFAULT_SPACE
    assert set(space.domains) <= set(tunable_options())
    assert not {"partitions", "out", "workers", "resume", "preset", "threads"} & set(
        tunable_options())
    from ray import tune

    sample = {k: (d.sample() if isinstance(d, tune.search.sample.Domain) else d)
              for k, d in space.param_space().items()}
    config = BASE.replace(**space.resolve(sample, BASE))     # a TrainConfig accepts it
    assert config.out_dim == config.embedding_dim            # the residual default needs it


def test_a_range_per_value_of_another_option_maps_the_unit_draw_onto_its_bounds():
    """As the default space's learning rate per optimiser (here per decoder)."""
    ranges = {"complex": [0.02, 0.5], "distmult": [0.0003, 0.003]}
    space = SearchSpace({"decoder": {"choice": ["complex", "distmult"]},
                         "lr": {"loguniform": ranges, "by": "decoder"}}, "test")
    for key, (lo, hi) in ranges.items():
        assert space.resolve({"decoder": key, "lr": 0.0}, BASE)["lr"] == pytest.approx(lo)
        assert space.resolve({"decoder": key, "lr": 1.0}, BASE)["lr"] == pytest.approx(hi)
        assert space.resolve({"decoder": key, "lr": 0.5}, BASE)["lr"] == pytest.approx(
            math.sqrt(lo * hi))                              # the geometric midpoint


def test_a_uniform_range_by_another_option_is_linear():
    space = SearchSpace({"dropout": {"uniform": {"rgcn": [0.1, 0.3], "complex": [0.0, 0.2]},
                                     "by": "model"}}, "test")
    assert space.resolve({"dropout": 0.25}, BASE)["dropout"] == pytest.approx(0.15)
    complex_base = BASE.replace(model="complex")
    assert space.resolve({"dropout": 0.25}, complex_base)["dropout"] == pytest.approx(0.05)


def test_integer_options_stay_integers_and_out_dim_follows_only_with_residual():
    space = SearchSpace({"embedding_dim": {"choice": [64, 128]},
                         "batch_size": {"uniform": [256, 1024]}}, "test")
    values = space.resolve({"embedding_dim": 64, "batch_size": 300.4}, BASE)
    assert values == {"embedding_dim": 64, "batch_size": 300, "out_dim": 64}
    no_residual = BASE.replace(residual=False, residual_gate=False)
    assert "out_dim" not in space.resolve({"embedding_dim": 64, "batch_size": 300.0},
                                          no_residual)


@pytest.mark.parametrize(("space", "message"), [
    ({}, "declares no option to search"),
    ([1, 2], "must be a JSON object"),
    ({"partitions": {"choice": ["/x"]}}, "'partitions' is not a `kgops train` option a trial "
                                          "can sample"),
    ({"learning_rate": {"choice": [0.1]}}, "'learning_rate' is not a `kgops train` option"),
    ({"lr": [0.1, 0.2]}, "lr: a domain is one of"),
    ({"lr": {"normal": [0.1, 0.2]}}, "lr: a domain is one of"),
    ({"lr": {"loguniform": [0.0, 0.1]}}, "lr: loguniform needs lo > 0"),
    ({"lr": {"uniform": [0.2, 0.1]}}, "lr: uniform needs [lo, hi] with lo < hi"),
    ({"dropout": {"uniform": [0.0, 1.5]}}, "dropout: --dropout must be <= 0.99, got 1.5"),
    ({"model": {"choice": ["rgcn", "gat"]}}, "model: --model must be one of"),
    ({"model": {"uniform": [0, 1]}}, "model: uniform needs [lo, hi] with lo < hi on a numeric"),
    ({"batch_size": {"choice": []}}, "batch_size: choice needs a non-empty list"),
    ({"lr": {"loguniform": {"adam": [0.001, 0.01]}, "by": "decoder"}},
     "lr: no bounds for decoder=complex"),
    ({"lr": {"choice": {"adam": [0.001]}, "by": "model"}}, "lr: with \"by\""),
])
def test_bad_spaces_are_refused_naming_the_option(space, message):
    with pytest.raises(SpaceError, match="search space \\(test\\): ") as err:
        SearchSpace(space, "test", BASE)
    assert message in str(err.value)


def test_space_files_name_the_file_and_the_problem(tmp_path):
    with pytest.raises(SpaceError, match="space.json: the file is empty; declare at least one"):
        SearchSpace.load(space_file(tmp_path, "  \n"))
    with pytest.raises(SpaceError, match="space.json: not valid JSON at line 2, column 1"):
        SearchSpace.load(space_file(tmp_path, '{"lr":\n}'))
    with pytest.raises(SpaceError, match="nope.json: file not found"):
        SearchSpace.load(str(tmp_path / "nope.json"))
    loaded = SearchSpace.load(space_file(tmp_path, {"lr": {"loguniform": [0.001, 0.1]}}))
    assert loaded.domains == {"lr": {"loguniform": [0.001, 0.1]}}


def test_tune_config_checks_the_budget():
    with pytest.raises(ConfigError, match="--budget-s must be >= 1, got 0"):
        TuneConfig(partitions="/p", out="/o", budget_s=0)
    with pytest.raises(ConfigError, match="--trials must be >= 1, got 0"):
        TuneConfig(partitions="/p", out="/o", trials="0")
    assert TuneConfig(partitions="/p", out="/o", budget_s="900").budget_s == 900.0


def test_bad_input_exits_2_with_one_clear_line(tmp_path):
    out = kgops("tune", "--partitions", str(tmp_path / "p"), "--out", str(tmp_path / "o"),
                "--budget-s", "0")
    assert out.returncode == 2, out.stderr
    assert "kgops tune: error: --budget-s must be >= 1, got 0" in out.stderr
    empty = space_file(tmp_path, "")
    out = kgops("tune", "--partitions", str(tmp_path / "p"), "--out", str(tmp_path / "o"),
                "--space", empty)
    assert out.returncode == 2, out.stderr
    assert f"kgops tune: error: search space {empty}: the file is empty" in out.stderr
    assert "Traceback" not in out.stderr
    out = kgops("tune", "--partitions", str(tmp_path / "p"), "--out", str(tmp_path / "o"))
    assert out.returncode == 2 and "'partition' stage" in out.stderr
    assert not (tmp_path / "o" / "_manifest.json").exists()


def test_the_cli_takes_the_base_recipe_as_kgops_train_does():
    from kg_ops.cli import build_parser

    args = build_parser().parse_args(["tune", "--partitions", "/p", "--out", "/o", "--model",
                                      "complex", "--epochs", "7", "--seed", "3"])
    assert TuneConfig.from_args(args) == TuneConfig(partitions="/p", out="/o", seed=3)
    assert (args.model, args.epochs) == ("complex", 7)
    assert not hasattr(args, "workers") and not hasattr(args, "resume")


def test_the_default_space_draws_each_optimizers_learning_rate_around_its_default():
    from kg_ops.config.train import DEFAULT_LR

    space = SearchSpace.load("default", BASE)
    bounds = space.domains["lr"]["loguniform"]
    assert set(bounds) == set(space.domains["optimizer"]["choice"]) == set(DEFAULT_LR)
    for opt, (lo, hi) in bounds.items():
        assert lo < DEFAULT_LR[opt] < hi
        drawn = space.resolve({**{k: v["choice"][0] for k, v in space.domains.items()
                                  if "choice" in v}, "optimizer": opt, "lr": 0.5,
                               "dropout": 0.1, "entity_dropout": 0.1,
                               "relation_dropout": 0.1}, BASE)
        assert drawn["optimizer"] == opt and drawn["lr"] == pytest.approx(math.sqrt(lo * hi))


def test_the_base_point_resolves_to_the_base_recipe_or_is_none_outside_the_space():
    """The first trial: a Tune sample whose resolution is the base recipe itself (the
    defaults, filled in; the learning rate drawn per optimiser included), and none when the
    base recipe lies outside the space."""
    space = SearchSpace(DEFAULT_SPACE, "default")
    for base in (BASE, BASE.replace(optimizer="adam", dropout=0.3, batch_size=512)):
        point = space.base_point(base)
        values = space.resolve(point, base)
        recipe = base.resolved()
        for name in DEFAULT_SPACE:
            assert values[name] == getattr(recipe, name), name      # exactly: lr 0.1, not 0.0999..
        rebuilt = base.replace(**values).resolved()        # what the first trial trains
        for f in dataclasses.fields(recipe):
            want = getattr(recipe, f.name)
            assert getattr(rebuilt, f.name) == (pytest.approx(want) if isinstance(want, float)
                                                else want), f.name
    assert space.base_point(BASE.replace(embedding_dim=96, out_dim=96)) is None   # not a choice
    assert space.base_point(BASE.replace(dropout=0.5)) is None                    # above 0.4
    assert space.base_point(BASE.replace(lr=0.9)) is None        # beyond adagrad's [0.02, 0.5]

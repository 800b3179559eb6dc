"""The stage configs other than train's: each ``kgops <stage>`` parser is generated from its
config and keeps the flags and defaults the hand-written parser had (scripts and DAGs that
worked before still do); the command line a config writes parses back to the same config."""

from __future__ import annotations

import argparse

import pytest

from kg_ops.config import (
    CodexImportConfig,
    ConfigError,
    DebianImportConfig,
    EncodeConfig,
    EvaluateConfig,
    SynthConfig,
    TriplesImportConfig,
)


def parse(config_class, *argv: str):
    parser = argparse.ArgumentParser()
    config_class.add_arguments(parser)
    return config_class.from_args(parser.parse_args(list(argv)))


# The defaults of the hand-written parsers these configs replaced (main before issue 11).
EVALUATE_BEFORE = {"inductive": False, "features": None, "split": "test", "batch_size": None,
                   "memory_mib": 256.0, "embed_batch_size": 65536, "max_queries": None,
                   "auc_negatives": 1, "seed": 0, "threads": 0}


def test_evaluate_keeps_its_flags_and_defaults():
    cfg = parse(EvaluateConfig, "--model", "/m", "--graph", "/g", "--out", "/o")
    assert {k: getattr(cfg, k) for k in EVALUATE_BEFORE} == EVALUATE_BEFORE
    cfg = parse(EvaluateConfig, "--model", "/m", "--graph", "/g", "--out", "/o", "--inductive",
                "--features", "/f", "--split", "valid", "--batch-size", "8", "--memory-mib",
                "64", "--embed-batch-size", "100", "--max-queries", "5", "--auc-negatives",
                "3", "--seed", "2", "--threads", "1")
    assert cfg == EvaluateConfig(model="/m", graph="/g", out="/o", inductive=True,
                                 features="/f", split="valid", batch_size=8, memory_mib=64.0,
                                 embed_batch_size=100, max_queries=5, auc_negatives=3, seed=2,
                                 threads=1)
    assert parse(EvaluateConfig, *cfg.to_args()) == cfg


@pytest.mark.parametrize(("options", "message"), [
    ({"split": "train"}, "--split must be one of test, valid; got 'train'"),
    ({"max_queries": 0}, "--max-queries must be >= 1, got 0"),
    ({"auc_negatives": "two"}, "--auc-negatives must be an integer, got 'two'"),
    ({"features": "/f"}, "--features is only read with --inductive"),
])
def test_evaluate_refuses_bad_values_naming_the_option(options, message):
    with pytest.raises(ConfigError, match=message):
        EvaluateConfig(model="/m", graph="/g", out="/o", **options)


ENCODE_BEFORE = {"workers": None, "threads_per_worker": None, "ray_address": None,
                 "num_cpus": None, "encoders": None, "text_model": None, "pooling": None,
                 "max_length": None, "bins": 10, "max_categories": 64, "max_labels": 256,
                 "on_bad": "error", "text_chunk": 512, "tabular_min_cells": 500_000,
                 "text_batch_size": 64,
                 "text_batch_tokens": 1024}   # was None, read as kg_ops.encode.text's 1024


def test_encode_keeps_its_flags_and_defaults():
    cfg = parse(EncodeConfig, "--graph", "/g", "--out", "/o")
    assert {k: getattr(cfg, k) for k in ENCODE_BEFORE} == ENCODE_BEFORE
    argv = ["--graph", "/g", "--out", "/o", "--workers", "2", "--threads-per-worker", "1",
            "--ray-address", "auto", "--num-cpus", "2", "--encoders", "/e", "--text-model",
            "/t", "--pooling", "cls", "--max-length", "32", "--bins", "5", "--max-categories",
            "4", "--max-labels", "8", "--on-bad", "skip", "--text-chunk", "4",
            "--tabular-min-cells", "1", "--text-batch-size", "3", "--text-batch-tokens", "0"]
    cfg = parse(EncodeConfig, *argv)
    assert cfg.to_args() == argv
    assert cfg.settings() == {"bins": 5, "max_categories": 4, "max_labels": 8,
                              "text_model": "/t", "pooling": "cls", "max_length": 32,
                              "on_bad": "skip"}


@pytest.mark.parametrize(("options", "message"), [
    ({"bins": 1}, "--bins must be >= 2, got 1"),
    ({"on_bad": "ignore"}, "--on-bad must be one of error, skip; got 'ignore'"),
    ({"text_batch_tokens": -1}, "--text-batch-tokens must be >= 0, got -1"),
    ({"text_chunk": 0}, "--text-chunk must be >= 1, got 0"),
    ({"workers": "two"}, "--workers must be an integer, got 'two'"),
])
def test_encode_refuses_bad_values_naming_the_option(options, message):
    with pytest.raises(ConfigError, match=message):
        EncodeConfig(graph="/g", out="/o", **options)


SYNTH_BEFORE = {"seed": 0, "communities": None, "within": 0.8, "text_fraction": 1.0,
                "missing_fraction": 0.02}


def test_synth_keeps_its_flags_and_defaults():
    cfg = parse(SynthConfig, "--nodes", "100", "--edges", "300", "--out", "/o")
    assert {k: getattr(cfg, k) for k in SYNTH_BEFORE} == SYNTH_BEFORE
    argv = ["--nodes", "100", "--edges", "300", "--seed", "4", "--out", "/o",
            "--communities", "5", "--within", "0.5", "--text-fraction", "0.25",
            "--missing-fraction", "0.1"]
    cfg = parse(SynthConfig, *argv)
    assert cfg.to_args() == argv
    assert (cfg.nodes, cfg.communities, cfg.within) == (100, 5, 0.5)


# --- kgops import codex|debian|triples ---------------------------------------------------------
def parse_import(*argv: str):
    """``kgops import <argv>`` through the real parser, as the source's config."""
    from kg_ops.cli import build_parser
    from kg_ops.config import IMPORTERS

    args = build_parser().parse_args(["import", *argv])
    return IMPORTERS[args.source].from_args(args)


# The defaults of the hand-written `kgops import` parsers (main before this change).
IMPORT_BEFORE = {
    "codex": (["--size", "s"], {"root": "", "on_bad_rows": "fail"}),
    "debian": (["--root", "/d"], {"from_apt": False, "seed": 0, "on_bad_rows": "fail"}),
    "triples": (["--train", "/t"], {"valid": None, "test": None, "header": False, "split": None,
                                    "seed": 0, "relations": None, "entities": None,
                                    "name": None, "on_bad_rows": "fail"}),
}


@pytest.mark.parametrize("source", IMPORT_BEFORE)
def test_import_parsers_keep_their_flags_and_defaults(source):
    required, before = IMPORT_BEFORE[source]
    cfg = parse_import(source, *required, "--out", "/o")
    assert {k: getattr(cfg, k) for k in before} == before
    assert cfg.out == "/o" and parse_import(source, *cfg.to_args()) == cfg


@pytest.mark.parametrize(("argv", "expected"), [
    (["codex", "--root", "/c", "--size", "m", "--on-bad-rows", "quarantine"],
     CodexImportConfig(out="/o", root="/c", size="m", on_bad_rows="quarantine")),
    (["debian", "--from-apt", "--seed", "3"], DebianImportConfig(out="/o", from_apt=True, seed=3)),
    (["triples", "--train", "/t", "--header", "--split", "0.6,0.2,0.2", "--seed", "4",
      "--relations", "/r", "--entities", "/e", "--name", "g", "--on-bad-rows", "quarantine"],
     TriplesImportConfig(out="/o", train="/t", header=True, split="0.6,0.2,0.2", seed=4,
                         relations="/r", entities="/e", name="g", on_bad_rows="quarantine")),
    (["triples", "--train", "/t", "--valid", "/v", "--test", "/s"],
     TriplesImportConfig(out="/o", train="/t", valid="/v", test="/s")),
])
def test_import_argv_round_trip(argv, expected):
    cfg = parse_import(*argv, "--out", "/o")
    assert cfg == expected
    assert parse_import(argv[0], *cfg.to_args()) == cfg


def test_import_configs_record_what_the_manifest_recorded_before():
    """Reuse compares the manifest's config: an import finished before still matches."""
    assert CodexImportConfig(out="/o", root="/c", size="s").recorded() == {
        "importer": "codex", "size": "s", "on_bad_rows": "fail"}
    assert DebianImportConfig(out="/o", root="/d", seed=2).recorded() == {
        "importer": "debian", "seed": 2, "on_bad_rows": "fail"}
    assert TriplesImportConfig(out="s3://b/runs/g/", train="/t").recorded() == {
        "importer": "triples", "name": "g", "header": False, "on_bad_rows": "fail",
        "split": [0.8, 0.1, 0.1], "seed": 0}
    assert TriplesImportConfig(out="/o", train="/t", valid="/v", test="/s",
                               name="n").recorded()["split"] == "given"


@pytest.mark.parametrize(("argv", "message"), [
    (["codex", "--size", "s", "--on-bad-rows", "skip"],
     "argument --on-bad-rows: invalid choice: 'skip'"),                # argparse's own checks
    (["debian", "--root", "/d", "--seed", "x"], "--seed: invalid int value: 'x'"),
    (["debian", "--root", "/d", "--from-apt"],
     "argument --from-apt/--no-from-apt: not allowed with argument --root"),
    (["debian"], "one of the arguments --root --from-apt/--no-from-apt is required"),
    (["triples", "--train", "/t", "--valid", "/v"], "give both --valid and --test, or neither"),
    (["triples", "--train", "/t", "--split", "0.5,0.5"],
     "--split '0.5,0.5': expected three fractions train,valid,test that sum to 1"),
    (["triples", "--train", "/t", "--valid", "/v", "--test", "/s", "--split", "1,0,0"],
     "--split splits a single --train file"),
])
def test_bad_import_options_exit_2_naming_the_option(tmp_path, capsys, argv, message):
    from kg_ops.cli import main

    out = tmp_path / "g"
    try:
        status = main(["import", *argv, "--out", str(out)])
    except SystemExit as exc:          # argparse's checks exit from parse_args
        status = exc.code
    assert status == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]    # "kgops import[ <source>]: error: <message>"
    assert last.startswith("kgops import") and ": error: " in last and message in last, err
    assert not out.exists()


@pytest.mark.parametrize(("config_class", "options", "message"), [
    (CodexImportConfig, {"size": "l"}, "--size must be one of s, m; got 'l'"),
    (CodexImportConfig, {"size": "s", "on_bad_rows": "skip"},
     "--on-bad-rows must be one of fail, quarantine; got 'skip'"),
    (DebianImportConfig, {"root": "/d", "seed": "x"}, "--seed must be an integer, got 'x'"),
    (DebianImportConfig, {}, "give exactly one of --root DIR or --from-apt"),
    (DebianImportConfig, {"root": "/d", "from_apt": "yes"},
     "give exactly one of --root DIR or --from-apt"),
    (TriplesImportConfig, {"train": "/t", "header": "maybe"},
     "--header must be true or false, got 'maybe'"),
    (TriplesImportConfig, {"train": "/t", "split": "0,0.5,0.5"}, "--split '0,0.5,0.5'"),
    (TriplesImportConfig, {"train": None}, "--train needs a value"),
])
def test_import_configs_refuse_bad_values_naming_the_option(config_class, options, message):
    with pytest.raises(ConfigError, match=message):
        config_class(out="/o", **options)

"""``kgops``'s top-level options reach every stage: ``--force`` is an argument of the stage
functions (no environment variable), given before the command or, where a command declares it
too, after it."""

from __future__ import annotations

import pytest

from kg_ops.cli import build_parser, main


@pytest.mark.parametrize("argv", [
    ["import", "codex", "--size", "s", "--out", "/o"],
    ["import", "triples", "--train", "t.tsv", "--out", "/o"],
    ["validate", "/g"],
    ["synth", "--nodes", "100", "--edges", "100", "--out", "/o"],
    ["encode", "--graph", "/g", "--out", "/o"],
    ["evaluate", "--model", "/m", "--graph", "/g", "--out", "/o"],
])
def test_force_before_the_command_is_not_shadowed_by_the_command(argv):
    parser = build_parser()
    assert parser.parse_args(argv).force is False
    assert parser.parse_args(["--force", *argv]).force is True
    if argv[0] in ("import", "validate"):       # these also take it after the command
        assert parser.parse_args([*argv, "--force"]).force is True


def test_force_recomputes_a_finished_stage(tmp_path, capsys):
    argv = ["synth", "--nodes", "100", "--edges", "300", "--out", str(tmp_path / "g")]

    def reused() -> bool:
        return "reusing it" in capsys.readouterr().err   # kgops logs to stderr

    assert main(argv) == 0 and not reused()
    assert main(argv) == 0 and reused()
    assert main(["--force", *argv]) == 0 and not reused()

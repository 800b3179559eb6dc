"""The ``kgops train`` command: registered, documented, and user errors exit with status 2 and
a message (no traceback)."""

from __future__ import annotations

import subprocess
import sys


def kgops(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kg_ops.cli", *args], capture_output=True,
                          text=True, timeout=120)


def test_help_lists_the_options():
    out = kgops("train", "--help")
    assert out.returncode == 0
    for opt in ("--partitions", "--model", "--workers", "--epochs", "--out", "--resume",
                "--batch-size", "--fanout", "--lr", "--loss", "--negatives"):
        assert opt in out.stdout


def test_missing_partitions_exit_2_with_message(tmp_path):
    out = kgops("train", "--partitions", str(tmp_path / "nope"), "--out", str(tmp_path / "o"))
    assert out.returncode == 2
    assert "kgops train: error:" in out.stderr and "'partition' stage" in out.stderr
    assert "Traceback" not in out.stderr

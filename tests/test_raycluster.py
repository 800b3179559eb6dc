"""Connecting to a Ray cluster has a deadline: an unreachable address (closed port) and an
address that answers but is no Ray cluster both fail within it, with a message naming the
address and exit status 2 (``ray.init`` alone retries for many minutes)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kg_ops.devcluster import free_ports
from kg_ops.errors import RayConnectError
from kg_ops.raycluster import wait_reachable

KGOPS = str(Path(sys.executable).parent / "kgops")


def test_closed_port_fails_within_the_deadline():
    address = f"127.0.0.1:{free_ports(1)[0]}"
    t = time.monotonic()
    with pytest.raises(RayConnectError, match=rf"cannot reach the Ray cluster at {address} "
                                              r"within 3s \(.*refused.*--ray-timeout"):
        wait_reachable(address, 3)
    assert 1.5 < time.monotonic() - t < 8


@pytest.mark.parametrize("answers", [False, True], ids=["closed-port", "not-ray"])
def test_kgops_encode_gives_up_at_the_deadline(tmp_path, answers):
    """Through the CLI, as a user sees it: exit 2, one line, no traceback, bounded time."""
    # A real graph: encode checks its inputs before it connects, so a missing graph would fail
    # earlier, for another reason.
    subprocess.run([KGOPS, "synth", "--nodes", "100", "--edges", "300", "--out",
                    str(tmp_path / "g")], check=True, capture_output=True, timeout=300)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    if answers:
        listener.listen(16)          # accepts TCP, never speaks Ray's protocol
    else:
        listener.close()
    try:
        t = time.monotonic()
        proc = subprocess.run([KGOPS, "--ray-timeout", "8", "encode", "--graph",
                               str(tmp_path / "g"), "--out", str(tmp_path / "f"),
                               "--ray-address", f"127.0.0.1:{port}"],
                              capture_output=True, text=True, timeout=300)
        took = time.monotonic() - t
    finally:
        listener.close()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"cannot reach the Ray cluster at 127.0.0.1:{port} within 8s" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert took < 8 + 60      # the deadline plus interpreter and import start-up

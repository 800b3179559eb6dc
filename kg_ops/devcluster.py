"""A private local Ray head for the demo and the tests: 127.0.0.1, token auth, own ports.

``ray start --head`` with every port picked free (GCS, dashboard, agents, object/node manager,
client server, metrics) and a private ``--temp-dir``, so two clusters on one machine don't collide.
Token authentication is on: the head is started with ``RAY_AUTH_MODE=token`` and a fresh
``RAY_AUTH_TOKEN`` in *its* environment only (nothing written to ``~/.ray``); HTTP clients send
``Authorization: Bearer <token>``. Stopping never calls ``ray stop`` (it stops every cluster on the
machine): it kills the process group ``ray start`` ran in plus every descendant (job drivers run
in their own sessions), and nothing else.

Usage::

    with LocalRayHead(num_cpus=2) as head:
        head.dashboard_url, head.token, head.address

    python -m kg_ops.devcluster start --state /tmp/ray.json [--num-cpus 2] [--temp-dir DIR]
    python -m kg_ops.devcluster stop --state /tmp/ray.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

log = logging.getLogger(__name__)

PORT_FLAGS = ("--port", "--dashboard-port", "--dashboard-agent-listen-port",
              "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port",
              "--node-manager-port", "--object-manager-port", "--ray-client-server-port")


class DevClusterError(RuntimeError):
    """The local Ray head could not be started or stopped."""


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 right now (held open together so none repeats)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _ray_bin() -> str:
    candidate = Path(sys.executable).parent / "ray"
    return str(candidate) if candidate.exists() else (shutil.which("ray") or "ray")


class LocalRayHead:
    """Start a private Ray head on enter, stop exactly that head on exit."""

    def __init__(self, num_cpus: int = 2, temp_dir: str | None = None,
                 startup_timeout: float = 90.0, object_store_mib: int = 512,
                 keep_temp_dir: bool | None = None, env: dict[str, str] | None = None):
        self.num_cpus = num_cpus
        # Extra environment of the head's processes (and so of its workers and job drivers):
        # how a cluster gets its own S3 credentials, as a real cluster's nodes have them.
        self.extra_env = dict(env or {})
        self._own_temp = temp_dir is None
        # Short path: Ray puts unix sockets under it (107-byte limit).
        self.temp_dir = temp_dir or tempfile.mkdtemp(prefix="kgray-", dir="/tmp")
        self.keep_temp_dir = (not self._own_temp) if keep_temp_dir is None else keep_temp_dir
        self.startup_timeout = startup_timeout
        self.object_store_mib = object_store_mib
        self.token = secrets.token_hex(32)
        self.dashboard_url = ""
        self.address = ""
        self.pgid: int | None = None

    # --- lifecycle ----------------------------------------------------------------------------
    def __enter__(self) -> LocalRayHead:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def env(self) -> dict[str, str]:
        """Environment for Ray processes and clients of this cluster (``ray.init``, CLI)."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token,
                "RAY_ADDRESS": self.address, "RAY_API_SERVER_ADDRESS": self.dashboard_url}

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            # Interrupted or failed half-way (Ctrl-C, a test timeout): leave nothing running.
            self._kill_processes()
            raise

    def _start(self) -> None:
        Path(self.temp_dir).mkdir(parents=True, exist_ok=True)
        last_error = ""
        # Two attempts: a port grabbed between picking and binding, or a raylet that missed
        # Ray's fixed 30 s registration window on an overloaded machine.
        for _attempt in range(2):
            ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS)), strict=True))
            cmd = [_ray_bin(), "start", "--head", "--node-ip-address", "127.0.0.1",
                   "--dashboard-host", "127.0.0.1", "--include-dashboard", "true",
                   "--temp-dir", self.temp_dir, "--num-cpus", str(self.num_cpus),
                   "--object-store-memory", str(self.object_store_mib * 1024 * 1024),
                   "--disable-usage-stats"]
            for flag, port in ports.items():
                cmd += [flag, str(port)]
            env = dict(os.environ)
            for var in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH"):
                env.pop(var, None)
            env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token,
                        "RAY_USAGE_STATS_ENABLED": "0", **self.extra_env,
                        # As if the virtualenv were activated: job entrypoints such as
                        # `kgops ...` resolve to this interpreter's environment.
                        "PATH": os.pathsep.join([str(Path(sys.executable).parent),
                                                 env.get("PATH", "")])})
            log_path = Path(self.temp_dir) / "ray-start.log"
            with open(log_path, "w") as out:
                # Own session: every daemon ray start spawns inherits this process group.
                proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                        start_new_session=True)
                self.pgid = proc.pid
                try:
                    rc = proc.wait(timeout=self.startup_timeout)
                except subprocess.TimeoutExpired:
                    rc = -1
            if rc == 0:
                self.dashboard_url = f"http://127.0.0.1:{ports['--dashboard-port']}"
                current = Path(self.temp_dir) / "ray_current_cluster"
                self.address = (current.read_text().strip() if current.exists()
                                else f"127.0.0.1:{ports['--port']}")
                try:
                    self._wait_ready()
                    log.info("local Ray head up: dashboard %s, GCS %s, temp dir %s",
                             self.dashboard_url, self.address, self.temp_dir)
                    return
                except DevClusterError as e:
                    last_error = str(e)
            else:
                last_error = log_path.read_text()[-3000:]
            self._kill_processes()
        raise DevClusterError(f"could not start a local Ray head (temp dir {self.temp_dir}):\n"
                              f"{last_error}")

    def _wait_ready(self) -> None:
        """Until the Jobs API answers an authenticated request (the job agent is up)."""
        deadline = time.monotonic() + self.startup_timeout
        req = urllib.request.Request(f"{self.dashboard_url}/api/jobs/",
                                     headers={"Authorization": f"Bearer {self.token}"})
        err = ""
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(req, timeout=5) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError) as e:
                err = str(e)
            time.sleep(0.3)
        raise DevClusterError(f"Ray dashboard {self.dashboard_url} not ready: {err}")

    def stop(self, grace_s: float = 3.0) -> None:
        self._kill_processes(grace_s)
        if self._own_temp and not self.keep_temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def _kill_processes(self, grace_s: float = 3.0) -> None:
        if self.pgid is None:
            return
        kill_cluster(self.pgid, self.temp_dir, grace_s)

    # --- state for the CLI ----------------------------------------------------------------------
    def state(self) -> dict:
        return {"dashboard_url": self.dashboard_url, "address": self.address,
                "token": self.token, "temp_dir": self.temp_dir, "pgid": self.pgid,
                "own_temp": self._own_temp and not self.keep_temp_dir}


def _names_dir(cmdline: list[str], directory: str) -> bool:
    """True when the command line mentions ``directory`` or a path inside it (not a sibling
    whose name merely starts the same)."""
    d = directory.rstrip("/")
    joined = " " + " ".join(cmdline) + " "
    return any(f"{sep}{d}{end}" in joined for sep in (" ", "=") for end in (" ", "/"))


def _cluster_processes(pgid: int, temp_dir: str) -> list:
    """Processes of the cluster: its process group, anything naming its temp dir, and all their
    descendants (job entrypoints start their own sessions)."""
    import psutil

    roots = []
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(p.pid) == pgid or _names_dir(p.cmdline(), temp_dir):
                roots.append(p)
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
    found = {p.pid: p for p in roots}
    for p in roots:
        try:
            for child in p.children(recursive=True):
                found.setdefault(child.pid, child)
        except psutil.Error:
            continue
    found.pop(os.getpid(), None)
    return list(found.values())


def kill_cluster(pgid: int, temp_dir: str, grace_s: float = 3.0) -> None:
    """SIGTERM the cluster's processes, SIGKILL whatever is left after ``grace_s``."""
    import psutil

    procs = _cluster_processes(pgid, temp_dir)
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=5)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kg_ops.devcluster", description=__doc__.splitlines()[0])
    p.add_argument("action", choices=["start", "stop"])
    p.add_argument("--state", required=True,
                   help="JSON file holding the cluster's address and token (mode 0600)")
    p.add_argument("--num-cpus", type=int, default=2)
    p.add_argument("--temp-dir", default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    state_path = Path(args.state)
    if args.action == "start":
        head = LocalRayHead(num_cpus=args.num_cpus, temp_dir=args.temp_dir)
        head.start()
        state_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(state_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(head.state(), f)
        print(f"Ray head started: dashboard {head.dashboard_url}, address {head.address}; "
              f"token and details in {state_path}")
        return 0
    if not state_path.exists():
        print(f"no state file at {state_path}: nothing to stop", file=sys.stderr)
        return 1
    state = json.loads(state_path.read_text())
    kill_cluster(int(state["pgid"]), state["temp_dir"])
    if state.get("own_temp"):
        shutil.rmtree(state["temp_dir"], ignore_errors=True)
    state_path.unlink()
    print(f"Ray head at {state['dashboard_url']} stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())

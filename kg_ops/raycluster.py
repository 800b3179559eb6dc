"""Connect a stage to Ray: the cluster given by ``--ray-address`` / ``RAY_ADDRESS`` (this is how a
stage runs as a Ray job on an existing cluster), else a local in-process Ray instance.

Connecting has a deadline (``--ray-timeout`` / ``KGOPS_RAY_CONNECT_TIMEOUT``, default 60 s):
``ray.init`` itself retries an unreachable GCS for many minutes."""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time

from kg_ops.errors import RayConnectError

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 60.0
TIMEOUT_ENV = "KGOPS_RAY_CONNECT_TIMEOUT"


def connect_timeout(timeout_s: float | None = None) -> float:
    if timeout_s is None:
        try:
            timeout_s = float(os.environ.get(TIMEOUT_ENV, CONNECT_TIMEOUT_S))
        except ValueError:
            raise RayConnectError(f"{TIMEOUT_ENV}={os.environ[TIMEOUT_ENV]!r} is not a number "
                                  "of seconds") from None
    if timeout_s <= 0:
        raise RayConnectError(f"the Ray connect timeout must be positive, not {timeout_s}")
    return timeout_s


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of a GCS or Ray client address; None for ``auto``/``local``."""
    rest = address.split("://", 1)[1] if "://" in address else address
    if address in ("auto", "local") or ":" not in rest:
        return None
    host, _, port = rest.rstrip("/").rpartition(":")
    if not port.isdigit():
        raise RayConnectError(f"--ray-address {address!r}: expected host:port (e.g. "
                              "10.0.0.5:6379) or ray://host:10001")
    return host.strip("[]"), int(port)


def _unreachable(address: str, timeout_s: float, cause: str) -> RayConnectError:
    return RayConnectError(
        f"cannot reach the Ray cluster at {address} within {timeout_s:.0f}s ({cause}). Check "
        "--ray-address / RAY_ADDRESS and that the head is running and reachable from this "
        f"machine; wait longer with --ray-timeout or {TIMEOUT_ENV}.")


def wait_reachable(address: str, timeout_s: float) -> None:
    """Until a TCP connection to the address succeeds, or a RayConnectError at the deadline."""
    target = _host_port(address)
    if target is None:
        return
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        try:
            socket.create_connection(target, timeout=max(0.1, min(5.0, left))).close()
            return
        except OSError as exc:
            if time.monotonic() + 1 >= deadline:
                raise _unreachable(address, timeout_s, exc.strerror or str(exc)) from exc
            time.sleep(1)


def _watchdog(address: str, timeout_s: float) -> threading.Timer:
    """``ray.init`` can block in native code past any Python exception (a port that answers
    but is no Ray GCS): at the deadline, say why and end the process with the user-error
    status, the one way out."""
    def fire() -> None:
        msg = _unreachable(address, timeout_s, "the address answers but no Ray cluster "
                                               "responded")
        print(f"kgops: error: {msg}", file=sys.stderr, flush=True)
        os._exit(2)

    timer = threading.Timer(timeout_s, fire)
    timer.daemon = True
    return timer


def init_ray(address: str | None = None, num_cpus: int | None = None,
             timeout_s: float | None = None) -> None:
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        timeout_s = connect_timeout(timeout_s)
        log.info("connecting to the Ray cluster at %s (deadline %.0fs)", address, timeout_s)
        start = time.monotonic()
        wait_reachable(address, timeout_s)
        timer = _watchdog(address, max(1.0, timeout_s - (time.monotonic() - start)))
        timer.start()
        try:
            ray.init(address=address, log_to_driver=True)
        except ConnectionError as exc:
            raise _unreachable(address, timeout_s, str(exc).splitlines()[0]) from exc
        finally:
            timer.cancel()
    else:
        from kg_ops.devcluster import free_ports

        log.info("no Ray address given; starting a local Ray instance (%s CPUs)",
                 num_cpus or "all")
        try:
            # With its dashboard (on a free loopback port): the dashboard serves the State API,
            # which Ray Train's placement-group cleaner polls every second; without it, that
            # actor logs a "State API may be temporarily unavailable" warning per second into
            # every training log.
            ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
                     dashboard_port=free_ports(1)[0], log_to_driver=True)
        except Exception as exc:  # Ray raises a bare Exception when its processes start late
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise RayConnectError(f"could not start a local Ray instance ({first}). The "
                                  "machine may be overloaded: retry, or run on an existing "
                                  "cluster with --ray-address") from exc

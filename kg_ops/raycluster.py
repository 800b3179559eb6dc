"""Connect a stage to Ray: the cluster given by ``--ray-address`` / ``RAY_ADDRESS`` (this is how a
stage runs as a Ray job on an existing cluster), else a local in-process Ray instance."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        log.info("connecting to the Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=True)
    else:
        log.info("no Ray address given; starting a local Ray instance (%s CPUs)",
                 num_cpus or "all")
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=True)

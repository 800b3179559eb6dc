"""The memory allocator of every process that runs training steps: big buffers kept and reused.

A ``1vsall`` step at the default 1000 dimensions allocates and frees dozens of tensors of tens
to hundreds of megabytes (each direction's ``[queries, entities]`` scores and their gradients,
the entity table, its bfloat16 copy and gradient, the message aggregates: 35-140 MB each on
CoDEx-M). The C library returns every freed one to the kernel and the next step faults its
pages in again: on a 2-worker CoDEx-M step, 476,000 page faults and 45-50 % of the worker's CPU
time in the kernel (on virtual machines that hand freed memory back to the host, each fault
also waits for the host).

So the workers run on jemalloc, which keeps freed memory and hands it out again:

* ``LD_PRELOAD`` = Ray's own build (``ray/core/libjemalloc.so``, shipped with every Ray
  install: Ray runs its own daemons on it), resolved where the run is launched; a Ray job's
  driver runs on the cluster, whose nodes share its Ray install.
* ``MALLOC_CONF`` = ``dirty_decay_ms:-1,muzzy_decay_ms:-1``: freed pages are never returned
  while the process lives (jemalloc's defaults purge allocations above 8 MB at once, which is
  the C library's behaviour again). A training worker's footprint is its step's peak anyway.
* ``THP_MEM_ALLOC_ENABLE=1``: PyTorch aligns large allocations to 2 MiB and asks for
  transparent huge pages, 512 times fewer faults where jemalloc is not found.

One worker's share of a 2-worker CoDEx-M step, one thread, the loop in a thread as Ray Train
runs it (``getrusage`` around each step, two rounds): 2.23-2.49 s with the C library (1.0-1.2
s of it in the kernel, 476,000 faults), 1.53-1.73 s with huge pages alone, 1.11 s with
jemalloc (no faults); resident memory 1,280 MiB against the C library's peak of 1,200 MiB.
Keeping memory with the C library's own switches (no ``mmap``, no trimming, one arena) gave
1.20 s at 1,590-1,660 MiB.

The environment must be set before the process starts, hence at launch: Ray Train's workers
(:mod:`kg_ops.train.cli`), the cost planner's child, the benchmark's children.
A user's own value for any of these variables wins (``LD_PRELOAD=""`` turns jemalloc off).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

HUGE_PAGES = {"THP_MEM_ALLOC_ENABLE": "1"}
JEMALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"


def jemalloc_path() -> str | None:
    """Ray's bundled jemalloc, or ``None`` when this Ray install has none."""
    import ray

    path = os.path.join(os.path.dirname(ray.__file__), "core", "libjemalloc.so")
    return path if os.path.exists(path) else None


def step_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` with the training allocator settings added where ``base`` does not set them
    (a preloaded library of its own: then neither jemalloc variable)."""
    base = dict(base or {})
    env = dict(HUGE_PAGES)
    lib = jemalloc_path()
    if lib and "LD_PRELOAD" not in base and "MALLOC_CONF" not in base:
        env.update(LD_PRELOAD=lib, MALLOC_CONF=JEMALLOC_CONF)
    return {**env, **base}

"""Large tensors on transparent huge pages in every process that runs training steps.

A ``1vsall`` step at the default 1000 dimensions allocates and frees dozens of tensors of tens
of megabytes (each direction's ``[queries, entities]`` scores and their gradients, the entity
table, its bfloat16 copy and its gradient: 35-70 MB each on CoDEx-M). The C library hands each
one fresh pages, so every step faults all of them in again, 4 KiB at a time: on a 2-worker
CoDEx-M epoch, ~190,000 page faults per second per worker and 44 % of the workers' CPU time in
the kernel. PyTorch's ``THP_MEM_ALLOC_ENABLE`` aligns large allocations to 2 MiB and asks for
huge pages (``madvise``), so the same memory takes 512 times fewer faults: the 1vsall loss's
forward and backward went from 0.56-0.68 s to 0.38-0.39 s per CoDEx-M step, at the same peak
memory. It must be in a process's environment before PyTorch starts, hence set where the
process is launched: Ray Train's workers (``kg_ops.train.cli``) and the cost planner's child.
A kernel with huge pages off (``never``) just ignores it.
"""

from __future__ import annotations

from collections.abc import Mapping

ENV = {"THP_MEM_ALLOC_ENABLE": "1"}


def step_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` with PyTorch's huge-page allocation on, unless ``base`` sets it itself."""
    return {**ENV, **(base or {})}

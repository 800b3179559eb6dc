"""Run a function on ``world`` real gloo workers (``torch.distributed`` over 127.0.0.1 in
spawned processes), as the training loop's collectives run inside Ray Train."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str, fn, args) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.save(fn(rank, world, *args), os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_gloo(fn, world: int, out_dir: str, *args) -> list:
    """``[fn(rank, world, *args) for every rank]``, each run in its own gloo worker."""
    mp.spawn(_worker, args=(world, _free_port(), str(out_dir), fn, args), nprocs=world)
    return [torch.load(os.path.join(out_dir, f"{r}.pt"), weights_only=False)
            for r in range(world)]

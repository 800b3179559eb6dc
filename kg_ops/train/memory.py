"""What a training recipe must hold in memory per worker, known before anything is allocated.

The default recipe (1-vs-all, 1000 dimensions) suits graphs like CoDEx-M (17k entities: at
least 0.34 GiB per worker at P=2, 1.3 GiB measured). Its memory grows with the entity count:
the entity table and its optimiser state, the encoded table of every entity that 1-vs-all
ranks against, and each query's scores against all of them. On the published system's
2.8M-entity graph that is at least 26 GiB per worker at P=8; allocated blindly, the run (or the partition stage's cost calibration)
would swap or be killed by the kernel with no word of why. So the worker, and the planner,
add up these terms from the recipe's shapes first (the model is built on PyTorch's ``meta``
device: shapes, no storage) and stop with the terms, the memory this node has and what to
change, when the sum alone exceeds it.

The sum is a lower bound: it leaves out the sampled computation graphs, the partition's data
and the runtime, which the cost planner measures (:mod:`kg_ops.train.plan`).
"""

from __future__ import annotations

import math
from pathlib import Path

from kg_ops.errors import KGOpsError

_GIB = 2**30


class RecipeTooLarge(KGOpsError):
    """The recipe's known memory alone exceeds what a worker has."""


def available_bytes() -> int:
    """Memory a new allocation can get on this node: the kernel's ``MemAvailable``, capped by
    the room left under this process's cgroup memory limit where there is one (a
    container's, or a Kubernetes pod's)."""
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    avail = next(int(line.split()[1]) * 1024 for line in meminfo
                 if line.startswith("MemAvailable:"))
    room = _cgroup_room()
    return avail if room is None else min(avail, room)


def _cgroup_room() -> int | None:
    """Limit minus usage of this process's memory cgroup (v2, or v1), ``None`` without a
    limit."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":                                   # v2
            where, limit_file, usage_file = (Path("/sys/fs/cgroup") / path.lstrip("/"),
                                             "memory.max", "memory.current")
        elif "memory" in controllers.split(","):                # v1
            where, limit_file, usage_file = (Path("/sys/fs/cgroup/memory") / path.lstrip("/"),
                                             "memory.limit_in_bytes", "memory.usage_in_bytes")
        else:
            continue
        try:
            limit = (where / limit_file).read_text().strip()
            used = int((where / usage_file).read_text())
        except (OSError, ValueError):
            continue
        if limit != "max" and int(limit) < 2**60:              # v1 says "none" this way
            return max(0, int(limit) - used)
    return None


def footprint(model_config: dict, loss: str, optimizer: str, batch: int,
              workers: int = 1) -> dict[str, int]:
    """Bytes a worker holds for the recipe, by term (float32 throughout): parameters, their
    optimiser state (the table and relation vectors by ``optimizer``: Adagrad keeps one
    value per parameter, Adam two; the GNN weights by Adam) and the dense gradients; with
    ``1vsall``, the encoded entities and their gradient, and the queries' scores against
    them, for tail and head (kept for the backward). ``batch`` is a worker's share of the
    global batch; on one worker it ranks its queries against every entity, on ``workers``
    > 1 (sharded 1vsall, :mod:`kg_ops.train.owner_scoring`) every worker's queries against
    its own share of the entities, and holds the global batch's anchors and query vectors."""
    import torch

    from kg_ops.models.link_predictor import LinkPredictor, ModelConfig
    from kg_ops.train.optim import sparse_parameters

    cfg = ModelConfig.from_dict(model_config)
    with torch.device("meta"):
        model = LinkPredictor(cfg)
    table = sum(p.numel() for p in sparse_parameters(model))
    decoder = sum(p.numel() for p in model.decoder.parameters())
    encoder = sum(p.numel() for p in model.parameters()) - table - decoder
    states = 2 if optimizer == "adam" else 1
    terms = {
        f"entity table ({cfg.num_nodes:,} x {cfg.embedding_dim})": 4 * table,
        f"its {optimizer} state": 4 * states * table,
        "other parameters, their gradients and optimiser state":
            4 * (4 * encoder + (2 + states) * decoder),
    }
    if loss == "1vsall":
        dim = cfg.out_dim if not cfg.shallow else cfg.embedding_dim
        if workers > 1:
            own, queries = math.ceil(cfg.num_nodes / workers), int(batch) * workers
            terms[f"1vsall: this worker's share of the entities encoded, and its gradient "
                  f"({own:,} x {dim})"] = 2 * 4 * own * dim
            terms[f"1vsall: scores of every worker's {queries:,} queries against them, tail "
                  "and head"] = 2 * 4 * queries * own
            terms[f"1vsall: those queries' anchors and vectors, and their gradients "
                  f"(2 x {queries:,} x {dim})"] = 4 * 4 * 2 * queries * dim
        else:
            terms[f"1vsall: every entity encoded, and its gradient ({cfg.num_nodes:,} x "
                  f"{dim})"] = 2 * 4 * cfg.num_nodes * dim
            terms[f"1vsall: scores of {batch:,} queries against every entity, tail and head"] \
                = 2 * 4 * int(batch) * cfg.num_nodes
    return {k: v for k, v in terms.items() if v}


def check_fits(terms: dict[str, int], available: int, workers_here: int = 1,
               where: str = "this node") -> None:
    """Raise :class:`RecipeTooLarge` when ``workers_here`` workers' ``terms`` exceed
    ``available`` bytes, with the terms and what to change."""
    need = sum(terms.values())
    if need * workers_here <= available:
        return
    lines = "\n".join(f"  {v / _GIB:8.2f} GiB  {k}" for k, v in terms.items())
    share = f" for each of its {workers_here} workers" if workers_here > 1 else ""
    raise RecipeTooLarge(
        f"the training recipe needs at least {need / _GIB:.2f} GiB per worker, and {where} "
        f"has {available / workers_here / _GIB:.2f} GiB available{share}:\n{lines}\n"
        "Give each worker more memory (more nodes, fewer workers per node), or choose a "
        "smaller recipe: --embedding-dim and --out-dim shrink the tables; --loss softmax "
        "ranks each query against sampled candidates instead of every entity (it does not "
        "grow with the graph).")


def local_batch(global_batch: int, workers: int) -> int:
    """A worker's share of the global batch (the largest, when it does not divide)."""
    return math.ceil(int(global_batch) / max(1, int(workers)))

"""The collectives of one sharded-1vsall training step, float32 against bfloat16 on the wire.

A 2-worker CoDEx-M step of ``kgops train``'s default recipe (1000 dimensions, 2 RGCN layers)
sends through gloo, per worker:

* ``gather``: the all-gather of each layer's output block (:class:`CandidateShards.gather_rows
  <kg_ops.train.candidates.CandidateShards>`, forward), ``[slots, d]`` per worker, once per
  layer;
* ``gather_backward``: its backward, a reduce-scatter of the gathered ``[P * slots, d]``
  gradient (one ``all_to_all_single`` of its blocks: each worker receives every worker's
  gradient of its own block, and sums them), once per layer; ``gather_backward_allreduce``
  times, in the same reps, the backward it replaced (issue #13): an all-reduce of the whole
  gathered gradient, of which each worker kept its block (checked equal);
* ``table``: the embedding table's sparse gradient averaged by
  :func:`kg_ops.train.exchange.sparse_mean` (at CoDEx-M sizes it picks the dense all-reduce).

Each is timed as the training code calls it, on ``P`` real gloo processes over 127.0.0.1,
with the float32 and the bfloat16 wire alternating rep by rep (the machine is shared and
noisy: a ratio is measured side by side), under the training workers' allocator
(:mod:`kg_ops.train.allocator`: with the C library's, fresh buffers fault their pages in on
every rep and the faults, not the bytes, dominate). Prints and writes
``benchmarks/results/bench_collectives.json``.

``--sections halo`` measures the input table's two exchanges side by side, per step,
float32:

* ``dense``: the exchange of the whole table (:func:`~kg_ops.train.exchange.sparse_mean`:
  at CoDEx-M sizes the all-reduce of a dense ``[N, d + 1]`` table) of each worker's
  gradient, which touches its owned rows and its halo (the rows of other workers' entities
  that its first layer reads), then :class:`~kg_ops.train.optim.RowAdagrad` on every row some worker touched, on both
  workers (what sharded 1vsall did before owner-updated rows, and ``--exchange dense`` does);
* ``halo``: each row updated by its owner only (:mod:`kg_ops.train.owner_rows`). Each worker
  sends its halo rows' gradient to their owners (one ``all_to_all_single``), the owner adds
  it to its own rows' gradient and runs RowAdagrad on its rows only, then sends the updated
  rows back to the workers that read them (a second ``all_to_all_single``).

Both give every worker the same values for the rows it reads (checked here, against each
other, after the timed reps). Sizes: ``--halo`` rows per worker, as ``kgops train`` logs them
(CoDEx-M at P=2, the default recipe: worker 0 reads 1,713 of worker 1's rows, worker 1 reads
2,371 of worker 0's; each owns 8,525).

``--sections owner`` times :meth:`OwnerRows.reduce_gradient
<kg_ops.train.owner_rows.OwnerRows.reduce_gradient>` alone (steps 1 and 2: the halo's
gradient to its owners and the owned rows' mean), per call, at the same sizes, with the
gradient an input lookup makes (the rows the step reads, in its order), against
:func:`_previous_reduce_gradient`, the implementation issue #13 replaced (kept here as the
baseline: a zeroed buffer of every row the worker reads, ``index_add_`` of the gradient into
it, a separate ``all_to_all_single`` of the touched-row marker, the mean over the buffer's
owned rows), alternating call by call, for each wire; ``new (shuffled)`` reads its owned rows
in a shuffled order (they are then gathered into id order: one more pass). Each call gets a
fresh gradient (the new exchange reuses its values in place). Every result is checked to
equal the baseline's exactly.

Run: ``flock /tmp/kgops-cpu.lock .venv/bin/python benchmarks/bench_collectives.py`` (~1 min),
``... --sections halo`` (~1 min), ``... --sections owner`` (~1 min).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import read_results, write_results  # noqa: E402

WIRES = ("float32", "bfloat16")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join(rank: int, world: int, port: int) -> None:
    """Join the benchmark's gloo group on 127.0.0.1, one thread per worker (as training)."""
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)


def _spawn(worker, args, tmp: str):
    """Run ``worker`` on ``args.world`` gloo processes; what rank 0 saved to ``times.pt``."""
    import torch
    import torch.multiprocessing as mp

    mp.spawn(worker, args=(args.world, _free_port(), args, tmp), nprocs=args.world)
    return torch.load(os.path.join(tmp, "times.pt"), weights_only=True)


def _timed(fn) -> float:
    import torch.distributed as dist

    dist.barrier()
    t0 = time.perf_counter()
    fn()
    dist.barrier()
    return time.perf_counter() - t0


def _worker(rank: int, world: int, port: int, args, out_dir: str) -> None:
    import torch
    import torch.distributed as dist

    from kg_ops.train.candidates import CandidateShards
    from kg_ops.train.exchange import sparse_mean

    _join(rank, world, port)
    g = torch.Generator().manual_seed(rank)
    block = torch.randn(args.slots, args.dim, generator=g)
    upstream = torch.randn(world * args.slots, args.dim, generator=g)
    rows = torch.randperm(args.nodes, generator=g)[:args.touched]
    grad = torch.sparse_coo_tensor(rows[None], torch.randn(args.touched, args.dim, generator=g),
                                   (args.nodes, args.dim))
    none = torch.zeros(1, dtype=torch.long)
    times: dict[str, dict[str, list[float]]] = {
        w: {"gather": [], "gather_backward": [], "gather_backward_allreduce": [], "table": []}
        for w in WIRES}
    for rep in range(args.reps + 1):          # rep 0 warms up
        for wire in (WIRES if rep % 2 else WIRES[::-1]):
            shards = CandidateShards(world, rank, args.slots, none, none, getattr(torch, wire))
            x = block.clone().requires_grad_()
            out = {}
            t_fwd = _timed(lambda: out.setdefault("c", shards.gather_rows(x)))  # noqa: B023
            t_bwd = _timed(lambda: out["c"].backward(upstream))  # noqa: B023
            t_all = _timed(lambda: out.setdefault("all", _allreduce_backward(  # noqa: B023
                upstream, rank, args.slots, getattr(torch, wire))))  # noqa: B023
            t_tab = _timed(lambda: sparse_mean(grad, world, "auto", getattr(torch, wire)))  # noqa: B023
            if not torch.equal(x.grad, out["all"]):
                raise AssertionError("the reduce-scatter backward differs from the all-reduce")
            if rep:
                for name, t in (("gather", t_fwd), ("gather_backward", t_bwd),
                                ("gather_backward_allreduce", t_all), ("table", t_tab)):
                    times[wire][name].append(t)
    if rank == 0:
        torch.save(times, os.path.join(out_dir, "times.pt"))
    dist.destroy_process_group()


def _allreduce_backward(upstream, rank: int, m: int, wire):
    """The gather's backward before issue #13: all-reduce the whole gathered gradient (as
    ``wire``), keep this worker's block."""
    import torch.distributed as dist

    grad = upstream.to(wire, copy=True).contiguous()
    dist.all_reduce(grad)
    return grad[rank * m:(rank + 1) * m].to(upstream.dtype)


def _halo_rows(rank: int, world: int, args):
    """The rows this worker reads, its owned ones first: worker ``r`` owns rows
    ``[r * slots, (r + 1) * slots)``; its halo is drawn, with a fixed seed, from the other
    workers' rows."""
    import torch

    others = torch.cat([torch.arange(o * args.slots, (o + 1) * args.slots)
                        for o in range(world) if o != rank])
    g = torch.Generator().manual_seed(1000 + rank)
    halo = others[torch.randperm(len(others), generator=g)[:args.halo[rank]]]
    return torch.cat([torch.arange(rank * args.slots, (rank + 1) * args.slots), halo])


def _halo_worker(rank: int, world: int, port: int, args, out_dir: str) -> None:
    import torch
    import torch.distributed as dist

    from kg_ops.train.exchange import sparse_mean
    from kg_ops.train.optim import RowAdagrad
    from kg_ops.train.owner_rows import OwnerRows
    from kg_ops.train.steptime import StepTimes

    _join(rank, world, port)
    n, d = world * args.slots, args.dim
    touched = _halo_rows(rank, world, args)
    g = torch.Generator().manual_seed(7)
    start = torch.randn(n, d, generator=g) * 0.1     # the same table on every worker
    steps = [torch.randn(world, len(touched), d, generator=g) for _ in range(3)]
    dense, mine = (torch.nn.Parameter(start.clone()) for _ in range(2))
    dense_opt, mine_opt = RowAdagrad([dense], lr=0.1), RowAdagrad([mine], lr=0.1)
    rows = OwnerRows(mine, touched.numpy(), args.slots, rank, world, StepTimes())

    def dense_step(grad):
        dense.grad, _ = sparse_mean(grad, world, "dense")
        dense_opt.step()

    def halo_step(grad):
        mine.grad = grad
        rows.reduce_gradient()
        mine_opt.step()
        rows.refresh()

    times: dict[str, list[float]] = {"dense": [], "halo": []}
    for rep in range(args.reps + 1):          # rep 0 warms up
        vals = steps[rep % len(steps)][rank]
        order = (("dense", dense_step), ("halo", halo_step))
        for name, fn in (order if rep % 2 else order[::-1]):
            # a fresh gradient, as backward makes it (the exchange may reuse its values)
            grad = torch.sparse_coo_tensor(touched[None], vals.clone(), (n, d))
            t = _timed(lambda: fn(grad))  # noqa: B023
            if rep:
                times[name].append(t)
    gap = float((dense.detach()[touched] - mine.detach()[touched]).abs().max())
    if rank == 0:
        torch.save({"times": times, "max_abs_diff": gap}, os.path.join(out_dir, "times.pt"))
    dist.destroy_process_group()


def _halo_main(args, tmp: str) -> None:
    got = _spawn(_halo_worker, args, tmp)
    ms = {k: round(1000 * statistics.median(v), 1) for k, v in got["times"].items()}
    print(f"table exchange + optimiser per step: dense {ms['dense']} ms, owner-updated (halo) "
          f"{ms['halo']} ms, ratio {ms['dense'] / ms['halo']:.2f}; rows read by both ways "
          f"differ by at most {got['max_abs_diff']:.2e}")
    key = f"codex-m p{args.world} d{args.dim}, table exchange and optimiser"
    previous = read_results("bench_collectives")["results"]
    previous[key] = {"sizes": {"world": args.world, "nodes": args.world * args.slots,
                               "owned": args.slots, "dim": args.dim, "halo": args.halo,
                               "reps": args.reps},
                     "median_ms": ms, "ratio": round(ms["dense"] / ms["halo"], 2),
                     "max_abs_diff": got["max_abs_diff"],
                     "runs": {k: [round(1000 * t, 1) for t in v]
                              for k, v in got["times"].items()}}
    write_results("bench_collectives", previous)


def _previous_reduce_gradient(rows) -> None:
    """:meth:`OwnerRows.reduce_gradient` before issue #13, the baseline of ``--sections
    owner``."""
    import torch

    grad, d, n_own = rows.table.grad, rows.table.shape[1], len(rows.own)
    buf = torch.zeros(n_own + len(rows.halo), d)
    mark = torch.zeros(len(buf))
    if grad is not None:
        pos = rows.where[grad._indices()[0]]
        buf.index_add_(0, pos, grad._values().to(buf.dtype))
        mark[pos] = 1.0
    got = torch.empty(sum(rows.recv), d, dtype=rows.wire)
    got_mark = torch.empty(sum(rows.recv))
    a2a = torch.distributed.all_to_all_single
    a2a(got, buf[n_own:].to(rows.wire), rows.recv, rows.send)
    a2a(got_mark, mark[n_own:], rows.recv, rows.send)
    own = buf[:n_own].index_add_(0, rows.reader_pos, got.to(buf.dtype))
    touched = mark[:n_own].index_add_(0, rows.reader_pos, got_mark) > 0
    idx, values = rows.own, own.div_(rows.world)
    if not bool(touched.all()):
        idx, values = idx[touched], values[touched]
    rows.table.grad = torch.sparse_coo_tensor(idx.unsqueeze(0), values, rows.table.shape,
                                              is_coalesced=True)


def _owner_worker(rank: int, world: int, port: int, args, out_dir: str) -> None:
    import torch
    import torch.distributed as dist

    from kg_ops.train.owner_rows import OwnerRows
    from kg_ops.train.steptime import StepTimes

    _join(rank, world, port)
    n, d = world * args.slots, args.dim
    read = _halo_rows(rank, world, args)
    shuffled = read.clone()
    g = torch.Generator().manual_seed(rank)
    shuffled[:args.slots] = read[torch.randperm(args.slots, generator=g)]
    table = torch.nn.Parameter(torch.zeros(n, d))
    vals = torch.randn(len(read), d, generator=g)
    where = torch.empty(n, dtype=torch.long)
    where[read] = torch.arange(len(read))
    # Each way's step gradient: the lookup's rows, in its order, with the same row values.
    lookup = {"previous": (read, vals), "new": (read, vals),
              "new (shuffled)": (shuffled, vals[where[shuffled]])}
    times: dict[str, dict[str, list[float]]] = {}
    for wire in WIRES:
        dtype = getattr(torch, wire)
        rows = {"previous": OwnerRows(table, read.numpy(), args.slots, rank, world,
                                      StepTimes(), dtype)}
        rows["new"] = rows["previous"]
        rows["new (shuffled)"] = OwnerRows(table, shuffled.numpy(), args.slots, rank, world,
                                           StepTimes(), dtype)
        calls = {"previous": _previous_reduce_gradient,
                 "new": lambda r: r.reduce_gradient(),
                 "new (shuffled)": lambda r: r.reduce_gradient()}
        times[wire] = {k: [] for k in rows}
        results = {}
        for rep in range(args.reps + 1):          # rep 0 warms up
            names = list(rows) if rep % 2 else list(rows)[::-1]
            for name in names:
                idx, v = lookup[name]      # a fresh gradient, as backward makes it
                table.grad = torch.sparse_coo_tensor(idx[None], v.clone(), (n, d))
                t = _timed(lambda: calls[name](rows[name]))  # noqa: B023
                if rep:
                    times[wire][name].append(t)
                results[name] = table.grad
        want = results["previous"]
        for name, got in results.items():
            if not (torch.equal(got._indices(), want._indices())
                    and torch.equal(got._values(), want._values())):
                raise AssertionError(f"{name} ({wire}) differs from the previous exchange")
    if rank == 0:
        torch.save(times, os.path.join(out_dir, "times.pt"))
    dist.destroy_process_group()


def _owner_main(args, tmp: str) -> None:
    got = _spawn(_owner_worker, args, tmp)
    ms = {w: {k: round(1000 * statistics.median(v), 1) for k, v in got[w].items()}
          for w in WIRES}
    names = list(ms[WIRES[0]])
    print(f"{'reduce_gradient':<18}" + "".join(f"{k + ' ms':>20}" for k in names))
    for w in WIRES:
        print(f"{w:<18}" + "".join(f"{ms[w][k]:>20.1f}" for k in names))
    key = f"codex-m p{args.world} d{args.dim}, owner rows reduce_gradient"
    previous = read_results("bench_collectives")["results"]
    previous[key] = {"sizes": {"world": args.world, "nodes": args.world * args.slots,
                               "owned": args.slots, "dim": args.dim, "halo": args.halo,
                               "reps": args.reps},
                     "median_ms": ms,
                     "runs": {w: {k: [round(1000 * t, 1) for t in v] for k, v in got[w].items()}
                              for w in WIRES}}
    write_results("bench_collectives", previous)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--nodes", type=int, default=17_050, help="entities (CoDEx-M)")
    ap.add_argument("--slots", type=int, default=8_525,
                    help="rows each worker gathers (CoDEx-M at P=2: its owned entities)")
    ap.add_argument("--dim", type=int, default=1000, help="embedding width (the default)")
    ap.add_argument("--touched", type=int, default=11_000,
                    help="table rows a worker's step touches (CoDEx-M at P=2: ~11k)")
    ap.add_argument("--layers", type=int, default=2, help="gathers per step (RGCN layers)")
    ap.add_argument("--reps", type=int, default=12)
    ap.add_argument("--sections", default="wire", help="wire (float32 against bfloat16), "
                    "halo (the table's dense exchange against owner-updated rows) or owner "
                    "(OwnerRows.reduce_gradient against the one issue #13 replaced)")
    ap.add_argument("--halo", default="1713,2371",
                    help="halo: rows each worker reads that another worker owns")
    args = ap.parse_args()
    args.halo = [int(x) for x in args.halo.split(",")]
    if len(args.halo) != args.world:
        ap.error(f"--halo: one count per worker ({args.world})")
    if "KGOPS_BENCH_ALLOCATOR" not in os.environ:     # as the training workers run
        from kg_ops.train.allocator import step_env

        env = step_env({**os.environ, "KGOPS_BENCH_ALLOCATOR": "1"})
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    if args.sections in ("halo", "owner"):
        with tempfile.TemporaryDirectory() as tmp:
            (_halo_main if args.sections == "halo" else _owner_main)(args, tmp)
        return
    with tempfile.TemporaryDirectory() as tmp:
        times = _spawn(_worker, args, tmp)
    per_op = {w: {op: round(1000 * statistics.median(ts), 1) for op, ts in times[w].items()}
              for w in WIRES}
    step = {w: round(args.layers * (per_op[w]["gather"] + per_op[w]["gather_backward"])
                     + per_op[w]["table"], 1) for w in WIRES}
    print(f"{'collective':<26}{'float32 ms':>12}{'bfloat16 ms':>13}{'ratio':>8}")
    for op in ("gather", "gather_backward", "gather_backward_allreduce", "table"):
        a, b = per_op["float32"][op], per_op["bfloat16"][op]
        print(f"{op:<26}{a:>12.1f}{b:>13.1f}{a / b:>8.2f}")
    print(f"{'per step':<26}{step['float32']:>12.1f}{step['bfloat16']:>13.1f}"
          f"{step['float32'] / step['bfloat16']:>8.2f}")
    key = f"codex-m p{args.world} d{args.dim}"
    previous = read_results("bench_collectives")["results"]
    previous[key] = {"sizes": {"world": args.world, "nodes": args.nodes, "slots": args.slots,
                               "dim": args.dim, "touched": args.touched,
                               "layers": args.layers, "reps": args.reps},
                     "median_ms": per_op, "step_ms": step,
                     "step_ratio": round(step["float32"] / step["bfloat16"], 2)}
    write_results("bench_collectives", previous)


if __name__ == "__main__":
    main()

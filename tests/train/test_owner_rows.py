"""The owner-updated input table: every worker reads the rows a dense exchange would give it.

Two real gloo workers own interleaved rows of a small table and read their own rows plus a
halo of the other's; each step's gradients are checked against an independent computation:
torch's own sparse Adagrad / SparseAdam on the mean of both workers' gradients, in one
process."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kg_ops.train.optim import RowAdagrad, RowAdam
from kg_ops.train.owner_rows import NoOwner, OwnerRows
from kg_ops.train.steptime import StepTimes

from .gloo import run_gloo

N, D, STEPS = 40, 3, 4
OWNED = [np.arange(0, N, 2), np.arange(1, N, 2)]              # interleaved owners
HALO = [np.array([7, 1, 33, 15, 21]), np.array([4, 0, 38, 12, 26, 30, 2, 10])]


def _start() -> torch.Tensor:
    return torch.randn(N, D, generator=torch.Generator().manual_seed(0))


def _grad(rank: int, step: int) -> torch.Tensor | None:
    """Worker ``rank``'s gradient at ``step`` as ``nn.Embedding(sparse=True)`` makes it:
    uncoalesced, over the rows it reads; worker 1 has no batch at step 2."""
    if rank == 1 and step == 2:
        return None
    read = np.concatenate([OWNED[rank][::3], HALO[rank]])
    rows = torch.from_numpy(np.concatenate([read, read[:2]]))          # repeated rows
    g = torch.Generator().manual_seed(100 * step + rank)
    return torch.sparse_coo_tensor(rows[None], torch.randn(len(rows), D, generator=g), (N, D))


def _optimizers(name: str, params):
    return (RowAdagrad(params, lr=0.1) if name == "adagrad"
            else RowAdam(params, lr=0.05))


def _train(rank: int, world: int, name: str) -> dict:
    table = torch.nn.Parameter(_start())
    opt = _optimizers(name, [table])
    rows = OwnerRows(table, np.concatenate([OWNED[rank], HALO[rank]]), len(OWNED[rank]),
                     rank, world, StepTimes())
    read = np.concatenate([OWNED[rank], HALO[rank]])
    seen = []
    for step in range(STEPS):
        table.grad = _grad(rank, step)
        rows.reduce_gradient()
        opt.step()
        rows.refresh()
        seen.append(table.detach()[torch.from_numpy(read)].clone())
    rows.synchronize(opt)
    state = {k: v.clone() for k, v in opt.state[table].items() if isinstance(v, torch.Tensor)
             and v.dim() > 1}
    return {"seen": seen, "table": table.detach().clone(), "state": state}


def _reference(name: str) -> tuple[list[torch.Tensor], dict]:
    """torch's sparse optimiser on the workers' mean gradient, one process."""
    table = torch.nn.Parameter(_start())
    opt = (torch.optim.Adagrad([table], lr=0.1) if name == "adagrad"
           else torch.optim.SparseAdam([table], lr=0.05))
    tables = []
    for step in range(STEPS):
        grads = [g for g in (_grad(r, step) for r in range(2)) if g is not None]
        table.grad = (sum(g.to_dense() for g in grads) / 2).to_sparse()
        opt.step()
        tables.append(table.detach().clone())
    state = {k: v for k, v in opt.state[table].items() if isinstance(v, torch.Tensor)
             and v.dim() > 1}
    return tables, state


@pytest.mark.parametrize("name", ["adagrad", "adam"])
def test_owner_updated_rows_equal_the_dense_mean_update(tmp_path, name):
    results = run_gloo(_train, 2, tmp_path, name)
    tables, state = _reference(name)
    for rank, res in enumerate(results):
        read = torch.from_numpy(np.concatenate([OWNED[rank], HALO[rank]]))
        for step in range(STEPS):       # every row a worker reads, after every step
            torch.testing.assert_close(res["seen"][step], tables[step][read])
        torch.testing.assert_close(res["table"], tables[-1])    # synchronised: whole table
        assert set(res["state"]) == set(state)
        for k in state:
            torch.testing.assert_close(res["state"][k], state[k])
    # A row that only its owner reads changed, so the test sees updates, not the start.
    assert not torch.equal(tables[-1][0], _start()[0])


def _unowned(rank: int, world: int) -> str:
    """Worker 0 reads row 1, which worker 1 does not own (and row 5, which it does)."""
    table = torch.nn.Parameter(_start())
    owned = OWNED[rank][OWNED[rank] != 1]
    halo = np.array([1, 5]) if rank == 0 else np.array([], dtype=np.int64)
    try:
        OwnerRows(table, np.concatenate([owned, halo]), len(owned), rank, world, StepTimes())
    except NoOwner as exc:
        return str(exc)
    return "built"


def test_every_worker_refuses_when_a_read_row_has_no_owner(tmp_path):
    results = run_gloo(_unowned, 2, tmp_path)
    assert results[0] == results[1] == ("1 table rows that the workers read are owned by no "
                                        "worker")


@pytest.mark.slow
def test_two_workers_train_the_same_model_with_owner_rows_as_with_the_dense_exchange(
        crossed, ray_local, tmp_path):
    """End to end on real Ray Train, 2 workers, a 2-layer RGCN with sharded 1vsall on the
    crossed graph (the partitions' pools overlap, so ownership and halos are not just the
    partitions): the default exchange (``auto``) updates the table by its owners and ends
    with the model, validation history and optimiser state of ``--exchange dense``, which
    all-reduces the whole table's gradient. In float32: under ``--precision bf16`` the
    gradients travel as bfloat16, which the dense exchange applies to every row and owner rows
    only to the halo's (an owner's own rows never travel), so there the two differ by
    bfloat16's rounding."""
    from kg_ops.config import TrainConfig
    from kg_ops.train.checkpoints import checkpoint_uri, load_checkpoint
    from kg_ops.train.cli import train

    opts = {"model": "rgcn", "loss": "1vsall", "epochs": 2, "batch_size": 32, "patience": 0,
            "embedding_dim": 16, "hidden_dim": 8, "out_dim": 16, "precision": "fp32"}
    runs = {mode: train(TrainConfig(partitions=crossed["parts"][2], out=str(tmp_path / mode),
                                    **opts | exchange))
            for mode, exchange in (("owner", {}), ("dense", {"exchange": "dense"}))}
    assert runs["owner"]["metrics"]["table_exchange"] == "owner rows"
    assert runs["dense"]["metrics"]["table_exchange"] == "dense"
    last = {mode: load_checkpoint(checkpoint_uri(str(tmp_path / mode), 2)) for mode in runs}
    for name, value in last["dense"]["model"].items():
        torch.testing.assert_close(last["owner"]["model"][name], value, msg=name)
    table = last["dense"]["optimizer"]["parts"]["table"]["state"][0]["sum"]
    torch.testing.assert_close(last["owner"]["optimizer"]["parts"]["table"]["state"][0]["sum"],
                               table)
    assert table.abs().sum() > 0            # the table trained: the comparison has content
    mrr = {mode: [h["valid_mrr_sampled"] for h in last[mode]["history"]] for mode in last}
    assert mrr["owner"] == pytest.approx(mrr["dense"])


def _lookup_reads(world: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each worker's ``(owned, halo)`` rows in the order its step reads them, as the
    layer-wise encoding's input lookup does: row ``v`` is worker ``v % world``'s; worker 0
    reads its own in id order, the others in a shuffled one; each halo is half the other
    workers' rows, shuffled (on 3 workers, some rows are read by both others)."""
    rng = np.random.default_rng(world)
    reads = []
    for r in range(world):
        own = np.arange(r, N, world)
        others = np.setdiff1d(np.arange(N), own)
        reads.append((own if r == 0 else rng.permutation(own),
                      rng.choice(others, size=len(others) // 2, replace=False)))
    return reads


def _lookup_grad(rank: int, world: int, step: int) -> torch.Tensor | None:
    """Worker ``rank``'s gradient at ``step`` as its input lookup makes it: every row it
    reads, once, in its order; except worker 0's at steps 1 and 3 and worker 1's at step 3
    (a subset, with repeated rows: at step 3 only the markers tell the owners which rows
    some worker touched), and worker 1's at step 2 (no batch)."""
    if rank == 1 and step == 2:
        return None
    own, halo = _lookup_reads(world)[rank]
    partial = (rank, step) in ((0, 1), (0, 3), (1, 3))
    rows = (np.concatenate([own[::3], halo[:3], own[:2]]) if partial
            else np.concatenate([own, halo]))
    g = torch.Generator().manual_seed(100 * step + 10 * world + rank)
    return torch.sparse_coo_tensor(torch.from_numpy(rows)[None],
                                   torch.randn(len(rows), D, generator=g), (N, D))


def _train_lookup(rank: int, world: int, name: str) -> dict:
    own, halo = _lookup_reads(world)[rank]
    read = np.concatenate([own, halo])
    table = torch.nn.Parameter(_start())
    opt = _optimizers(name, [table])
    rows = OwnerRows(table, read, len(own), rank, world, StepTimes())
    summed = []           # the steps whose gradient was first summed into a buffer
    accumulate = rows._accumulate
    rows._accumulate = lambda grad: summed.append(grad is not None) or accumulate(grad)
    seen = []
    for step in range(STEPS):
        table.grad = _lookup_grad(rank, world, step)
        rows.reduce_gradient()
        opt.step()
        rows.refresh()
        seen.append(table.detach()[torch.from_numpy(read)].clone())
    rows.synchronize(opt)
    return {"seen": seen, "table": table.detach().clone(), "summed": summed,
            "reordered": (rows.own_at is not None, rows.halo_at is not None)}


def _reference_lookup(name: str, world: int) -> list[torch.Tensor]:
    table = torch.nn.Parameter(_start())
    opt = (torch.optim.Adagrad([table], lr=0.1) if name == "adagrad"
           else torch.optim.SparseAdam([table], lr=0.05))
    tables = []
    for step in range(STEPS):
        grads = [g for g in (_lookup_grad(r, world, step) for r in range(world)) if g is not None]
        table.grad = (sum(g.to_dense() for g in grads) / world).to_sparse()
        opt.step()
        tables.append(table.detach().clone())
    return tables


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("name", ["adagrad", "adam"])
def test_gradients_in_the_lookup_order_give_the_dense_mean_update(tmp_path, name, world):
    """The gradient of the step's input lookup (every row it reads, once, in its order) is
    used as it is; a worker whose gradient is another shape that step (a subset with repeats,
    or none) sums it into a buffer first, and the touched-row markers it sends keep the rows
    no worker touched out of the update (Adam would move them). On 3 workers each halo comes
    from two owners and some owned rows are sent by two readers."""
    results = run_gloo(_train_lookup, world, tmp_path, name)
    tables = _reference_lookup(name, world)
    reads = _lookup_reads(world)
    for rank, res in enumerate(results):
        read = torch.from_numpy(np.concatenate(reads[rank]))
        for step in range(STEPS):
            torch.testing.assert_close(res["seen"][step], tables[step][read])
        torch.testing.assert_close(res["table"], tables[-1])
        # the lookup's gradients were used as they are, the others summed first
        assert res["summed"] == {0: [True, True], 1: [False, True]}.get(rank, [])
        assert res["reordered"] == (rank > 0, world > 2)
    if world == 3:            # owned rows that two readers send
        halos = [set(h.tolist()) for _, h in reads]
        assert any(halos[a] & halos[b] & set(range(c, N, 3))
                   for a, b, c in ((1, 2, 0), (0, 2, 1), (0, 1, 2)))


def _reduce_bf16(rank: int, world: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    own, halo = _lookup_reads(world)[rank]
    table = torch.nn.Parameter(_start())
    rows = OwnerRows(table, np.concatenate([own, halo]), len(own), rank, world, StepTimes(),
                     wire=torch.bfloat16)
    out = []
    for step in range(STEPS):
        table.grad = _lookup_grad(rank, world, step)
        rows.reduce_gradient()
        g = table.grad
        assert g.is_coalesced() and g.dtype == torch.float32
        out.append((g._indices()[0].clone(), g._values().clone()))
    return out


def test_bfloat16_wire_rounds_the_halo_rows_only(tmp_path):
    """With ``wire=bfloat16`` the halo's gradient rows travel rounded to bfloat16 and the
    owner's own rows do not: each owned row's gradient is (its owner's + the readers' rounded
    rows) / P, in id order, on the rows some worker touched."""
    results = run_gloo(_reduce_bf16, 2, tmp_path)
    rounded = False
    for step in range(STEPS):
        grads = [_lookup_grad(r, 2, step) for r in range(2)]
        dense = [torch.zeros(N, D) if g is None else g.to_dense() for g in grads]
        touched = sorted({int(v) for g in grads if g is not None for v in g._indices()[0]})
        for rank, res in enumerate(results):
            mine = [v for v in touched if v % 2 == rank]
            want = (dense[rank] + dense[1 - rank].bfloat16().float()) / 2
            rows, values = res[step]
            assert rows.tolist() == mine
            assert torch.equal(values, want[mine])
            rounded |= not torch.equal(values, ((dense[0] + dense[1]) / 2)[mine])
    assert rounded          # the rounding did happen

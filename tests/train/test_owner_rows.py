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

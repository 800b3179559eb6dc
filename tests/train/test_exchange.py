"""The sparse gradient exchange: gather and dense all-reduce give identical averages."""

from __future__ import annotations

import pytest
import torch

from kg_ops.train.exchange import choose, exchange_bytes, sparse_mean

from .gloo import run_gloo

N, D = 50, 4


def _local_grad(rank: int) -> torch.Tensor:
    """An uncoalesced sparse gradient as nn.Embedding(sparse=True) makes it: repeated rows,
    rows only this worker touches, and row 7 whose sum over the two workers is zero."""
    g = torch.Generator().manual_seed(rank)
    rows = torch.tensor([3, 3, 7, 10 + rank, 20, 20, 20 + 5 * rank])
    vals = torch.randn(len(rows), D, generator=g)
    vals[2] = torch.arange(D, dtype=torch.float32) * (1 if rank == 0 else -1)
    return torch.sparse_coo_tensor(rows.unsqueeze(0), vals, (N, D))


def _exchange_all_modes(rank: int, world: int) -> dict:
    out = {}
    for mode in ("gather", "dense", "auto"):
        grad, info = sparse_mean(_local_grad(rank), world, mode)
        out[mode] = (grad.indices().clone(), grad.values().clone(), info.mode)
    return out


def test_gather_and_dense_exchange_give_identical_gradients(tmp_path):
    results = run_gloo(_exchange_all_modes, 2, tmp_path)
    # Independent computation: the dense mean of the two workers' gradients.
    expected = sum(_local_grad(r).to_dense() for r in range(2)) / 2
    touched = sorted({int(i) for r in range(2) for i in _local_grad(r).coalesce().indices()[0]})
    for res in results:
        ig, vg, _ = res["gather"]
        idn, vd, _ = res["dense"]
        assert torch.equal(ig, idn) and torch.equal(vg, vd)          # bit-identical
        assert ig[0].tolist() == touched                              # row 7 (sum 0) kept
        torch.testing.assert_close(vg, expected[ig[0]], rtol=1e-6, atol=1e-7)
        assert res["auto"][2] == choose([7, 7], N, D)
    for a, b in zip(results[0].values(), results[1].values(), strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])    # same on every worker


@pytest.mark.parametrize("rows,num_rows,want", [
    ([100_000] * 4, 2_800_000, "gather"),   # the 2.8M graph: a step touches ~3% of the table
    ([16_000] * 2, 17_050, "dense"),        # CoDEx-M: a step touches most of the table
])
def test_auto_picks_the_exchange_that_moves_fewer_bytes(rows, num_rows, want):
    gather, dense = exchange_bytes(rows, num_rows, 64)
    assert choose(rows, num_rows, 64) == want
    assert (gather <= dense) == (want == "gather")
    with pytest.raises(ValueError, match="gradient exchange"):
        choose(rows, num_rows, 64, "ring")


def test_byte_counts_follow_the_formulas():
    gather, dense = exchange_bytes([10, 30], 1000, 8)
    assert gather == 2 * 30 * (4 * 8 + 8)
    assert dense == int(2 * 1 / 2 * 1000 * 4 * 9)
    assert exchange_bytes([5], 1000, 8)[1] == 0


def _exchange_bf16(rank: int, world: int) -> dict:
    out = {}
    for mode in ("gather", "dense"):
        grad, info = sparse_mean(_local_grad(rank), world, mode, torch.bfloat16)
        out[mode] = (grad.indices().clone(), grad.values().clone(), info)
    return out


def test_bfloat16_wire_sends_rounded_values_and_returns_float32(tmp_path):
    """Under --precision bf16 the values travel as bfloat16: each worker's summed rows are
    rounded to bfloat16 (the dense all-reduce also rounds the sum), the mean is float32."""
    results = run_gloo(_exchange_bf16, 2, tmp_path)
    rounded = [_local_grad(r).coalesce().to_dense().bfloat16().float() for r in range(2)]
    gathered = (rounded[0] + rounded[1]) / 2                 # summed after the gather
    reduced = (rounded[0] + rounded[1]).bfloat16().float() / 2   # summed on the wire
    exact = sum(_local_grad(r).to_dense() for r in range(2)) / 2
    rows = [len(_local_grad(r).coalesce().indices()[0]) for r in range(2)]
    for res in results:
        (ig, vg, info_g), (idn, vd, info_d) = res["gather"], res["dense"]
        assert torch.equal(ig, idn) and vg.dtype == vd.dtype == torch.float32
        assert torch.equal(vg, gathered[ig[0]]) and torch.equal(vd, reduced[idn[0]])
        assert not torch.equal(vg, exact[ig[0]])             # the rounding did happen
        assert (info_g.mode, info_d.mode) == ("gather", "dense")
        assert (info_g.gather_bytes, info_g.dense_bytes) == exchange_bytes(rows, N, D, 2)

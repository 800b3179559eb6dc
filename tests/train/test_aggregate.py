"""The sparse-matrix message aggregation against a brute-force sum and numerical gradients."""

import pytest
import torch

from kg_ops.models.aggregate import aggregate


def _brute(x, weight, src, row, n_rows):
    out = torch.zeros(n_rows, weight.shape[1], x.shape[1], dtype=x.dtype)
    for e in range(len(src)):
        for k in range(weight.shape[1]):
            out[row[e], k] += weight[e, k] * x[src[e]]
    return out


def _messages(n_src=7, n_rows=6, edges=23, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(0, n_src, (edges,), generator=g)
    row = torch.randint(0, n_rows - 1, (edges,), generator=g)     # the last row: no messages
    src[:3], row[:3] = 2, 4                                        # a repeated (row, src) pair
    x = torch.randn(n_src, 5, dtype=torch.double, generator=g)
    weight = torch.randn(edges, k, dtype=torch.double, generator=g)
    return x, weight, src, row, n_rows


@pytest.mark.parametrize("k", [1, 3])
def test_aggregate_equals_brute_force_sum(k):
    x, weight, src, row, n = _messages(k=k)
    got = aggregate(x, weight, src, row, n)
    assert got.shape == (n, k, x.shape[1])
    assert torch.allclose(got, _brute(x, weight, src, row, n))
    assert torch.all(got[n - 1] == 0)


def test_aggregate_gradients_match_numerical_ones():
    x, weight, src, row, n = _messages()
    x.requires_grad_(), weight.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, w: aggregate(a, w, src, row, n), (x, weight))


def test_gradients_of_many_messages_equal_autograd_of_the_brute_force_sum():
    x, weight, src, row, n = _messages(n_src=40, n_rows=30, edges=1031, k=2)
    x.requires_grad_(), weight.requires_grad_()
    probe = torch.randn(n, 2, x.shape[1], dtype=torch.double)
    grads = torch.autograd.grad((aggregate(x, weight, src, row, n) * probe).sum(), (x, weight))
    want = torch.autograd.grad((_brute(x, weight, src, row, n) * probe).sum(), (x, weight))
    for g, w in zip(grads, want, strict=True):
        assert torch.allclose(g, w)


def test_no_messages_gives_zeros_and_zero_gradients():
    x = torch.randn(3, 4, requires_grad=True)
    weight = torch.zeros(0, 2, requires_grad=True)
    out = aggregate(x, weight, torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), 5)
    assert out.shape == (5, 2, 4) and torch.all(out == 0)
    out.sum().backward()
    assert torch.all(x.grad == 0) and weight.grad.shape == (0, 2)


def test_mismatched_weight_is_refused():
    with pytest.raises(ValueError, match="weight"):
        aggregate(torch.randn(3, 4), torch.ones(5), torch.zeros(5, dtype=torch.long),
                  torch.zeros(5, dtype=torch.long), 2)

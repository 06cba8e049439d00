"""The executor's local-operator kernels against einsum, values and gradients (float64)."""

import pytest
import torch

from adntn_cli.tn.executor import _LocalOp, local_op, permute_copy


@pytest.mark.parametrize(
    "lde", [(5, 3, 1, 4), (1, 3, 7, 2), (20, 4, 3, 5), (3, 4, 20, 5), (12, 3, 10, 4)]
)
def test_local_op_matches_einsum_and_gradchecks(lde):
    n, d, r, e = lde
    t = torch.randn(n, d, r, dtype=torch.float64, requires_grad=True)
    u = torch.randn(e, d, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(local_op(t, u), torch.einsum("ed,ldr->ler", u, t))
    assert torch.autograd.gradcheck(local_op, (t, u))


def test_custom_backward_chunks_the_core_gradient():
    t = torch.randn(64, 3, 16, dtype=torch.float64, requires_grad=True)
    u = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_LocalOp.apply, (t, u))


@pytest.mark.parametrize(
    "shape,perm",
    [
        ((2, 3, 4, 5), (0, 2, 1, 3)),
        ((2, 3, 4, 5), (3, 1, 0, 2)),
        ((6, 2, 2, 2, 2, 5), (1, 3, 5, 0, 2, 4)),
        ((5, 2, 3, 4, 2), (1, 3, 0, 2, 4)),
        ((3, 2, 2, 7), (1, 3, 0, 2)),
    ],
)
def test_permute_copy_equals_permute_and_gradchecks(shape, perm):
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    out = permute_copy(x, perm)
    assert out.is_contiguous()
    torch.testing.assert_close(out, x.permute(perm))
    assert torch.autograd.gradcheck(lambda t: permute_copy(t, perm), (x,))

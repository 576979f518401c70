"""The fp32 L1-attention backward across fp32's whole range, in every fast kernel.

The backward's normalisation term is c_i / d_i² (d_i the row's L1 norm). Computed as
c / (d * d), d² overflows once d passes ~1.8e19 and the gradient comes out wrong while the
reference stays right; (c / d) / d stays finite for any representable row.
"""

import pytest
import torch

import lnlatten_fast as lf
from helpers import relative_error

CASES = [
    pytest.param(backend, device, marks=pytest.mark.skipif(
        not lf.backends()[backend][device].usable, reason=lf.backends()[backend][device].reason))
    for backend in ("native", "triton")
    for device in ("cpu", "cuda")
]


@pytest.mark.parametrize("backend,device", CASES)
@pytest.mark.parametrize("row_scale", [1e20, 1e30])
def test_fp32_backward_of_rows_near_the_top_of_fp32(backend, device, row_scale):
    torch.manual_seed(0)
    batch, regions, dim = 2, 16, 32
    q, k = (torch.randn(batch, regions, dim, dtype=torch.float64) for _ in range(2))
    # Row i of R~ = Q Kᵀ scales with q_i: rescale each so its L1 norm is exactly row_scale.
    q = q * (row_scale / (q @ k.transpose(1, 2)).abs().sum(-1, keepdim=True)) ** 0.5
    k = k * row_scale**0.5
    v = torch.randn(batch, regions, dim, dtype=torch.float64)
    grad_s = torch.randn(batch, regions, dim, dtype=torch.float64)
    grad_w = torch.randn(batch, regions, dtype=torch.float64)

    def grads(inputs, backend_name):
        leaves = [t.detach().requires_grad_(True) for t in inputs]
        s, w = lf.ops.l1_nonlocal_attention(*leaves, backend=backend_name)
        torch.autograd.backward((s, w), (grad_s.to(s), grad_w.to(w)))
        return [t.grad for t in leaves]

    expected = grads((q, k, v), "reference")  # float64: no overflow anywhere near here
    got = grads([t.to(device=device, dtype=torch.float32) for t in (q, k, v)], backend)
    l1 = (q @ k.transpose(1, 2)).abs().sum(-1)
    assert l1.min() > 1.8e19  # past the point where d * d overflows in fp32
    for name, g, e in zip("qkv", got, expected):
        assert g.dtype == torch.float32
        assert relative_error(g.cpu(), e) <= 1e-5, name

"""Native L1 non-local attention, forward and backward (C++ with AVX2/FMA micro-kernels on CPU,
one CUDA block per image on GPUs). The math is `reference.l1_nonlocal_attention`'s."""

from __future__ import annotations

import torch

from .._autograd import register_attention_autograd
from .._outputs import new_output
from ..reference import L1_NORM_EPS
from ..registry import register
from .extension import compute_dtype, dtype_code, launch


@torch.library.custom_op("lnlatten_fast::native_l1_attention", mutates_args=())
def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    batch, regions, dim = q.shape
    dtype, out_dtype = compute_dtype(q), q.dtype
    q, k, v = (t.to(dtype).contiguous() for t in (q, k, v))
    s = new_output(q.shape, dtype, q.device)
    w = new_output((batch, regions), dtype, q.device)
    if batch:
        launch("l1_attention_forward", q, dtype_code(dtype), q.data_ptr(), k.data_ptr(),
               v.data_ptr(), s.data_ptr(), w.data_ptr(), batch, regions, dim, L1_NORM_EPS)
    return s.to(out_dtype), w.to(out_dtype)


@torch.library.custom_op("lnlatten_fast::native_l1_attention_backward", mutates_args=())
def _attention_backward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grad_s: torch.Tensor, grad_w: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    batch, regions, dim = q.shape
    dtype, out_dtype = compute_dtype(q), q.dtype
    q, k, v, grad_s, grad_w = (t.to(dtype).contiguous() for t in (q, k, v, grad_s, grad_w))
    grads = [new_output(q.shape, dtype, q.device) for _ in range(3)]
    if batch:
        launch("l1_attention_backward", q, dtype_code(dtype), q.data_ptr(), k.data_ptr(),
               v.data_ptr(), grad_s.data_ptr(), grad_w.data_ptr(), *(g.data_ptr() for g in grads),
               batch, regions, dim, L1_NORM_EPS)
    return tuple(g.to(out_dtype) for g in grads)


register_attention_autograd(_attention, _attention_backward, "native")


@register("l1_nonlocal_attention", "native")
def l1_nonlocal_attention(q, k, v):
    return _attention(q, k, v)

"""Running an op against the reference: the one comparison harness of tests/ops/.

An op call is a `cases.Case` (`call(backend, *tensors)`); `against_reference` runs it on a
backend with the tensors rounded to a dtype, and the reference in float64 on the same rounded
inputs and upstream gradients, both forward and backward.
"""

from __future__ import annotations

import torch
from helpers import assert_all_close

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
LAYOUTS = ("contiguous", "channels_last", "strided")


def in_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values stored channels-last ((B, H, W, C) / (B, M, H, W, C)) or as every other
    element of a larger buffer."""
    if layout == "channels_last" and t.dim() == 4:
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "channels_last" and t.dim() == 5:
        return t.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    if layout == "strided":
        buffer = torch.full((*t.shape[:-1], 2 * t.shape[-1]), float("nan"), dtype=t.dtype, device=t.device)
        buffer[..., ::2] = t
        return buffer[..., ::2]
    return t


def prepare(case, dtype, layout="contiguous"):
    """The case's tensors rounded to dtype, on the device, in the layout (batched inputs only)."""
    return [
        None if t is None else (in_layout(t.to(dtype).to(DEVICE), layout) if dim is not None else t.to(dtype).to(DEVICE))
        for t, dim in zip(case.tensors, case.batch_dims)
    ]


def forward_backward(case, backend, tensors, seed=0, ambiguous=None):
    """(outputs, gradients of the non-None inputs) for upstream gradients drawn from `seed`
    (drawn in float64, rounded to each output's dtype; 0 where `ambiguous`)."""
    leaves = [None if t is None else t.detach().requires_grad_(True) for t in tensors]  # detach keeps strides
    out = case.call(backend, *leaves)
    outs = out if isinstance(out, tuple) else (out,)
    gen = torch.Generator().manual_seed(seed)
    upstream = [torch.randn(o.shape, generator=gen, dtype=torch.float64) for o in outs]
    if ambiguous is not None:
        upstream[0] = upstream[0].masked_fill(ambiguous, 0.0)
    upstream = [u.to(o.dtype).to(o.device) for u, o in zip(upstream, outs)]
    torch.autograd.backward(outs, upstream)
    return [o.detach() for o in outs], [t.grad for t in leaves if t is not None]


def against_reference(case, backend, dtype, layout="contiguous", seed=0):
    """(got, expected): the implementation on dtype inputs, and the float64 reference on the
    same rounded inputs and upstream gradients, cast to dtype."""
    tensors = prepare(case, dtype, layout)
    ambiguous = None if case.ambiguous is None else case.ambiguous(dtype)
    outs, grads = forward_backward(case, backend, tensors, seed, ambiguous)
    exact = [None if t is None else t.detach().double() for t in tensors]
    ref_outs, ref_grads = forward_backward(case, "reference", exact, seed, ambiguous)
    return (outs, grads), ([t.to(dtype) for t in ref_outs], [t.to(dtype) for t in ref_grads])


def assert_matches(got, expected, dtype):
    """Outputs, then input gradients, each tensor within the dtype's relative bound (a tensor
    that cancels to ~0, e.g. grad q with one region, against 1% of its group's norm)."""
    (outs, grads), (ref_outs, ref_grads) = got, expected
    assert_all_close(outs, ref_outs, dtype)
    assert_all_close(grads, ref_grads, dtype)

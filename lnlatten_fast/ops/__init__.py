"""LNLAttenNet's fused ops, differentiable, on every backend.

Each public op validates its inputs once, then hands them to the backend that `backend`
names (`"auto"`, `"reference"`, `"native"` or `"triton"`); see `lnlatten_fast.backends()`.
"""

from __future__ import annotations

import torch

from ..geometry import PatchGeometry
from . import _checks
from .dispatch import BackendStatus, backends, conv_backend, implementation, measured_choices
from .stacked import stacked_conv2d

__all__ = [
    "extract_patches",
    "overlap_add",
    "patch_conv3x3",
    "grouped_conv3x3",
    "l1_nonlocal_attention",
    "stacked_conv2d",
    "backends",
    "BackendStatus",
    "measured_choices",
]


# Autocast casts these (the dtypes it lowers); float64 passes through untouched, as in torch.
_AUTOCAST_ELIGIBLE = (torch.float32, torch.float16, torch.bfloat16)


def _autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype autocast lowers to on `device` now, or None where it is off. The one place the
    ops and the nn blocks ask (bench/gpu_target's meta emulation of CUDA autocast patches it)."""
    if device.type not in ("cpu", "cuda") or not torch.is_autocast_enabled(device.type):
        return None
    return torch.get_autocast_dtype(device.type)


def _follow_autocast(device: torch.device, *tensors):
    """Under autocast, the fused ops do what autocast does for the torch ops they replace
    (F.conv2d, matmul): floating inputs, weights and biases alike run in the autocast dtype.
    The casts are differentiable, so fp32 master weights still get fp32 gradients."""
    dtype = _autocast_dtype(device)
    if dtype is None:
        return tensors
    return tuple(
        t.to(dtype) if isinstance(t, torch.Tensor) and t.dtype in _AUTOCAST_ELIGIBLE else t
        for t in tensors
    )


def _conv_key(x: torch.Tensor, weight: torch.Tensor, bias, *flags) -> tuple:
    """What `auto`'s measured conv choice depends on: the per-image input shape, the batch size
    rounded up to a power of two (evaluation and single-image inference get a choice measured at
    their own size, while a last partial batch reuses its full batch's), the weight shape, bias
    or not, dtype, whether a backward follows, and the op's flags. Only ints, bools and a dtype,
    so torch.compile(fullgraph=True) traces the lookup."""
    grad = torch.is_grad_enabled() and (
        x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    )
    batch_bucket = 1 << max(0, int(x.shape[0]) - 1).bit_length()
    return (tuple(x.shape[1:]), batch_bucket, tuple(weight.shape), bias is not None, x.dtype, grad, *flags)


def _run_for_timing(fn, inputs):
    """Forward, and backward when the inputs need gradients, as a training step does, on
    detached copies so that no gradient reaches the caller's tensors."""
    copies = [None if t is None else t.detach().requires_grad_(t.requires_grad) for t in inputs]
    out = fn(*copies)
    if out.requires_grad:
        out.sum().backward()


def _run_conv(op: str, backend: str, inputs: tuple, flags: tuple, call):
    """`call(impl, x, weight, bias)` with `backend`'s implementation of `op`; for `auto`, the
    one measured fastest for this shape (on CUDA, see dispatch.conv_backend)."""
    device = inputs[0].device
    if backend == "auto":
        backend = conv_backend(op, _conv_key(*inputs, *flags), device, lambda name: _run_for_timing(
            lambda *copies: call(implementation(op, name, device), *copies), inputs))
    return call(implementation(op, backend, device), *inputs)


def extract_patches(f9: torch.Tensor, geom: PatchGeometry, backend: str = "auto") -> torch.Tensor:
    """Cut the M windows of `geom` out of f9 (B, C, H, W) -> (B, M, C, P, P).

    Its adjoint (and backward) is `overlap_add`.
    """
    _checks.check_feature_map(f9, geom)
    return implementation("extract_patches", backend, f9.device)(f9, geom)


def overlap_add(patches: torch.Tensor, geom: PatchGeometry, backend: str = "auto") -> torch.Tensor:
    """Put (B, M, C, P, P) windows back on the (B, C, H, W) map, summing where they overlap."""
    _checks.check_patches(patches, geom)
    return implementation("overlap_add", backend, patches.device)(patches, geom)


def patch_conv3x3(
    f9: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    geom: PatchGeometry,
    relu: bool = True,
    backend: str = "auto",
) -> torch.Tensor:
    """First SimpleNet layer on every window of f9: weight (M, Cout, C, 3, 3), bias (M, Cout).

    Each window is zero-padded at its own border (not with its neighbours' pixels).
    Returns (B, M, Cout, P, P). Under autocast it runs in the autocast dtype, as F.conv2d does.
    """
    _checks.check_feature_map(f9, geom)
    f9, weight, bias = _follow_autocast(f9.device, f9, weight, bias)
    _checks.check_conv_params(f9, "f9", weight, bias, geom.num_patches, f9.shape[1])
    return _run_conv("patch_conv3x3", backend, (f9, weight, bias), (geom.grid, geom.patch, geom.stride, relu),
                     lambda impl, x, w, b: impl(x, w, b, geom, relu=relu))


def grouped_conv3x3(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    relu: bool = True,
    pool: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """3x3 conv (pad 1) of each patch with its own weights, optional ReLU then 2x2 max-pool.

    h (B, M, Cin, H, W), weight (M, Cout, Cin, 3, 3), bias (M, Cout) or None.
    Returns (B, M, Cout, H, W), or (B, M, Cout, H//2, W//2) with `pool`.
    """
    _checks.check_tensor(h, "h", 5, "(B, M, C_in, H, W)")
    h, weight, bias = _follow_autocast(h.device, h, weight, bias)
    _checks.check_conv_params(h, "h", weight, bias, h.shape[1], h.shape[2])
    if pool and min(h.shape[-2:]) < 2:
        raise ValueError(f"pool=True needs H, W >= 2, got h of shape {tuple(h.shape)}")
    return _run_conv("grouped_conv3x3", backend, (h, weight, bias), (relu, pool),
                     lambda impl, x, w, b: impl(x, w, b, relu=relu, pool=pool))


def l1_nonlocal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-local attention of SPEC §1 on (B, M, D) inputs.

    R~ = Q Kᵀ, R = R~ / max(Σ_j |R~_ij|, 1e-12), w_g = column mean of R (B, M),
    s = R V (B, M, D). Returns (s, w_g). Under autocast it runs in the autocast dtype, as a
    matmul would; the row normalisation is computed in fp32 for half-precision inputs.
    """
    _checks.check_attention_inputs(q, k, v)
    q, k, v = _follow_autocast(q.device, q, k, v)
    return implementation("l1_nonlocal_attention", backend, q.device)(q, k, v)

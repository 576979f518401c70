"""LNLAttenNet's fused ops, differentiable, on every backend.

Each public op validates its inputs once, then hands them to the backend that `backend`
names (`"auto"`, `"reference"`, `"native"` or `"triton"`); see `lnlatten_fast.backends()`.
"""

from __future__ import annotations

import torch

from ..geometry import PatchGeometry
from . import _checks
from .dispatch import BackendStatus, backends, resolve

__all__ = [
    "extract_patches",
    "overlap_add",
    "patch_conv3x3",
    "grouped_conv3x3",
    "l1_nonlocal_attention",
    "backends",
    "BackendStatus",
]


def extract_patches(f9: torch.Tensor, geom: PatchGeometry, backend: str = "auto") -> torch.Tensor:
    """Cut the M windows of `geom` out of f9 (B, C, H, W) -> (B, M, C, P, P).

    Its adjoint (and backward) is `overlap_add`.
    """
    _checks.check_feature_map(f9, geom)
    return resolve(backend, f9.device).extract_patches(f9, geom)


def overlap_add(patches: torch.Tensor, geom: PatchGeometry, backend: str = "auto") -> torch.Tensor:
    """Put (B, M, C, P, P) windows back on the (B, C, H, W) map, summing where they overlap."""
    _checks.check_patches(patches, geom)
    return resolve(backend, patches.device).overlap_add(patches, geom)


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
    Returns (B, M, Cout, P, P).
    """
    _checks.check_feature_map(f9, geom)
    _checks.check_conv_params(f9, "f9", weight, bias, geom.num_patches, f9.shape[1])
    return resolve(backend, f9.device).patch_conv3x3(f9, weight, bias, geom, relu=relu)


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
    _checks.check_conv_params(h, "h", weight, bias, h.shape[1], h.shape[2])
    if pool and min(h.shape[-2:]) < 2:
        raise ValueError(f"pool=True needs H, W >= 2, got h of shape {tuple(h.shape)}")
    return resolve(backend, h.device).grouped_conv3x3(h, weight, bias, relu=relu, pool=pool)


def l1_nonlocal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-local attention of SPEC §1 on (B, M, D) inputs.

    R~ = Q Kᵀ, R = R~ / max(Σ_j |R~_ij|, 1e-12), w_g = column mean of R (B, M),
    s = R V (B, M, D). Returns (s, w_g).
    """
    _checks.check_attention_inputs(q, k, v)
    return resolve(backend, q.device).l1_nonlocal_attention(q, k, v)

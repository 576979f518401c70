"""The `reference` backend: pure PyTorch, the ground truth every other backend is tested against.

Written to be obviously right, never optimised: each patch is cut out and convolved on its
own, and attention is the plain sequence of tensor ops. Inputs are assumed validated (the
public functions in `lnlatten_fast.ops` do that).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from ..geometry import PatchGeometry
from .registry import register, register_backend

# F.normalize's default epsilon: a row of R~ that is all zero stays zero instead of NaN.
L1_NORM_EPS = 1e-12


@register("extract_patches", "reference")
def extract_patches(f9: torch.Tensor, geom: PatchGeometry) -> torch.Tensor:
    """(B, C, H, W) -> (B, M, C, P, P), windows in row-major grid order."""
    p = geom.patch
    return torch.stack([f9[:, :, r : r + p, c : c + p] for r, c in geom.origins()], dim=1)


@register("overlap_add", "reference")
def overlap_add(patches: torch.Tensor, geom: PatchGeometry) -> torch.Tensor:
    """Adjoint of `extract_patches`: each window added back at its place, overlaps summed."""
    size, p = geom.image_size, geom.patch
    placed = [
        F.pad(patches[:, m], (c, size - c - p, r, size - r - p))
        for m, (r, c) in enumerate(geom.origins())
    ]
    return torch.stack(placed, dim=0).sum(dim=0)


@register("grouped_conv3x3", "reference")
def grouped_conv3x3(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    relu: bool = True,
    pool: bool = False,
) -> torch.Tensor:
    """Patch m of (B, M, Cin, H, W) through its own 3x3 conv (zero pad 1), ReLU, 2x2 max-pool."""
    outputs = []
    for m in range(h.shape[1]):
        y = F.conv2d(h[:, m], weight[m], None if bias is None else bias[m], padding=1)
        if relu:
            y = F.relu(y)
        if pool:
            y = F.max_pool2d(y, 2)
        outputs.append(y)
    return torch.stack(outputs, dim=1)


@register("patch_conv3x3", "reference")
def patch_conv3x3(
    f9: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    geom: PatchGeometry,
    relu: bool = True,
) -> torch.Tensor:
    """First SimpleNet layer: cut the windows, then pad each at its own border and convolve."""
    return grouped_conv3x3(extract_patches(f9, geom), weight, bias, relu=relu)


@register("l1_nonlocal_attention", "reference")
def l1_nonlocal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """R~ = Q Kᵀ; R = R~ with rows L1-normalised; w_g = column mean of R; s = R V.

    Half-precision inputs are computed in float32: eps = 1e-12 is 0 in float16, which would
    turn an all-zero row into 0/0.
    """
    dtype = q.dtype
    if dtype in (torch.float16, torch.bfloat16):
        q, k, v = q.float(), k.float(), v.float()
    with _autocast_off(q.device):  # else autocast would run the fp32 matmuls in half again
        relation = q @ k.transpose(-1, -2)
        relation = F.normalize(relation, p=1, dim=-1, eps=L1_NORM_EPS)
        return (relation @ v).to(dtype), relation.mean(dim=1).to(dtype)


def _autocast_off(device: torch.device):
    if device.type in ("cpu", "cuda") and torch.is_autocast_enabled(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def availability(device_type: str) -> tuple[bool, str]:
    return True, "pure PyTorch (ground truth)"


register_backend("reference", availability, auto_rank={"cuda": 2, "cpu": 1})

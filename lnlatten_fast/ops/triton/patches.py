"""Triton patch extraction and its adjoint, overlap-add: one element per lane.

extract is a strided copy of window m of F9 (any strides) into a contiguous (B, M, C, P, P).
overlap-add is its adjoint written as a GATHER: each F9 element sums, in a fixed order, the
<= ceil(P / stride)^2 windows covering it (no atomics, deterministic). Each is the other's
backward (`_autograd.register_patch_adjoints`).
"""

from __future__ import annotations

import torch

from ...geometry import PatchGeometry
from .._autograd import register_patch_adjoints
from .. import _device
from .._outputs import new_output
from ..registry import register
from ._common import accumulator, tl, triton

# Elements per program of the copy kernels (Triton's default of 4 warps).
_COPY_BLOCK = 1024


@triton.jit
def _extract_kernel(
    f9_ptr, out_ptr, N, M, C, P, G, S,
    s_b, s_c, s_h, s_w,
    BLOCK: tl.constexpr,
):
    """out (B, M, C, P, P) contiguous <- window m of f9 (any strides). One element per lane."""
    off = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = off < N
    x = off % P
    r = off // P
    y = r % P
    r = r // P
    c = r % C
    r = r // C
    m = r % M
    b = r // M
    src = b * s_b + c * s_c + ((m // G) * S + y) * s_h + ((m % G) * S + x) * s_w
    tl.store(out_ptr + off, tl.load(f9_ptr + src, mask=ok), mask=ok)


@triton.jit
def _overlap_add_kernel(
    p_ptr, out_ptr, N, M, C, H, W, P, G, S, NCOV,
    s_b, s_m, s_c, s_h, s_w,
    ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    """out (B, C, H, W) contiguous: each pixel gathers the windows covering it (<= NCOV per axis)."""
    off = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = off < N
    xx = off % W
    r = off // W
    yy = r % H
    r = r // H
    c = r % C
    b = r // C
    # Windows covering a coordinate (PatchGeometry.windows_covering), clamped to the grid;
    # the ceil division only ever sees a non-negative numerator.
    gy_lo = (tl.maximum(yy - P + 1, 0) + S - 1) // S
    gy_hi = tl.minimum(yy // S, G - 1)
    gx_lo = (tl.maximum(xx - P + 1, 0) + S - 1) // S
    gx_hi = tl.minimum(xx // S, G - 1)
    acc = tl.full((BLOCK,), 0, ACC)
    base = b * s_b + c * s_c
    for jy in range(NCOV):
        gy = gy_lo + jy
        for jx in range(NCOV):
            gx = gx_lo + jx
            use = ok & (gy <= gy_hi) & (gx <= gx_hi)
            src = base + (gy * G + gx) * s_m + (yy - gy * S) * s_h + (xx - gx * S) * s_w
            acc += tl.load(p_ptr + src, mask=use, other=0.0).to(ACC)
    tl.store(out_ptr + off, acc.to(out_ptr.dtype.element_ty), mask=ok)


def _copy_grid(n: int):
    return (triton.cdiv(n, _COPY_BLOCK),)


@torch.library.custom_op("lnlatten_fast::triton_extract_patches", mutates_args=())
def _extract(f9: torch.Tensor, grid: int, patch: int, stride: int) -> torch.Tensor:
    batch, channels = f9.shape[:2]
    m = grid * grid
    out = new_output((batch, m, channels, patch, patch), f9.dtype, f9.device)
    if out.numel():
        with _device.launch_guard(f9):
            _extract_kernel[_copy_grid(out.numel())](
                f9, out, out.numel(), m, channels, patch, grid, stride, *f9.stride(), BLOCK=_COPY_BLOCK
            )
    return out


@torch.library.custom_op("lnlatten_fast::triton_overlap_add", mutates_args=())
def _overlap_add(patches: torch.Tensor, grid: int, patch: int, stride: int) -> torch.Tensor:
    batch, m, channels = patches.shape[:3]
    size = (grid - 1) * stride + patch
    out = new_output((batch, channels, size, size), patches.dtype, patches.device)
    if out.numel():
        ncov = min(grid, -(-patch // stride))  # most windows covering one coordinate
        with _device.launch_guard(patches):
            _overlap_add_kernel[_copy_grid(out.numel())](
                patches, out, out.numel(), m, channels, size, size, patch, grid, stride, ncov,
                *patches.stride(), ACC=accumulator(patches.dtype), BLOCK=_COPY_BLOCK,
            )
    return out


register_patch_adjoints(_extract, _overlap_add)


@register("extract_patches", "triton")
def extract_patches(f9: torch.Tensor, geom: PatchGeometry) -> torch.Tensor:
    """(B, C, H, W) -> (B, M, C, P, P), contiguous."""
    return _extract(f9, geom.grid, geom.patch, geom.stride)


@register("overlap_add", "triton")
def overlap_add(patches: torch.Tensor, geom: PatchGeometry) -> torch.Tensor:
    """(B, M, C, P, P) -> (B, C, H, W), overlaps summed (gather, deterministic)."""
    return _overlap_add(patches, geom.grid, geom.patch, geom.stride)

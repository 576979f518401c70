"""Native patch extraction and its adjoint, overlap-add (C++/OpenMP on CPU, CUDA on GPUs).

extract copies window m of F9 (any strides) into a contiguous (B, M, C, P, P); overlap-add
is its adjoint written as a gather: each F9 element sums, in a fixed order, the windows
covering it (no atomics, deterministic). Each is the other's backward.
"""

from __future__ import annotations

import torch

from ...geometry import PatchGeometry
from .._autograd import register_patch_adjoints
from .._outputs import new_output
from ..registry import register
from .extension import compute_dtype, dtype_code, launch


@torch.library.custom_op("lnlatten_fast::native_extract_patches", mutates_args=())
def _extract(f9: torch.Tensor, grid: int, patch: int, stride: int) -> torch.Tensor:
    batch, channels, height, width = f9.shape
    work = f9.to(compute_dtype(f9))
    out = new_output((batch, grid * grid, channels, patch, patch), work.dtype, f9.device)
    if out.numel():
        launch("extract_patches", work, dtype_code(work.dtype), work.data_ptr(), out.data_ptr(),
               batch, channels, height, width, *work.stride(), grid, patch, stride)
    return out.to(f9.dtype)


@torch.library.custom_op("lnlatten_fast::native_overlap_add", mutates_args=())
def _overlap_add(patches: torch.Tensor, grid: int, patch: int, stride: int) -> torch.Tensor:
    batch, _, channels = patches.shape[:3]
    size = (grid - 1) * stride + patch
    work = patches.to(compute_dtype(patches)).contiguous()
    out = new_output((batch, channels, size, size), work.dtype, patches.device)
    if out.numel():
        launch("overlap_add", work, dtype_code(work.dtype), work.data_ptr(), out.data_ptr(),
               batch, channels, size, size, grid, patch, stride)
    return out.to(patches.dtype)


register_patch_adjoints(_extract, _overlap_add)


@register("extract_patches", "native")
def extract_patches(f9: torch.Tensor, geom: PatchGeometry) -> torch.Tensor:
    return _extract(f9, geom.grid, geom.patch, geom.stride)


@register("overlap_add", "native")
def overlap_add(patches: torch.Tensor, geom: PatchGeometry) -> torch.Tensor:
    return _overlap_add(patches, geom.grid, geom.patch, geom.stride)

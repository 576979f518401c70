"""Input validation shared by every backend: one clear error, named after the argument."""

from __future__ import annotations

import torch

from ..geometry import PatchGeometry

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_tensor(value, name: str, ndim: int, layout: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {layout}, got {type(value).__name__}")
    if value.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D {layout}, got shape {tuple(value.shape)}")
    if value.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be float32, float16, bfloat16 or float64, got {value.dtype}"
        )
    return value


def check_geometry(geom) -> PatchGeometry:
    if not isinstance(geom, PatchGeometry):
        raise TypeError(
            "geom must be a lnlatten_fast.PatchGeometry (e.g. PatchGeometry.for_image(144, 16)), "
            f"got {type(geom).__name__}"
        )
    return geom


def check_same(reference: torch.Tensor, ref_name: str, other: torch.Tensor, name: str) -> None:
    if other.dtype != reference.dtype:
        raise TypeError(f"{name} has dtype {other.dtype} but {ref_name} has {reference.dtype}")
    if other.device != reference.device:
        raise ValueError(f"{name} is on {other.device} but {ref_name} is on {reference.device}")


def check_feature_map(f9, geom: PatchGeometry, name: str = "f9") -> None:
    check_tensor(f9, name, 4, "(B, C, H, W)")
    check_geometry(geom)
    _, _, height, width = f9.shape
    if height != geom.image_size or width != geom.image_size:
        raise ValueError(
            f"{name} is {height}x{width} but the geometry expects "
            f"{geom.image_size}x{geom.image_size} ({geom})"
        )


def check_patches(patches, geom: PatchGeometry, name: str = "patches") -> None:
    check_tensor(patches, name, 5, "(B, M, C, P, P)")
    check_geometry(geom)
    _, m, _, ph, pw = patches.shape
    if m != geom.num_patches or ph != geom.patch or pw != geom.patch:
        raise ValueError(
            f"{name} has shape {tuple(patches.shape)} but the geometry expects "
            f"(B, {geom.num_patches}, C, {geom.patch}, {geom.patch}) ({geom})"
        )


def check_conv_params(x, x_name, weight, bias, num_groups: int, in_channels: int) -> None:
    check_tensor(weight, "weight", 5, "(M, C_out, C_in, 3, 3)")
    check_same(x, x_name, weight, "weight")
    m, c_out, c_in, kh, kw = weight.shape
    if (kh, kw) != (3, 3):
        raise ValueError(f"weight must hold 3x3 kernels, got {kh}x{kw}")
    if m != num_groups:
        raise ValueError(f"weight has {m} patch groups but {x_name} has {num_groups} patches")
    if c_in != in_channels:
        raise ValueError(f"weight expects {c_in} input channels but {x_name} has {in_channels}")
    if bias is not None:
        check_tensor(bias, "bias", 2, "(M, C_out)")
        check_same(x, x_name, bias, "bias")
        if tuple(bias.shape) != (m, c_out):
            raise ValueError(f"bias must be (M, C_out) = {(m, c_out)}, got {tuple(bias.shape)}")


def check_attention_inputs(q, k, v) -> None:
    check_tensor(q, "q", 3, "(B, M, D)")
    for name, t in (("k", k), ("v", v)):
        check_tensor(t, name, 3, "(B, M, D)")
        check_same(q, "q", t, name)
        if t.shape != q.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)} but q has {tuple(q.shape)}")
    if q.shape[1] == 0 or q.shape[2] == 0:
        raise ValueError(f"q must have M >= 1 regions and D >= 1 channels, got {tuple(q.shape)}")

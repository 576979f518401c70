"""Shared test helpers: error measure, tolerances per dtype, random geometries."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

import lnlatten_fast as lf

# Bound on ‖out - ref‖ / ‖ref‖ for a backend against the reference, by dtype.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 2e-2}


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """‖actual - expected‖ / ‖expected‖ in float64; NaN anywhere counts as infinite error."""
    actual, expected = actual.double(), expected.double()
    if actual.shape != expected.shape:
        raise AssertionError(f"shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    if not torch.isfinite(actual).all():
        return float("inf")
    scale = expected.norm().item()
    diff = (actual - expected).norm().item()
    return diff / scale if scale > 0 else diff


@st.composite
def geometries(draw, max_patch: int = 16, grids=(1, 2, 3, 4)):
    """Random valid lattices: odd and even patches, overlaps from 0 to patch - 1."""
    grid = draw(st.sampled_from(grids))
    patch = draw(st.integers(3, max_patch))
    stride = draw(st.integers(1, patch)) if grid > 1 else patch
    return lf.PatchGeometry((grid - 1) * stride + patch, grid, patch, stride)

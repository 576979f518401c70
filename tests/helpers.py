"""Shared test helpers: error measure, tolerances per dtype, random geometries, small training runs."""

from __future__ import annotations

import json

import torch
from hypothesis import strategies as st

import lnlatten_fast as lf

# Bound on ‖out - ref‖ / ‖ref‖ for a backend against the reference, by dtype.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 2e-2}


def relative_error(actual: torch.Tensor, expected: torch.Tensor, scale_floor: float = 0.0) -> float:
    """‖actual - expected‖ / max(‖expected‖, scale_floor) in float64; NaN counts as infinite.

    `scale_floor` stands in for ‖expected‖ when the expected tensor is (mathematically) zero
    and holds only rounding noise, e.g. a gradient that cancels exactly.
    """
    actual, expected = actual.double(), expected.double()
    if actual.shape != expected.shape:
        raise AssertionError(f"shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    if not torch.isfinite(actual).all():
        return float("inf")
    scale = max(expected.norm().item(), scale_floor)
    diff = (actual - expected).norm().item()
    return diff / scale if scale > 0 else diff


def assert_all_close(got, expected, dtype) -> None:
    """Each tensor within the dtype's relative bound; one under 1% of the group is measured against
    1% of the group, and one that cancels exactly (zero to float64 rounding) against the group."""
    group_norm = sum(e.double().norm().item() ** 2 for e in expected) ** 0.5
    for g, e in zip(got, expected, strict=True):
        assert g.dtype == e.dtype and g.shape == e.shape, (g.dtype, e.dtype, g.shape, e.shape)
        # A tensor that is zero to float64 rounding (an exact cancellation) holds only the
        # backend's rounding noise, whose size is set by the terms that cancelled: the group's.
        cancelled = e.double().norm().item() <= 1e-9 * group_norm
        err = relative_error(g, e, scale_floor=(1.0 if cancelled else 1e-2) * group_norm)
        assert err <= TOLERANCE[dtype], f"relative error {err:.3g} > {TOLERANCE[dtype]:.0e} ({dtype})"


@st.composite
def geometries(draw, max_patch: int = 16, grids=(1, 2, 3, 4)):
    """Random valid lattices: odd and even patches, overlaps from 0 to patch - 1."""
    grid = draw(st.sampled_from(grids))
    patch = draw(st.integers(3, max_patch))
    stride = draw(st.integers(1, patch)) if grid > 1 else patch
    return lf.PatchGeometry((grid - 1) * stride + patch, grid, patch, stride)


def micro_config(backend: str, **changes) -> lf.LNLConfig:
    """The paper's structure at a size the Triton interpreter runs in seconds: 32 px input,
    4x4 windows of 11 px, every width a handful of channels."""
    base = dict(
        image_size=32, unet_widths=(4, 4, 8, 8, 16), simplenet_widths=(4, 8, 8),
        local_attention_widths=(8, 4, 4, 4, 4), attention_dim=16, global_width=16,
        head_widths=(16, 16), dropout=0.0, backend=backend,
    )
    base.update(changes)
    return lf.LNLConfig.tiny(**base)


# ---- small training runs -------------------------------------------------------------------
#: Per-epoch fields that measure the machine, not the run: left out when histories are compared.
WALL_CLOCK = {"train_seconds", "test_seconds", "images_per_second", "checkpoint_blocking_seconds"}


def small_settings(out, **changes):
    """A 2-epoch tiny run on 56 + 21 synthetic faces at 32 px (3 steps an epoch), in `out`."""
    from lnlatten_fast.training.settings import TrainSettings

    base = dict(
        epochs=2, batch_size=16, model=lf.LNLConfig.tiny(image_size=32), synthetic_train=56, synthetic_test=21,
        out=str(out), cache_dir=str(out.parent / "cache"), seed=3,
    )
    base.update(changes)
    return TrainSettings(**base)


def read_metrics(run_dir):
    """metrics.jsonl's records without the wall-clock fields."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in WALL_CLOCK} for line in lines]

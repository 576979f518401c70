"""Each op's inputs, written once: hypothesis strategies and fixed small cases that every
implementation of the op is checked on (tests/ops/test_contract.py).

A case holds float64 master tensors and how to call the op on them; a test casts them to the
dtype, layout and device it checks. Only tensors that are differentiable inputs of the op are
listed; everything else (geometry, flags) is closed over by `call`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from hypothesis import strategies as st

import lnlatten_fast as lf
from helpers import geometries

CHANNELS = st.sampled_from([1, 3, 5, 16])  # includes non-multiples of the 16-wide K chunk


@dataclass
class Case:
    """`call(backend, *tensors)` runs the op; `tensors` are float64, some may be None (no bias).
    `batch_dims` says which dimension of each tensor is the batch (None: not batched)."""

    call: Callable
    tensors: list
    batch_dims: list
    description: str = ""
    # ambiguous(dtype) -> bool mask of outputs whose gradient routing is not defined at that
    # precision (a max-pool window whose top two values round to the same number): the tests
    # send them no upstream gradient, since either routing is a correct argmax.
    ambiguous: Callable | None = None


def _randn(gen, *shape, scale=1.0):
    return torch.randn(*shape, generator=gen, dtype=torch.float64) * scale


@st.composite
def extract_patches_cases(draw, max_patch=9):
    geom = draw(geometries(max_patch=max_patch))
    batch, channels, seed = draw(st.integers(1, 2)), draw(st.integers(1, 5)), draw(st.integers(0, 2**31))
    gen = torch.Generator().manual_seed(seed)
    f9 = _randn(gen, batch, channels, geom.image_size, geom.image_size)
    return Case(lambda backend, x: lf.ops.extract_patches(x, geom, backend=backend), [f9], [0], f"{geom}")


@st.composite
def overlap_add_cases(draw, max_patch=9):
    geom = draw(geometries(max_patch=max_patch))
    batch, channels, seed = draw(st.integers(1, 2)), draw(st.integers(1, 5)), draw(st.integers(0, 2**31))
    gen = torch.Generator().manual_seed(seed)
    patches = _randn(gen, batch, geom.num_patches, channels, geom.patch, geom.patch)
    return Case(lambda backend, p: lf.ops.overlap_add(p, geom, backend=backend), [patches], [0], f"{geom}")


@st.composite
def patch_conv3x3_cases(draw):
    geom = draw(geometries(max_patch=9, grids=(2, 3, 4)))
    batch, c_in, c_out = draw(st.integers(1, 2)), draw(CHANNELS), draw(CHANNELS)
    relu, with_bias, seed = draw(st.booleans()), draw(st.booleans()), draw(st.integers(0, 2**31))
    gen = torch.Generator().manual_seed(seed)
    m = geom.num_patches
    f9 = _randn(gen, batch, c_in, geom.image_size, geom.image_size)
    weight = _randn(gen, m, c_out, c_in, 3, 3, scale=1 / (3 * c_in**0.5))
    bias = _randn(gen, m, c_out) if with_bias else None

    def call(backend, x, w, b):
        return lf.ops.patch_conv3x3(x, w, b, geom, relu=relu, backend=backend)

    return Case(call, [f9, weight, bias], [0, None, None], f"{geom} relu={relu}")


@st.composite
def grouped_conv3x3_cases(draw):
    m, batch = draw(st.sampled_from([4, 9])), draw(st.integers(1, 2))
    height, width, c_in, c_out = draw(st.integers(2, 8)), draw(st.integers(2, 8)), draw(CHANNELS), draw(CHANNELS)
    relu, pool, with_bias = draw(st.booleans()), draw(st.booleans()), draw(st.booleans())
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    h = _randn(gen, batch, m, c_in, height, width)
    weight = _randn(gen, m, c_out, c_in, 3, 3, scale=1 / (3 * c_in**0.5))
    bias = _randn(gen, m, c_out) if with_bias else None

    def call(backend, x, w, b):
        return lf.ops.grouped_conv3x3(x, w, b, relu=relu, pool=pool, backend=backend)

    def ambiguous(dtype):
        rounded = [None if t is None else t.to(dtype).double() for t in (h, weight, bias)]
        return pool_near_ties(lf.ops.grouped_conv3x3(*rounded, relu=relu, backend="reference"), dtype)

    return Case(call, [h, weight, bias], [0, None, None], f"relu={relu} pool={pool}", ambiguous if pool else None)


def pool_near_ties(pre_pool: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Pooled outputs of (B, M, C, H, W) whose 2x2 window has its two largest values within a
    few roundings of `dtype` of each other (or is all zero after ReLU)."""
    h, w = pre_pool.shape[-2] // 2 * 2, pre_pool.shape[-1] // 2 * 2
    windows = pre_pool[..., :h, :w].unfold(-2, 2, 2).unfold(-2, 2, 2).flatten(-2)
    top = windows.topk(2, dim=-1).values
    gap = top[..., 0] - top[..., 1]
    return gap <= 4 * torch.finfo(dtype).eps * top[..., 0].abs() + 1e-12


@st.composite
def l1_nonlocal_attention_cases(draw):
    batch, regions, dim = draw(st.integers(1, 3)), draw(st.sampled_from([1, 4, 9, 16, 20])), draw(st.integers(1, 40))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    # q, k >= 0 as in the model (after ReLU and max-pool): rows of R~ have no cancellation, so
    # half precision is well conditioned; signed inputs are pinned in tests/ops/test_attention.py.
    q, k = _randn(gen, batch, regions, dim).abs(), _randn(gen, batch, regions, dim).abs()
    v = _randn(gen, batch, regions, dim)
    return Case(lambda backend, *qkv: lf.ops.l1_nonlocal_attention(*qkv, backend=backend), [q, k, v], [0, 0, 0],
                f"B={batch} M={regions} D={dim}")


STRATEGIES = {
    "extract_patches": extract_patches_cases,
    "overlap_add": overlap_add_cases,
    "patch_conv3x3": patch_conv3x3_cases,
    "grouped_conv3x3": grouped_conv3x3_cases,
    "l1_nonlocal_attention": l1_nonlocal_attention_cases,
}


def small_case(op: str, batch: int = 2) -> Case:
    """One fixed small case per op (gradcheck, determinism, compile, empty batch)."""
    gen = torch.Generator().manual_seed(7)
    geom = lf.PatchGeometry(7, 2, 4, 3)
    if op == "extract_patches":
        return Case(lambda b, x: lf.ops.extract_patches(x, geom, backend=b), [_randn(gen, batch, 2, 7, 7)], [0])
    if op == "overlap_add":
        return Case(lambda b, p: lf.ops.overlap_add(p, geom, backend=b), [_randn(gen, batch, 4, 2, 4, 4)], [0])
    if op == "patch_conv3x3":
        return Case(lambda b, x, w, bias: lf.ops.patch_conv3x3(x, w, bias, geom, backend=b),
                    [_randn(gen, batch, 2, 7, 7), _randn(gen, 4, 3, 2, 3, 3), _randn(gen, 4, 3)], [0, None, None])
    if op == "grouped_conv3x3":
        return Case(lambda b, h, w, bias: lf.ops.grouped_conv3x3(h, w, bias, pool=True, backend=b),
                    [_randn(gen, batch, 4, 2, 4, 5), _randn(gen, 4, 3, 2, 3, 3), _randn(gen, 4, 3)], [0, None, None])
    if op == "l1_nonlocal_attention":
        return Case(lambda b, *qkv: lf.ops.l1_nonlocal_attention(*qkv, backend=b),
                    [_randn(gen, batch, 5, 6) for _ in range(3)], [0, 0, 0])
    raise KeyError(f"no small case for op {op!r}: add one here")

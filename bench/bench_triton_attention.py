"""Triton vs reference L1 non-local attention on CUDA, paper shape B = 64, M = 16, D = 512, bf16.

    TRITON_INTERPRET=0 pytest bench/bench_triton_attention.py --benchmark-group-by=group

Skips without a CUDA device, and under TRITON_INTERPRET=1 (the interpreter's timings mean
nothing). Each timed call ends in torch.cuda.synchronize(), so a round is the wall time of the
launches plus the GPU work, the way a training step sees it.

Floors (counted in the README's performance section): forward 33.6 MFLOP and
4.2 MB -> 0.87 µs of HBM time at 4.8 TB/s; forward + backward 117 MFLOP and 11.5 MB ->
~2.4 µs. Both are far under one kernel launch, so expect the Triton path to sit at its launch
overhead (2 launches for fwd + bwd against ~20 for the reference op sequence).
"""

import pytest
import torch

from lnlatten_fast.ops import reference, registry
from lnlatten_fast.ops.triton import _common

BATCH, REGIONS, DIM = 64, 16, 512
DEVICE, DTYPE = "cuda", torch.bfloat16
# Every registered implementation (the registry is the provider list).
IMPLS = {backend: registry.implementation("l1_nonlocal_attention", backend)
         for _, backend in registry.implementations("l1_nonlocal_attention")}

_usable, _reason = _common.availability("cuda")
pytestmark = [
    pytest.mark.skipif(not _usable, reason=f"needs CUDA for Triton: {_reason}"),
    pytest.mark.skipif(_common.INTERPRETED, reason="TRITON_INTERPRET=1: the interpreter is not benchmarked"),
]


@pytest.fixture(scope="module")
def inputs():
    gen = torch.Generator().manual_seed(0)
    # Nonnegative q, k as in the model (after ReLU and max-pool).
    q, k, v, grad_s = (torch.randn(BATCH, REGIONS, DIM, generator=gen) for _ in range(4))
    q, k = q.abs(), k.abs()
    grad_w = torch.randn(BATCH, REGIONS, generator=gen)
    qkv = [t.to(device=DEVICE, dtype=DTYPE) for t in (q, k, v)]
    grads = [t.to(device=DEVICE, dtype=DTYPE) for t in (grad_s, grad_w)]
    # Compile the kernels and check them once before timing anything.
    s, w = IMPLS["triton"](*qkv)
    s_ref, w_ref = reference.l1_nonlocal_attention(*qkv)
    assert (s.float() - s_ref.float()).norm() <= 2e-2 * s_ref.float().norm()
    assert (w.float() - w_ref.float()).norm() <= 2e-2 * w_ref.float().norm()
    return qkv, grads


@pytest.mark.parametrize("impl", list(IMPLS))
def test_forward(benchmark, measure, inputs, impl):
    benchmark.group = f"l1_nonlocal_attention fwd ({BATCH}x{REGIONS}x{DIM} {DTYPE})"
    benchmark.extra_info["backend"] = impl
    fn = IMPLS[impl]
    qkv, _ = inputs

    def step():
        with torch.no_grad():
            fn(*qkv)
        torch.cuda.synchronize()

    measure(step)


@pytest.mark.parametrize("impl", list(IMPLS))
def test_forward_backward(benchmark, measure, inputs, impl):
    benchmark.group = f"l1_nonlocal_attention fwd + bwd ({BATCH}x{REGIONS}x{DIM} {DTYPE})"
    benchmark.extra_info["backend"] = impl
    fn = IMPLS[impl]
    qkv, grads = inputs
    leaves = [t.clone().requires_grad_(True) for t in qkv]

    def step():
        for t in leaves:
            t.grad = None
        s, w = fn(*leaves)
        torch.autograd.backward((s, w), grads)
        torch.cuda.synchronize()

    measure(step)

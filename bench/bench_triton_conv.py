"""Every registered implementation of the SimpleNet convolutions, side by side (CUDA only).

    pytest bench/bench_triton_conv.py --benchmark-group-by=group

Paper shapes, bfloat16: B = 64 images, F9 of 64 x 144 x 144, M = 16 windows of 48 px
(stride 32), SimpleNet widths (64, 128, 256):
    conv64, conv64, pool, conv128, conv128, pool, conv256, conv256, pool (ReLU after each conv).

(a) first layer alone (patch conv 64 -> 64 + ReLU on every window):
    triton    - windows read straight from F9, bias + ReLU fused (no window tensor);
    native    - explicit extraction (one strided copy, 302 MB) + cuDNN's grouped conv on
                (B, M*C, P, P) + ReLU;
    reference - lnlatten_fast.ops.reference (extraction, then one conv per window).
(b) the whole SimpleNet ensemble (6 convs, 3 pools), same three implementations; triton fuses
    each pool into the conv before it.
Forward (under no_grad) and forward + backward (all weight, bias and F9 gradients).

Floors on an H100/H200-class GPU (~990 dense bf16 TFLOP/s, ~4.8 TB/s); every conv here is
compute-bound (the README's performance section has the per-layer table):
    first layer     fwd 173.9 GFLOP ->  0.18 ms   fwd + bwd 521.8 GFLOP -> 0.53 ms
    SimpleNet       fwd 869.7 GFLOP ->  0.88 ms   fwd + bwd  2.61 TFLOP -> 2.64 ms
Each benchmark records its FLOPs and floor in extra_info. Every timed call ends with
torch.cuda.synchronize(), so the time is the GPU's, not the launch queue's.
"""

import pytest
import torch

import lnlatten_fast as lf
from lnlatten_fast.ops import registry
from lnlatten_fast.ops.triton import _common

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA only: needs a GPU to time the Triton kernels"),
    pytest.mark.skipif(
        torch.cuda.is_available() and not _common.availability("cuda")[0], reason=_common.availability("cuda")[1]
    ),
]

BATCH = 64
C_IN = 64
WIDTHS = (64, 128, 256)
DTYPE = torch.bfloat16
GEOM = lf.PatchGeometry.for_image(144, num_patches=16)  # P = 48, stride 32
M = GEOM.num_patches
PEAK_FLOPS = 990e12


# Every registered implementation of the convs (native = extension extraction + cuDNN's
# grouped conv, unfused ReLU and pool); the registry is the provider list.
IMPLS = tuple(backend for _, backend in registry.implementations("patch_conv3x3"))
OPS = {
    backend: (registry.implementation("patch_conv3x3", backend), registry.implementation("grouped_conv3x3", backend))
    for backend in IMPLS
}


# ---- inputs -------------------------------------------------------------------------------
def _conv_params(c_in, c_out, generator):
    w = torch.randn(M, c_out, c_in, 3, 3, generator=generator, device="cuda") / (3 * c_in**0.5)
    b = torch.randn(M, c_out, generator=generator, device="cuda") * 0.1
    return w.to(DTYPE), b.to(DTYPE)


@pytest.fixture(scope="module")
def f9():
    gen = torch.Generator(device="cuda").manual_seed(0)
    return torch.randn(BATCH, C_IN, GEOM.image_size, GEOM.image_size, generator=gen, device="cuda").to(DTYPE)


@pytest.fixture(scope="module")
def simplenet_params():
    gen = torch.Generator(device="cuda").manual_seed(1)
    widths = [C_IN, WIDTHS[0], WIDTHS[0], WIDTHS[1], WIDTHS[1], WIDTHS[2], WIDTHS[2]]
    return [_conv_params(widths[i], widths[i + 1], gen) for i in range(6)]


def simplenet(impl, f9, params):
    patch_conv, grouped_conv = OPS[impl]
    w, b = params[0]
    h = patch_conv(f9, w, b, GEOM, relu=True)
    for i, (w, b) in enumerate(params[1:], start=1):
        h = grouped_conv(h, w, b, relu=True, pool=i % 2 == 1)
    return h


def _flops_first_layer():
    p = GEOM.patch
    return 2 * BATCH * M * p * p * WIDTHS[0] * C_IN * 9


def _flops_simplenet():
    p = GEOM.patch
    layers = [(C_IN, 64, p), (64, 64, p), (64, 128, p // 2), (128, 128, p // 2), (128, 256, p // 4), (256, 256, p // 4)]
    return sum(2 * BATCH * M * s * s * co * ci * 9 for ci, co, s in layers)


def _record(benchmark, group, flops, impl):
    benchmark.group = group
    benchmark.extra_info["backend"] = impl  # bench/report.py's row label and its ratio's reference
    benchmark.extra_info["GFLOP"] = round(flops / 1e9, 1)
    benchmark.extra_info["floor_ms"] = round(flops / PEAK_FLOPS * 1e3, 3)


def _leaves(tensors):
    return [t.detach().clone().requires_grad_(True) for t in tensors]


# ---- (a) first layer ----------------------------------------------------------------------
@pytest.mark.parametrize("impl", IMPLS)
def test_patch_conv_fwd(benchmark, measure, f9, simplenet_params, impl):
    _record(benchmark, "patch conv 64->64 fwd (B=64, bf16)", _flops_first_layer(), impl)
    w, b = simplenet_params[0]
    patch_conv = OPS[impl][0]

    @torch.no_grad()
    def step():
        out = patch_conv(f9, w, b, GEOM, relu=True)
        torch.cuda.synchronize()
        return out

    measure(step)


@pytest.mark.parametrize("impl", IMPLS)
def test_patch_conv_fwd_bwd(benchmark, measure, f9, simplenet_params, impl):
    _record(benchmark, "patch conv 64->64 fwd+bwd (B=64, bf16)", 3 * _flops_first_layer(), impl)
    x, w, b = _leaves([f9, *simplenet_params[0]])
    patch_conv = OPS[impl][0]
    upstream = torch.randn(BATCH, M, WIDTHS[0], GEOM.patch, GEOM.patch, device="cuda", dtype=DTYPE)

    def step():
        x.grad = w.grad = b.grad = None
        patch_conv(x, w, b, GEOM, relu=True).backward(upstream)
        torch.cuda.synchronize()

    measure(step)


# ---- (b) the SimpleNet ensemble -----------------------------------------------------------
@pytest.mark.parametrize("impl", IMPLS)
def test_simplenet_fwd(benchmark, measure, f9, simplenet_params, impl):
    _record(benchmark, "SimpleNet ensemble fwd (B=64, bf16)", _flops_simplenet(), impl)

    @torch.no_grad()
    def step():
        out = simplenet(impl, f9, simplenet_params)
        torch.cuda.synchronize()
        return out

    measure(step)


@pytest.mark.parametrize("impl", IMPLS)
def test_simplenet_fwd_bwd(benchmark, measure, f9, simplenet_params, impl):
    _record(benchmark, "SimpleNet ensemble fwd+bwd (B=64, bf16)", 3 * _flops_simplenet(), impl)
    x = f9.detach().clone().requires_grad_(True)
    params = [tuple(_leaves(p)) for p in simplenet_params]

    def step():
        x.grad = None
        for w, b in params:
            w.grad = b.grad = None
        simplenet(impl, x, params).float().square().mean().backward()
        torch.cuda.synchronize()

    measure(step)


@pytest.mark.parametrize("impl", [name for name in IMPLS if name != "triton"])
def test_outputs_agree(f9, simplenet_params, impl):
    """Not a timing: the benchmarked paths compute the same thing (bf16 bound)."""
    with torch.no_grad():
        ours = simplenet("triton", f9, simplenet_params).double()
        theirs = simplenet(impl, f9, simplenet_params).double()
    assert ((ours - theirs).norm() / theirs.norm()).item() < 2e-2

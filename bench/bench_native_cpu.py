"""Every implementation that runs on this CPU, side by side, paper shapes, B = 64, forward + backward.

    pytest bench/bench_native_cpu.py --benchmark-group-by=param:op

Floors (float32, B = 64; memory bound, so bytes are what matter):
- extract_patches + overlap_add: F9 is 64·64·144·144·4 B = 340 MB; the 16 windows of 48²
  are 1.78x that, 604 MB. Forward reads 340 MB and writes 604 MB; backward (overlap-add)
  reads 604 MB and writes 340 MB: ~1.9 GB of traffic per fwd+bwd, zero FLOPs.
- l1_nonlocal_attention: q, k, v are 64·16·512·4 B = 2 MB each. Forward is two 16x16x512
  products per image (2·2·16·16·512 = 0.52 MFLOP), 34 MFLOP per batch; backward four
  more, 67 MFLOP. Tiny and latency bound: launch and op overhead dominate.
- SimpleNet convs (per image, forward; backward is twice that): layer 1 (patch conv, 16
  windows of 48², 64 -> 64) and layer 2 (the same sizes, + pool) 2·16·48²·64·64·9 = 2.7 GFLOP;
  layer 3 (24², 64 -> 128) 1.4 GFLOP. Compute bound: the floor is the CPU's GEMM rate.
"""

import pytest
import torch

import lnlatten_fast as lf
from lnlatten_fast.ops import registry

BATCH = 64
GEOM = lf.PatchGeometry.for_image(144, num_patches=16, overlap=16)


def cpu_backends(op):
    """The registered implementations of `op` that run on this CPU (the registry is the list)."""
    return [b for _, b in registry.implementations(op) if lf.backends()[b]["cpu"].usable]


@pytest.fixture(scope="module")
def f9():
    return torch.randn(BATCH, 64, 144, 144)


@pytest.fixture(scope="module")
def qkv():
    return [torch.rand(BATCH, 16, 512) for _ in range(3)]


@pytest.mark.parametrize("backend", cpu_backends("extract_patches"))
def test_extract_overlap_add_fwd_bwd(benchmark, measure, f9, backend):
    benchmark.group = "extract_patches fwd + bwd (overlap-add)"
    x = f9.clone().requires_grad_(True)

    def step():
        x.grad = None
        patches = lf.ops.extract_patches(x, GEOM, backend=backend)
        patches.backward(torch.ones_like(patches))

    measure(step)


@pytest.mark.parametrize("backend", cpu_backends("overlap_add"))
def test_overlap_add_fwd(benchmark, measure, f9, backend):
    benchmark.group = "overlap_add fwd"
    patches = lf.ops.extract_patches(f9, GEOM, backend="reference")
    measure(lambda: lf.ops.overlap_add(patches, GEOM, backend=backend))


@pytest.mark.parametrize("backend", cpu_backends("l1_nonlocal_attention"))
def test_l1_attention_fwd_bwd(benchmark, measure, qkv, backend):
    benchmark.group = "l1_nonlocal_attention fwd + bwd"
    leaves = [t.clone().requires_grad_(True) for t in qkv]
    grad_s, grad_w = torch.randn(BATCH, 16, 512), torch.randn(BATCH, 16)

    def step():
        for t in leaves:
            t.grad = None
        s, w = lf.ops.l1_nonlocal_attention(*leaves, backend=backend)
        torch.autograd.backward((s, w), (grad_s, grad_w))

    measure(step)


@pytest.mark.parametrize("backend", cpu_backends("extract_patches"))
def test_extract_patches_fwd(benchmark, measure, f9, backend):
    benchmark.group = "extract_patches fwd"
    measure(lambda: lf.ops.extract_patches(f9, GEOM, backend=backend))


@pytest.mark.parametrize("backend", cpu_backends("l1_nonlocal_attention"))
def test_l1_attention_fwd(benchmark, measure, qkv, backend):
    benchmark.group = "l1_nonlocal_attention fwd"
    measure(lambda: lf.ops.l1_nonlocal_attention(*qkv, backend=backend))


# ---- the SimpleNet convolutions at the paper's shapes; CONV_BATCH images keep a CPU run short ----
CONV_BATCH = 2
# (label, c_in, c_out, side, pool): layer 1 (patch conv), layer 3, and layer 2 (pooled).
CONV_CASES = [("patch conv, layer 1", 64, 64, 48, False), ("grouped conv, layer 3", 64, 128, 24, False),
              ("grouped conv + pool, layer 2", 64, 64, 48, True)]


def _conv_call(label, c_in, c_out, side, pool, backend, requires_grad):
    torch.manual_seed(0)
    m = GEOM.num_patches
    weight = (torch.randn(m, c_out, c_in, 3, 3) / (3 * c_in**0.5)).requires_grad_(requires_grad)
    bias = torch.zeros(m, c_out, requires_grad=requires_grad)
    if label.startswith("patch"):
        x = torch.randn(CONV_BATCH, c_in, 144, 144).contiguous(memory_format=torch.channels_last)
        x.requires_grad_(requires_grad)
        return (x, weight, bias), lambda x, w, b: lf.ops.patch_conv3x3(x, w, b, GEOM, backend=backend)
    x = torch.randn(CONV_BATCH, m, c_in, side, side, requires_grad=requires_grad)
    return (x, weight, bias), lambda x, w, b: lf.ops.grouped_conv3x3(x, w, b, pool=pool, backend=backend)


@pytest.mark.parametrize("case", CONV_CASES, ids=[c[0] for c in CONV_CASES])
@pytest.mark.parametrize("backend", cpu_backends("grouped_conv3x3"))
def test_conv_fwd(benchmark, measure, case, backend):
    benchmark.group = f"{case[0]} fwd, B={CONV_BATCH}"
    inputs, call = _conv_call(*case, backend, requires_grad=False)
    measure(lambda: call(*inputs))


@pytest.mark.parametrize("case", CONV_CASES, ids=[c[0] for c in CONV_CASES])
@pytest.mark.parametrize("backend", cpu_backends("grouped_conv3x3"))
def test_conv_fwd_bwd(benchmark, measure, case, backend):
    benchmark.group = f"{case[0]} fwd + bwd, B={CONV_BATCH}"
    inputs, call = _conv_call(*case, backend, requires_grad=True)

    def step():
        for t in inputs:
            t.grad = None
        out = call(*inputs)
        out.backward(torch.ones_like(out))

    measure(step)

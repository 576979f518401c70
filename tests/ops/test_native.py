"""The `native` backend (lnlatten_fast._C) against `reference`, forward and backward."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import lnlatten_fast as lf
from helpers import assert_all_close, geometries, relative_error
from lnlatten_fast.ops.native import extension as native

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def test_extension_is_installed():
    """The installed package carries the compiled module and it runs on CPU."""
    assert native._C is not None, native.IMPORT_ERROR
    assert lf.backends()["native"]["cpu"].usable
    info = native._C.build_info()
    assert set(info) >= {"cuda", "openmp", "compiler", "cuda_arch"}
    # The ABI's dtype codes (csrc/dtype_codes.h), which the Python side reads from _C.
    assert native._C.DTYPE_CODES == {"float32": 0, "float64": 1, "float16": 2, "bfloat16": 3}
    assert tuple(native._C.CPU_DTYPES) == ("float32", "float64")


def test_extension_found_from_a_checkout():
    """`python -m lnlatten_fast...` inside the repository imports the checkout (no build in it);
    the compiled module of the installed copy must still be found."""
    repo = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-m", "lnlatten_fast.info"], cwd=repo, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert any(line.split()[:3] == ["native", "cpu", "yes"] for line in result.stdout.splitlines()), result.stdout


def run_both(fn, inputs, grad_seed):
    """Forward and backward of `fn` on both backends with the same upstream gradient."""
    results = {}
    for backend in ("reference", "native"):
        leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
        outs = fn(*leaves, backend=backend)
        outs = outs if isinstance(outs, tuple) else (outs,)
        gen = torch.Generator().manual_seed(grad_seed)
        grads = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.dtype) for o in outs]
        torch.autograd.backward(outs, grads)
        results[backend] = ([o.detach() for o in outs], [t.grad for t in leaves])
    return results["native"], results["reference"]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", ["reference", "native"])
def test_l1_attention_zero_row_is_finite_in_half_precision(dtype, backend):
    q, k, v = (torch.rand(2, 5, 8).to(dtype) for _ in range(3))
    q[1, 3] = 0
    s, w = lf.ops.l1_nonlocal_attention(q, k, v, backend=backend)
    assert torch.isfinite(s).all() and torch.isfinite(w).all()
    assert torch.equal(s[1, 3], torch.zeros(8, dtype=dtype))


def test_l1_attention_only_weights_used():
    """An output left out of the loss arrives as no gradient; the op must treat it as zero."""
    q, k, v = (torch.rand(2, 4, 3, dtype=torch.float64, requires_grad=True) for _ in range(3))
    _, w = lf.ops.l1_nonlocal_attention(q, k, v, backend="native")
    w.pow(2).sum().backward()
    ref = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
    _, w_ref = lf.ops.l1_nonlocal_attention(*ref, backend="reference")
    w_ref.pow(2).sum().backward()
    for a, b in zip((q, k, v), ref):
        expected = torch.zeros_like(b) if b.grad is None else b.grad  # v takes no part in w
        assert relative_error(a.grad, expected) < 1e-10


@given(geometries(max_patch=10), st.integers(1, 2), st.integers(1, 4), st.integers(1, 4), st.integers(0, 2**31))
def test_patch_conv_then_grouped_conv_with_pool(geom, batch, c_in, c_out, seed):
    torch.manual_seed(seed)
    m = geom.num_patches
    inputs = [
        torch.randn(batch, c_in, geom.image_size, geom.image_size),
        torch.randn(m, c_out, c_in, 3, 3),
        torch.randn(m, c_out),
        torch.randn(m, c_out, c_out, 3, 3),
        torch.randn(m, c_out),
    ]

    def two_layers(x, w1, b1, w2, b2, backend):
        h = lf.ops.patch_conv3x3(x, w1, b1, geom, relu=True, backend=backend)
        return lf.ops.grouped_conv3x3(h, w2, b2, relu=True, pool=True, backend=backend)

    (outs, grads), (ref_outs, ref_grads) = run_both(two_layers, inputs, seed)
    assert_all_close(outs, ref_outs, torch.float32)
    assert_all_close(grads, ref_grads, torch.float32)


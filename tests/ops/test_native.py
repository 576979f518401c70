"""The `native` backend's own cases (lnlatten_fast._C): the installed extension, and what the
contract suite (tests/ops/test_contract.py) does not draw: half-precision zero rows, an output
left out of the loss, two layers composed."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from cases import Case
from harness import against_reference, assert_matches
from helpers import geometries, relative_error

import lnlatten_fast as lf
from lnlatten_fast.ops.native import extension as native

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

    def two_layers(backend, x, w1, b1, w2, b2):
        h = lf.ops.patch_conv3x3(x, w1, b1, geom, relu=True, backend=backend)
        return lf.ops.grouped_conv3x3(h, w2, b2, relu=True, pool=True, backend=backend)

    case = Case(two_layers, inputs, [0, None, None, None, None])
    got, expected = against_reference(case, "native", torch.float32, seed=seed)
    assert_matches(got, expected, torch.float32)


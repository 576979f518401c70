"""The reference ops against independent formulations, and gradcheck in float64."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import lnlatten_fast as lf
from helpers import assert_all_close, geometries, relative_error

REF = "reference"


def unfold_patches(f9, geom):
    """Windows via F.unfold, which orders them row-major like PatchGeometry."""
    b, c = f9.shape[:2]
    cols = F.unfold(f9, geom.patch, stride=geom.stride)  # (B, C*P*P, M)
    return cols.reshape(b, c, geom.patch, geom.patch, -1).permute(0, 4, 1, 2, 3)


@given(geometries(), st.integers(1, 3), st.integers(1, 4))
def test_extract_patches_matches_unfold(geom, batch, channels):
    f9 = torch.randn(batch, channels, geom.image_size, geom.image_size, dtype=torch.float64)
    got = lf.ops.extract_patches(f9, geom, backend=REF)
    assert torch.equal(got, unfold_patches(f9, geom))


@given(geometries(), st.integers(1, 3), st.integers(1, 4))
def test_overlap_add_matches_fold_and_is_the_adjoint(geom, batch, channels):
    size = geom.image_size
    patches = torch.randn(batch, geom.num_patches, channels, geom.patch, geom.patch, dtype=torch.float64)
    got = lf.ops.overlap_add(patches, geom, backend=REF)
    cols = patches.permute(0, 2, 3, 4, 1).reshape(batch, channels * geom.patch**2, -1)
    folded = F.fold(cols, (size, size), geom.patch, stride=geom.stride)
    assert relative_error(got, folded) < 1e-12
    f9 = torch.randn(batch, channels, size, size, dtype=torch.float64)
    lhs = (lf.ops.extract_patches(f9, geom, backend=REF) * patches).sum()
    rhs = (f9 * got).sum()
    assert abs(lhs - rhs) <= 1e-9 * max(1.0, abs(rhs))


@given(geometries(max_patch=10), st.integers(1, 2), st.integers(1, 3), st.integers(1, 3), st.booleans())
def test_patch_conv_pads_at_the_patch_border(geom, batch, c_in, c_out, relu):
    """Conv of the window with everything outside it zeroed == conv zero-padded at the patch."""
    size, p = geom.image_size, geom.patch
    f9 = torch.randn(batch, c_in, size, size, dtype=torch.float64)
    w = torch.randn(geom.num_patches, c_out, c_in, 3, 3, dtype=torch.float64)
    b = torch.randn(geom.num_patches, c_out, dtype=torch.float64)
    got = lf.ops.patch_conv3x3(f9, w, b, geom, relu=relu, backend=REF)
    for m, (r, c) in enumerate(geom.origins()):
        mask = torch.zeros(size, size, dtype=torch.float64)
        mask[r : r + p, c : c + p] = 1
        full = F.conv2d(f9 * mask, w[m], b[m], padding=1)[:, :, r : r + p, c : c + p]
        expected = F.relu(full) if relu else full
        assert relative_error(got[:, m], expected) < 1e-12


@given(st.integers(1, 2), st.integers(1, 5), st.integers(1, 3), st.integers(1, 3), st.integers(2, 9), st.booleans(), st.booleans())
def test_grouped_conv_matches_groups_conv2d(batch, groups, c_in, c_out, size, relu, pool):
    h = torch.randn(batch, groups, c_in, size, size + 1, dtype=torch.float64)
    w = torch.randn(groups, c_out, c_in, 3, 3, dtype=torch.float64)
    b = torch.randn(groups, c_out, dtype=torch.float64)
    got = lf.ops.grouped_conv3x3(h, w, b, relu=relu, pool=pool, backend=REF)
    y = F.conv2d(h.flatten(1, 2), w.flatten(0, 1), b.flatten(), padding=1, groups=groups)
    y = F.relu(y) if relu else y
    y = F.max_pool2d(y, 2) if pool else y
    assert relative_error(got, y.unflatten(1, (groups, c_out))) < 1e-12


def attention_by_loops(q, k, v):
    """SPEC §1 written element by element."""
    batch, m, d = q.shape
    s = torch.zeros_like(q)
    w = torch.zeros(batch, m, dtype=q.dtype)
    for b in range(batch):
        rt = [[float(sum(q[b, i, e] * k[b, j, e] for e in range(d))) for j in range(m)] for i in range(m)]
        for i in range(m):
            norm = max(sum(abs(x) for x in rt[i]), 1e-12)
            for j in range(m):
                r = rt[i][j] / norm
                w[b, j] += r / m
                s[b, i] += r * v[b, j]
    return s, w


@given(st.integers(1, 2), st.integers(1, 5), st.integers(1, 4), st.booleans())
def test_attention_matches_loops(batch, m, d, with_zero_row):
    q, k, v = (torch.randn(batch, m, d, dtype=torch.float64) for _ in range(3))
    if with_zero_row:
        q[0, 0] = 0
    s, w = lf.ops.l1_nonlocal_attention(q, k, v, backend=REF)
    assert_all_close((s, w), attention_by_loops(q, k, v), torch.float64)


def test_attention_weights_sum_to_one_for_nonnegative_inputs():
    q, k, v = (torch.rand(3, 16, 8) for _ in range(3))
    s, w = lf.ops.l1_nonlocal_attention(q, k, v, backend=REF)
    assert s.shape == (3, 16, 8) and w.shape == (3, 16)
    assert torch.allclose(w.sum(dim=1), torch.ones(3), atol=1e-6)


def test_attention_zero_row_is_finite_forward_and_backward():
    q, k, v = (torch.rand(2, 4, 3, dtype=torch.float64, requires_grad=True) for _ in range(3))
    with torch.no_grad():
        q[1, 2] = 0
    s, w = lf.ops.l1_nonlocal_attention(q, k, v, backend=REF)
    (s.sum() + w.sum()).backward()
    assert torch.isfinite(s).all() and torch.isfinite(w).all()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))
    assert torch.equal(s[1, 2], torch.zeros(3, dtype=torch.float64))


# ---- gradcheck (float64) ----------------------------------------------------------------
GEOM = lf.PatchGeometry(8, 2, 5, 3)


def _leaf(*shape):
    return torch.randn(*shape, dtype=torch.float64, requires_grad=True)


@pytest.mark.parametrize("relu", [False, True])
def test_gradcheck_patch_conv3x3(relu):
    args = (_leaf(1, 2, 8, 8), _leaf(4, 3, 2, 3, 3), _leaf(4, 3))
    fn = lambda x, w, b: lf.ops.patch_conv3x3(x, w, b, GEOM, relu=relu, backend=REF)  # noqa: E731
    assert torch.autograd.gradcheck(fn, args)


@pytest.mark.parametrize("relu,pool", [(False, False), (True, True)])
def test_gradcheck_grouped_conv3x3(relu, pool):
    args = (_leaf(2, 3, 2, 6, 6), _leaf(3, 2, 2, 3, 3), _leaf(3, 2))
    fn = lambda h, w, b: lf.ops.grouped_conv3x3(h, w, b, relu=relu, pool=pool, backend=REF)  # noqa: E731
    assert torch.autograd.gradcheck(fn, args)


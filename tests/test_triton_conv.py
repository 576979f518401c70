"""The Triton local-branch kernels (lnlatten_fast.ops.triton: patches, conv3x3) against `reference`.

Under the Triton interpreter on CPU (conftest sets TRITON_INTERPRET=1) every kernel is run
program by program in Python, so shapes are tiny (M in {4, 9, 16}, patch <= 12, channels
<= 16, batch <= 3) and hypothesis draws few examples per test. The CUDA-only tests (bf16,
paper shape) skip without a GPU.

The reference runs in float64 on the same (already rounded) inputs and is cast to the tested
dtype, so a bound measures the kernel's own error.

NaN poisoning: the autouse fixture `poisoned` enters `ops._outputs.poisoned_outputs()`, so
every output the wrappers allocate starts as NaN (int8 argmax: 7, an impossible index)
instead of torch.empty; an element a kernel does not write makes `relative_error` infinite.
`test_poisoning_catches_an_unwritten_output` shows that this fails a test.
"""

import os
import subprocess
import sys
import threading
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from helpers import TOLERANCE, assert_all_close, geometries, relative_error
from hypothesis import given, settings
from hypothesis import strategies as st

import lnlatten_fast as lf
from lnlatten_fast.ops import reference
from lnlatten_fast.ops._outputs import poisoned_outputs
from lnlatten_fast.ops.triton import _common, conv3x3, conv3x3_backward
from lnlatten_fast.ops.triton import patches as triton_patches

# The triton implementations, as the comparisons call them: fn(TRITON, ...) vs fn(reference, ...).
TRITON = SimpleNamespace(
    extract_patches=triton_patches.extract_patches, overlap_add=triton_patches.overlap_add,
    patch_conv3x3=conv3x3.patch_conv3x3, grouped_conv3x3=conv3x3.grouped_conv3x3,
)
KERNEL_MODULES = (triton_patches, conv3x3, conv3x3_backward)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
USABLE, WHY = _common.availability(DEVICE)
needs_triton = pytest.mark.skipif(not USABLE, reason=WHY)
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

DTYPES = [torch.float32, torch.float16]  # bf16: CUDA only (the interpreter's bf16 tl.dot is wrong)
CHANNELS = st.sampled_from([1, 3, 5, 16])  # includes non-multiples of the 16-wide K chunk
# M in {4, 9, 16}; patches up to 9 in the random draws (the interpreter's cost grows with the
# image), the largest test shapes (patch 11-12, batch 3) in test_largest_test_shapes.
CONV_GEOMETRIES = geometries(max_patch=9, grids=(2, 3, 4))


@pytest.fixture(scope="module", autouse=True)
def poisoned():
    """Outputs born NaN (module scope: hypothesis rejects function-scoped fixtures)."""
    with poisoned_outputs():
        yield


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The shapes here are tiny: a second intra-op thread only adds synchronisation, which
    costs 10-100x on a loaded 2-core machine (the reference convs dominate otherwise)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", autouse=True)
def _fast_interpreter(interpreter_without_overflow_checks):
    """Every test here runs interpreted kernels: all of them without the overflow checks."""
    yield


# ---- helpers ------------------------------------------------------------------------------
def channels_last(t: torch.Tensor) -> torch.Tensor:
    """Channels innermost: torch.channels_last for F9; (B, M, H, W, C) storage for 5-D h."""
    if t.dim() == 4:
        return t.contiguous(memory_format=torch.channels_last)
    return t.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)


def on_fresh_stack(fn):
    """Run fn() on a new thread (shallow Python stack) and return its result or raise its error.

    CPython 3.11 keeps frames in 16 KiB chunks that are mapped when the stack grows into one and
    unmapped when it shrinks back. Under pytest + hypothesis the interpreter's hot call chains
    sit across such a boundary and the process spends a third of its time in mmap/munmap and
    page faults; from a fresh thread's stack they do not.
    """
    box = {}

    def target():
        try:
            box["result"] = fn()
        except BaseException as error:  # noqa: BLE001 - re-raised on the calling thread
            box["error"] = error

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


def against_reference(fn, inputs, dtype, seed):
    """Forward + backward of fn(module, *inputs) with module = TRITON and = reference
    (on a fresh stack, see on_fresh_stack).

    The reference gets float64 copies of the same inputs and the same upstream gradient.
    Returns (got, expected): [output, grad of each non-None input], expected cast to dtype.
    """
    return on_fresh_stack(lambda: _against_reference(fn, inputs, dtype, seed))


def _against_reference(fn, inputs, dtype, seed):
    leaves = [None if t is None else t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(TRITON, *leaves)
    gen = torch.Generator().manual_seed(seed)
    upstream = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(dtype).to(out.device)
    out.backward(upstream)

    ref_leaves = [None if t is None else t.detach().double().requires_grad_(True) for t in inputs]
    ref_out = fn(reference, *ref_leaves)
    ref_out.backward(upstream.double())

    got = [out.detach()] + [t.grad for t in leaves if t is not None]
    expected = [ref_out.detach().to(dtype)] + [t.grad.to(dtype) for t in ref_leaves if t is not None]
    return got, expected


def assert_each_close(got, expected, dtype):
    """Each tensor on its own scale (a small gradient is not hidden by a large one)."""
    for g, e in zip(got, expected, strict=True):
        assert_all_close([g], [e], dtype)


def randn(*shape, dtype):
    return torch.randn(*shape, dtype=torch.float64).to(dtype).to(DEVICE)


# ---- availability -------------------------------------------------------------------------
def test_availability_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert _common.availability("cpu") == (False, _common.INTERPRETER_HINT)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    usable, reason = _common.availability("cpu")
    assert usable == (_common.IMPORT_ERROR is None), reason
    assert not _common.availability("mps")[0]
    if not torch.cuda.is_available():
        assert not _common.availability("cuda")[0]


def test_module_imports_without_triton():
    """availability() explains a missing triton instead of the import failing."""
    code = (
        "import sys; sys.modules['triton'] = None; sys.modules['triton.language'] = None\n"
        "import lnlatten_fast as lf\n"
        "from lnlatten_fast.ops.triton import _common\n"
        "usable, reason = _common.availability('cuda')\n"
        "assert not usable and 'triton' in reason, reason\n"
        "assert not lf.backends()['triton']['cpu'].usable\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]


# ---- extract_patches / overlap_add --------------------------------------------------------
@needs_triton
@settings(max_examples=12)
@given(geometries(max_patch=12), st.integers(0, 3), st.integers(1, 5),
       st.sampled_from(DTYPES + [torch.float64]), st.booleans(), st.integers(0, 2**31))
def test_extract_patches(geom, batch, channels, dtype, cl, seed):
    torch.manual_seed(seed)
    f9 = randn(batch, channels, geom.image_size, geom.image_size, dtype=dtype)
    if cl:
        f9 = channels_last(f9)
    got, expected = against_reference(lambda ops, x: ops.extract_patches(x, geom), [f9], dtype, seed)
    assert torch.equal(got[0], expected[0])  # a copy is exact
    assert got[0].is_contiguous()
    assert_each_close(got[1:], expected[1:], dtype)  # backward: overlap-add


@needs_triton
@settings(max_examples=12)
@given(geometries(max_patch=12), st.integers(1, 3), st.integers(1, 5),
       st.sampled_from(DTYPES + [torch.float64]), st.integers(0, 2**31))
def test_overlap_add(geom, batch, channels, dtype, seed):
    torch.manual_seed(seed)
    patches = randn(batch, geom.num_patches, channels, geom.patch, geom.patch, dtype=dtype)
    got, expected = against_reference(lambda ops, p: ops.overlap_add(p, geom), [patches], dtype, seed)
    assert_each_close(got[:1], expected[:1], dtype)
    assert torch.equal(got[1], expected[1])  # backward: extraction, exact


# ---- patch_conv3x3 ------------------------------------------------------------------------
@needs_triton
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("relu", [True, False])
@settings(max_examples=3)
@given(CONV_GEOMETRIES, st.integers(1, 2), CHANNELS, CHANNELS, st.booleans(), st.booleans(),
       st.integers(0, 2**31))
def test_patch_conv3x3(relu, dtype, geom, batch, c_in, c_out, cl, with_bias, seed):
    torch.manual_seed(seed)
    m = geom.num_patches
    f9 = randn(batch, c_in, geom.image_size, geom.image_size, dtype=dtype)
    if cl:
        f9 = channels_last(f9)
    weight = randn(m, c_out, c_in, 3, 3, dtype=dtype) / (3 * c_in**0.5)
    bias = randn(m, c_out, dtype=dtype) if with_bias else None

    def fn(ops, x, w, b):
        return ops.patch_conv3x3(x, w, b, geom, relu=relu)

    got, expected = against_reference(fn, [f9, weight, bias], dtype, seed)
    assert got[0].shape == (batch, m, c_out, geom.patch, geom.patch) and got[0].is_contiguous()
    assert_each_close(got, expected, dtype)  # output, grad F9, grad weight (, grad bias)


def test_patch_conv_pads_at_the_patch_border_not_with_neighbours():
    """Sanity of the comparison: with overlapping windows, padding a window with its
    neighbours' pixels gives a different result, so test_patch_conv3x3 can tell them apart."""
    geom = lf.PatchGeometry(8, 2, 5, 3)
    f9 = torch.randn(1, 2, 8, 8, dtype=torch.float64)
    w = torch.randn(4, 3, 2, 3, 3, dtype=torch.float64)
    ours = reference.patch_conv3x3(f9, w, None, geom, relu=False)
    r, c = geom.origin(3)
    leaky = F.conv2d(F.pad(f9, (1, 1, 1, 1)), w[3])[:, :, r : r + 5, c : c + 5]
    assert relative_error(leaky, ours[:, 3]) > 1e-2


# ---- grouped_conv3x3 ----------------------------------------------------------------------
@needs_triton
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pool", [True, False])
@pytest.mark.parametrize("relu", [True, False])
@settings(max_examples=2)
@given(st.sampled_from([4, 9, 16]), st.integers(1, 2), st.integers(2, 9), st.integers(2, 9),
       CHANNELS, CHANNELS, st.booleans(), st.booleans(), st.integers(0, 2**31))
def test_grouped_conv3x3(relu, pool, dtype, m, batch, height, width, c_in, c_out, cl, with_bias, seed):
    torch.manual_seed(seed)
    h = randn(batch, m, c_in, height, width, dtype=dtype)
    if cl:
        h = channels_last(h)
    weight = randn(m, c_out, c_in, 3, 3, dtype=dtype) / (3 * c_in**0.5)
    bias = randn(m, c_out, dtype=dtype) if with_bias else None

    def fn(ops, x, w, b):
        return ops.grouped_conv3x3(x, w, b, relu=relu, pool=pool)

    got, expected = against_reference(fn, [h, weight, bias], dtype, seed)
    assert got[0].is_contiguous()
    assert_each_close(got, expected, dtype)  # output, grad h, grad weight (, grad bias)


@needs_triton
@pytest.mark.parametrize("relu", [True, False])
def test_pool_backward_with_ties_and_dead_relu(relu):
    """Constant windows tie in the 2x2 pool (the gradient goes to the first position, as in
    torch), and a very negative bias kills the ReLU (no gradient at all); odd sizes leave a
    row and a column outside the floor-pooled area."""
    h = torch.zeros(2, 4, 3, 5, 7, device=DEVICE)
    h[:, :2] = torch.randn(2, 2, 3, 5, 7, device=DEVICE)
    weight = torch.randn(4, 16, 3, 3, 3, device=DEVICE)
    bias = torch.randn(4, 16, device=DEVICE)
    bias[1] = -100.0  # window 1: every pre-activation negative
    bias[3] = 0.5  # window 3: constant positive input -> exact ties in every pool window

    def fn(ops, x, w, b):
        return ops.grouped_conv3x3(x, w, b, relu=relu, pool=True)

    got, expected = against_reference(fn, [h, weight, bias], torch.float32, seed=3)
    assert_each_close(got, expected, torch.float32)


@needs_triton
def test_largest_test_shapes():
    """M = 16, batch 3, odd 11 px patches overlapping by 7, then a 12 x 11 grouped conv + pool."""
    torch.manual_seed(0)
    geom = lf.PatchGeometry(23, 4, 11, 4)
    f9 = channels_last(torch.randn(3, 5, 23, 23, device=DEVICE))
    w1 = torch.randn(16, 16, 5, 3, 3, device=DEVICE) / 7
    b1 = torch.randn(16, 16, device=DEVICE)
    h = torch.randn(3, 16, 16, 12, 11, device=DEVICE).half()
    w2 = (torch.randn(16, 13, 16, 3, 3, device=DEVICE) / 12).half()
    b2 = torch.randn(16, 13, device=DEVICE).half()

    def patch(ops, x, w, b):
        return ops.patch_conv3x3(x, w, b, geom, relu=True)

    def grouped(ops, x, w, b):
        return ops.grouped_conv3x3(x, w, b, relu=True, pool=True)

    got, expected = against_reference(patch, [f9, w1, b1], torch.float32, seed=0)
    assert_each_close(got, expected, torch.float32)
    got, expected = against_reference(grouped, [h, w2, b2], torch.float16, seed=1)
    assert_each_close(got, expected, torch.float16)


# ---- wide channels, float64, bfloat16, batch splits, determinism, empty batch --------------
@needs_triton
@pytest.mark.parametrize("pool", [False, True])
def test_wide_channels(pool):
    """70 channels: several K chunks per tap, several output-channel blocks (of 64) in the
    forward, several input-channel blocks in both gradients, and their masked tails."""
    torch.manual_seed(0)
    geom = lf.PatchGeometry(6, 2, 4, 2)
    f9 = channels_last(torch.randn(1, 70, 6, 6, device=DEVICE))
    w1 = torch.randn(4, 70, 70, 3, 3, device=DEVICE) / 25
    b1 = torch.randn(4, 70, device=DEVICE)
    w2 = torch.randn(4, 66, 70, 3, 3, device=DEVICE) / 25

    def fn(ops, x, w1, b1, w2):
        h = ops.patch_conv3x3(x, w1, b1, geom)
        return ops.grouped_conv3x3(h, w2, None, pool=pool)

    got, expected = against_reference(fn, [f9, w1, b1, w2], torch.float32, seed=0)
    assert_each_close(got, expected, torch.float32)


@needs_triton
def test_bfloat16():
    """On CPU this goes through the wrappers' fp32 widening (the interpreter's bf16 tl.dot is
    wrong); on CUDA it is the bf16 tensor-core path."""
    torch.manual_seed(0)
    geom = lf.PatchGeometry(7, 2, 4, 3)
    dtype = torch.bfloat16
    f9 = randn(2, 3, 7, 7, dtype=dtype)
    w1 = randn(4, 5, 3, 3, 3, dtype=dtype) / 5
    b1 = randn(4, 5, dtype=dtype)
    w2 = randn(4, 4, 5, 3, 3, dtype=dtype) / 6
    b2 = randn(4, 4, dtype=dtype)

    def fn(ops, x, w1, b1, w2, b2):
        patches = ops.extract_patches(x, geom)
        h = ops.patch_conv3x3(x, w1, b1, geom) + ops.overlap_add(patches, geom).mean()
        return ops.grouped_conv3x3(h, w2, b2, pool=True)

    got, expected = against_reference(fn, [f9, w1, b1, w2, b2], dtype, seed=0)
    assert_each_close(got, expected, dtype)


@needs_triton
def test_float64_matches_to_rounding():
    geom = lf.PatchGeometry(9, 3, 5, 2)
    f9 = torch.randn(2, 3, 9, 9, dtype=torch.float64, device=DEVICE)
    w1 = torch.randn(9, 4, 3, 3, 3, dtype=torch.float64, device=DEVICE)
    b1 = torch.randn(9, 4, dtype=torch.float64, device=DEVICE)
    w2 = torch.randn(9, 5, 4, 3, 3, dtype=torch.float64, device=DEVICE)

    def fn(ops, x, w1, b1, w2):
        h = ops.patch_conv3x3(x, w1, b1, geom)
        return ops.grouped_conv3x3(h, w2, None, pool=True)

    got, expected = against_reference(fn, [f9, w1, b1, w2], torch.float64, seed=0)
    for g, e in zip(got, expected):
        assert relative_error(g, e) < 1e-12


@needs_triton
@pytest.mark.parametrize("pool", [False, True])
def test_weight_grad_batch_splits(monkeypatch, pool):
    """Force the two-stage (split batch) weight gradient, used on GPUs with many SMs."""
    monkeypatch.setattr(conv3x3_backward, "_target_programs", lambda device: 10**6)
    h = torch.randn(3, 4, 5, 6, 6, device=DEVICE)
    weight = torch.randn(4, 3, 5, 3, 3, device=DEVICE)
    bias = torch.randn(4, 3, device=DEVICE)

    def fn(ops, x, w, b):
        return ops.grouped_conv3x3(x, w, b, relu=True, pool=pool)

    got, expected = against_reference(fn, [h, weight, bias], torch.float32, seed=1)
    assert_each_close(got, expected, torch.float32)


@needs_triton
def test_backward_is_deterministic():
    """Gather formulation, fixed-order reductions: bitwise identical gradients."""
    geom = lf.PatchGeometry(10, 3, 4, 3)
    f9 = torch.randn(2, 3, 10, 10, device=DEVICE, requires_grad=True)
    w = torch.randn(9, 4, 3, 3, 3, device=DEVICE, requires_grad=True)
    upstream = torch.randn(2, 9, 4, 4, 4, device=DEVICE)
    grads = []
    for _ in range(2):
        f9.grad = w.grad = None
        TRITON.patch_conv3x3(f9, w, None, geom).backward(upstream)
        grads.append((f9.grad.clone(), w.grad.clone()))
    assert all(torch.equal(a, b) for a, b in zip(*grads))


class _NoLaunch:
    def __getitem__(self, grid):
        raise AssertionError(f"kernel launched for an empty batch (grid {grid})")


@needs_triton
def test_empty_batch_launches_nothing(monkeypatch):
    for module in KERNEL_MODULES:
        for name in dir(module):
            if name.endswith("_kernel"):
                monkeypatch.setattr(module, name, _NoLaunch())
    geom = lf.PatchGeometry(7, 2, 4, 3)
    f9 = torch.randn(0, 3, 7, 7, device=DEVICE, requires_grad=True)
    w1 = torch.randn(4, 5, 3, 3, 3, device=DEVICE, requires_grad=True)
    b1 = torch.randn(4, 5, device=DEVICE, requires_grad=True)
    w2 = torch.randn(4, 6, 5, 3, 3, device=DEVICE, requires_grad=True)
    patches = TRITON.extract_patches(f9, geom)
    back = TRITON.overlap_add(patches, geom)
    h = TRITON.patch_conv3x3(f9, w1, b1, geom)
    out = TRITON.grouped_conv3x3(h, w2, None, pool=True)
    assert patches.shape == (0, 4, 3, 4, 4) and back.shape == (0, 3, 7, 7)
    assert h.shape == (0, 4, 5, 4, 4) and out.shape == (0, 4, 6, 2, 2)
    (back.sum() + out.sum()).backward()
    assert f9.grad.shape == f9.shape
    for p in (w1, b1, w2):  # a sum over no images: zero
        assert torch.equal(p.grad, torch.zeros_like(p))


@needs_triton
def test_poisoning_catches_an_unwritten_output(monkeypatch):
    """A forward kernel that writes nothing leaves NaN behind, and the comparison fails."""

    class _Skip:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: None

    monkeypatch.setattr(conv3x3, "_conv3x3_fwd_kernel", _Skip())
    h = torch.randn(1, 4, 2, 3, 3, device=DEVICE)
    w = torch.randn(4, 2, 2, 3, 3, device=DEVICE)
    out = TRITON.grouped_conv3x3(h, w, None)
    assert torch.isnan(out).all()
    with pytest.raises(AssertionError):
        assert_all_close([out], [reference.grouped_conv3x3(h, w, None)], torch.float32)


# ---- NaN propagates as in torch -----------------------------------------------------------
def _assert_same_nans_and_close(got, expected, dtype):
    for g, e in zip(got, expected, strict=True):
        assert torch.equal(torch.isnan(g), torch.isnan(e)), "NaN pattern differs from torch's"
        finite = ~torch.isnan(e)
        assert_all_close([torch.where(finite, g, 0)], [torch.where(finite, e, 0)], dtype)


@needs_triton
@pytest.mark.parametrize("relu,pool", [(True, False), (True, True), (False, True)])
def test_nan_propagates_through_the_fused_relu_and_pool(relu, pool):
    """torch's ReLU and max-pool pass NaN on (a diverging run must look diverged): a NaN input
    pixel and a NaN bias channel reach the output, and the gradients, exactly where torch's do."""
    torch.manual_seed(5)
    dtype = torch.float32
    h = randn(2, 4, 3, 6, 6, dtype=dtype)
    h[0, 1, 2, 3, 4] = float("nan")
    w = randn(4, 5, 3, 3, 3, dtype=dtype)
    b = randn(4, 5, dtype=dtype)
    b[2, 1] = float("nan")
    got, expected = against_reference(
        lambda ops, x, w, b: ops.grouped_conv3x3(x, w, b, relu=relu, pool=pool), [h, w, b], dtype, seed=5)
    assert torch.isnan(got[0]).any() and not torch.isnan(got[0]).all()
    _assert_same_nans_and_close(got, expected, dtype)


@needs_triton
def test_nan_propagates_through_the_fused_patch_conv():
    torch.manual_seed(6)
    dtype = torch.float32
    geom = lf.PatchGeometry(7, 2, 4, 3)
    f9 = randn(1, 2, 7, 7, dtype=dtype)
    f9[0, 1, 3, 3] = float("nan")  # in the overlap: reaches all four windows
    w = randn(4, 3, 2, 3, 3, dtype=dtype)
    b = randn(4, 3, dtype=dtype)
    got, expected = against_reference(
        lambda ops, x, w, b: ops.patch_conv3x3(x, w, b, geom, relu=True), [f9, w, b], dtype, seed=6)
    assert torch.isnan(got[0]).any()
    _assert_same_nans_and_close(got, expected, dtype)


# ---- torch.compile ------------------------------------------------------------------------
def _all_ops(geom):
    def fn(f9, w1, b1, w2, b2):
        back = TRITON.overlap_add(TRITON.extract_patches(f9, geom), geom)
        h = TRITON.patch_conv3x3(f9, w1, b1, geom, relu=True)
        h = TRITON.grouped_conv3x3(h, w2, b2, relu=True, pool=True)
        return back.sum() + h.square().sum()

    return fn


def _all_ops_inputs():
    torch.manual_seed(0)
    shapes = [(1, 2, 7, 7), (4, 3, 2, 3, 3), (4, 3), (4, 2, 3, 3, 3), (4, 2)]
    return [torch.randn(*s, device=DEVICE, requires_grad=True) for s in shapes]


@needs_triton
def test_dynamo_explain_has_no_graph_breaks():
    geom = lf.PatchGeometry(7, 2, 4, 3)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(_all_ops(geom))(*_all_ops_inputs())
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@needs_triton
def test_compiled_forward_and_backward_match_eager():
    """fullgraph compile through AOT autograd: exercises every fake and the backward ops."""
    geom = lf.PatchGeometry(7, 2, 4, 3)
    torch._dynamo.reset()
    compiled = torch.compile(_all_ops(geom), backend="aot_eager", fullgraph=True)
    results = []
    for fn in (_all_ops(geom), compiled):
        inputs = _all_ops_inputs()
        loss = fn(*inputs)
        loss.backward()
        results.append([loss.detach()] + [t.grad for t in inputs])
    for a, b in zip(*results):
        assert relative_error(a, b) < 1e-6


@needs_triton
def test_opcheck_custom_ops():
    """torch.library.opcheck: schema, fake tensors and autograd registration of each op."""
    torch.manual_seed(0)
    f9 = torch.randn(1, 2, 7, 7, device=DEVICE)
    w = torch.randn(4, 3, 2, 3, 3, device=DEVICE)
    b = torch.randn(4, 3, device=DEVICE)
    h = torch.randn(1, 4, 2, 4, 4, device=DEVICE)
    cases = [
        (triton_patches._extract, (f9, 2, 4, 3)),
        (triton_patches._overlap_add, (torch.randn(1, 4, 2, 4, 4, device=DEVICE), 2, 4, 3)),
        (conv3x3._patch_conv, (f9, w, b, 2, 4, 3, True)),
        (conv3x3._grouped_conv, (h, w, None, True, True)),
        (conv3x3_backward._grouped_conv_grad_weight, (torch.randn(1, 4, 3, 2, 2, device=DEVICE),
                                        torch.zeros(1, 4, 3, 2, 2, dtype=torch.int8, device=DEVICE),
                                        h, True, True, True)),
    ]
    utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    for op, args in cases:
        torch.library.opcheck(op, args, test_utils=utils)


# ---- GPU compilation without a GPU -------------------------------------------------------
_COMPILE_FOR_SM90 = r"""
import os, sys
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from lnlatten_fast.ops.triton import conv3x3, conv3x3_backward, patches

target = GPUTarget("cuda", 90, 32)
failures = []

def compile_(label, kernel, pointers, constexprs, options):
    sig = {n: "constexpr" if n in constexprs else pointers.get(n, "i32") for n in kernel.arg_names}
    try:
        triton.compile(ASTSource(kernel, sig, constexprs), target=target, options=options)
    except Exception as error:
        failures.append(f"{label}: {error}")

conv = conv3x3.launch_options()
for dt, ptr, acc in (("bf16", "*bf16", tl.float32), ("fp32", "*fp32", tl.float32)):
    for pool in (False, True):
        if dt == "fp32" and pool:
            continue
        flags = {"RELU": True, "POOL": pool, "WINDOWED": not pool, "ACC": acc, "PRECISION": "ieee"}
        aux = "*i8" if pool else ptr
        compile_(f"fwd {dt} pool={pool}", conv3x3._conv3x3_fwd_kernel,
                 {"x_ptr": ptr, "w_ptr": ptr, "bias_ptr": ptr, "out_ptr": ptr, "idx_ptr": "*i8"},
                 {**flags, "HAS_BIAS": True, "BLOCK_PIX": 32 if pool else 128, "BLOCK_CO": 64,
                  "BLOCK_K": 32}, conv)
        compile_(f"grad input {dt} pool={pool}", conv3x3_backward._conv3x3_bwd_input_kernel,
                 {"g_ptr": ptr, "aux_ptr": aux, "w_ptr": ptr, "dx_ptr": ptr},
                 {**flags, "BLOCK_H": 8, "BLOCK_W": 16, "BLOCK_CI": 64, "BLOCK_K": 32}, conv)
        compile_(f"grad weight {dt} pool={pool}", conv3x3_backward._conv3x3_bwd_weight_kernel,
                 {"x_ptr": ptr, "g_ptr": ptr, "aux_ptr": aux, "dw_ptr": "*fp32", "db_ptr": "*fp32"},
                 {**flags, "HAS_BIAS": True, "BLOCK_CO": 64, "BLOCK_CI": 64, "BLOCK_PIX": 64}, conv)
compile_("extract", patches._extract_kernel, {"f9_ptr": "*bf16", "out_ptr": "*bf16"}, {"BLOCK": 1024}, {})
compile_("overlap_add", patches._overlap_add_kernel, {"p_ptr": "*bf16", "out_ptr": "*bf16"},
         {"ACC": tl.float32, "BLOCK": 1024}, {})
print("\n".join(failures))
sys.exit(1 if failures else 0)
"""


@pytest.mark.skipif(_common.IMPORT_ERROR is not None, reason="needs triton")
def test_kernels_compile_for_sm90(tmp_path):
    """The interpreter accepts code the GPU compiler rejects (it took `ky: tl.constexpr = t // 3`
    inside a static_range). Compile the bf16 and fp32 variants to sm_90a cubins with Triton's
    bundled ptxas, in a process without TRITON_INTERPRET; no GPU needed."""
    pytest.importorskip("triton.backends.nvidia")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "-c", _COMPILE_FOR_SM90], env=env, capture_output=True, text=True,
        timeout=600, check=False,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]


# ---- CUDA only ----------------------------------------------------------------------------
@cuda_only
@needs_triton
@pytest.mark.parametrize("pool", [False, True])
def test_bfloat16_on_cuda(pool):
    geom = lf.PatchGeometry(20, 3, 8, 6)
    dtype = torch.bfloat16
    f9 = randn(2, 16, 20, 20, dtype=dtype)
    w1 = randn(9, 24, 16, 3, 3, dtype=dtype) / 12
    b1 = randn(9, 24, dtype=dtype)
    w2 = randn(9, 16, 24, 3, 3, dtype=dtype) / 15

    def fn(ops, x, w1, b1, w2):
        h = ops.patch_conv3x3(x, w1, b1, geom)
        return ops.grouped_conv3x3(h, w2, None, pool=pool)

    got, expected = against_reference(fn, [f9, w1, b1, w2], dtype, seed=0)
    assert_each_close(got, expected, dtype)


@cuda_only
@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_paper_shape_on_cuda(dtype):
    """B = 2, M = 16 windows of 48 px on a 144 px F9, 64 -> 64 channels."""
    geom = lf.PatchGeometry.for_image(144, num_patches=16)
    assert (geom.patch, geom.stride) == (48, 32)
    f9 = channels_last(randn(2, 64, 144, 144, dtype=dtype))
    w = randn(16, 64, 64, 3, 3, dtype=dtype) / 24
    b = randn(16, 64, dtype=dtype)

    def fn(ops, x, w, b):
        return ops.patch_conv3x3(x, w, b, geom)

    got, expected = against_reference(fn, [f9, w, b], dtype, seed=0)
    assert_each_close(got, expected, dtype)
    assert TOLERANCE[dtype] <= 2e-2

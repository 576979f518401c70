"""The Triton convolution kernels' own pinned cases (lnlatten_fast.ops.triton.conv3x3), against
`reference`. The checks every implementation gets (random shapes per dtype, layouts, opcheck,
gradcheck, determinism, compile) are in tests/ops/test_contract.py; these are the cases that
reach into this backend's kernels: pool ties and dead ReLUs, NaN, wide channels, batch splits
of the weight gradient, odd large shapes, and the CUDA-only paper shape.

Under the Triton interpreter on CPU (conftest sets TRITON_INTERPRET=1) every kernel is run
program by program in Python, so shapes are tiny. The CUDA-only tests skip without a GPU.

The reference runs in float64 on the same (already rounded) inputs and is cast to the tested
dtype, so a bound measures the kernel's own error.

NaN poisoning: the autouse fixture `poisoned` enters `ops._outputs.poisoned_outputs()`, so
every output the wrappers allocate starts as NaN (int8 argmax: 7, an impossible index)
instead of torch.empty; an element a kernel does not write makes `relative_error` infinite.
`test_poisoning_catches_an_unwritten_output` shows that this fails a test.
"""

import threading

import pytest
import torch
import torch.nn.functional as F
import harness
from cases import Case
from helpers import TOLERANCE, assert_all_close, relative_error

import lnlatten_fast as lf
from lnlatten_fast.ops import reference
from lnlatten_fast.ops._outputs import poisoned_outputs
from lnlatten_fast.ops.triton import _common, conv3x3, conv3x3_backward
from lnlatten_fast.ops.triton import patches as triton_patches

KERNEL_MODULES = (triton_patches, conv3x3, conv3x3_backward)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
USABLE, WHY = _common.availability(DEVICE)
needs_triton = pytest.mark.skipif(not USABLE, reason=WHY)
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")



@pytest.fixture(scope="module", autouse=True)
def poisoned():
    """Outputs born NaN for the whole module."""
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


def against_reference(fn, tensors, dtype, seed):
    """fn(backend, *tensors) on triton against the float64 reference (tests/ops/harness.py), on
    a fresh stack (see on_fresh_stack). Returns (got, expected): outputs then input gradients."""
    case = Case(fn, tensors, [None] * len(tensors))
    (outs, grads), (ref_outs, ref_grads) = on_fresh_stack(
        lambda: harness.against_reference(case, "triton", dtype, seed=seed))
    return outs + grads, ref_outs + ref_grads


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
    if _common.INTERPRETED:  # CPU-only machines: conftest set the variable before the import
        assert usable == (_common.IMPORT_ERROR is None), reason
    else:  # a GPU machine decorated the kernels compiled: setting it now is too late, and says so
        assert not usable and "before importing" in reason, reason
    assert not _common.availability("mps")[0]
    if not torch.cuda.is_available():
        assert not _common.availability("cuda")[0]


# ---- patch_conv3x3 ------------------------------------------------------------------------
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

    def fn(backend, x, w, b):
        return lf.ops.grouped_conv3x3(x, w, b, relu=relu, pool=True, backend=backend)

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

    def patch(backend, x, w, b):
        return lf.ops.patch_conv3x3(x, w, b, geom, relu=True, backend=backend)

    def grouped(backend, x, w, b):
        return lf.ops.grouped_conv3x3(x, w, b, relu=True, pool=True, backend=backend)

    got, expected = against_reference(patch, [f9, w1, b1], torch.float32, seed=0)
    assert_each_close(got, expected, torch.float32)
    got, expected = against_reference(grouped, [h, w2, b2], torch.float16, seed=1)
    assert_each_close(got, expected, torch.float16)


# ---- wide channels, float64, bfloat16, batch splits, empty batch ---------------------------
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

    def fn(backend, x, w1, b1, w2):
        h = lf.ops.patch_conv3x3(x, w1, b1, geom, backend=backend)
        return lf.ops.grouped_conv3x3(h, w2, None, pool=pool, backend=backend)

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

    def fn(backend, x, w1, b1, w2, b2):
        patches = lf.ops.extract_patches(x, geom, backend=backend)
        h = lf.ops.patch_conv3x3(x, w1, b1, geom, backend=backend) + lf.ops.overlap_add(patches, geom, backend=backend).mean()
        return lf.ops.grouped_conv3x3(h, w2, b2, pool=True, backend=backend)

    got, expected = against_reference(fn, [f9, w1, b1, w2, b2], dtype, seed=0)
    assert_each_close(got, expected, dtype)


@needs_triton
def test_float64_matches_to_rounding():
    geom = lf.PatchGeometry(9, 3, 5, 2)
    f9 = torch.randn(2, 3, 9, 9, dtype=torch.float64, device=DEVICE)
    w1 = torch.randn(9, 4, 3, 3, 3, dtype=torch.float64, device=DEVICE)
    b1 = torch.randn(9, 4, dtype=torch.float64, device=DEVICE)
    w2 = torch.randn(9, 5, 4, 3, 3, dtype=torch.float64, device=DEVICE)

    def fn(backend, x, w1, b1, w2):
        h = lf.ops.patch_conv3x3(x, w1, b1, geom, backend=backend)
        return lf.ops.grouped_conv3x3(h, w2, None, pool=True, backend=backend)

    got, expected = against_reference(fn, [f9, w1, b1, w2], torch.float64, seed=0)
    for g, e in zip(got, expected):
        assert relative_error(g, e) < 1e-12


@needs_triton
@pytest.mark.parametrize("pool", [False, True])
def test_weight_grad_batch_splits(monkeypatch, pool):
    """Force the two-stage (split batch) weight gradient, used on GPUs with many SMs."""
    monkeypatch.setattr(_common, "multiprocessor_count", lambda device: 10**6)  # one image per split
    h = torch.randn(3, 4, 5, 6, 6, device=DEVICE)
    weight = torch.randn(4, 3, 5, 3, 3, device=DEVICE)
    bias = torch.randn(4, 3, device=DEVICE)

    def fn(backend, x, w, b):
        return lf.ops.grouped_conv3x3(x, w, b, relu=True, pool=pool, backend=backend)

    got, expected = against_reference(fn, [h, weight, bias], torch.float32, seed=1)
    assert_each_close(got, expected, torch.float32)


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
    patches = lf.ops.extract_patches(f9, geom, backend="triton")
    back = lf.ops.overlap_add(patches, geom, backend="triton")
    h = lf.ops.patch_conv3x3(f9, w1, b1, geom, backend="triton")
    out = lf.ops.grouped_conv3x3(h, w2, None, pool=True, backend="triton")
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
    out = lf.ops.grouped_conv3x3(h, w, None, backend="triton")
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
        lambda backend, x, w, b: lf.ops.grouped_conv3x3(x, w, b, relu=relu, pool=pool, backend=backend), [h, w, b], dtype, seed=5)
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
        lambda backend, x, w, b: lf.ops.patch_conv3x3(x, w, b, geom, relu=True, backend=backend), [f9, w, b], dtype, seed=6)
    assert torch.isnan(got[0]).any()
    _assert_same_nans_and_close(got, expected, dtype)


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

    def fn(backend, x, w1, b1, w2):
        h = lf.ops.patch_conv3x3(x, w1, b1, geom, backend=backend)
        return lf.ops.grouped_conv3x3(h, w2, None, pool=pool, backend=backend)

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

    def fn(backend, x, w, b):
        return lf.ops.patch_conv3x3(x, w, b, geom, backend=backend)

    got, expected = against_reference(fn, [f9, w, b], dtype, seed=0)
    assert_each_close(got, expected, dtype)
    assert TOLERANCE[dtype] <= 2e-2


# ---- fp32 precision follows torch's TF32 flag -----------------------------------------------
@pytest.mark.parametrize("allow_tf32,expected", [(True, "tf32"), (False, "ieee")])
def test_fp32_precision_follows_cudnn_allow_tf32(monkeypatch, allow_tf32, expected):
    """As cuDNN's convolutions: TF32 tensor cores when torch.backends.cudnn.allow_tf32 (torch's
    default), exact IEEE fp32 when not; other dtypes are not affected, and the exact mode gets
    its own (FMA) tiles."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", allow_tf32)
    assert conv3x3.precision(torch.float32) == expected
    assert conv3x3.precision(torch.bfloat16) == conv3x3.precision(torch.float64) == "ieee"
    exact_tiles = conv3x3.tiles("forward", torch.float32) == conv3x3.tiles("forward", torch.float64)
    assert exact_tiles == (expected == "ieee")


@cuda_only
@needs_triton
def test_tf32_mode_on_cuda(monkeypatch):
    """TF32 (10-bit mantissa inputs, fp32 accumulation) stays within bf16-like bounds; the
    exact mode within fp32's (the rest of this module)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    geom = lf.PatchGeometry(20, 3, 8, 6)
    f9 = randn(2, 16, 20, 20, dtype=torch.float32)
    w1 = randn(9, 24, 16, 3, 3, dtype=torch.float32) / 12
    w2 = randn(9, 16, 24, 3, 3, dtype=torch.float32) / 15

    def fn(backend, x, w1, w2):
        h = lf.ops.patch_conv3x3(x, w1, None, geom, backend=backend)
        return lf.ops.grouped_conv3x3(h, w2, None, pool=True, backend=backend)

    got, expected = against_reference(fn, [f9, w1, w2], torch.float32, seed=0)
    for g, e in zip(got, expected):
        assert relative_error(g, e) < 5e-3


# ---- layout ---------------------------------------------------------------------------------
@needs_triton
def test_outputs_and_gradients_are_window_channels_last():
    """Every activation the convs return and every gradient they compute is stored
    (B, M, H, W, C); F9's gradient channels-last (as F9 is in the model). A contiguous input
    is converted once and gives the same values and gradients."""
    torch.manual_seed(2)
    geom = lf.PatchGeometry(7, 2, 4, 3)
    f9 = channels_last(torch.randn(2, 3, 7, 7, device=DEVICE)).requires_grad_(True)
    w1 = torch.randn(4, 5, 3, 3, 3, device=DEVICE)
    h = lf.ops.patch_conv3x3(f9, w1, None, geom, backend="triton")
    assert conv3x3.is_window_channels_last(h)
    h.backward(torch.randn_like(h).contiguous())  # a contiguous upstream gradient
    assert f9.grad.is_contiguous(memory_format=torch.channels_last)

    w2 = torch.randn(4, 6, 5, 3, 3, device=DEVICE)
    grads, outs = [], []
    for layout in (channels_last, lambda t: t.contiguous()):
        leaf = layout(h.detach()).requires_grad_(True)
        out = lf.ops.grouped_conv3x3(leaf, w2, None, pool=True, backend="triton")
        out.backward(torch.ones_like(out).contiguous())
        outs.append(out.detach())
        grads.append(leaf.grad)
    assert all(conv3x3.is_window_channels_last(t) for t in outs)
    assert conv3x3.is_window_channels_last(grads[0])
    assert torch.equal(outs[0], outs[1]) and torch.equal(grads[0], grads[1])


def test_batch_splits_fill_the_slots():
    """The grad-weight split: enough programs already -> no split; few programs on a big
    batch -> split into several waves' worth, never more splits than images."""
    from lnlatten_fast.ops.triton.conv3x3_backward import batch_splits

    assert batch_splits(programs=2304, batch=64, pixels=144, slots=396) == 64  # layer 6: no split
    per_split = batch_splits(programs=144, batch=64, pixels=2304, slots=396)  # layer 1
    assert 1 < -(-64 // per_split) <= 64
    waves_split = -(-144 * -(-64 // per_split) // 396)
    assert waves_split * per_split < 64  # faster than one program per (m, tap) over all 64 images
    assert batch_splits(programs=10, batch=1, pixels=100, slots=396) == 1
    assert batch_splits(programs=10, batch=0, pixels=100, slots=396) == 1


@needs_triton
def test_pool_to_one_pixel():
    """A 2x2 map pooled to 1x1: a contiguous upstream gradient is already window-channels-last
    but its size-1 dimensions' strides differ from the saved argmax's (regression: the
    backward refused them)."""
    h = torch.randn(2, 3, 1, 2, 2, device=DEVICE)
    w = torch.randn(3, 4, 1, 3, 3, device=DEVICE)

    def fn(backend, x, w):
        return lf.ops.grouped_conv3x3(x, w, None, relu=True, pool=True, backend=backend)

    got, expected = against_reference(fn, [h, w], torch.float32, seed=4)
    assert_each_close(got, expected, torch.float32)

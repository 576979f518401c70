"""The default backend `auto`: torch.compile(fullgraph=True) through it, its measured conv
choice, device guards around every launch, and when `native` counts as usable on CUDA."""


import pytest
import torch

import lnlatten_fast as lf
from helpers import micro_config, relative_error
from lnlatten_fast.ops import dispatch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _training_step(model, x, y, step_model=None, autocast=False):
    """Logits, both attention weights and every parameter gradient of one forward + backward."""
    model.zero_grad(set_to_none=True)
    with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=autocast):
        out = (model if step_model is None else step_model)(x)
    lf.lnl_loss(out.logits.float(), y, model).backward()
    return [out.logits.detach(), out.nonlocal_weights.detach(), out.local_weights.detach()] + [
        p.grad.clone() for p in model.parameters()
    ]


def _model_and_batch():
    torch.manual_seed(0)
    model = lf.LNLAttenNet(micro_config("auto")).to(DEVICE)
    x = torch.randn(2, 3, 32, 32, device=DEVICE)
    return model, x, torch.tensor([1, 4], device=DEVICE)


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_fullgraph_compile_of_the_default_backend_is_bit_for_bit_eager(autocast):
    """Dynamo traces `auto` (its conv-choice lookup and autocast handling included) as one
    graph, and AOT autograd's forward + backward reproduce eager exactly."""
    model, x, y = _model_and_batch()
    eager = _training_step(model, x, y, autocast=autocast)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    got = _training_step(model, x, y, compiled, autocast=autocast)
    for a, b in zip(got, eager, strict=True):
        assert torch.equal(a, b)


def test_fullgraph_inductor_compile_of_the_default_backend(monkeypatch, tmp_path):
    """torch.compile's default backend (inductor) with fullgraph=True: fusions reorder float
    sums, so equal to eager within fp32 rounding. It also plans memory from the custom ops'
    fakes, so a fake whose strides differ from the real op's fails here."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))  # a cached graph hides fakes
    model, x, y = _model_and_batch()
    eager = _training_step(model, x, y)
    torch._dynamo.reset()
    # inductor's own patch API: monkeypatch's undo removed the setting for every later test
    with torch._inductor.config.patch(fx_graph_cache=False):
        got = _training_step(model, x, y, torch.compile(model, fullgraph=True))
    for a, b in zip(got, eager, strict=True):
        assert relative_error(a, b, scale_floor=1e-6) <= 1e-5


@pytest.mark.skipif(not lf.backends()["native"]["cpu"].usable, reason="needs the native extension")
def test_native_fakes_match_real_strides_for_transposed_inputs():
    """The model hands attention a transposed view (regions from a (B, D, n, n) map); the fakes
    must allocate as the real ops do (contiguous), not copy the input's strides."""
    from lnlatten_fast.ops.native import attention as native

    q, k, v = (torch.rand(2, 8, 4).transpose(1, 2) for _ in range(3))  # (2, 4, 8), strides (32, 1, 4)
    utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    torch.library.opcheck(native._attention, (q, k, v), test_utils=utils)
    grads = (torch.rand(2, 4, 8), torch.rand(2, 4))
    torch.library.opcheck(native._attention_backward, (q, k, v, *grads), test_utils=utils)


# ---- auto's measured conv choice ---------------------------------------------------------
def test_auto_drops_a_candidate_that_raises_with_a_warning(monkeypatch):
    """A backend whose launch fails while `auto` times it (e.g. the extension's CUDA runtime
    on an old driver) is dropped for that shape instead of failing the whole model."""
    monkeypatch.setattr(dispatch, "_MEASURED", {})
    monkeypatch.setattr(dispatch, "availability", lambda name, dev: (True, "test"))

    def timer(fn, device):
        name = fn()
        if name == "native":
            raise RuntimeError("extract_patches_cuda: CUDA error: no kernel image is available")
        return 1.0

    cuda = torch.device("cuda")
    key = ((16, 8, 10, 10), (16, 8, 8, 3, 3), True, torch.float32, True, True, False)
    with pytest.warns(RuntimeWarning, match="dropped 'native'.*no kernel image"):
        assert dispatch.conv_backend("grouped_conv3x3", key, cuda, lambda name: name, timer) == "triton"

    def broken(fn, device):
        raise RuntimeError(f"{fn()} is broken")

    other = ((16, 8, 12, 12), *key[1:])
    with pytest.warns(RuntimeWarning) as caught:
        assert dispatch.conv_backend("grouped_conv3x3", other, cuda, lambda name: name, broken) == "reference"
    assert len(caught) == 2  # one warning per dropped candidate


def test_auto_stops_at_a_device_fault_naming_the_candidate_and_the_way_around(monkeypatch):
    """An illegal address poisons the CUDA context: dropping the candidate and timing the next
    one would fail anyway, so `auto` stops and says which candidate, which op, and which backend
    avoids it; the fault is not remembered as a choice."""
    monkeypatch.setattr(dispatch, "_MEASURED", {})
    monkeypatch.setattr(dispatch, "availability", lambda name, dev: (True, "test"))
    timed = []

    def timer(fn, device):
        name = fn()
        timed.append(name)
        if name == "triton":
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return 1.0

    key = ((16, 8, 10, 10), 64, (16, 8, 8, 3, 3), True, torch.bfloat16, True, True, False)
    with pytest.raises(dispatch.DeviceFaultError, match=r"timing 'triton' for grouped_conv3x3.*--backend native"):
        dispatch.conv_backend("grouped_conv3x3", key, torch.device("cuda"), lambda name: name, timer)
    assert timed == ["triton"]  # nothing ran on the poisoned context after the fault
    assert dispatch.measured_choices() == {}
    assert dispatch.is_device_fault(RuntimeError("CUDA error: misaligned address"))
    assert not dispatch.is_device_fault(RuntimeError("CUDA error: no kernel image is available"))


def test_the_conv_choice_is_measured_per_batch_size_bucket():
    """Evaluation (and B = 1 inference) get their own measurement; a last partial batch shares
    its full batch's."""
    from lnlatten_fast.ops import _conv_key

    weight = torch.zeros(4, 8, 8, 3, 3)
    key = lambda batch: _conv_key(torch.zeros(batch, 4, 8, 6, 6), weight, None)  # noqa: E731
    assert key(64) == key(60) != key(1)
    assert key(64) != key(128)


def test_compiled_graph_uses_the_choice_measured_eagerly(monkeypatch):
    """While torch.compile traces, nothing is timed: a shape measured by an eager call keeps its
    winner; an unmeasured one falls back to the static order."""
    monkeypatch.setattr(dispatch, "_MEASURED", {("grouped_conv3x3", "k"): "native"})
    monkeypatch.setattr(dispatch, "_auto_choice", lambda device_type: "triton")
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)

    def timer(fn, device):
        raise AssertionError("nothing may be timed while tracing")

    cuda = torch.device("cuda")
    assert dispatch.conv_backend("grouped_conv3x3", ("k",), cuda, lambda name: name, timer) == "native"
    assert dispatch.conv_backend("grouped_conv3x3", ("other",), cuda, lambda name: name, timer) == "triton"


# ---- native on CUDA ----------------------------------------------------------------------
class _ExtensionOnAnOldDriver:
    """Stands in for a _C built with CUDA whose own runtime cannot initialise."""

    @staticmethod
    def has_cuda():
        return True

    @staticmethod
    def cuda_device_count():
        return -35  # cudaErrorInsufficientDriver

    @staticmethod
    def cuda_runtime_version():
        return 13000

    @staticmethod
    def cuda_driver_version():
        return 12020

    @staticmethod
    def build_info():
        return {"cuda": True, "openmp": True, "compiler": "test", "cuda_arch": "90"}


def test_native_is_not_usable_on_cuda_when_its_runtime_sees_no_device(monkeypatch):
    from lnlatten_fast.ops.native import extension as native

    monkeypatch.setattr(native, "_C", _ExtensionOnAnOldDriver())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # torch's own runtime works
    usable, reason = native.availability("cuda")
    assert not usable
    assert "sees no device" in reason and "cudaError 35" in reason and "driver" in reason


# ---- device guards -----------------------------------------------------------------------
class _GuardRecorder:
    """Replaces `_device.launch_guard`: records each guard's device and whether a launch
    happens inside one."""

    def __init__(self):
        self.devices = []
        self.depth = 0
        self.unguarded_launches = []
        self.launches = 0

    def guard(self, tensor):
        recorder = self

        class _Guard:
            def __enter__(self):
                recorder.devices.append(tensor.device)
                recorder.depth += 1

            def __exit__(self, *exc):
                recorder.depth -= 1

        return _Guard()

    def launched(self, name):
        self.launches += 1
        if self.depth == 0:
            self.unguarded_launches.append(name)


def _watch_triton_launches(module, recorder, monkeypatch):
    for name in dir(module):
        kernel = getattr(module, name)
        if name.endswith("_kernel") and hasattr(kernel, "__getitem__"):

            class _Watched:
                def __init__(self, kernel, name):
                    self.kernel, self.name = kernel, name

                def __getitem__(self, grid):
                    launch = self.kernel[grid]

                    def run(*args, **kwargs):
                        recorder.launched(self.name)
                        return launch(*args, **kwargs)

                    return run

            monkeypatch.setattr(module, name, _Watched(kernel, name))


class _WatchedExtension:
    def __init__(self, extension, recorder):
        self._extension, self._recorder = extension, recorder

    def __getattr__(self, name):
        fn = getattr(self._extension, name)
        if not name.endswith(("_cpu", "_cuda")):
            return fn

        def run(*args):
            self._recorder.launched(name)
            return fn(*args)

        return run


def _every_op_forward_and_backward(backend, device):
    torch.manual_seed(3)
    geom = lf.PatchGeometry(7, 2, 4, 3)
    leaf = lambda *shape: torch.randn(*shape, device=device, requires_grad=True)  # noqa: E731
    f9, w1, b1, w2, q = leaf(1, 2, 7, 7), leaf(4, 3, 2, 3, 3), leaf(4, 3), leaf(4, 2, 3, 3, 3), leaf(1, 4, 16)
    ops = lf.ops
    total = ops.overlap_add(ops.extract_patches(f9, geom, backend=backend), geom, backend=backend).sum()
    h = ops.patch_conv3x3(f9, w1, b1, geom, backend=backend)
    total = total + ops.grouped_conv3x3(h, w2, None, pool=True, backend=backend).sum()
    s, w = ops.l1_nonlocal_attention(q, q.flip(1), q.flip(2), backend=backend)
    (total + s.sum() + w.sum()).backward()


@pytest.mark.parametrize("backend", [b for b in ("native", "triton") if lf.backends()[b][DEVICE].usable])
def test_every_kernel_launch_runs_under_its_tensors_device_guard(backend, monkeypatch):
    """CUDA launches go to the current device; each must run inside the guard of the device
    its tensors are on (else `--device cuda:1` launches on GPU 0)."""
    from lnlatten_fast.ops import _device
    from lnlatten_fast.ops.native import extension
    from lnlatten_fast.ops.triton import attention, conv3x3, conv3x3_backward, patches

    recorder = _GuardRecorder()
    monkeypatch.setattr(_device, "launch_guard", recorder.guard)
    if backend == "native":
        monkeypatch.setattr(extension, "_C", _WatchedExtension(extension._C, recorder))
    else:
        for module in (patches, conv3x3, conv3x3_backward, attention):
            _watch_triton_launches(module, recorder, monkeypatch)
    _every_op_forward_and_backward(backend, DEVICE)
    assert recorder.launches >= 6  # the ops above really launched kernels of this backend
    assert recorder.unguarded_launches == []
    assert set(recorder.devices) == {torch.device(DEVICE)}


def test_test_session_interprets_triton_only_without_a_gpu(tmp_path):
    """tests/conftest.py turns TRITON_INTERPRET on only when torch sees no CUDA device."""
    import os
    import subprocess
    import sys

    conftest = os.path.join(os.path.dirname(os.path.dirname(__file__)), "conftest.py")  # tests/
    probe = (
        "import runpy, sys, torch\n"
        f"torch.cuda.is_available = lambda: {{}}\n"
        f"runpy.run_path({conftest!r})\n"
        "import os; print(os.environ.get('TRITON_INTERPRET'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    for cuda_visible, expected in ((True, "None"), (False, "1")):
        result = subprocess.run([sys.executable, "-c", probe.format(cuda_visible)], env=env,
                                capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.strip() == expected, (cuda_visible, result.stdout)

"""The op contract: every registered implementation of every op passes the same checks.

The grid comes from the registry (`lnlatten_fast.ops.registry`), so a new op or backend is
checked here as soon as it registers. Per (op, backend), on this machine's device:

- parity with the reference, forward and backward, per dtype (float32, float16, bfloat16,
  float64), on hypothesis-drawn inputs in contiguous, channels-last and strided layouts, with
  the relative-norm bounds of helpers.TOLERANCE; outputs are born NaN (poisoned), so an
  element an implementation never writes fails;
- every layout on a fixed case; bitwise determinism of forward and backward; an empty batch;
- gradcheck in float64; torch.library.opcheck of every custom op it calls; torch.compile:
  one graph, no break, and a fullgraph forward + backward equal to eager;
- Triton implementations: compiled for sm_90a (bench/compile_report.py --step ops).
The reference is the oracle: it runs the checks that do not compare against itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cases import STRATEGIES, small_case
from harness import LAYOUTS, against_reference, assert_matches, forward_backward, prepare
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

import lnlatten_fast as lf
from lnlatten_fast.ops import registry
from lnlatten_fast.ops._outputs import poisoned_outputs

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
USABLE = {name: lf.backends()[name][DEVICE].usable for name in registry.registered_backends()}
IMPLEMENTATIONS = [
    pytest.param(op, backend, id=f"{op}-{backend}",
                 marks=pytest.mark.skipif(not USABLE[backend], reason=lf.backends()[backend][DEVICE].reason))
    for op, backend in registry.implementations()
]
FAST = [p for p in IMPLEMENTATIONS if p.values[1] != "reference"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
# Hypothesis examples per (op, backend, dtype): the Triton interpreter runs each program in
# Python, so it gets fewer.
EXAMPLES = {"native": 12, "triton": 3}


@pytest.fixture(autouse=True, scope="module")
def poisoned():
    with poisoned_outputs():
        yield


pytestmark = pytest.mark.usefixtures("interpreter_without_overflow_checks")


# ---- parity -------------------------------------------------------------------------------
def assert_output_layout(op, backend, out):
    """Outputs are allocated dense: the triton convs' window-channels-last ((B, M, H, W, C)
    storage, ops/triton/conv3x3.py says why), everything else contiguous."""
    if backend == "triton" and op in ("patch_conv3x3", "grouped_conv3x3"):
        from lnlatten_fast.ops.triton.conv3x3 import is_window_channels_last

        assert is_window_channels_last(out), out.stride()
    else:
        assert out.is_contiguous(), out.stride()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op,backend", FAST)
def test_matches_reference(op, backend, dtype):
    @settings(max_examples=EXAMPLES.get(backend, 5))
    @given(STRATEGIES[op](), st.sampled_from(LAYOUTS), st.integers(0, 2**31))
    def check(case, layout, seed):
        got, expected = against_reference(case, backend, dtype, layout, seed)
        assert_matches(got, expected, dtype)

    check()


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("op,backend", FAST)
def test_every_layout(op, backend, layout):
    got, expected = against_reference(small_case(op), backend, torch.float32, layout)
    assert_output_layout(op, backend, got[0][0])
    assert_matches(got, expected, torch.float32)


@pytest.mark.parametrize("op,backend", FAST)
def test_deterministic(op, backend):
    """No atomics: forward and backward are bitwise the same run after run."""
    case = small_case(op)
    first, second = (forward_backward(case, backend, prepare(case, torch.float32), seed=1) for _ in range(2))
    for a, b in zip(first[0] + first[1], second[0] + second[1], strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("op,backend", IMPLEMENTATIONS)
def test_empty_batch(op, backend):
    case = small_case(op, batch=0)
    tensors = prepare(case, torch.float32)
    outs, grads = forward_backward(case, backend, tensors)
    assert all(o.shape[0] == 0 for o in outs)
    for t, g, dim in zip([t for t in tensors if t is not None], grads,
                         [d for t, d in zip(tensors, case.batch_dims) if t is not None]):
        assert g.shape == t.shape
        if dim is None:  # a parameter: its gradient is a sum over no images
            assert torch.equal(g, torch.zeros_like(g))


# ---- autograd, custom-op registration, torch.compile -------------------------------------
@pytest.mark.parametrize("op,backend", IMPLEMENTATIONS)
def test_gradcheck_float64(op, backend):
    case = small_case(op, batch=1)
    leaves = [None if t is None else t.to(DEVICE).requires_grad_(True) for t in case.tensors]
    # The interpreter runs every conv program in Python: random projections instead of full
    # Jacobians there (the attention's small case takes the full Jacobian).
    fast = backend == "triton" and op in ("patch_conv3x3", "grouped_conv3x3")
    assert torch.autograd.gradcheck(lambda *ts: case.call(backend, *ts), tuple(leaves), fast_mode=fast)


class _RecordCustomOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "lnlatten_fast":
            self.calls.append((func, args))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("op,backend", FAST)
def test_opcheck_every_custom_op(op, backend):
    """Schema, fakes (shapes and strides) and autograd registration of every custom op the
    implementation calls, forward and backward, on the arguments it really passes."""
    case = small_case(op)
    leaves = [None if t is None else t.float().to(DEVICE).requires_grad_(True) for t in case.tensors]
    with _RecordCustomOps() as forward:
        out = case.call(backend, *leaves)
    outs = out if isinstance(out, tuple) else (out,)
    with _RecordCustomOps() as backward:
        torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])
    if not forward.calls and not backward.calls:
        pytest.skip(f"{backend} {op} is made of torch ops only (no custom op to check)")
    for calls, utils in ((forward.calls, ("test_schema", "test_autograd_registration", "test_faketensor")),
                         (backward.calls, ("test_schema", "test_faketensor"))):
        for func, args in calls:
            args = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
            torch.library.opcheck(func, args, test_utils=utils)


@pytest.mark.parametrize("op,backend", IMPLEMENTATIONS)
def test_compiles_to_one_graph_equal_to_eager(op, backend):
    case = small_case(op)
    tensors = prepare(case, torch.float32)

    def loss(*ts):
        out = case.call(backend, *ts)
        return sum(o.square().sum() for o in (out if isinstance(out, tuple) else (out,)))

    torch._dynamo.reset()
    explanation = torch._dynamo.explain(loss)(*tensors)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    results = []
    for fn in (loss, compiled):
        leaves = [None if t is None else t.detach().requires_grad_(True) for t in tensors]
        value = fn(*leaves)
        value.backward()
        results.append([value.detach()] + [t.grad for t in leaves if t is not None])
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


# ---- Triton: compiled for a GPU ------------------------------------------------------------
REPO = Path(__file__).resolve().parents[2]
TRITON_OPS = [op for op, backend in registry.implementations() if backend == "triton"]


@pytest.fixture(scope="module")
def sm90_ops_report(tmp_path_factory):
    pytest.importorskip("triton.backends.nvidia")
    out = tmp_path_factory.mktemp("sm90")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(out / "cache")
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "compile_report.py"), "--arch", "sm_90a", "--preset", "tiny",
         "--batch", "2", "--dtypes", "bf16,fp32", "--step", "ops", "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    return result, (json.loads((out / "kernels.json").read_text()) if (out / "kernels.json").exists() else None)


@pytest.mark.parametrize("op", TRITON_OPS)
def test_triton_compiles_for_sm90a(op, sm90_ops_report):
    """The interpreter accepts code the GPU compiler rejects: each op's kernels, forward and
    backward, bf16 and fp32, compiled by Triton's own compiler and ptxas for sm_90a."""
    result, report = sm90_ops_report
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    calls = [call for call in report["calls"] if call["op"].split()[0] == op]
    assert {call["dtype"] for call in calls} == {"bf16", "fp32"}, f"{op} launched nothing"
    assert not [f for f in report["failures"] if (f["op"] or "").split()[0] == op]
    kernels = [row for row in report["kernels"] if row["used_by"].split()[0] == op]
    assert kernels and all(row["registers"] > 0 for row in kernels)

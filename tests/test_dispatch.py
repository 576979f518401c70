"""The default backend `auto`: torch.compile(fullgraph=True) through it, its measured conv
choice, device guards around every launch, and when `native` counts as usable on CUDA."""

import warnings

import pytest
import torch

import lnlatten_fast as lf
from helpers import micro_config, relative_error
from lnlatten_fast.ops import dispatch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _training_step(model, x, y, step_model=None):
    """Logits, both attention weights and every parameter gradient of one forward + backward."""
    model.zero_grad(set_to_none=True)
    out = (model if step_model is None else step_model)(x)
    lf.lnl_loss(out.logits, y, model).backward()
    return [out.logits.detach(), out.nonlocal_weights.detach(), out.local_weights.detach()] + [
        p.grad.clone() for p in model.parameters()
    ]


def _model_and_batch():
    torch.manual_seed(0)
    model = lf.LNLAttenNet(micro_config("auto")).to(DEVICE)
    x = torch.randn(2, 3, 32, 32, device=DEVICE)
    return model, x, torch.tensor([1, 4], device=DEVICE)


def test_fullgraph_compile_of_the_default_backend_is_bit_for_bit_eager():
    """Dynamo traces `auto` (its conv-choice lookup included) as one graph, and AOT autograd's
    forward + backward reproduce eager exactly."""
    model, x, y = _model_and_batch()
    eager = _training_step(model, x, y)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    got = _training_step(model, x, y, compiled)
    for a, b in zip(got, eager, strict=True):
        assert torch.equal(a, b)


def test_fullgraph_inductor_compile_of_the_default_backend(monkeypatch, tmp_path):
    """torch.compile's default backend (inductor) with fullgraph=True: fusions reorder float
    sums, so equal to eager within fp32 rounding. It also plans memory from the custom ops'
    fakes, so a fake whose strides differ from the real op's fails here."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))  # a cached graph hides fakes
    monkeypatch.setattr(torch._inductor.config, "fx_graph_cache", False)
    model, x, y = _model_and_batch()
    eager = _training_step(model, x, y)
    torch._dynamo.reset()
    got = _training_step(model, x, y, torch.compile(model, fullgraph=True))
    for a, b in zip(got, eager, strict=True):
        assert relative_error(a, b, scale_floor=1e-6) <= 1e-5


@pytest.mark.skipif(not lf.backends()["native"]["cpu"].usable, reason="needs the native extension")
def test_native_fakes_match_real_strides_for_transposed_inputs():
    """The model hands attention a transposed view (regions from a (B, D, n, n) map); the fakes
    must allocate as the real ops do (contiguous), not copy the input's strides."""
    from lnlatten_fast.ops import native

    q, k, v = (torch.rand(2, 8, 4).transpose(1, 2) for _ in range(3))  # (2, 4, 8), strides (32, 1, 4)
    utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    torch.library.opcheck(native._attention, (q, k, v), test_utils=utils)
    grads = (torch.rand(2, 4, 8), torch.rand(2, 4))
    torch.library.opcheck(native._attention_backward, (q, k, v, *grads), test_utils=utils)

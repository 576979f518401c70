"""LNLAttenNet on the `triton` backend against `reference` (Triton interpreter on CPU)."""

import pytest
import torch

import lnlatten_fast as lf
from helpers import relative_error

pytestmark = pytest.mark.skipif(
    not lf.backends()["triton"]["cpu"].usable and not torch.cuda.is_available(),
    reason="triton cannot run here: " + lf.backends()["triton"]["cpu"].reason,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def micro_config(backend):
    # Same structure as the paper, small enough for the interpreter: 32 px, 4x4 windows of 11 px.
    return lf.LNLConfig.tiny(
        image_size=32, unet_widths=(4, 4, 8, 8, 16), simplenet_widths=(4, 8, 8),
        local_attention_widths=(8, 4, 4, 4, 4), attention_dim=16, global_width=16,
        head_widths=(16, 16), dropout=0.0, backend=backend,
    )


def test_triton_model_matches_reference_forward_and_gradients():
    torch.manual_seed(0)
    reference = lf.LNLAttenNet(micro_config("reference")).to(DEVICE)
    triton_model = lf.LNLAttenNet(micro_config("triton")).to(DEVICE)
    triton_model.load_state_dict(reference.state_dict())  # one state_dict serves every backend
    x = torch.randn(2, 3, 32, 32, device=DEVICE)
    y = torch.tensor([1, 4], device=DEVICE)
    results = {}
    for name, model in (("reference", reference), ("triton", triton_model)):
        out = model(x)
        lf.lnl_loss(out.logits, y, model).backward()
        results[name] = (out, {n: p.grad for n, p in model.named_parameters()})
    (out, grads), (ref_out, ref_grads) = results["triton"], results["reference"]
    for got, expected in zip(out[:3], ref_out[:3]):
        assert relative_error(got, expected) <= 1e-4
    for name, expected in ref_grads.items():
        assert relative_error(grads[name], expected) <= 1e-4, name


def test_compile_fullgraph_traces_the_triton_model():
    model = lf.LNLAttenNet(micro_config("triton")).to(DEVICE)
    x = torch.randn(1, 3, 32, 32, device=DEVICE)
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons

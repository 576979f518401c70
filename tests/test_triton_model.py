"""LNLAttenNet on the `triton` backend against `reference` (Triton interpreter on CPU)."""

import pytest
import torch

import lnlatten_fast as lf
from helpers import micro_config, relative_error

pytestmark = [
    pytest.mark.skipif(
        not lf.backends()["triton"]["cpu"].usable and not torch.cuda.is_available(),
        reason="triton cannot run here: " + lf.backends()["triton"]["cpu"].reason,
    ),
    pytest.mark.usefixtures("interpreter_without_overflow_checks"),
]

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


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

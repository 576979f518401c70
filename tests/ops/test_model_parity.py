"""LNLAttenNet on every fast backend against `reference`: one state_dict, same logits,
attention weights and parameter gradients, and one graph under torch.compile."""

import pytest
import torch

import lnlatten_fast as lf
from helpers import micro_config, relative_error
from lnlatten_fast.ops import registry

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Bounds on ‖x - ref‖ / ‖ref‖ (outputs, gradients): the native ops are fp32 C++ kernels; the
# Triton ones accumulate fp32 dots in a different order.
BOUNDS = {"native": (1e-5, 1e-4), "triton": (1e-4, 1e-4)}
BACKENDS = [
    pytest.param(name, marks=pytest.mark.skipif(
        not lf.backends()[name][DEVICE].usable, reason=lf.backends()[name][DEVICE].reason))
    for name in registry.registered_backends() if name != "reference"
]
pytestmark = pytest.mark.usefixtures("interpreter_without_overflow_checks")


@pytest.mark.parametrize("backend", BACKENDS)
def test_model_matches_reference_forward_and_gradients(backend):
    torch.manual_seed(0)
    reference = lf.LNLAttenNet(micro_config("reference")).to(DEVICE)
    model = lf.LNLAttenNet(micro_config(backend)).to(DEVICE)
    model.load_state_dict(reference.state_dict())  # one state_dict serves every backend
    x = torch.randn(2, 3, 32, 32, device=DEVICE)
    y = torch.tensor([1, 4], device=DEVICE)
    results = {}
    for name, net in (("reference", reference), (backend, model)):
        out = net(x)
        lf.lnl_loss(out.logits, y, net).backward()
        results[name] = (out, {n: p.grad for n, p in net.named_parameters()})
    (out, grads), (ref_out, ref_grads) = results[backend], results["reference"]
    output_bound, grad_bound = BOUNDS[backend]
    for got, expected in zip(out[:3], ref_out[:3]):
        assert relative_error(got, expected) <= output_bound
    for name, expected in ref_grads.items():
        assert relative_error(grads[name], expected) <= grad_bound, name


@pytest.mark.parametrize("backend", BACKENDS)
def test_model_traces_as_one_graph(backend):
    model = lf.LNLAttenNet(micro_config(backend)).to(DEVICE)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(torch.randn(1, 3, 32, 32, device=DEVICE))
    assert explanation.graph_break_count == 0, explanation.break_reasons

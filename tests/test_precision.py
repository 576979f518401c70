"""bf16 autocast, the precision a GPU run trains in, on every backend (CPU autocast here).

Under autocast F9 and every other activation arrive in bf16 while the stacked per-patch
weights are fp32 parameters; the fused ops must follow autocast as nn.Conv2d does (compute in
bf16, master weights and their gradients stay fp32).
"""

import pytest
import torch

import lnlatten_fast as lf
from helpers import micro_config, relative_error

# The interpreted triton case at model scale: the interpreter's int32 overflow checks more than
# double its time and cannot fire at these sizes.
pytestmark = pytest.mark.usefixtures("interpreter_without_overflow_checks")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
USABLE = [name for name in ("reference", "native", "triton") if lf.backends()[name][DEVICE].usable]
# bf16 keeps 8 mantissa bits: ~0.4 % per rounding, compounded over ~25 layers.
BF16_LOGIT_BOUND = 5e-2


def _trained_step(model, x, y, autocast: bool):
    model.zero_grad(set_to_none=True)
    with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=autocast):
        out = model(x)
    loss = lf.lnl_loss(out.logits.float(), y, model)
    loss.backward()
    return out, loss


@pytest.mark.parametrize("backend", USABLE)
def test_forward_loss_backward_under_bf16_autocast(backend):
    torch.manual_seed(0)
    model = lf.LNLAttenNet(micro_config(backend)).to(DEVICE).channels_last()
    x = torch.randn(2, 3, 32, 32, device=DEVICE).contiguous(memory_format=torch.channels_last)
    y = torch.tensor([1, 4], device=DEVICE)

    # The fp32 baseline from the reference backend (same weights): one interpreted triton run.
    full, _ = _trained_step(model.set_backend("reference"), x, y, autocast=False)
    full_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    half, loss = _trained_step(model.set_backend(backend), x, y, autocast=True)

    assert half.logits.dtype == torch.bfloat16  # autocast really ran the head in bf16
    assert torch.isfinite(loss)
    assert relative_error(half.logits.float(), full.logits) <= BF16_LOGIT_BOUND
    for name, param in model.named_parameters():
        assert param.dtype == torch.float32, name  # master weights stay fp32
        assert param.grad is not None, name
        assert param.grad.dtype == torch.float32, name
        assert torch.isfinite(param.grad).all(), name
    # The gradients are those of the same network, not noise: close to fp32's overall.
    flat = lambda grads: torch.cat([g.flatten() for g in grads])  # noqa: E731
    got = flat(p.grad for _, p in model.named_parameters())
    assert relative_error(got, flat(full_grads.values())) <= 0.2


@pytest.mark.parametrize("backend", USABLE)
def test_fused_ops_follow_autocast_like_conv2d(backend):
    """patch_conv3x3 / grouped_conv3x3 take fp32 weights with a bf16 input under autocast and
    return what F.conv2d returns there: bf16, with fp32 gradients for the fp32 weights."""
    torch.manual_seed(1)
    geom = lf.PatchGeometry(7, 2, 4, 3)
    f9 = torch.randn(2, 3, 7, 7, device=DEVICE, dtype=torch.bfloat16)
    w1 = torch.randn(4, 5, 3, 3, 3, device=DEVICE, requires_grad=True)
    b1 = torch.randn(4, 5, device=DEVICE, requires_grad=True)
    w2 = torch.randn(4, 2, 5, 3, 3, device=DEVICE, requires_grad=True)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        h = lf.ops.patch_conv3x3(f9, w1, b1, geom, backend=backend)
        out = lf.ops.grouped_conv3x3(h, w2, None, pool=True, backend=backend)
    assert h.dtype == out.dtype == torch.bfloat16
    out.float().sum().backward()
    for weight in (w1, b1, w2):
        assert weight.grad.dtype == torch.float32 and torch.isfinite(weight.grad).all()


@pytest.mark.parametrize("backend", USABLE)
def test_attention_under_autocast_matches_fp32_in_bf16_bounds(backend):
    """fp32 q, k, v under autocast run like a matmul does there (in bf16); the reference keeps
    its normalisation in fp32 even inside autocast."""
    torch.manual_seed(2)
    q, k, v = (torch.rand(2, 16, 32, device=DEVICE) for _ in range(3))
    expected = lf.ops.l1_nonlocal_attention(q, k, v, backend="reference")
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        got = lf.ops.l1_nonlocal_attention(q, k, v, backend=backend)
    for g, e in zip(got, expected):
        assert g.dtype == torch.bfloat16
        assert relative_error(g.float(), e) <= 2e-2

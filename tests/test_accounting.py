"""The analytic FLOP count against torch's FLOP counter, forward and training step."""

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import lnlatten_fast as lf
from lnlatten_fast.accounting import forward_flops, training_step_flops

aten = torch.ops.aten


def conv_backward_flops(grad_out_shape, x_shape, w_shape, bias, stride, padding, dilation, transposed,
                        output_padding, groups, output_mask, out_shape=None, **kwargs):
    """torch's formula ignores `groups` for the input gradient (it counts a grouped conv's as if
    dense, G times too many). Each gradient of a conv costs what its forward costs."""
    if transposed:  # weight (Cin, Cout/groups, k, k): every input pixel meets every weight
        forward = 2 * x_shape[0] * math.prod(x_shape[2:]) * math.prod(w_shape)
    else:  # weight (Cout, Cin/groups, k, k): each output element costs Cin/groups x k x k
        forward = 2 * math.prod(grad_out_shape) * math.prod(w_shape[1:])
    return forward * (int(output_mask[0]) + int(output_mask[1]))


@pytest.mark.parametrize("config", [
    lf.LNLConfig.tiny(image_size=32, backend="reference"),
    lf.LNLConfig.tiny(image_size=48, num_patches=9, backend="reference"),
    lf.LNLConfig.tiny(image_size=32, variant="local", backend="reference"),
    lf.LNLConfig.tiny(image_size=96, local_feature_size=None, backend="reference"),  # P // 8 = 4: padded
    lf.LNLConfig.tiny(image_size=128, num_patches=4, local_feature_size=None, backend="reference"),  # 8: valid
], ids=["tiny-32", "tiny-48-M9", "local-only", "natural-4-padded", "natural-8-valid"])
def test_analytic_flops_match_torchs_counter(config):
    model = lf.LNLAttenNet(config)
    x = torch.randn(2, 3, config.image_size, config.image_size)
    with FlopCounterMode(display=False) as forward:
        logits = model(x).logits
    assert forward.get_total_flops() == 2 * forward_flops(config)["total"]
    with FlopCounterMode(display=False, custom_mapping={aten.convolution_backward: conv_backward_flops}) as step:
        lf.lnl_loss(model(x).logits, torch.zeros(2, dtype=torch.long), model).backward()
    assert step.get_total_flops() == 2 * training_step_flops(config)
    del logits


def test_paper_numbers():
    """The paper preset: the SimpleNet ensemble is 870 GFLOP forward at B = 64 (issue 9's figure)."""
    parts = forward_flops(lf.LNLConfig.paper())
    assert round(64 * parts["simplenet"] / 1e9) == 870
    assert parts["total"] == sum(v for k, v in parts.items() if k != "total")

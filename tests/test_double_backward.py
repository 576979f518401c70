"""Double backward through the fused ops (a gradient of a gradient, as a gradient penalty takes),
and the nn blocks' errors for a forward argument of the wrong dtype or device.

Faults (issue 19): double backward through L1NonLocalAttention / LNLHead on native failed with
torch's "no autograd formula was registered", with no hint that the reference backend has it;
the nn blocks, given a wrong dtype, named the ops' internal argument "f9".
"""

import pytest
import torch

from helpers import micro_config

import lnlatten_fast as lf
from lnlatten_fast import ops

TRITON_ON_CPU = lf.backends()["triton"]["cpu"].usable
REFUSED = r"double backward .* through {op} is not implemented on backend '{backend}'; backend='reference' implements it"


def _gradient_penalty(inputs, outputs) -> torch.Tensor:
    """Σ|∂(Σ outputs²)/∂inputs|²: its backward is a double backward through whatever made `outputs`."""
    total = sum(o.square().sum() for o in outputs)
    grads = torch.autograd.grad(total, inputs, create_graph=True)
    return sum(g.square().sum() for g in grads)


def _attention_inputs(dtype=torch.float32):
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(2, 4, 3, generator=generator, dtype=dtype, requires_grad=True) for _ in range(3)]


# ---- double backward --------------------------------------------------------------------------
def test_native_attention_refuses_double_backward_naming_the_op_and_the_reference_backend():
    block = lf.nn.L1NonLocalAttention(8, 4, 2, backend="native")
    low = torch.randn(2, 8, 4, 4, requires_grad=True)
    penalty = _gradient_penalty([low], block(low))  # the first backward, with a graph, still runs
    with pytest.raises(NotImplementedError, match=REFUSED.format(op="l1_nonlocal_attention", backend="native")):
        penalty.backward()


def test_native_head_refuses_double_backward_and_the_reference_backend_runs_it():
    head = lf.nn.LNLHead(8, 16, 32, micro_config("native"))
    high, low = torch.randn(2, 8, 32, 32, requires_grad=True), torch.randn(2, 16, 4, 4, requires_grad=True)
    with pytest.raises(NotImplementedError, match=r"l1_nonlocal_attention .*'native'.*backend='reference'"):
        _gradient_penalty([high, low], [head(high, low).logits]).backward()
    head.set_backend("reference")
    _gradient_penalty([high, low], [head(high, low).logits]).backward()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in head.parameters() if p.requires_grad)


def test_first_order_gradients_with_a_graph_match_the_reference():
    """create_graph=True alone (no second backward) is untouched on native."""
    inputs = _attention_inputs()
    native = torch.autograd.grad(sum(o.square().sum() for o in ops.l1_nonlocal_attention(*inputs, backend="native")),
                                 inputs, create_graph=True)
    reference = torch.autograd.grad(
        sum(o.square().sum() for o in ops.l1_nonlocal_attention(*inputs, backend="reference")), inputs)
    for a, b in zip(native, reference, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_reference_attention_double_backward_is_correct():
    assert torch.autograd.gradgradcheck(lambda *ts: ops.l1_nonlocal_attention(*ts, backend="reference"),
                                        tuple(_attention_inputs(torch.float64)))


def test_native_patch_ops_have_double_backward():
    """extract_patches and overlap_add are each other's backward: double backward works on native."""
    geom = lf.PatchGeometry(8, 2, 6, 2)
    f9 = torch.randn(1, 2, 8, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda x: ops.extract_patches(x, geom, backend="native"), (f9,))


@pytest.mark.skipif(not TRITON_ON_CPU, reason="triton cannot run here (not installed, or no interpreter)")
@pytest.mark.parametrize("op", ["l1_nonlocal_attention", "grouped_conv3x3"])
def test_triton_refuses_double_backward_naming_the_op(op, interpreter_without_overflow_checks):
    if op == "l1_nonlocal_attention":
        inputs = _attention_inputs()
        outputs = ops.l1_nonlocal_attention(*inputs, backend="triton")
    else:
        generator = torch.Generator().manual_seed(0)
        inputs = [torch.randn(*shape, generator=generator, requires_grad=True)
                  for shape in ((1, 2, 2, 4, 4), (2, 2, 2, 3, 3), (2, 2))]
        outputs = [ops.grouped_conv3x3(*inputs, relu=True, backend="triton")]
    penalty = _gradient_penalty(inputs, outputs)
    with pytest.raises(NotImplementedError, match=REFUSED.format(op=op, backend="triton")):
        penalty.backward()


# ---- the nn blocks' argument errors -------------------------------------------------------------
def _blocks():
    """(block, its forward's argument names, a valid float32 input for each)."""
    geometry = lf.PatchGeometry(24, 2, 16, 8)
    return [
        (lf.nn.PatchEnsemble(geometry, 3, (4, 4, 4), out_size=None, backend="native"), ["x"], [(2, 3, 24, 24)]),
        (lf.nn.LocalAttention(4, 4, 6, (4, 4, 4, 4, 4)), ["f"], [(2, 4, 4, 6, 6)]),
        (lf.nn.L1NonLocalAttention(8, 4, 2, backend="native"), ["low"], [(2, 8, 4, 4)]),
        (lf.nn.LNLHead(8, 16, 32, micro_config("native")), ["high", "low"], [(2, 8, 32, 32), (2, 16, 4, 4)]),
    ]


@pytest.mark.parametrize("dtype", [torch.int64, torch.float64])
def test_nn_blocks_name_their_own_argument_for_a_wrong_dtype(dtype):
    for block, names, shapes in _blocks():
        for wrong, name in enumerate(names):
            args = [torch.ones(shape, dtype=dtype if i == wrong else torch.float32) for i, shape in enumerate(shapes)]
            with pytest.raises(TypeError, match=rf"^{name} must have dtype torch.float32 as {type(block).__name__}"
                                                rf"(\(\w+(, \w+)*\))?'s parameters do .*got {dtype}$") as caught:
                block(*args)
            assert "f9" not in str(caught.value)


def test_nn_blocks_accept_what_autocast_casts_and_name_a_wrong_device():
    block, _, (shape,) = _blocks()[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert block(torch.randn(shape, dtype=torch.bfloat16)).dtype == torch.bfloat16
        with pytest.raises(TypeError, match=r"^x must have dtype .*got torch.float64$"):
            block(torch.randn(shape, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"^x is on meta but PatchEnsemble's parameters are on cpu$"):
        block(torch.empty(shape, device="meta"))

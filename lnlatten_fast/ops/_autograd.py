"""Fakes and autograd shared by the compiled backends' custom ops (native and triton).

Both backends build each op as a `torch.library.custom_op` whose backward is a custom op too,
so `torch.compile(fullgraph=True)` traces forward and backward. The glue around those ops is
the same for both and lives here once.

Double backward (a gradient of a gradient: `torch.autograd.grad(..., create_graph=True)`, then
a backward through its result, as a gradient penalty does) is the reference backend's alone.
The patch ops have it everywhere (each is the other's backward); the attention's and the
Triton convolutions' backward ops have no formula of their own, and reaching one raises an
error naming the op and `backend="reference"` (`refuse_double_backward`).
"""

from __future__ import annotations

import torch

__all__ = ["register_patch_adjoints", "register_attention_autograd", "refuse_double_backward"]


def register_patch_adjoints(extract_op, overlap_add_op) -> None:
    """extract_patches and overlap_add (custom ops taking (x, grid, patch, stride)) are adjoint
    linear maps, so each is the other's backward. Registers both fakes too."""

    @extract_op.register_fake
    def _(f9, grid, patch, stride):
        return f9.new_empty(f9.shape[0], grid * grid, f9.shape[1], patch, patch)

    @overlap_add_op.register_fake
    def _(patches, grid, patch, stride):
        size = (grid - 1) * stride + patch
        return patches.new_empty(patches.shape[0], patches.shape[2], size, size)

    def save_geometry(ctx, inputs, output):
        ctx.geometry = inputs[1:]

    def extract_backward(ctx, grad):
        return overlap_add_op(grad, *ctx.geometry), None, None, None

    def overlap_add_backward(ctx, grad):
        return extract_op(grad, *ctx.geometry), None, None, None

    extract_op.register_autograd(extract_backward, setup_context=save_geometry)
    overlap_add_op.register_autograd(overlap_add_backward, setup_context=save_geometry)


def refuse_double_backward(backward_op, op: str, backend: str) -> None:
    """Gives `backward_op` (a custom op computing the backward of public op `op` on `backend`) a
    backward that raises one line naming `op` and the backend that has a double backward, where
    torch would say only that no autograd formula was registered. The first backward is
    untouched: its graph exists only under create_graph=True, and only a backward through that
    graph reaches this."""

    def nothing_to_save(ctx, inputs, output):
        pass

    def refuse(ctx, *grads):
        raise NotImplementedError(
            f"double backward (a gradient of a gradient, as after torch.autograd.grad(..., create_graph=True)) "
            f"through {op} is not implemented on backend {backend!r}; backend='reference' implements it "
            "(e.g. lnlatten_fast.nn.set_backend(module, 'reference'))"
        )

    backward_op.register_autograd(refuse, setup_context=nothing_to_save)


def register_attention_autograd(forward_op, backward_op, backend: str) -> None:
    """forward_op(q, k, v) -> (s, w); backward_op(q, k, v, grad_s, grad_w) -> (grad_q, grad_k,
    grad_v). Registers both fakes and makes backward_op the forward's backward (with no
    backward of its own: `refuse_double_backward`)."""

    # Fakes allocate as the real ops do: contiguous whatever the inputs' strides (empty_like
    # would copy a transposed q's strides, and inductor would then mis-plan the real output).
    @forward_op.register_fake
    def _(q, k, v):
        return q.new_empty(q.shape), q.new_empty(q.shape[0], q.shape[1])

    @backward_op.register_fake
    def _(q, k, v, grad_s, grad_w):
        return q.new_empty(q.shape), q.new_empty(q.shape), q.new_empty(q.shape)

    def setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def backward(ctx, grad_s, grad_w):
        q, k, v = ctx.saved_tensors
        # An output that took no part in the loss arrives as None.
        grad_s = torch.zeros_like(q) if grad_s is None else grad_s
        grad_w = q.new_zeros(q.shape[:2]) if grad_w is None else grad_w
        return backward_op(q, k, v, grad_s.to(q.dtype), grad_w.to(q.dtype))

    forward_op.register_autograd(backward, setup_context=setup)
    refuse_double_backward(backward_op, "l1_nonlocal_attention", backend)

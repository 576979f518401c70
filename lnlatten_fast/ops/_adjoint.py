"""Autograd shared by every backend's patch extraction / overlap-add custom-op pair."""

from __future__ import annotations


def register_patch_adjoints(extract_op, overlap_add_op) -> None:
    """Make extract_patches and overlap_add (custom ops taking (x, grid, patch, stride)) each
    other's backward: they are adjoint linear maps. Also registers overlap-add's fake."""

    def save_geometry(ctx, inputs, output):
        ctx.geometry = inputs[1:]

    def extract_backward(ctx, grad):
        return overlap_add_op(grad, *ctx.geometry), None, None, None

    def overlap_add_backward(ctx, grad):
        return extract_op(grad, *ctx.geometry), None, None, None

    @overlap_add_op.register_fake
    def _(patches, grid, patch, stride):
        size = (grid - 1) * stride + patch
        return patches.new_empty(patches.shape[0], patches.shape[2], size, size)

    extract_op.register_autograd(extract_backward, setup_context=save_geometry)
    overlap_add_op.register_autograd(overlap_add_backward, setup_context=save_geometry)

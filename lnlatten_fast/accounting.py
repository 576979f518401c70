"""FLOPs of LNLAttenNet, counted from its config (analytic; `tests/test_accounting.py` checks the
count against `torch.utils.flop_counter` on the reference backend).

Counted as torch's FLOP counter counts: 2 FLOPs per multiply-add of every convolution,
transposed convolution, linear layer and matrix product. Element-wise work (ReLU, pooling,
the L1 distances of the attention, softmax) is left out: it is memory-bound and small.

    flops = forward_flops(LNLConfig.paper())     # {"unet": ..., "simplenet": ..., "total": ...}
    step = training_step_flops(config)           # forward + backward, per image
    kept = activation_elements(config)           # what one image's forward keeps for the backward

The activations are counted layer by layer as the FLOPs are, so the two stay consistent.
"""

from __future__ import annotations

from .config import LNLConfig

__all__ = ["forward_flops", "training_step_flops", "activation_elements"]


def _conv(c_in: int, c_out: int, k: int, h: int, w: int | None = None) -> int:
    return 2 * c_in * c_out * k * k * h * (h if w is None else w)


def _double_conv(c_in: int, c_out: int, size: int) -> int:
    return _conv(c_in, c_out, 3, size) + _conv(c_out, c_out, 3, size)


def forward_flops(config: LNLConfig) -> dict[str, int]:
    """Forward FLOPs of one image, by part, and their "total"."""
    config.validate()
    size, widths = config.image_size, config.unet_widths
    parts: dict[str, int] = {}

    unet, c_prev = 0, config.in_channels
    for level, width in enumerate(widths):  # encoder: pool, then a double conv
        unet += _double_conv(c_prev, width, size >> level)
        c_prev = width
    for level in range(len(widths) - 2, -1, -1):  # decoder: 2x2 stride-2 transposed conv, double conv
        width, out_size = widths[level], size >> level
        unet += 2 * c_prev * width * 4 * (out_size // 2) ** 2
        unet += _double_conv(2 * width, width, out_size)
        c_prev = width
    parts["unet"] = unet

    geom, m = config.geometry, config.geometry.num_patches
    w0, w1, w2 = config.simplenet_widths
    channels = [widths[0], w0, w0, w1, w1, w2, w2]
    simplenet, side = 0, geom.patch
    for layer in range(6):
        simplenet += m * _conv(channels[layer], channels[layer + 1], 3, side)
        if layer % 2 == 1:
            side //= 2
    parts["simplenet"] = simplenet

    if config.uses_local_attention:
        c1, c2, c3, c4, hidden = config.local_attention_widths
        s, shrink = config.local_feature_side, 2 * (1 - config.local_attention_padding)
        local = (_conv(w2, c1, 3, s - shrink) + _conv(c1, c2, 1, s - shrink) + _conv(c2, c3, 3, s - 2 * shrink)
                 + _conv(c3, c4, 1, s - 2 * shrink) + 2 * c4 * config.local_attention_side ** 2 * hidden
                 + 2 * hidden)
        parts["local_attention"] = m * local

    f5 = size // 16
    nonlocal_ = _double_conv(widths[-1], config.global_width, f5)
    if config.uses_nonlocal_attention:
        d = config.attention_dim
        nonlocal_ += 3 * _conv(widths[-1], d, 1, f5) + 4 * m * m * d  # Q, K, V; R~ = Q Kᵀ and s = R V
    parts["nonlocal"] = nonlocal_

    parts["fusion"] = 2 * m * config.local_feature_dim  # eq. 2: f_en = Σ_i w_g[i] w_l[i] f_i
    h1, h2 = config.head_widths
    parts["head"] = 2 * (config.joint_feature_dim * h1 + h1 * h2 + h2 * config.num_classes)
    parts["total"] = sum(parts.values())
    return parts


def training_step_flops(config: LNLConfig) -> int:
    """Forward + backward FLOPs of one image: each layer's backward is its gradient w.r.t. the
    input and w.r.t. the weights (2x the forward), except the first conv, whose input (the
    image) needs no gradient."""
    first_conv = _conv(config.in_channels, config.unet_widths[0], 3, config.image_size)
    return 3 * forward_flops(config)["total"] - first_conv


def activation_elements(config: LNLConfig) -> int:
    """Elements of the activations one image's training forward keeps for the backward: a lower
    bound, counting the input and the output of every convolution, transposed convolution,
    linear layer and attention product once. Left out: ReLU and pooling outputs, the U-Net's
    concatenations, the windows cut out of F9, dropout masks, and autograd's workspaces, which
    add to it."""
    config.validate()
    size, widths = config.image_size, config.unet_widths
    kept = config.in_channels * size**2
    for level, width in enumerate(widths):  # encoder: two convs per level
        kept += 2 * width * (size >> level) ** 2
    for level in range(len(widths) - 2, -1, -1):  # decoder: a transposed conv and two convs per level
        kept += 3 * widths[level] * (size >> level) ** 2

    geom, m = config.geometry, config.geometry.num_patches
    w0, w1, w2 = config.simplenet_widths
    side = geom.patch
    for width in (w0, w1, w2):  # SimpleNet: two convs, then a 2x2 pool
        kept += m * 2 * width * side**2
        side //= 2
    if config.uses_local_attention:
        c1, c2, c3, c4, hidden = config.local_attention_widths
        s, shrink = config.local_feature_side, 2 * (1 - config.local_attention_padding)
        kept += m * ((c1 + c2) * (s - shrink) ** 2 + (c3 + c4) * (s - 2 * shrink) ** 2 + hidden + 1)

    f5 = size // 16
    kept += 2 * config.global_width * f5**2
    if config.uses_nonlocal_attention:
        kept += 3 * config.attention_dim * f5**2 + m * m + config.global_feature_dim  # Q, K, V; R~; s
    h1, h2 = config.head_widths
    return kept + config.local_feature_dim + config.joint_feature_dim + h1 + h2 + config.num_classes

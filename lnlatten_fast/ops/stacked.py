"""Per-group convolution of stacked maps through the vendor's grouped convolution.

The model keeps one k x k conv per patch with its weights stacked on a leading axis; folding
the patch axis into channels turns all of them into one `F.conv2d(groups=G)` call (cuDNN on
CUDA, oneDNN on CPU). This is the one place that folding is written.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["stacked_conv2d"]


def stacked_conv2d(
    h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int = 0
) -> torch.Tensor:
    """Group g of h (B, G, Cin, H, W) through its own conv weight[g] (G, Cout, Cin, k, k),
    + bias[g] (G, Cout) or no bias. Returns (B, G, Cout, H', W')."""
    batch, groups, c_in, height, width = h.shape
    c_out, kernel = weight.shape[1], weight.shape[-1]
    y = F.conv2d(
        h.reshape(batch, groups * c_in, height, width),
        weight.reshape(groups * c_out, c_in, kernel, kernel),
        None if bias is None else bias.reshape(groups * c_out),
        padding=padding,
        groups=groups,
    )
    return y.reshape(batch, groups, c_out, *y.shape[-2:])

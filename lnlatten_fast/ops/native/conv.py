"""The native backend's 3x3 convolutions: the vendor's grouped convolution (cuDNN on CUDA,
oneDNN on CPU), one group per patch, after the extension's patch extraction."""

from __future__ import annotations

import torch.nn.functional as F

from ...geometry import PatchGeometry
from ..registry import register
from ..stacked import stacked_conv2d
from .patches import extract_patches


@register("grouped_conv3x3", "native")
def grouped_conv3x3(h, weight, bias, relu: bool = True, pool: bool = False):
    y = stacked_conv2d(h, weight, bias, padding=1)
    if relu:
        y = F.relu(y)
    if pool:
        y = F.max_pool2d(y.flatten(0, 1), 2).unflatten(0, y.shape[:2])
    return y


@register("patch_conv3x3", "native")
def patch_conv3x3(f9, weight, bias, geom: PatchGeometry, relu: bool = True):
    return grouped_conv3x3(extract_patches(f9, geom), weight, bias, relu=relu)

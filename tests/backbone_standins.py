"""Torch-only stand-ins for ResNet-18, ConvNeXt-T and ViT-S: the submodule names, forward chains
and output strides of torchvision's / timm's models, with small widths so tests run in seconds.

    python -m lnlatten_fast.train --backbone module:tests.backbone_standins:resnet18_standin

ResNet-18 (torchvision): conv1 (stride 2), bn1, relu, maxpool (stride 2), layer1..layer4 of two
BasicBlocks (layer2..4 halve the map), avgpool, fc. ConvNeXt-T (timm): stem (4x4 stride 4),
stages.0..3 (stages 1..3 open with a 2x2 stride-2 downsample), head. ViT-S/16 (timm):
patch_embed (16 x 16 stride 16), cls_token and pos_embed, blocks.0..11, norm, head.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))) + identity)


class ResNet18Standin(nn.Module):
    def __init__(self, width: int = 8, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths = [width, 2 * width, 4 * width, 8 * width]
        c_in = width
        for i, c_out in enumerate(widths, start=1):
            stride = 1 if i == 1 else 2
            setattr(self, f"layer{i}", nn.Sequential(BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1)))
            c_in = c_out
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class LayerNorm2d(nn.LayerNorm):
    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = LayerNorm2d(dim)
        self.mlp = nn.Sequential(nn.Conv2d(dim, 4 * dim, 1), nn.GELU(), nn.Conv2d(4 * dim, dim, 1))

    def forward(self, x):
        return x + self.mlp(self.norm(self.conv_dw(x)))


class ConvNeXtStage(nn.Module):
    def __init__(self, c_in: int, c_out: int, downsample: bool):
        super().__init__()
        self.downsample = nn.Sequential(LayerNorm2d(c_in), nn.Conv2d(c_in, c_out, 2, 2)) if downsample else nn.Identity()
        self.blocks = nn.Sequential(ConvNeXtBlock(c_out))

    def forward(self, x):
        return self.blocks(self.downsample(x))


class ConvNeXtTinyStandin(nn.Module):
    def __init__(self, dims=(8, 16, 32, 64), num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dims[0], 4, 4), LayerNorm2d(dims[0]))
        self.stages = nn.Sequential(*(ConvNeXtStage(dims[max(i - 1, 0)], dims[i], i > 0) for i in range(4)))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.LayerNorm(dims[-1]),
                                  nn.Linear(dims[-1], num_classes))

    def forward(self, x):
        return self.head(self.stages(self.stem(x)))


class PatchEmbed(nn.Module):
    def __init__(self, dim: int, patch: int = 16):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, dim)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, d))


class ViTBlock(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViTSmallStandin(nn.Module):
    def __init__(self, image_size: int = 64, dim: int = 16, depth: int = 12, heads: int = 2, num_classes: int = 10):
        super().__init__()
        self.patch_embed = PatchEmbed(dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + (image_size // 16) ** 2, dim) * 0.02)
        self.blocks = nn.Sequential(*(ViTBlock(dim, heads) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.head(F.layer_norm(self.norm(self.blocks(x))[:, 0], (x.shape[-1],)))


def resnet18_standin() -> nn.Module:
    return ResNet18Standin()


def convnext_tiny_standin() -> nn.Module:
    return ConvNeXtTinyStandin()


def vit_small_standin() -> nn.Module:
    return ViTSmallStandin()


def not_a_module():
    return "a string"


def resnet18_frozen_stem_standin() -> nn.Module:
    """The ResNet-18 stand-in with conv1 and layer1 frozen by its builder (requires_grad False)."""
    model = ResNet18Standin()
    for module in (model.conv1, model.layer1):
        module.requires_grad_(False)
    return model

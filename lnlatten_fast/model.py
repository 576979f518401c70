"""LNLAttenNet (Shi et al., MIR 2023), laid out like the paper's figure 4 and tables I-III.

    x ──U-Net──> F5 (conv5-2) ──Q,K,V──> L1 non-local attention ──> w_g, s
                  │            └─conv,conv,pool──> g ──(eq. 1)──> g* = (1-α)g + α·s
                  └──> F9 (conv9-2) ──M windows──> SimpleNet_i ──> f_i, local attention_i ──> w_l
    f_en = Σ_i w_g[i]·w_l[i]·f_i (eq. 2);  logits = FC(FC(FC([g*, f_en])))

Per-patch networks keep their weights stacked on a leading patch axis (M, ...), so the whole
ensemble runs as grouped ops and one state_dict serves every backend.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import ops
from .config import LNLConfig

__all__ = ["LNLAttenNet", "LNLOutput"]


class LNLOutput(NamedTuple):
    logits: torch.Tensor  # (B, C)
    nonlocal_weights: torch.Tensor  # w_g (B, M), each row sums to 1
    local_weights: torch.Tensor  # w_l (B, M), in (0, 1)
    features: dict | None = None  # intermediate maps, when asked for with return_features


# ---- building blocks --------------------------------------------------------------------
def double_conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """Encoder widths w0..w4 with 2x2 max-pools; decoder of 2x2 stride-2 transposed convs."""

    def __init__(self, in_channels: int, widths: tuple[int, ...]):
        super().__init__()
        self.down = nn.ModuleList()
        c_prev = in_channels
        for width in widths:
            self.down.append(double_conv(c_prev, width))
            c_prev = width
        self.up = nn.ModuleList()
        self.fuse = nn.ModuleList()
        for width in reversed(widths[:-1]):
            self.up.append(nn.ConvTranspose2d(c_prev, width, 2, stride=2))
            self.fuse.append(double_conv(2 * width, width))
            c_prev = width

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        skips = []
        for i, block in enumerate(self.down):
            if i:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        f5 = x
        for up, fuse, skip in zip(self.up, self.fuse, reversed(skips[:-1])):
            x = fuse(torch.cat([up(x), skip], dim=1))
        return f5, x


class StackedConv(nn.Module):
    """One k x k conv per group (patch), weights stacked (G, Cout, Cin, k, k).

    G is M for per-patch layers, or 1 for a layer shared by every patch.
    """

    def __init__(self, groups: int, c_in: int, c_out: int, kernel_size: int = 3):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(groups, c_out, c_in, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(groups, c_out))

    def stacked(self, num_patches: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.weight.expand(num_patches, *self.weight.shape[1:]), self.bias.expand(
            num_patches, -1
        )

    def forward(self, h: torch.Tensor, padding: int = 0) -> torch.Tensor:
        """Vendor grouped conv of (B, M, Cin, H, W) (the small local-attention layers)."""
        return ops.stacked_conv2d(h, *self.stacked(h.shape[1]), padding=padding)


class StackedLinear(nn.Module):
    """One fully connected layer per group (patch): weight (G, out, in)."""

    def __init__(self, groups: int, d_in: int, d_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(groups, d_out, d_in))
        self.bias = nn.Parameter(torch.empty(groups, d_out))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bmi,moi->bmo", h, self.weight.expand(h.shape[1], -1, -1)) + self.bias


class SimpleNetEnsemble(nn.Module):
    """Table II for all M windows at once: (conv, conv, pool) x 3, per-patch weights."""

    def __init__(self, num_patches: int, c_in: int, widths: tuple[int, int, int], out_size: int | None):
        super().__init__()
        channels = [c_in, widths[0], widths[0], widths[1], widths[1], widths[2], widths[2]]
        self.convs = nn.ModuleList(
            StackedConv(num_patches, channels[i], channels[i + 1]) for i in range(6)
        )
        self.out_size = out_size

    def forward(self, f9: torch.Tensor, geom, backend: str) -> torch.Tensor:
        first = self.convs[0]
        h = ops.patch_conv3x3(f9, first.weight, first.bias, geom, relu=True, backend=backend)
        for i, conv in enumerate(self.convs[1:], start=1):
            pool_after = i % 2 == 1  # layers 2, 4, 6 end a (conv, conv, pool) block
            h = ops.grouped_conv3x3(h, conv.weight, conv.bias, relu=True, pool=pool_after, backend=backend)
        if self.out_size is not None and h.shape[-1] != self.out_size:
            # P // 8 != 6: bring f_i to 6x6 so table III and the 17408-d joint feature hold.
            batch, patches = h.shape[:2]
            h = F.adaptive_avg_pool2d(h.flatten(0, 1), self.out_size)
            h = h.unflatten(0, (batch, patches))
        return h


class LocalAttention(nn.Module):
    """Table III per patch: conv3x3 valid, conv1x1, conv3x3 valid, conv1x1, FC, FC, sigmoid.

    `padding` 1 makes the 3x3 convs keep the side of maps too small for two valid convs
    (LNLConfig.local_attention_padding says when)."""

    def __init__(self, groups: int, c_in: int, widths: tuple[int, ...], in_size: int, padding: int = 0):
        super().__init__()
        self.padding = padding
        c1, c2, c3, c4, hidden = widths
        self.convs = nn.ModuleList(
            [
                StackedConv(groups, c_in, c1, 3),
                StackedConv(groups, c1, c2, 1),
                StackedConv(groups, c2, c3, 3),
                StackedConv(groups, c3, c4, 1),
            ]
        )
        flat = c4 * (in_size - 4 * (1 - padding)) ** 2
        self.fc1 = StackedLinear(groups, flat, hidden)
        self.fc2 = StackedLinear(groups, hidden, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            h = F.relu(conv(h, padding=self.padding if conv.weight.shape[-1] == 3 else 0))
        logit = self.fc2(self.fc1(h.flatten(2)))  # table III: no activation between the FCs
        return torch.sigmoid(logit.squeeze(-1))


def pool_to_grid(x: torch.Tensor, grid: int) -> torch.Tensor:
    """2x2/2 max-pool when that gives exactly grid x grid (the paper), else adaptive max-pool."""
    if x.shape[-1] // 2 == grid and x.shape[-2] // 2 == grid:
        return F.max_pool2d(x, 2)
    return F.adaptive_max_pool2d(x, grid)


def as_regions(x: torch.Tensor) -> torch.Tensor:
    """(B, D, n, n) -> (B, n*n, D): one row per region, row-major like the patch order."""
    return x.flatten(2).transpose(1, 2)


class NonLocalBranch(nn.Module):
    """Table I (Q, K, V) plus the global vector g, both from F5."""

    def __init__(self, c_in: int, attention_dim: int, global_width: int, grid: int, with_attention: bool):
        super().__init__()
        self.grid = grid
        self.global_convs = double_conv(c_in, global_width)
        if with_attention:
            self.query = nn.Conv2d(c_in, attention_dim, 1)
            self.key = nn.Conv2d(c_in, attention_dim, 1)
            self.value = nn.Conv2d(c_in, attention_dim, 1)

    def global_vector(self, f5: torch.Tensor) -> torch.Tensor:
        return as_regions(pool_to_grid(self.global_convs(f5), self.grid))

    def qkv(self, f5: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return tuple(
            as_regions(pool_to_grid(F.relu(proj(f5)), self.grid))
            for proj in (self.query, self.key, self.value)
        )


# ---- the network ------------------------------------------------------------------------
class LNLAttenNet(nn.Module):
    def __init__(self, config: LNLConfig | None = None):
        super().__init__()
        config = LNLConfig() if config is None else config
        if not isinstance(config, LNLConfig):
            raise TypeError(f"config must be an LNLConfig, got {type(config).__name__}")
        config.validate()
        self.config = config
        self.geometry = config.geometry
        self.backend = config.backend
        m = self.geometry.num_patches

        self.unet = UNet(config.in_channels, config.unet_widths)
        self.simplenets = SimpleNetEnsemble(
            m, config.unet_widths[0], config.simplenet_widths, config.local_feature_size
        )
        self.local_attention = None
        if config.uses_local_attention:
            self.local_attention = LocalAttention(
                1 if config.share_local_attention else m,
                config.simplenet_widths[-1],
                config.local_attention_widths,
                config.local_feature_side,
                config.local_attention_padding,
            )
        self.nonlocal_branch = NonLocalBranch(
            config.unet_widths[-1],
            config.attention_dim,
            config.global_width,
            self.geometry.grid,
            config.uses_nonlocal_attention,
        )
        hidden1, hidden2 = config.head_widths
        self.head = nn.Sequential(
            nn.Linear(config.joint_feature_dim, hidden1),
            nn.ReLU(inplace=True),
            nn.Dropout(config.dropout),
            nn.Linear(hidden1, hidden2),
            nn.ReLU(inplace=True),
            nn.Dropout(config.dropout),
            nn.Linear(hidden2, config.num_classes),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform (or He-uniform, `config.init`) weights, each patch's slice on its own
        fans; zero biases."""
        if self.config.init == "xavier":
            init_weight = nn.init.xavier_uniform_
        else:
            init_weight = lambda w: nn.init.kaiming_uniform_(w, nonlinearity="relu")  # noqa: E731
        for module in self.modules():
            if isinstance(module, (StackedConv, StackedLinear)):
                for group in module.weight.data:
                    init_weight(group)
                nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                init_weight(module.weight)
                nn.init.zeros_(module.bias)

    def set_backend(self, backend: str) -> "LNLAttenNet":
        """Run on `backend` from now on; `config.backend` says so too (a new config object, so the
        caller's is left as it was). LNLConfig.validate rejects an unknown name."""
        self.config = self.config.replace(backend=backend)
        self.backend = backend
        return self

    def channels_last(self) -> "LNLAttenNet":
        """Channels-last storage for the 2-D convolutions (stacked 5-D weights keep theirs)."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                module.to(memory_format=torch.channels_last)
        return self

    def regularized_weights(self) -> list[torch.Tensor]:
        """The conv and linear weights (not biases) that eq. 3's L2 term covers."""
        return [p for name, p in self.named_parameters() if name.endswith("weight")]

    def forward(self, x: torch.Tensor, return_features: bool = False) -> LNLOutput:
        cfg = self.config
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ValueError(f"x must be a (B, {cfg.in_channels}, H, W) tensor, got {getattr(x, 'shape', type(x))}")
        if tuple(x.shape[1:]) != (cfg.in_channels, cfg.image_size, cfg.image_size):
            raise ValueError(
                f"x must be (B, {cfg.in_channels}, {cfg.image_size}, {cfg.image_size}) for this "
                f"config, got {tuple(x.shape)}"
            )
        batch, m = x.shape[0], self.geometry.num_patches

        f5, f9 = self.unet(x)
        pooled = self.simplenets(f9, self.geometry, self.backend)  # (B, M, C, 6, 6)
        local_features = pooled.flatten(2)  # f_i
        if self.local_attention is not None:
            local_weights = self.local_attention(pooled)
        else:
            local_weights = x.new_ones(batch, m)

        g = self.nonlocal_branch.global_vector(f5)  # (B, M, 512)
        if cfg.uses_nonlocal_attention:
            q, k, v = self.nonlocal_branch.qkv(f5)
            s, nonlocal_weights = ops.l1_nonlocal_attention(q, k, v, backend=self.backend)
            g_star = (1.0 - cfg.alpha) * g + cfg.alpha * s  # eq. 1
        else:
            nonlocal_weights = x.new_full((batch, m), 1.0 / m)
            g_star = g

        ensemble = torch.einsum("bm,bmf->bf", nonlocal_weights * local_weights, local_features)  # eq. 2
        joint = torch.cat([g_star.flatten(1), ensemble], dim=1)
        logits = self.head(joint)
        features = None
        if return_features:
            features = dict(
                f5=f5, f9=f9, simplenet=pooled, local_features=local_features, g_star=g_star, joint=joint
            )
        return LNLOutput(logits, nonlocal_weights, local_weights, features)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def l2_penalty(model: LNLAttenNet) -> torch.Tensor:
    """Σ‖W‖² over conv and linear weights."""
    return sum(w.square().sum() for w in model.regularized_weights())


def lnl_loss(
    logits: torch.Tensor, target: torch.Tensor, model: LNLAttenNet, l2_lambda: float | None = None
) -> torch.Tensor:
    """Eq. 3: cross-entropy + λ·Σ‖W‖² (λ from the model's config unless given)."""
    l2_lambda = model.config.l2_lambda if l2_lambda is None else l2_lambda
    if not math.isfinite(l2_lambda) or l2_lambda < 0:
        raise ValueError(f"l2_lambda must be a finite number >= 0, got {l2_lambda}")
    loss = F.cross_entropy(logits, target)
    if l2_lambda:
        loss = loss + l2_lambda * l2_penalty(model)
    return loss

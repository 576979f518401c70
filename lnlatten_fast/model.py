"""LNLAttenNet (Shi et al., MIR 2023), laid out like the paper's figure 4 and tables I-III.

    x ──U-Net──> F5 (conv5-2) ──Q,K,V──> L1 non-local attention ──> w_g, s
                  │            └─conv,conv,pool──> g ──(eq. 1)──> g* = (1-α)g + α·s
                  └──> F9 (conv9-2) ──M windows──> SimpleNet_i ──> f_i, local attention_i ──> w_l
    f_en = Σ_i w_g[i]·w_l[i]·f_i (eq. 2);  logits = FC(FC(FC([g*, f_en])))

The network is the U-Net backbone (`unet`) and the drop-in :class:`~lnlatten_fast.nn.LNLHead`
(`head`) on its F9 and F5. With `config.backbone` other than "unet", `backbone` (a
:class:`~lnlatten_fast.backbones.BackboneFeatures`) replaces the U-Net and the head takes its
two levels instead. Per-patch networks keep their weights stacked on a leading patch
axis (M, ...), so the whole ensemble runs as grouped ops and one state_dict serves every backend.
"""

from __future__ import annotations

import math
import re
import warnings

import torch
import torch.nn as nn

from .backbones import BackboneFeatures, build_backbone, smallest_high_size
from .backbones import load_backbone_weights as _load_backbone_weights
from .config import UNET, LNLConfig
from .nn import LNLHead, LNLOutput, double_conv, initialize, regularized_weights

__all__ = ["LNLAttenNet", "LNLOutput", "UNet", "migrate_state_dict", "count_parameters", "l2_penalty", "lnl_loss"]


class UNet(nn.Module):
    """Encoder widths w0..w4 with 2x2 max-pools; decoder of 2x2 stride-2 transposed convs.
    Returns (F5, F9): the bottleneck (w4 channels, 1/16 of the input) and the last decoder map
    (w0 channels, full size)."""

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
                x = nn.functional.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        f5 = x
        for up, fuse, skip in zip(self.up, self.fuse, reversed(skips[:-1])):
            x = fuse(torch.cat([up(x), skip], dim=1))
        return f5, x


# ---- checkpoints of the flat layout -------------------------------------------------------------
# Before the blocks became lnlatten_fast.nn modules, their parameters sat on the network itself.
_FLAT_KEYS = (
    (re.compile(r"^simplenets\."), "head.patches."),
    (re.compile(r"^local_attention\."), "head.local_attention."),
    (re.compile(r"^nonlocal_branch\.global_convs\."), "head.global_convs."),
    (re.compile(r"^nonlocal_branch\.(query|key|value)\."), r"head.nonlocal_attention.\1."),
    (re.compile(r"^head\.(\d+)\."), r"head.classifier.\1."),
)


def migrate_state_dict(state: dict) -> dict:
    """`state` with the flat layout's keys (simplenets.*, nonlocal_branch.*, head.<i>.*) renamed
    to the current ones; a state_dict already current is returned as it is. Warns once per
    migration, saying what was renamed."""
    if not any(key.startswith(("simplenets.", "nonlocal_branch.")) for key in state):
        return state
    migrated = {}
    for key, value in state.items():
        for pattern, replacement in _FLAT_KEYS:
            if pattern.match(key):
                key = pattern.sub(replacement, key, count=1)
                break
        migrated[key] = value
    warnings.warn(
        "this LNLAttenNet state_dict has the flat key layout of checkpoints written before lnlatten_fast.nn "
        "(simplenets.*, local_attention.*, nonlocal_branch.*, head.<i>.*); it was migrated on load to head.patches.*, "
        "head.local_attention.*, head.global_convs.*, head.nonlocal_attention.*, head.classifier.<i>.* (save it "
        "again to store the new keys)",
        stacklevel=3,
    )
    return migrated


def _migrate_on_load(module, state_dict, prefix, *args) -> None:
    """load_state_dict pre-hook: rename the flat layout's keys in place."""
    own = {key[len(prefix):]: state_dict[key] for key in list(state_dict) if key.startswith(prefix)}
    migrated = migrate_state_dict(own)
    if migrated is own:
        return
    for key in own:
        del state_dict[prefix + key]
    state_dict.update({prefix + key: value for key, value in migrated.items()})


# ---- the network ----------------------------------------------------------------------------------
class LNLAttenNet(nn.Module):
    """The U-Net backbone and the LNL head on its F9 (high resolution) and F5 (low resolution);
    or, with `config.backbone`, that backbone's two levels (lnlatten_fast.backbones).

    A backbone other than the U-Net keeps its own initialisation (only the head gets
    `config.init`) and, when `load_backbone_weights`, the weights of `config.backbone_weights`
    (its one-line report in `backbone_weights_report`, None when nothing was loaded; built on the
    meta device, nothing is loaded). Pass False when a checkpoint's weights replace them anyway,
    so the file need not exist where the checkpoint is used.
    """

    def __init__(self, config: LNLConfig | None = None, *, load_backbone_weights: bool = True):
        super().__init__()
        config = LNLConfig() if config is None else config
        if not isinstance(config, LNLConfig):
            raise TypeError(f"config must be an LNLConfig, got {type(config).__name__}")
        config.validate()
        self.config = config
        self.backend = config.backend
        self.backbone_weights_report: str | None = None
        if config.backbone == UNET:
            self.unet = UNet(config.in_channels, config.unet_widths)
            self.head = LNLHead(config.unet_widths[0], config.unet_widths[-1], config.image_size, config,
                                initialize_parameters=False)
            self.geometry = self.head.geometry
            self.reset_parameters()
        else:
            self.backbone = BackboneFeatures(build_backbone(config.backbone), config.backbone_levels,
                                             config.image_size, config.in_channels,
                                             smallest_high_size(config.num_patches, config.overlap),
                                             spec=config.backbone)
            self.head = LNLHead(self.backbone.high_channels, self.backbone.low_channels, self.backbone.high_size,
                                config)
            # Where the head's windows (on the high map) lie on the image: what the figures draw and occlude.
            self.geometry = self.head.geometry.scaled_to(config.image_size)
            on_meta = any(p.is_meta for p in self.backbone.body.parameters())  # counted, not allocated
            if config.backbone_weights is not None and load_backbone_weights and not on_meta:
                self.backbone_weights_report = _load_backbone_weights(self.backbone.body, config.backbone_weights)
        self.register_load_state_dict_pre_hook(_migrate_on_load)

    @property
    def local_attention(self):
        """The head's local attention (None in Model-NonLocal and Model-S)."""
        return self.head.local_attention

    def reset_parameters(self) -> None:
        """Xavier-uniform (or He-uniform, `config.init`) weights, each patch's slice on its own
        fans; zero biases (the head's only, on a backbone other than the U-Net)."""
        initialize(self if self.config.backbone == UNET else self.head, self.config.init)

    def set_backend(self, backend: str) -> "LNLAttenNet":
        """Run on `backend` from now on; `config.backend` says so too (a new config object, so the
        caller's is left as it was). LNLConfig.validate rejects an unknown name."""
        self.config = self.config.replace(backend=backend)
        self.backend = backend
        self.head.set_backend(backend)
        return self

    def channels_last(self) -> "LNLAttenNet":
        """Channels-last storage for the 2-D convolutions (stacked 5-D weights keep theirs)."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                module.to(memory_format=torch.channels_last)
        return self

    def regularized_weights(self) -> list[torch.Tensor]:
        """The conv and linear weights (not biases) that eq. 3's L2 term covers."""
        return regularized_weights(self)

    def forward(self, x: torch.Tensor, return_features: bool = False) -> LNLOutput:
        cfg = self.config
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ValueError(f"x must be a (B, {cfg.in_channels}, H, W) tensor, got {getattr(x, 'shape', type(x))}")
        if tuple(x.shape[1:]) != (cfg.in_channels, cfg.image_size, cfg.image_size):
            raise ValueError(
                f"x must be (B, {cfg.in_channels}, {cfg.image_size}, {cfg.image_size}) for this "
                f"config, got {tuple(x.shape)}"
            )
        if cfg.backbone == UNET:
            low, high = self.unet(x)  # F5, F9
        else:
            high, low = self.backbone(x)
        out = self.head(high, low, return_features)
        if return_features:
            out = out._replace(features=dict(f5=low, f9=high, **out.features))
        return out


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def l2_penalty(model: nn.Module) -> torch.Tensor:
    """Σ‖W‖² over the conv and linear weights of any module (LNLAttenNet, or a backbone + LNLHead)."""
    return sum(w.square().sum() for w in regularized_weights(model))


def lnl_loss(
    logits: torch.Tensor, target: torch.Tensor, model: nn.Module, l2_lambda: float | None = None
) -> torch.Tensor:
    """Eq. 3: cross-entropy + λ·Σ‖W‖² (λ from the model's config unless given; a model without
    a config needs it given)."""
    l2_lambda = model.config.l2_lambda if l2_lambda is None else l2_lambda
    if not math.isfinite(l2_lambda) or l2_lambda < 0:
        raise ValueError(f"l2_lambda must be a finite number >= 0, got {l2_lambda}")
    loss = nn.functional.cross_entropy(logits, target)
    if l2_lambda:
        loss = loss + l2_lambda * l2_penalty(model)
    return loss

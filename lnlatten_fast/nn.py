"""LNLAttenNet's blocks as drop-in modules: put a local–non-local head on any backbone.

    import lnlatten_fast as lf
    head = lf.nn.LNLHead(high_channels=64, low_channels=512, high_size=56, num_classes=7)
    out = head(high, low)      # high (B, 64, 56, 56), low (B, 512, h, w): any CNN's two maps
    out.logits, out.nonlocal_weights, out.local_weights

The blocks, bottom up (shapes for the paper's network: M = 16 windows of P = 48 px on a 144 px
F9 with 64 channels, and a 9 x 9 F5 with 1024):

- :class:`PatchEnsemble`: the M overlapping windows of a map (a :class:`PatchGeometry`), each
  through its own SimpleNet (table II), run as grouped fused ops. (B, C, S, S) -> (B, M, 256, 6, 6).
- :class:`LocalAttention`: table III per window. (B, M, 256, 6, 6) -> w_l (B, M) in (0, 1).
- :class:`L1NonLocalAttention`: Q, K, V 1x1 projections of a low-resolution map, pooled to the
  n x n regions, and the fused L1 attention. (B, 1024, 9, 9) -> s (B, M, 512), w_g (B, M).
- :class:`LNLHead`: the three above, the global vector g, eqs. 1-2 and the FC head.

Per-window layers keep their weights stacked on a leading window axis (M, ...), so one
state_dict serves every backend; `backend` picks the op implementation (`lf.backends()`).

Double backward (a gradient of a gradient, e.g. a gradient penalty through
`torch.autograd.grad(..., create_graph=True)`) needs `backend="reference"`: on "native" the
attention, on "triton" the attention and the window convolutions raise NotImplementedError
naming the op and `backend="reference"` when a backward reaches them through such a graph.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as torch_nn
import torch.nn.functional as F

from . import ops
from .config import BACKENDS, INITS, MIN_WINDOW, LNLConfig, local_attention_padding, local_feature_side
from .errors import ParameterError
from .geometry import PatchGeometry

__all__ = [
    "LNLOutput", "StackedConv", "StackedLinear", "PatchEnsemble", "LocalAttention", "L1NonLocalAttention", "LNLHead",
    "double_conv", "initialize", "regularized_weights", "set_backend", "pool_to_grid", "as_regions",
]


class LNLOutput(NamedTuple):
    logits: torch.Tensor  # (B, C)
    nonlocal_weights: torch.Tensor  # w_g (B, M), each row sums to 1
    local_weights: torch.Tensor  # w_l (B, M), in (0, 1)
    features: dict | None = None  # intermediate maps, when asked for with return_features


def double_conv(c_in: int, c_out: int) -> torch_nn.Sequential:
    return torch_nn.Sequential(
        torch_nn.Conv2d(c_in, c_out, 3, padding=1),
        torch_nn.ReLU(inplace=True),
        torch_nn.Conv2d(c_out, c_out, 3, padding=1),
        torch_nn.ReLU(inplace=True),
    )


class StackedConv(torch_nn.Module):
    """One k x k conv per group (window), weights stacked (G, Cout, Cin, k, k).

    G is M for per-window layers, or 1 for a layer shared by every window.
    """

    def __init__(self, groups: int, c_in: int, c_out: int, kernel_size: int = 3):
        super().__init__()
        self.weight = torch_nn.Parameter(torch.empty(groups, c_out, c_in, kernel_size, kernel_size))
        self.bias = torch_nn.Parameter(torch.empty(groups, c_out))

    def stacked(self, num_patches: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.weight.expand(num_patches, *self.weight.shape[1:]), self.bias.expand(num_patches, -1)

    def forward(self, h: torch.Tensor, padding: int = 0) -> torch.Tensor:
        """Vendor grouped conv of (B, M, Cin, H, W) (the small local-attention layers)."""
        return ops.stacked_conv2d(h, *self.stacked(h.shape[1]), padding=padding)


class StackedLinear(torch_nn.Module):
    """One fully connected layer per group (window): weight (G, out, in)."""

    def __init__(self, groups: int, d_in: int, d_out: int):
        super().__init__()
        self.weight = torch_nn.Parameter(torch.empty(groups, d_out, d_in))
        self.bias = torch_nn.Parameter(torch.empty(groups, d_out))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bmi,moi->bmo", h, self.weight.expand(h.shape[1], -1, -1)) + self.bias


def initialize(module: torch_nn.Module, init: str = "xavier") -> None:
    """The paper's init on every conv and linear layer of `module`: Xavier-uniform weights (or
    He-uniform, "kaiming"), each window's slice of a stacked weight on its own fans; zero biases."""
    if init not in INITS:
        raise ParameterError("init", f"must be one of {INITS}, got {init!r}")
    if init == "xavier":
        init_weight = torch_nn.init.xavier_uniform_
    else:
        init_weight = lambda w: torch_nn.init.kaiming_uniform_(w, nonlinearity="relu")  # noqa: E731
    for layer in module.modules():
        if isinstance(layer, (StackedConv, StackedLinear)):
            for group in layer.weight.data:
                init_weight(group)
            torch_nn.init.zeros_(layer.bias)
        elif isinstance(layer, (torch_nn.Conv2d, torch_nn.ConvTranspose2d, torch_nn.Linear)):
            init_weight(layer.weight)
            torch_nn.init.zeros_(layer.bias)


_WEIGHTED = (StackedConv, StackedLinear, torch_nn.Conv2d, torch_nn.ConvTranspose2d, torch_nn.Linear)


def regularized_weights(module: torch_nn.Module) -> list[torch.Tensor]:
    """The conv and linear weights (not biases, not norm layers) inside `module`: what eq. 3's
    L2 term covers."""
    return [layer.weight for layer in module.modules() if isinstance(layer, _WEIGHTED)]


def set_backend(module: torch_nn.Module, backend: str) -> None:
    """Run every block inside `module` on `backend` from now on."""
    if backend not in BACKENDS:
        raise ParameterError("backend", f"must be one of {', '.join(BACKENDS)}, got {backend!r}")
    for layer in module.modules():
        if isinstance(layer, (PatchEnsemble, L1NonLocalAttention, LNLHead)):
            layer.backend = backend


def _check_input(name: str, x, expected: tuple, owner: str, parameter: torch.Tensor) -> None:
    """A block's forward argument `name`: a tensor of the `expected` shape (ints must match, strings
    name free sizes) as `owner` was built for, in the dtype and on the device of the block's
    `parameter` (under autocast, any dtype autocast casts). Checked here so that each message
    names the block's own argument, not the op's underneath."""
    shape = "(" + ", ".join(map(str, expected)) + ")"
    if not isinstance(x, torch.Tensor) or x.dim() != len(expected):
        raise ValueError(f"{name} must be a {shape} tensor, got {getattr(x, 'shape', type(x))}")
    if any(isinstance(want, int) and got != want for got, want in zip(x.shape, expected)):
        raise ValueError(f"{name} must be {shape} as {owner} was built for, got {tuple(x.shape)}")
    if x.device != parameter.device:
        raise ValueError(f"{name} is on {x.device} but {owner}'s parameters are on {parameter.device}")
    autocast = ops._autocast_dtype(x.device) is not None and x.dtype in ops._AUTOCAST_ELIGIBLE
    if x.dtype != parameter.dtype and not autocast:
        raise TypeError(f"{name} must have dtype {parameter.dtype} as {owner}'s parameters do (or float32, "
                        f"float16 or bfloat16 under autocast), got {x.dtype}")


def _map_shape(channels: int, size: int | None) -> tuple:
    return ("B", channels, size, size) if size is not None else ("B", channels, "h", "w")


# ---- the local branch ---------------------------------------------------------------------------
class PatchEnsemble(torch_nn.Module):
    """Table II for every window of a map at once: (conv, conv, 2x2 pool) x 3, each window with
    its own weights, zero padding at the window's border.

    x (B, in_channels, S, S) with S = geometry.image_size -> (B, M, widths[-1], s, s), where s is
    `out_size` (the map adaptive-average-pooled to it) or, with `out_size=None`, the natural P // 8.
    Parameters get `init` (see :func:`initialize`; None leaves them to the caller). Double
    backward: every backend but "triton" (see the module's docstring).
    """

    def __init__(self, geometry: PatchGeometry, in_channels: int, widths: tuple[int, int, int] = (64, 128, 256),
                 out_size: int | None = 6, backend: str = "auto", init: str | None = "xavier"):
        super().__init__()
        if geometry.patch < MIN_WINDOW:
            raise ParameterError("geometry", f"has {geometry.patch} px windows; SimpleNet's three 2x2 pools need "
                                 f">= {MIN_WINDOW} px")
        self.geometry = geometry
        self.in_channels = in_channels
        self.out_size = out_size
        self.out_side = local_feature_side(geometry.patch, out_size)
        self.backend = backend
        channels = [in_channels, widths[0], widths[0], widths[1], widths[1], widths[2], widths[2]]
        self.convs = torch_nn.ModuleList(StackedConv(geometry.num_patches, channels[i], channels[i + 1])
                                         for i in range(6))
        if init is not None:
            initialize(self, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = self.convs[0]
        _check_input("x", x, _map_shape(self.in_channels, self.geometry.image_size), "PatchEnsemble", first.weight)
        h = ops.patch_conv3x3(x, first.weight, first.bias, self.geometry, relu=True, backend=self.backend)
        for i, conv in enumerate(self.convs[1:], start=1):
            pool_after = i % 2 == 1  # layers 2, 4, 6 end a (conv, conv, pool) block
            h = ops.grouped_conv3x3(h, conv.weight, conv.bias, relu=True, pool=pool_after, backend=self.backend)
        if self.out_size is not None and h.shape[-1] != self.out_size:
            # P // 8 != out_size: bring f_i to it so table III and the joint feature keep their size.
            batch, patches = h.shape[:2]
            h = F.adaptive_avg_pool2d(h.flatten(0, 1), self.out_size).unflatten(0, (batch, patches))
        return h


class LocalAttention(torch_nn.Module):
    """Table III per window: conv3x3 valid, conv1x1, conv3x3 valid, conv1x1, FC, FC, sigmoid.

    f (B, M, in_channels, s, s) -> w_l (B, M) in (0, 1). `shared` uses one set of weights for
    every window. Maps smaller than 5 x 5 get padded 3x3 convs (two valid ones would leave
    nothing). It runs vendor grouped convs on every backend (no fused op to choose). Parameters
    get `init` (None leaves them to the caller).
    """

    def __init__(self, num_patches: int, in_channels: int, in_size: int,
                 widths: tuple[int, int, int, int, int] = (256, 128, 128, 64, 64), shared: bool = False,
                 init: str | None = "xavier"):
        super().__init__()
        c1, c2, c3, c4, hidden = widths
        groups = 1 if shared else num_patches
        self.in_shape = ("B", "M" if shared else num_patches, in_channels, in_size, in_size)
        self.padding = local_attention_padding(in_size)
        self.convs = torch_nn.ModuleList([
            StackedConv(groups, in_channels, c1, 3),
            StackedConv(groups, c1, c2, 1),
            StackedConv(groups, c2, c3, 3),
            StackedConv(groups, c3, c4, 1),
        ])
        flat = c4 * (in_size - 4 * (1 - self.padding)) ** 2
        self.fc1 = StackedLinear(groups, flat, hidden)
        self.fc2 = StackedLinear(groups, hidden, 1)
        if init is not None:
            initialize(self, init)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        _check_input("f", f, self.in_shape, "LocalAttention", self.convs[0].weight)
        h = f
        for conv in self.convs:
            h = F.relu(conv(h, padding=self.padding if conv.weight.shape[-1] == 3 else 0))
        logit = self.fc2(self.fc1(h.flatten(2)))  # table III: no activation between the FCs
        return torch.sigmoid(logit.squeeze(-1))


# ---- the non-local branch -----------------------------------------------------------------------
def pool_to_grid(x: torch.Tensor, grid: int) -> torch.Tensor:
    """2x2/2 max-pool when that gives exactly grid x grid (the paper), else adaptive max-pool."""
    if x.shape[-1] // 2 == grid and x.shape[-2] // 2 == grid:
        return F.max_pool2d(x, 2)
    return F.adaptive_max_pool2d(x, grid)


def as_regions(x: torch.Tensor) -> torch.Tensor:
    """(B, D, n, n) -> (B, n*n, D): one row per region, row-major like the window order."""
    return x.flatten(2).transpose(1, 2)


class L1NonLocalAttention(torch_nn.Module):
    """Table I and SPEC §1's attention: Q, K, V = ReLU(1x1 conv) of a low-resolution map, each
    pooled to the grid x grid regions, then R = QKᵀ / Σ|QKᵀ| (rows), w_g = column mean of R,
    s = R V, as one fused op.

    low (B, in_channels, h, w) -> (s (B, grid², attention_dim), w_g (B, grid²)). Parameters get
    `init` (None: torch's default Conv2d init). Double backward: `backend="reference"` only (see
    the module's docstring).
    """

    def __init__(self, in_channels: int, attention_dim: int, grid: int, backend: str = "auto",
                 init: str | None = "xavier"):
        super().__init__()
        self.in_channels = in_channels
        self.grid = grid
        self.backend = backend
        self.query = torch_nn.Conv2d(in_channels, attention_dim, 1)
        self.key = torch_nn.Conv2d(in_channels, attention_dim, 1)
        self.value = torch_nn.Conv2d(in_channels, attention_dim, 1)
        if init is not None:
            initialize(self, init)

    def qkv(self, low: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return tuple(as_regions(pool_to_grid(F.relu(proj(low)), self.grid)) for proj in (self.query, self.key, self.value))

    def forward(self, low: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_input("low", low, _map_shape(self.in_channels, None), "L1NonLocalAttention", self.query.weight)
        q, k, v = self.qkv(low)
        return ops.l1_nonlocal_attention(q, k, v, backend=self.backend)


# ---- the head -----------------------------------------------------------------------------------
class LNLHead(torch_nn.Module):
    """The local–non-local head on two feature maps of any backbone (paper fig. 4 after the U-Net).

        high (B, high_channels, high_size, high_size) ──M windows──> PatchEnsemble ──> f_i, LocalAttention ──> w_l
        low  (B, low_channels, h, w) ──L1NonLocalAttention──> s, w_g;  ──conv, conv, pool──> g
        g* = (1 - α) g + α s (eq. 1);  f_en = Σ_i w_g[i] w_l[i] f_i (eq. 2);  logits = FC(FC(FC([g*, f_en])))

    The head's fields come from `config` (default the paper's LNLConfig) with `changes` applied:
    num_patches, overlap, alpha, variant, num_classes, the SimpleNet, local-attention and head
    widths, attention_dim, global_width, dropout, local_feature_size, share_local_attention, init
    and backend. Its image_size, in_channels and unet_widths describe the U-Net and are not used:
    the windows tile `high`, whose side is `high_size`. The parameters get the config's `init`;
    `initialize_parameters=False` leaves that to the caller (LNLAttenNet initialises backbone and
    head in one pass, so a seed gives the weights it always gave). Double backward:
    `backend="reference"` only, as for :class:`L1NonLocalAttention` (see the module's docstring).
    """

    def __init__(self, high_channels: int, low_channels: int, high_size: int, config: LNLConfig | None = None,
                 *, initialize_parameters: bool = True, **changes):
        super().__init__()
        config = LNLConfig() if config is None else config
        if not isinstance(config, LNLConfig):
            raise TypeError(f"config must be an LNLConfig, got {type(config).__name__}")
        config = config.replace(**changes) if changes else config
        for name, value in (("high_channels", high_channels), ("low_channels", low_channels), ("high_size", high_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ParameterError(name, f"must be a positive int, got {value!r}")
        try:
            geometry = PatchGeometry.for_image(high_size, config.num_patches, config.overlap)
        except ValueError as error:
            raise ParameterError("high_size", f"{high_size} cannot hold {config.num_patches} windows "
                                 f"(overlap {config.overlap}): {error}") from None
        if geometry.patch < MIN_WINDOW:
            raise ParameterError("high_size", f"{high_size} with {config.num_patches} windows gives {geometry.patch} px "
                                 f"windows; SimpleNet's three 2x2 pools need >= {MIN_WINDOW} px: use a larger map "
                                 f"or fewer num_patches")
        self.config = config
        self.geometry = geometry
        self.high_channels, self.low_channels, self.high_size = high_channels, low_channels, high_size
        self.backend = config.backend
        m = geometry.num_patches

        # Registration order is the optimizer's parameter order: kept as the flat model had it.
        # The blocks are initialised below, in one pass (init=None here).
        self.patches = PatchEnsemble(geometry, high_channels, config.simplenet_widths, config.local_feature_size,
                                     config.backend, init=None)
        side = self.patches.out_side
        self.local_attention = None
        if config.uses_local_attention:
            self.local_attention = LocalAttention(m, config.simplenet_widths[-1], side, config.local_attention_widths,
                                                  shared=config.share_local_attention, init=None)
        self.global_convs = double_conv(low_channels, config.global_width)
        self.nonlocal_attention = None
        if config.uses_nonlocal_attention:
            self.nonlocal_attention = L1NonLocalAttention(low_channels, config.attention_dim, geometry.grid,
                                                          config.backend, init=None)
        hidden1, hidden2 = config.head_widths
        joint = config.global_width * m + config.simplenet_widths[-1] * side**2
        self.classifier = torch_nn.Sequential(
            torch_nn.Linear(joint, hidden1),
            torch_nn.ReLU(inplace=True),
            torch_nn.Dropout(config.dropout),
            torch_nn.Linear(hidden1, hidden2),
            torch_nn.ReLU(inplace=True),
            torch_nn.Dropout(config.dropout),
            torch_nn.Linear(hidden2, config.num_classes),
        )
        if initialize_parameters:
            self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform (or He-uniform, `config.init`) weights, each window's slice on its own
        fans; zero biases."""
        initialize(self, self.config.init)

    def set_backend(self, backend: str) -> "LNLHead":
        set_backend(self, backend)
        self.config = self.config.replace(backend=backend)
        return self

    def forward(self, high: torch.Tensor, low: torch.Tensor, return_features: bool = False) -> LNLOutput:
        _check_input("high", high, _map_shape(self.high_channels, self.high_size), "LNLHead(high_channels, high_size)",
                     self.patches.convs[0].weight)
        _check_input("low", low, _map_shape(self.low_channels, None), "LNLHead(low_channels)",
                     self.global_convs[0].weight)
        if low.shape[0] != high.shape[0]:
            raise ValueError(f"high and low must hold the same images, got batches {high.shape[0]} and {low.shape[0]}")
        cfg, batch, m = self.config, high.shape[0], self.geometry.num_patches

        pooled = self.patches(high)  # (B, M, C, s, s)
        local_features = pooled.flatten(2)  # f_i
        local_weights = self.local_attention(pooled) if self.local_attention is not None else high.new_ones(batch, m)
        g = as_regions(pool_to_grid(self.global_convs(low), self.geometry.grid))  # (B, M, global_width)
        if self.nonlocal_attention is not None:
            s, nonlocal_weights = self.nonlocal_attention(low)
            g_star = (1.0 - cfg.alpha) * g + cfg.alpha * s  # eq. 1
        else:
            nonlocal_weights = high.new_full((batch, m), 1.0 / m)
            g_star = g
        ensemble = torch.einsum("bm,bmf->bf", nonlocal_weights * local_weights, local_features)  # eq. 2
        joint = torch.cat([g_star.flatten(1), ensemble], dim=1)
        logits = self.classifier(joint)
        features = None
        if return_features:
            features = dict(simplenet=pooled, local_features=local_features, g=g, g_star=g_star, joint=joint)
        return LNLOutput(logits, nonlocal_weights, local_weights, features)

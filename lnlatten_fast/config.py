"""LNLConfig: every knob of the model, as a plain dataclass, and the preset table.

`LNLConfig()` is the paper's configuration (SPEC §1); `LNLConfig.tiny()` the CPU preset with
all widths divided by 8. :data:`PRESETS` is the one table of named starting points: each
preset's model config, batch size and learning rate.

Fields a command line may set carry their flag's help text in their metadata (`flag_help`);
`lnlatten_fast.cli` derives the flags from it, so a field is exposed by writing it here.
Every rule on the fields lives in :meth:`LNLConfig.validate`; a broken one raises
:class:`~lnlatten_fast.errors.ParameterError` naming the field.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from .errors import ParameterError
from .geometry import PatchGeometry

__all__ = ["LNLConfig", "Preset", "PRESETS", "VARIANTS", "BACKENDS", "INITS", "MIN_WINDOW", "flag_help",
           "local_feature_side", "local_attention_padding", "UNET", "FAMILIES", "check_backbone_spec", "parse_levels"]

# Table IV: LNLAttenNet, Model-Local, Model-NonLocal, Model-S.
VARIANTS = ("full", "local", "nonlocal", "simple")
BACKENDS = ("auto", "reference", "native", "triton")
INITS = ("xavier", "kaiming")
# U-Net downsamples four times (2x2 max-pool), so the input must divide by 2**4.
UNET_DOWNSAMPLING = 16
MIN_WINDOW = 8  # SimpleNet pools its windows 2x2 three times
#: The paper's backbone; the other specs name a family and what to build (lnlatten_fast.backbones).
UNET = "unet"
#: Backbone spec prefixes: the user's own module, and the two libraries (each its extra of that name).
FAMILIES = ("module", "timm", "torchvision")


def local_feature_side(patch: int, local_feature_size: int | None) -> int:
    """The side of each f_i: `local_feature_size`, or SimpleNet's natural P // 8 (three 2x2
    pools) when it is None."""
    return patch // 8 if local_feature_size is None else local_feature_size


def local_attention_padding(side: int) -> int:
    """Padding of table III's two 3x3 convs on an f_i of this side: 0 (the paper's valid convs)
    from 5 x 5 up, else 1, so a natural-size f_i smaller than that (M = 36 at 144 px, small
    images; the paper is silent there) keeps its side instead of vanishing."""
    return 0 if side >= 5 else 1


def check_backbone_spec(spec: str) -> tuple[str, str]:
    """(family, rest) of a backbone spec ("unet", "module:pkg.mod:fn", "timm:resnet18" ...);
    ParameterError("backbone") for a malformed one."""
    if not isinstance(spec, str) or not spec:
        raise ParameterError("backbone", f"must be a non-empty string, got {spec!r}")
    if spec == UNET:
        return UNET, ""
    family, _, rest = spec.partition(":")
    if family not in FAMILIES or not rest:
        raise ParameterError("backbone", f"must be unet, module:<importable.module>:<callable>, timm:<name> or "
                             f"torchvision:<name>, got {spec!r}")
    if family == "module" and (rest.count(":") != 1 or not all(rest.split(":"))):
        raise ParameterError("backbone", f"must be module:<importable.module>:<callable>, got {spec!r}")
    return family, rest


def parse_levels(levels) -> tuple[str, str] | None:
    """("high", "low") from "high,low" or a pair of names; None stays None (the family's default)."""
    if levels is None:
        return None
    names = tuple(part.strip() for part in levels.split(",")) if isinstance(levels, str) else tuple(levels)
    if len(names) != 2 or not all(isinstance(name, str) and name for name in names):
        raise ParameterError("backbone_levels", f"must name two submodules, the high-resolution one first "
                             f"('HIGH,LOW'), got {levels!r}")
    return names


def _flag(default: Any, help: str, choices: tuple[str, ...] | None = None):
    """A field the command lines expose as a flag (`--field-name`), with its help text."""
    return field(default=default, metadata={"flag_help": help, "choices": choices})


def flag_help(f: dataclasses.Field) -> str | None:
    """The help text of a field exposed as a flag, or None for fields without a flag."""
    return f.metadata.get("flag_help")


@dataclass
class LNLConfig:
    image_size: int = _flag(144, "input side in pixels, a multiple of 16")
    num_patches: int = _flag(16, "M, the number of local regions, a perfect square (table VI)")
    # None: eq. 5 with overlap ~ patch/3 (16 px for the paper)
    overlap: int | None = _flag(None, "pixels shared by neighbouring patches (table VII); none: ~P/3 (eq. 5)")
    alpha: float = _flag(0.7, "eq. 1's mixing weight of the attended features s")
    variant: str = _flag("full", "table IV: full, local, nonlocal, simple", choices=VARIANTS)
    num_classes: int = 7
    in_channels: int = 3
    unet_widths: tuple[int, ...] = (64, 128, 256, 512, 1024)
    simplenet_widths: tuple[int, int, int] = (64, 128, 256)  # table II, two convs each
    local_attention_widths: tuple[int, int, int, int, int] = (256, 128, 128, 64, 64)  # table III
    attention_dim: int = 512  # Q, K, V channels (table I)
    global_width: int = 512  # the two 3x3 convs that make g
    head_widths: tuple[int, int] = (1024, 512)
    dropout: float = 0.5
    local_feature_size: int | None = _flag(
        6, "side of each f_i: SimpleNet's P//8 map is adaptive-average-pooled to it; none: keep P//8, "
        "so f_i, the local-attention FC and the joint feature grow with the patch, as the paper "
        "describes (tables VI, VII)")
    share_local_attention: bool = False  # paper: one local attention per patch
    init: str = "xavier"  # paper: Xavier-uniform; "kaiming" (He-uniform) for the tiny preset
    l2_lambda: float = _flag(1e-4, "eq. 3's λ, the weight of Σ‖W‖² over conv and linear weights")
    backend: str = _flag("auto", "op implementation (see python -m lnlatten_fast.info)", choices=BACKENDS)
    # The network under the head (lnlatten_fast.backbones). Stored as "HIGH,LOW" so that
    # config.json and the flag read the same; a pair given here is joined to that form.
    backbone: str = _flag(UNET, "the network under the LNL head: unet (the paper's), module:<importable.module>:"
                          "<callable> (returns an nn.Module), timm:<name> or torchvision:<name> (the [timm] / "
                          "[torchvision] extras; built untrained, nothing is downloaded)")
    backbone_levels: str | None = _flag(None, "HIGH,LOW: the backbone's submodules whose outputs feed the windows "
                                        "and the non-local branch; left out, the family's (ResNet layer1,layer4; "
                                        "ConvNeXt stages.0,stages.3; ViT blocks.2,blocks.11)")
    backbone_weights: str | None = _flag(None, "a local state_dict file loaded into the backbone when the model is "
                                         "built (strict=False; missing and unexpected keys are reported)")

    def __post_init__(self):
        self.unet_widths = tuple(self.unet_widths)
        self.simplenet_widths = tuple(self.simplenet_widths)
        self.local_attention_widths = tuple(self.local_attention_widths)
        self.head_widths = tuple(self.head_widths)
        if isinstance(self.backbone_levels, (tuple, list)):
            self.backbone_levels = ",".join(parse_levels(self.backbone_levels))
        self.validate()

    @classmethod
    def preset(cls, name: str, **overrides) -> "LNLConfig":
        """The model config of preset `name` (see :data:`PRESETS`) with `overrides`."""
        if name not in PRESETS:
            raise ParameterError("preset", f"must be one of {', '.join(PRESETS)}, got {name!r}")
        return cls(**{**PRESETS[name].model, **overrides})

    @classmethod
    def paper(cls, **overrides) -> "LNLConfig":
        return cls.preset("paper", **overrides)

    @classmethod
    def tiny(cls, **overrides) -> "LNLConfig":
        """Same structure, widths / 8, 64 px input: trains on a 2-core CPU in minutes (the
        reasons for its init and dropout are beside its entry in :data:`PRESETS`)."""
        return cls.preset("tiny", **overrides)

    def replace(self, **changes) -> "LNLConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "LNLConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown LNLConfig fields: {sorted(unknown)}")
        return cls(**data)

    # ---- derived ------------------------------------------------------------------------
    @property
    def geometry(self) -> PatchGeometry:
        return PatchGeometry.for_image(self.image_size, self.num_patches, self.overlap)

    @property
    def f5_size(self) -> int:
        return self.image_size // UNET_DOWNSAMPLING

    @property
    def local_feature_side(self) -> int:
        return local_feature_side(self.geometry.patch, self.local_feature_size)

    @property
    def local_attention_padding(self) -> int:
        return local_attention_padding(self.local_feature_side)

    @property
    def local_attention_side(self) -> int:
        """The side of the map table III's FCs flatten."""
        return self.local_feature_side - 4 * (1 - self.local_attention_padding)

    @property
    def local_feature_dim(self) -> int:
        return self.simplenet_widths[-1] * self.local_feature_side**2

    @property
    def global_feature_dim(self) -> int:
        return self.global_width * self.num_patches

    @property
    def joint_feature_dim(self) -> int:
        """Width of [g*, f_en]: 8192 + 9216 = 17408 for the paper."""
        return self.global_feature_dim + self.local_feature_dim

    @property
    def uses_nonlocal_attention(self) -> bool:
        return self.variant in ("full", "nonlocal")

    @property
    def uses_local_attention(self) -> bool:
        return self.variant in ("full", "local")

    # ---- every rule -----------------------------------------------------------------------
    def validate(self) -> None:
        def positive_ints(name, values):
            if not values or any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in values):
                raise ParameterError(name, f"must hold positive ints, got {values!r}")

        def one_of(name, allowed):
            if getattr(self, name) not in allowed:
                raise ParameterError(name, f"must be one of {allowed}, got {getattr(self, name)!r}")

        one_of("variant", VARIANTS)
        one_of("init", INITS)
        one_of("backend", BACKENDS)
        check_backbone_spec(self.backbone)
        parse_levels(self.backbone_levels)
        if self.backbone == UNET and (self.backbone_levels is not None or self.backbone_weights is not None):
            raise ParameterError("backbone_levels" if self.backbone_levels is not None else "backbone_weights",
                                 "needs a `backbone` other than unet (the U-Net's levels are F9 and F5)")
        if not 0.0 <= float(self.alpha) <= 1.0:
            raise ParameterError("alpha", f"must lie in [0, 1] (eq. 1), got {self.alpha}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ParameterError("dropout", f"must lie in [0, 1), got {self.dropout}")
        if not (math.isfinite(float(self.l2_lambda)) and float(self.l2_lambda) >= 0):
            raise ParameterError("l2_lambda", f"must be a finite number >= 0, got {self.l2_lambda}")
        for name in ("num_classes", "in_channels", "attention_dim", "global_width"):
            positive_ints(name, (getattr(self, name),))
        for name, count in (
            ("unet_widths", 5),
            ("simplenet_widths", 3),
            ("local_attention_widths", 5),
            ("head_widths", 2),
        ):
            values = getattr(self, name)
            positive_ints(name, values)
            if len(values) != count:
                raise ParameterError(name, f"must have {count} entries, got {values!r}")
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int):
            raise TypeError(f"LNLConfig.image_size must be an int, got {self.image_size!r}")
        if self.image_size <= 0 or self.image_size % UNET_DOWNSAMPLING:
            raise ParameterError(
                "image_size",
                f"must be a positive multiple of {UNET_DOWNSAMPLING} (U-Net pools four times), "
                f"got {self.image_size}",
            )
        if self.local_feature_size is not None:
            positive_ints("local_feature_size", (self.local_feature_size,))
            if self.local_feature_size < 5:
                raise ParameterError(
                    "local_feature_size",
                    f"must be >= 5 (table III's two valid 3x3 convs need it) or None (SimpleNet's "
                    f"natural P // 8), got {self.local_feature_size}",
                )
        if self.uses_nonlocal_attention and self.attention_dim != self.global_width:
            raise ParameterError(
                "attention_dim",
                f"must equal global_width when the non-local attention is used (eq. 1 adds flat(s) "
                f"to g), got {self.attention_dim} and {self.global_width}",
            )
        try:
            geom = self.geometry
        except ValueError as error:  # no lattice of these windows tiles the image
            raise ParameterError("num_patches", f"{self.num_patches} (overlap {self.overlap}) cannot tile a "
                                 f"{self.image_size} px image: {error}") from None
        if geom.patch < MIN_WINDOW:
            raise ParameterError(
                "image_size",
                f"{self.image_size} with {self.num_patches} windows gives {geom.patch} px windows; SimpleNet's "
                f"three 2x2 pools need >= {MIN_WINDOW} px: use `image_size` >= {self.smallest_image_size()} "
                f"or fewer `num_patches`")

    def smallest_image_size(self) -> int:
        """The smallest image size (a multiple of the U-Net's 16) whose windows SimpleNet can pool."""
        for size in range(UNET_DOWNSAMPLING, 1024 * UNET_DOWNSAMPLING + 1, UNET_DOWNSAMPLING):
            try:
                if PatchGeometry.for_image(size, self.num_patches, self.overlap).patch >= MIN_WINDOW:
                    return size
            except ValueError:
                continue
        raise ParameterError("num_patches", f"{self.num_patches} windows (overlap {self.overlap}) tile no image size")


# ---- presets ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Preset:
    """A named starting point: the model config (fields that differ from LNLConfig's defaults,
    which are the paper's), the per-process batch size and Adam's learning rate."""

    description: str
    batch_size: int
    lr: float
    model: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def config(self, **overrides) -> LNLConfig:
        return LNLConfig(**{**self.model, **overrides})


#: Every preset, by name; the first is the default of the command line.
PRESETS: Mapping[str, Preset] = MappingProxyType({
    # Ours, not the paper's: widths / 8 and 64 px, so the built-in synthetic run trains on a
    # 2-core CPU in minutes and is past chance within its first epoch. He-uniform init instead
    # of the paper's Xavier: Xavier halves the signal's variance at every ReLU, so through the
    # ~25 conv layers from the input to the head the logits start at ~1e-3 and Adam needed many
    # epochs to get past chance (measured: train accuracy at chance after 120 steps with Xavier
    # at lr 3e-3, 56 % with He at lr 1e-3). Dropout 0.1: 0.5 on 128- and 64-wide layers halved
    # that (29 % after the same 120 steps).
    "tiny": Preset(
        "widths / 8, 64 px: trains on a 2-core CPU in minutes",
        batch_size=32,
        lr=1e-3,
        model=MappingProxyType(dict(
            image_size=64,
            init="kaiming",
            dropout=0.1,
            unet_widths=(8, 16, 32, 64, 128),
            simplenet_widths=(8, 16, 32),
            local_attention_widths=(32, 16, 16, 8, 8),
            attention_dim=64,
            global_width=64,
            head_widths=(128, 64),
        )),
    ),
    # SPEC §1: the paper's network, its lr 3e-4, and a batch of 64.
    "paper": Preset("the paper's network (section III, tables I-III), 144 px", batch_size=64, lr=3e-4),
})

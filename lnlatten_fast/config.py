"""LNLConfig: every knob of the model, as a plain dataclass.

`LNLConfig()` is the paper's configuration (SPEC §1); `LNLConfig.tiny()` the CPU preset with
all widths divided by 8.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .geometry import PatchGeometry

__all__ = ["LNLConfig", "VARIANTS", "BACKENDS"]

# Table IV: LNLAttenNet, Model-Local, Model-NonLocal, Model-S.
VARIANTS = ("full", "local", "nonlocal", "simple")
BACKENDS = ("auto", "reference", "native", "triton")
INITS = ("xavier", "kaiming")
# U-Net downsamples four times (2x2 max-pool), so the input must divide by 2**4.
UNET_DOWNSAMPLING = 16


@dataclass
class LNLConfig:
    image_size: int = 144
    num_patches: int = 16
    overlap: int | None = None  # None: eq. 5 with overlap ~ patch/3 (16 px for the paper)
    alpha: float = 0.7  # eq. 1
    variant: str = "full"
    num_classes: int = 7
    in_channels: int = 3
    unet_widths: tuple[int, ...] = (64, 128, 256, 512, 1024)
    simplenet_widths: tuple[int, int, int] = (64, 128, 256)  # table II, two convs each
    local_attention_widths: tuple[int, int, int, int, int] = (256, 128, 128, 64, 64)  # table III
    attention_dim: int = 512  # Q, K, V channels (table I)
    global_width: int = 512  # the two 3x3 convs that make g
    head_widths: tuple[int, int] = (1024, 512)
    dropout: float = 0.5
    local_feature_size: int = 6  # SimpleNet output side; adaptive pooling brings others to it
    share_local_attention: bool = False  # paper: one local attention per patch
    init: str = "xavier"  # paper: Xavier-uniform; "kaiming" (He-uniform) for the tiny preset
    l2_lambda: float = 1e-4  # eq. 3
    backend: str = "auto"

    def __post_init__(self):
        self.unet_widths = tuple(self.unet_widths)
        self.simplenet_widths = tuple(self.simplenet_widths)
        self.local_attention_widths = tuple(self.local_attention_widths)
        self.head_widths = tuple(self.head_widths)
        self.validate()

    @classmethod
    def paper(cls, **overrides) -> "LNLConfig":
        return cls(**overrides)

    @classmethod
    def tiny(cls, **overrides) -> "LNLConfig":
        """Same structure, widths / 8, 64 px input: trains on a 2-core CPU in minutes.

        He-uniform init instead of the paper's Xavier: Xavier halves the signal's variance at
        every ReLU, so through the ~25 conv layers from the input to the head the logits start
        at ~1e-3 and Adam needed many epochs to get past chance (measured: train accuracy at
        chance after 120 steps with Xavier at lr 3e-3, 56 % with He at lr 1e-3). Dropout 0.1:
        0.5 on 128- and 64-wide layers halved that (29 % after the same 120 steps).
        """
        base = dict(
            image_size=64,
            init="kaiming",
            dropout=0.1,
            unet_widths=(8, 16, 32, 64, 128),
            simplenet_widths=(8, 16, 32),
            local_attention_widths=(32, 16, 16, 8, 8),
            attention_dim=64,
            global_width=64,
            head_widths=(128, 64),
        )
        base.update(overrides)
        return cls(**base)

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
    def local_feature_dim(self) -> int:
        return self.simplenet_widths[-1] * self.local_feature_size**2

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

    def validate(self) -> None:
        def positive_ints(name, values):
            if not values or any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in values):
                raise ValueError(f"LNLConfig.{name} must hold positive ints, got {values!r}")

        if self.variant not in VARIANTS:
            raise ValueError(f"LNLConfig.variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.init not in INITS:
            raise ValueError(f"LNLConfig.init must be one of {INITS}, got {self.init!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"LNLConfig.backend must be one of {BACKENDS}, got {self.backend!r}")
        if not 0.0 <= float(self.alpha) <= 1.0:
            raise ValueError(f"LNLConfig.alpha must lie in [0, 1] (eq. 1), got {self.alpha}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"LNLConfig.dropout must lie in [0, 1), got {self.dropout}")
        if float(self.l2_lambda) < 0:
            raise ValueError(f"LNLConfig.l2_lambda must be >= 0, got {self.l2_lambda}")
        positive_ints("num_classes", (self.num_classes,))
        positive_ints("in_channels", (self.in_channels,))
        positive_ints("attention_dim", (self.attention_dim,))
        positive_ints("global_width", (self.global_width,))
        positive_ints("local_feature_size", (self.local_feature_size,))
        for name, count in (
            ("unet_widths", 5),
            ("simplenet_widths", 3),
            ("local_attention_widths", 5),
            ("head_widths", 2),
        ):
            values = getattr(self, name)
            positive_ints(name, values)
            if len(values) != count:
                raise ValueError(f"LNLConfig.{name} must have {count} entries, got {values!r}")
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int):
            raise TypeError(f"LNLConfig.image_size must be an int, got {self.image_size!r}")
        if self.image_size <= 0 or self.image_size % UNET_DOWNSAMPLING:
            raise ValueError(
                f"LNLConfig.image_size must be a positive multiple of {UNET_DOWNSAMPLING} "
                f"(U-Net pools four times), got {self.image_size}"
            )
        if self.local_feature_size < 5:
            raise ValueError(
                "LNLConfig.local_feature_size must be >= 5: table III's two valid 3x3 convs "
                f"need it, got {self.local_feature_size}"
            )
        self.geometry  # raises if the patch lattice is impossible

"""TrainSettings: everything one training run needs, with the model's LNLConfig nested in it.

    settings = TrainSettings(dataset="rafdb", data_root="/data/RAF-DB/basic", preset="paper",
                             model=LNLConfig.paper(alpha=0.5))
    settings.validate()   # fills in the preset's model, batch size and lr where left None

Errors name the field (`ParameterError("epochs", ...)`); the command line shows them as flags.
A checkpoint stores `to_dict()`; `from_dict` reads it back (checkpoints written before the
model was nested are migrated by `checkpoint.load`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ..config import PRESETS, UNET, LNLConfig
from ..data.labels import NUM_CLASSES
from ..errors import ParameterError
from .precision import check_precision
from .progress import PROGRESS_MODES
from .recipes import BALANCED_SAMPLING, SCHEDULES

__all__ = ["TrainSettings", "L2_MODES"]

# "decoupled": W <- W - lr·2λ·W outside Adam (AdamW); "loss": λ·Σ‖W‖² in the loss (eq. 3 as
# written). See trainer.fit.
L2_MODES = ("decoupled", "loss")


@dataclass
class TrainSettings:
    dataset: str = "synthetic"
    data_root: str | None = None
    preset: str = "tiny"  # a PRESETS key: the defaults of model, batch_size and lr
    model: LNLConfig | None = None  # None: the preset's (eq. 3's λ is model.l2_lambda)
    epochs: int = 24
    batch_size: int | None = None  # None: the preset's
    lr: float | None = None  # None: the preset's
    lr_decay: float = 0.95
    l2_mode: str = "decoupled"  # L2_MODES
    device: str = "auto"
    seed: int = 0
    out: str | None = None
    resume: bool = False
    restart: bool = False  # move the run in `out` aside (out/previous-N) and start over; never deletes it
    workers: int = 0
    compile: bool = False  # forward, loss, backward and AdamW as one torch.compile graph (step.py)
    cuda_graphs: bool = False  # capture the compiled step in a CUDA graph and replay it (needs compile, CUDA)
    deterministic: bool = False  # cuDNN's deterministic algorithms, no autotuning (cudnn.benchmark off)
    precision: str = "auto"  # PRECISIONS
    folds: int | None = None  # None: 5 for CK+, else the dataset's own train/test split
    val_fraction: float = 0.0
    cache_dir: str | None = None
    synthetic_train: int | None = None
    synthetic_test: int | None = None
    synthetic_occlusion: float = 0.0  # probability of an occluding rectangle on a synthetic face
    crop_padding: int | None = None  # None: image_size // 16
    strict: bool = False  # an undecodable image fails the run (default: skipped and listed)
    trace_every: int = 50  # record probes' w_g, w_l every this many steps (0: never); trace.py
    trace_images: int = 8  # probe test images in the trace
    progress: str = "auto"  # PROGRESS_MODES: a bar on a terminal, plain lines in a log (progress.py)
    tensorboard: bool = False  # per-epoch scalars and images in RUN/tb (tensorboard.py; needs the package)
    # ---- recipes (recipes.py), each off by default: the paper's protocol ----
    balanced_sampling: str = "none"  # BALANCED_SAMPLING: class-balanced draws, weight 1/n_c or 1/sqrt(n_c)
    label_smoothing: float = 0.0  # cross-entropy's label smoothing ε
    ema: float = 0.0  # decay of the weights' EMA (evaluation and best.pt use it); 0: none
    schedule: str = "paper"  # SCHEDULES: paper (x lr_decay per epoch) or cosine with linear warm-up
    warmup_epochs: int = 0  # the cosine schedule's linear warm-up
    clip_grad_norm: float = 0.0  # max global gradient norm before the optimizer step; 0: no clipping
    mixup: float = 0.0  # α of mixup's Beta(α, α); 0: none
    cutmix: float = 0.0  # α of cutmix's Beta(α, α); 0: none (exclusive with mixup)
    # ---- a backbone other than the U-Net (model.backbone; lnlatten_fast.backbones) ----
    freeze_backbone_epochs: int = 0  # the backbone's weights stay as loaded for this many epochs; the head trains
    backbone_lr_scale: float = 1.0  # the backbone's learning rate is the run's x this

    def validate(self) -> None:
        """Check every field, and fill in the preset's model, batch size and lr where None."""
        if self.preset not in PRESETS:
            raise ParameterError("preset", f"must be one of {', '.join(PRESETS)}, got {self.preset!r}")
        preset = PRESETS[self.preset]
        self.model = preset.config() if self.model is None else self.model
        self.batch_size = preset.batch_size if self.batch_size is None else self.batch_size
        self.lr = preset.lr if self.lr is None else self.lr
        if not isinstance(self.model, LNLConfig):
            raise TypeError(f"model must be an LNLConfig, got {type(self.model).__name__}")
        self.model.validate()  # its fields name themselves (alpha, l2_lambda, ...)
        if self.model.num_classes != NUM_CLASSES:
            raise ParameterError(
                "num_classes", f"must be {NUM_CLASSES}, the canonical label space, got {self.model.num_classes}"
            )
        for name in ("epochs", "batch_size"):
            if getattr(self, name) <= 0:
                raise ParameterError(name, f"must be positive, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ParameterError("lr", f"must be a positive number, got {self.lr}")
        if self.l2_mode not in L2_MODES:
            raise ParameterError("l2_mode", f"must be decoupled or loss, got {self.l2_mode!r}")
        check_precision(self.precision)
        for name in ("synthetic_train", "synthetic_test"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ParameterError(name, f"must be positive (an empty split trains or tests nothing), got {getattr(self, name)}")
        if not 0.0 <= self.synthetic_occlusion <= 1.0:
            raise ParameterError("synthetic_occlusion", f"must lie in [0, 1], got {self.synthetic_occlusion}")
        for name in ("trace_every", "trace_images"):
            if getattr(self, name) < 0:
                raise ParameterError(name, f"must be >= 0 (0: no attention trace), got {getattr(self, name)}")
        if self.cuda_graphs and not self.compile:
            raise ParameterError("cuda_graphs", "needs compile: the graph it captures is the compiled step's")
        if self.progress not in PROGRESS_MODES:
            raise ParameterError("progress", f"must be one of {', '.join(PROGRESS_MODES)}, got {self.progress!r}")
        if self.workers < 0:
            raise ParameterError("workers", f"must be >= 0, got {self.workers}")
        # Checked here, not first by the generators it seeds (after the run directory is written).
        if not 0 <= self.seed < 2**32:  # numpy's seed range; the per-epoch seeds derived from it stay in int64
            raise ParameterError("seed", f"must be in [0, 2**32 - 1], got {self.seed}")
        if self.folds is not None and self.folds != 0 and self.folds < 2:
            raise ParameterError("folds", f"must be 0 (the dataset's own split) or >= 2, got {self.folds}")
        if self.dataset == "synthetic" and self.num_folds:  # its faces exist only as the train and test split
            raise ParameterError("folds", f"needs a dataset read whole (its folds cut from all of it); the synthetic "
                                 f"dataset has only its own train and test split, got {self.folds}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ParameterError(
                "val_fraction", f"must lie in [0, 1) (0: no validation set), got {self.val_fraction}"
            )
        self._validate_recipes()
        self._validate_backbone_training()

    def _validate_recipes(self) -> None:
        if self.balanced_sampling not in BALANCED_SAMPLING:
            raise ParameterError("balanced_sampling",
                                 f"must be one of {', '.join(BALANCED_SAMPLING)}, got {self.balanced_sampling!r}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ParameterError("label_smoothing", f"must lie in [0, 1) (0: none), got {self.label_smoothing}")
        if not 0.0 <= self.ema < 1.0:
            raise ParameterError("ema", f"must be a decay in (0, 1), or 0 for no EMA, got {self.ema}")
        if self.schedule not in SCHEDULES:
            raise ParameterError("schedule", f"must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.warmup_epochs and self.schedule != "cosine":
            raise ParameterError("warmup_epochs", f"needs `schedule` cosine (the paper's schedule has no warm-up), "
                                 f"got {self.schedule!r}")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ParameterError("warmup_epochs",
                                 f"must lie in [0, `epochs` = {self.epochs}), got {self.warmup_epochs}")
        for name in ("clip_grad_norm", "mixup", "cutmix"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ParameterError(name, f"must be a positive number, or 0 for none, got {value}")
        if self.mixup and self.cutmix:
            raise ParameterError("cutmix", "cannot be combined with `mixup`: choose one")

    def _validate_backbone_training(self) -> None:
        if isinstance(self.freeze_backbone_epochs, bool) or not isinstance(self.freeze_backbone_epochs, int) \
                or not 0 <= self.freeze_backbone_epochs < self.epochs:
            raise ParameterError("freeze_backbone_epochs", f"must be an int in [0, `epochs` = {self.epochs}) "
                                 f"(0: never frozen), got {self.freeze_backbone_epochs!r}")
        if not (self.backbone_lr_scale > 0 and math.isfinite(self.backbone_lr_scale)):
            raise ParameterError("backbone_lr_scale", f"must be a positive number, got {self.backbone_lr_scale}")
        if self.model.backbone == UNET:
            for name, off in (("freeze_backbone_epochs", 0), ("backbone_lr_scale", 1.0)):
                if getattr(self, name) != off:
                    raise ParameterError(name, "needs a `backbone` other than unet (the U-Net trains with the head)")
        if self.freeze_backbone_epochs and self.cuda_graphs:
            raise ParameterError("freeze_backbone_epochs", "cannot be combined with `cuda_graphs`: the graph "
                                 "captured while the backbone is frozen would never update it")
        if self.model.backbone_weights is not None and not self.resume:
            # Before the dataset is loaded and the run directory written. A resumed run's weights
            # come from its last.pt: the file it started from may be gone.
            from ..backbones import check_weights_path

            check_weights_path(self.model.backbone_weights)

    @property
    def num_folds(self) -> int:
        if self.folds is None:
            return 5 if self.dataset == "ckplus" else 0
        return self.folds

    def to_dict(self) -> dict:
        """Plain values only (the model as a dict): what config.json and checkpoints hold."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainSettings":
        data = dict(data)
        if data.get("model") is not None:
            data["model"] = LNLConfig.from_dict(data["model"])
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown TrainSettings fields: {sorted(unknown)}")
        return cls(**data)

"""Backbones for the LNL head: two feature maps from named submodules of any nn.Module.

    features = BackboneFeatures(resnet18(), ("layer1", "layer4"), image_size=224)
    high, low = features(x)        # (B, 64, 56, 56), (B, 512, 7, 7): what LNLHead(high, low) takes

A backbone spec names where the module comes from (:func:`build_backbone`):

- ``unet``: the paper's U-Net (built by :class:`~lnlatten_fast.model.LNLAttenNet` itself, not here);
- ``module:<importable.module>:<callable>``: the user's own; the callable, called without
  arguments, returns the nn.Module;
- ``timm:<name>``: ``timm.create_model(name, pretrained=False, num_classes=0)``, with
  ``dynamic_img_size=True`` where the model takes it (a ViT then runs at any image size, its
  position embedding resampled, and still loads a state_dict saved at its own size);
- ``torchvision:<name>``: ``torchvision.models.get_model(name, weights=None)``.

Nothing is downloaded: the library families build untrained modules, and weights come from a
local state_dict file (:func:`load_backbone_weights`). timm and torchvision are imported only
when their family is asked for; neither is needed by anything else here.

The two levels are taken with forward hooks that stash each level's output while the module's
own forward runs, so any forward works (a ViT's cls token and position embedding are not
submodules) and the adapter traces under ``torch.compile(fullgraph=True)``. Parameters the two
levels do not depend on (a classifier after the last level) are found with one dry run and
frozen, so DistributedDataParallel sees no unused parameters.

Default levels (:func:`default_levels`), a high-resolution map for the M windows and a
low-resolution map for the non-local branch, mirroring the paper's F9 (the full-resolution end
of the U-Net) and F5 (its deepest, 1/16 map):

- ResNet-18/50 (``layer1`` .. ``layer4``): ``layer1`` and ``layer4``. ``layer1`` (1/4 of the
  input) is the highest-resolution map that has been through a residual stage (``conv1``'s 1/2
  map has seen one convolution); at 224 px it is 56 px, so 16 windows are 20 px, which
  SimpleNet's three 2x2 pools still reduce. ``layer2`` (1/8, 28 px) would leave 10 px windows.
  ``layer4`` (1/32) is the deepest, most semantic map, as F5 is the U-Net's.
- ConvNeXt-T (timm: ``stages.0`` .. ``stages.3``; torchvision: ``features.1`` .. ``features.7``):
  the first stage (1/4) and the last (1/32), for the same reasons.
- ViT-S (``patch_embed``, ``blocks.0`` .. ``blocks.11``): every block has the same 1/16 token
  grid, so resolution does not choose. The windows take ``blocks.2`` (the end of the first
  quarter of the depth: early blocks attend locally, so their tokens still describe their own
  patch), the non-local branch the last block, ``blocks.11``. Token outputs (B, N, C) become
  (B, C, g, g) maps of the last g² tokens, g = isqrt(N): the cls (and register) tokens in front
  are dropped. Other 4-D outputs are taken as (B, C, H, W): a channels-last one (timm's Swin)
  needs a `module:` wrapper that permutes it.

Any other module needs its levels named (`levels`). When the high map is too small for the
windows (SimpleNet needs windows of at least 8 px: a ViT's 14 x 14 grid at 224 px, or ResNet's
layer1 on a 64 px image), it is resized bilinearly to the smallest side whose M windows are large
enough; :attr:`BackboneFeatures.high_size` says which side the head gets.
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import MIN_WINDOW, UNET, check_backbone_spec, parse_levels
from .errors import MissingPathError, ParameterError
from .geometry import PatchGeometry

__all__ = ["BackboneFeatures", "LibraryMissingError", "build_backbone", "default_levels", "smallest_high_size", "check_weights_path",
           "load_backbone_weights", "backbone_parameters", "set_backbone_trainable", "scale_backbone_lr"]


def _first_line(error: BaseException) -> str:
    """The error as "Type: first line of its message": library messages can run to many lines,
    an `error:` line is one."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


class LibraryMissingError(ParameterError):
    """A `timm:` / `torchvision:` backbone whose library does not import here (not a bad spec)."""


def _import_library(family: str, spec: str):
    try:
        return importlib.import_module(family)
    except Exception as error:  # noqa: BLE001 - a broken install fails in many ways (torchvision: RuntimeError)
        raise LibraryMissingError(
            "backbone", f"{spec} needs {family}, which failed to import ({_first_line(error)}); install the "
            f"[{family}] extra (pip install 'lnlatten_fast[{family}]') with a {family} build made for this torch "
            f"{torch.__version__}") from None


def build_backbone(spec: str) -> nn.Module:
    """The untrained nn.Module a backbone spec names (never ``unet``: the U-Net is LNLAttenNet's
    own). Nothing is downloaded."""
    family, rest = check_backbone_spec(spec)
    if family == UNET:
        raise ParameterError("backbone", "unet is LNLAttenNet's own U-Net, not built here")
    if family == "module":
        module_name, attribute = rest.split(":")
        try:
            where = importlib.import_module(module_name)
        except ImportError as error:
            raise ParameterError("backbone", f"{spec}: cannot import {module_name} ({error})") from None
        build = getattr(where, attribute, None)
        if not callable(build):
            raise ParameterError("backbone", f"{spec}: {module_name} has no callable {attribute}")
        try:
            built = build()
        except Exception as error:  # noqa: BLE001 - the user's code fails in its own ways
            raise ParameterError("backbone", f"{spec}: calling {attribute}() failed ({_first_line(error)}); it must "
                                 "build the nn.Module without arguments") from None
    elif family == "timm":
        timm = _import_library("timm", spec)
        try:
            try:  # a ViT built for 224 px refuses other sizes; dynamic_img_size resamples its position embedding
                built = timm.create_model(rest, pretrained=False, num_classes=0, dynamic_img_size=True)
            except TypeError:  # a model with no position embedding takes no such argument
                built = timm.create_model(rest, pretrained=False, num_classes=0)
        except RuntimeError as error:  # timm: "Unknown model (name)"
            raise ParameterError("backbone", f"{spec}: {error}") from None
    else:
        torchvision = _import_library("torchvision", spec)
        try:
            built = torchvision.models.get_model(rest, weights=None)
        except ValueError as error:  # torchvision: "Unknown model name"
            raise ParameterError("backbone", f"{spec}: {error}") from None
    if not isinstance(built, nn.Module):
        raise ParameterError("backbone", f"{spec} gave a {type(built).__name__}, not an nn.Module")
    return built


def default_levels(module: nn.Module) -> tuple[str, str]:
    """The (high, low) submodule names of a known family (see the module docstring);
    ParameterError("backbone_levels") naming the module's top-level submodules otherwise."""
    names = {name for name, _ in module.named_modules()}
    if {"layer1", "layer4"} <= names:  # ResNet (torchvision and timm)
        return "layer1", "layer4"
    if {"stages.0", "stages.3"} <= names:  # ConvNeXt (timm)
        return "stages.0", "stages.3"
    if type(module).__name__ == "ConvNeXt" and {"features.1", "features.7"} <= names:  # ConvNeXt (torchvision)
        return "features.1", "features.7"
    blocks = getattr(module, "blocks", None)
    if "patch_embed" in names and isinstance(blocks, nn.Sequential | nn.ModuleList) and len(blocks) >= 4:  # ViT
        depth = len(blocks)
        return f"blocks.{depth // 4 - 1}", f"blocks.{depth - 1}"
    top = ", ".join(name for name, _ in module.named_children()) or "none"
    raise ParameterError("backbone_levels", f"must be given for a {type(module).__name__}: no default levels for "
                         f"it (its top-level submodules: {top})")


def smallest_high_size(num_patches: int, overlap: int | None) -> int:
    """The smallest side of a map whose `num_patches` windows (eq. 5) are SimpleNet-sized."""
    for side in range(1, 4096):
        try:
            if PatchGeometry.for_image(side, num_patches, overlap).patch >= MIN_WINDOW:
                return side
        except ValueError:
            continue
    raise ParameterError("num_patches", f"{num_patches} windows (overlap {overlap}) tile no map")


def _as_map(name: str, value) -> torch.Tensor:
    """A level's output as (B, C, H, W): token outputs (B, N, C) lose their N - g² leading tokens."""
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        value = value[0]
    if not isinstance(value, torch.Tensor) or value.dim() not in (3, 4):
        raise ParameterError("backbone_levels", f"{name} must output a (B, C, H, W) map or (B, N, C) tokens, "
                             f"got {getattr(value, 'shape', type(value).__name__)}")
    if value.dim() == 4:
        return value
    side = math.isqrt(value.shape[1])
    return value[:, value.shape[1] - side * side:].transpose(1, 2).unflatten(2, (side, side))


class _Stash:
    """Forward hook: keeps the module's output in `store` under `name`. An object, not a closure,
    so that deepcopy (export copies the model) points the copy's hooks at the copy's store."""

    def __init__(self, store: dict, name: str):
        self.store, self.name = store, name

    def __call__(self, module, inputs, output) -> None:
        self.store[self.name] = output


class BackboneFeatures(nn.Module):
    """`body`'s outputs at the submodules `levels` = (high, low), as (B, C, H, W) maps; the high
    one resized to at least `min_high_size` (see the module docstring).

    A dry run on a zero image of `image_size` (eval mode, no buffer changes) finds the levels'
    shapes (`high_channels`, `high_size`, `low_channels`, `low_size`) and freezes the parameters
    the levels do not depend on. Parameters that `body` arrived with frozen (requires_grad False:
    its builder froze them) stay frozen too. `spec` names the backbone in error messages.

    While :attr:`frozen` (set_backbone_trainable), `body` stays in eval mode whatever mode the
    model is put in, so its normalisation statistics stay as loaded too.
    """

    def __init__(self, body: nn.Module, levels: tuple[str, str] | str | None, image_size: int,
                 in_channels: int = 3, min_high_size: int = 1, spec: str | None = None):
        super().__init__()
        self.body = body
        self.frozen = False
        self.spec = spec or type(body).__name__
        self.levels = parse_levels(levels) or default_levels(body)
        modules = dict(body.named_modules())
        for name in self.levels:
            if name not in modules or name == "":
                top = ", ".join(n for n, _ in body.named_children()) or "none"
                raise ParameterError("backbone_levels", f"names {name!r}, not a submodule of the "
                                     f"{type(body).__name__} (its top-level submodules: {top})")
        if modules[self.levels[0]] is modules[self.levels[1]]:
            raise ParameterError("backbone_levels", f"names one module twice ({', '.join(self.levels)}): the head "
                                 "needs a high-resolution level and a deeper, low-resolution one")
        #: Names (in `body`) of the parameters `body` arrived with frozen: never trained here.
        self.frozen_on_arrival = tuple(name for name, p in body.named_parameters() if not p.requires_grad)
        self._captured: dict[str, torch.Tensor] = {}
        for name in self.levels:
            modules[name].register_forward_hook(_Stash(self._captured, name))
        high, low = self._dry_run(image_size, in_channels)
        if high.shape[-1] < low.shape[-1]:
            raise ParameterError("backbone_levels", f"{self.levels[0]}'s map ({high.shape[-1]} px) is smaller than "
                                 f"{self.levels[1]}'s ({low.shape[-1]} px) at {image_size} px: name the "
                                 "high-resolution level first ('HIGH,LOW')")
        self.high_channels, native_high = high.shape[1], high.shape[-1]
        self.low_channels, self.low_size = low.shape[1], low.shape[-1]
        self.high_size = max(native_high, min_high_size)

    def train(self, mode: bool = True) -> "BackboneFeatures":
        super().train(mode)
        if self.frozen:
            self.body.eval()
        return self

    def _levels(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._captured.clear()
        self.body(x)
        for name in self.levels:
            if name not in self._captured:
                raise ParameterError("backbone_levels", f"names {name!r}, which the {self.spec}'s forward never "
                                     "calls")
        high, low = (_as_map(name, self._captured[name]) for name in self.levels)
        self._captured.clear()  # no reference to the graph outlives the forward
        return high, low

    def _dry_run(self, image_size: int, in_channels: int) -> tuple[torch.Tensor, torch.Tensor]:
        was_training = self.body.training
        self.body.eval()
        try:
            device = next(self.body.parameters(), torch.zeros(0)).device
            try:
                high, low = self._levels(torch.zeros(1, in_channels, image_size, image_size, device=device))
            except ParameterError:
                raise
            except Exception as error:  # noqa: BLE001 - the module's own forward fails in its own ways
                raise ParameterError("backbone", f"{self.spec}: its forward on a {in_channels} x {image_size} x "
                                     f"{image_size} zero image (`image_size` {image_size}) failed "
                                     f"({_first_line(error)})") from None
            named = [(n, p) for n, p in self.body.named_parameters() if p.requires_grad]
            trainable = [p for _, p in named]
            used = []
            if trainable and (high.requires_grad or low.requires_grad):
                used = torch.autograd.grad(high.sum() + low.sum(), trainable, allow_unused=True)
        finally:
            self.body.train(was_training)
        #: Names (in `body`) of the parameters the levels do not depend on: frozen for good.
        self.unused_parameters = tuple(name for (name, _), grad in zip(named, used) if grad is None)
        for name, parameter in named:
            if name in self.unused_parameters:
                parameter.requires_grad_(False)
        return high.detach(), low.detach()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        high, low = self._levels(x)
        if high.shape[-1] != self.high_size:
            high = F.interpolate(high, size=(self.high_size, self.high_size), mode="bilinear", align_corners=False)
        return high, low


def check_weights_path(path) -> Path:
    """`path` as a Path once it names a file: MissingPathError("backbone_weights") when nothing is
    there, ParameterError("backbone_weights") for a directory."""
    path = Path(path)
    if path.is_dir():
        raise ParameterError("backbone_weights", f"{path} is a directory, not a state_dict file (one saved with "
                             "torch.save(module.state_dict()))")
    if not path.is_file():
        raise MissingPathError("backbone_weights", f"{path} does not exist (a state_dict saved with "
                               "torch.save(module.state_dict()))")
    return path


#: Keys under which training scripts commonly save the model's state_dict with other things.
_WRAPPER_KEYS = ("state_dict", "model")
#: The prefix DataParallel / DistributedDataParallel put on every key of a state_dict saved through them.
_PARALLEL_PREFIX = "module."


def _unwrapped(state, path: Path) -> tuple[dict, list[str]]:
    """The state_dict in what torch.load returned, and what was done to find it (for the report)."""
    done = []
    if isinstance(state, dict):
        for key in _WRAPPER_KEYS:
            if isinstance(state.get(key), dict):
                state, done = state[key], [f"unwrapped {key!r}"]
                break
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise ParameterError("backbone_weights", f"{path} must hold a state_dict (names to tensors), "
                             f"got a {type(state).__name__}")
    if state and all(k.startswith(_PARALLEL_PREFIX) for k in state):
        state = {k[len(_PARALLEL_PREFIX):]: v for k, v in state.items()}
        done.append(f"stripped {_PARALLEL_PREFIX!r} from every name")
    return state, done


def load_backbone_weights(body: nn.Module, path) -> str:
    """Load the state_dict file `path` into `body` (matching names only) and return the one-line
    report of what was loaded, missing and unexpected (loaded + missing = the backbone's tensors).
    A state_dict wrapped in {"state_dict": ...} or {"model": ...}, or with DistributedDataParallel's
    "module." before every name, is unwrapped. MissingPathError / ParameterError("backbone_weights")
    for a missing file, an unreadable one, a tensor of the wrong shape, or one matching none of
    the backbone's tensors."""
    path = check_weights_path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - pickle, zip and torch errors alike
        raise ParameterError("backbone_weights", f"{path} is not a readable state_dict ({_first_line(error)}): "
                             "save one with torch.save(module.state_dict())") from None
    state, done = _unwrapped(state, path)
    own = body.state_dict()
    wrong = [k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    if wrong:
        k = wrong[0]
        raise ParameterError("backbone_weights", f"{path}: {k} has shape {tuple(state[k].shape)}, the backbone's "
                             f"{tuple(own[k].shape)} ({len(wrong)} tensor(s) differ): saved from another backbone?")
    loaded = [k for k in own if k in state]
    if not loaded:
        raise ParameterError("backbone_weights", f"{path} holds none of the backbone's {len(own)} tensors (its "
                             f"names: {', '.join(list(state)[:3]) or 'none'}{', ...' if len(state) > 3 else ''}; "
                             f"the backbone's: {', '.join(list(own)[:3])}, ...): saved from another backbone?")
    # Only the matching names: a missing buffer (BatchNorm's num_batches_tracked) keeps its own value.
    body.load_state_dict({k: state[k] for k in loaded}, strict=False)
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]

    def listed(keys):
        return f"{len(keys)}" + (f" ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})" if keys else "")

    how = f" ({'; '.join(done)})" if done else ""
    return (f"backbone weights {path}{how}: loaded {len(loaded)} of the backbone's {len(own)} tensors; "
            f"missing {listed(missing)}; unexpected {listed(unexpected)}")


def backbone_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of `model`'s backbone (`model.backbone`, a BackboneFeatures) that train: those
    the head's levels depend on, less those the backbone arrived with frozen; none for the
    paper's U-Net, which trains as one network with the head."""
    features = getattr(model, "backbone", None)
    if not isinstance(features, BackboneFeatures):
        return []
    fixed = {*features.unused_parameters, *features.frozen_on_arrival}
    return [p for name, p in features.body.named_parameters() if name not in fixed]


def set_backbone_trainable(model: nn.Module, trainable: bool) -> None:
    """Freeze (False) or unfreeze (True) the backbone's parameters (backbone_parameters: those
    frozen for good stay frozen). A frozen backbone also stays in eval mode (its BatchNorm
    statistics as loaded) until unfrozen, whatever mode the model is put in."""
    features = getattr(model, "backbone", None)
    if not isinstance(features, BackboneFeatures):
        return
    for parameter in backbone_parameters(model):
        parameter.requires_grad_(trainable)
    features.frozen = not trainable
    features.train(features.training)


def scale_backbone_lr(optimizer: torch.optim.Optimizer, model: nn.Module, scale: float) -> None:
    """Give the backbone's parameters `scale` x the learning rate of the group they are in: each
    group holding some is split in two, the backbone's half with the same options and lr x
    `scale`. Call it before the scheduler is built and before a saved optimizer state is loaded
    (the state's groups are the split ones). Nothing changes for scale 1 or the U-Net."""
    features = getattr(model, "backbone", None)
    if scale == 1.0 or not isinstance(features, BackboneFeatures):
        return
    backbone = {id(p) for p in features.body.parameters()}
    groups = []
    for group in optimizer.param_groups:
        ours = [p for p in group["params"] if id(p) in backbone]
        rest = [p for p in group["params"] if id(p) not in backbone]
        lr = group["lr"] * scale
        scaled = {**group, "params": ours, "lr": lr.clone() if torch.is_tensor(lr) else lr}
        groups += [g for g in ({**group, "params": rest}, scaled) if g["params"]]
    optimizer.param_groups = groups

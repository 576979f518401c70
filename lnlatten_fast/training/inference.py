"""Load a trained model from a checkpoint and run it on image files.

    from lnlatten_fast.training.inference import predict_files
    result = predict_files(["face.jpg"], "runs/rafdb-paper/best.pt")   # or the run directory itself
    result.ranked[0]          # [("Happiness", 0.91), ("Neutral", 0.04), ("Surprise", 0.02)]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import LNLConfig
from ..data import labels
from ..data.cache import decode_image
from ..data.datasets import IMAGE_EXTENSIONS, Sample
from ..data.datasets._common import image_files
from ..errors import MissingPathError, ParameterError
from ..data.pipeline import to_model_input
from ..geometry import PatchGeometry
from ..model import LNLAttenNet
from ..ops.dispatch import resolve_name
from . import checkpoint
from .distributed import pick_device
from .precision import autocast

__all__ = ["checkpoint_file", "class_names", "load_model", "image_paths", "load_images", "predict", "Predictions",
           "predict_files", "ranked_classes"]

#: What `which` may name in a run directory: its best epoch's checkpoint or its last one.
RUN_CHECKPOINTS = {"best": "best.pt", "last": "last.pt"}


def checkpoint_file(path, which: str = "best") -> Path:
    """`path` itself, or for a run directory its best.pt (`which="last"`: its last.pt);
    MissingPathError("checkpoint") naming the directory and what it holds when there is none."""
    if which not in RUN_CHECKPOINTS:
        raise ParameterError("which", f"must be one of {', '.join(RUN_CHECKPOINTS)}, got {which!r}")
    path = Path(path)
    if not path.is_dir():
        return path
    wanted = RUN_CHECKPOINTS[which]
    if (path / wanted).is_file():
        return path / wanted
    held = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir() if not p.name.startswith("."))
    listing = ", ".join(held[:8]) + (", ..." if len(held) > 8 else "") if held else "nothing"
    folds = [name for name in held if name.startswith("fold")]
    if folds:
        hint = f"; a K-fold run: pass one fold's, e.g. {path / folds[0] / wanted}"
    else:
        hint = f"; pass {path / 'last.pt'} for its last epoch" if "last.pt" in held else ""
    raise MissingPathError("checkpoint", f"{path} is a directory without {wanted} (it holds {listing}){hint}")


def class_names(payload: dict, path) -> list[str]:
    """The names of the checkpoint's classes, one per output of its model: its own `class_names`,
    or the canonical 7 (8 with Contempt) when it carries none. A checkpoint whose names do not
    match its model's class count is refused (ParameterError("checkpoint"))."""
    count = payload["config"].get("num_classes", labels.NUM_CLASSES)
    names = payload.get("class_names")
    if names is None:
        names = {len(labels.CLASS_NAMES): labels.CLASS_NAMES, len(labels.CLASS_NAMES_8): labels.CLASS_NAMES_8}.get(count)
    if names is None or len(names) != count:
        given = "no class names" if names is None else f"{len(names)} class names ({', '.join(names)})"
        raise ParameterError("checkpoint", f"{path}: its model has {count} classes but it carries {given}; "
                             "it was not written by lnlatten_fast.train, or was changed since")
    return list(names)


def load_model(path, device: torch.device, backend: str | None = None) -> tuple[LNLAttenNet, dict]:
    """The checkpoint's model in eval mode on `device` (on `backend`, default the run's), and the
    checkpoint's payload, its `class_names` checked against the model. `path` is a checkpoint
    file or a run directory (its best.pt). A last.pt of an `ema` run gives the EMA's weights,
    the ones its epochs were evaluated with (its raw weights are there for resuming)."""
    path = checkpoint_file(path)
    payload = checkpoint.load(path)
    config = LNLConfig.from_dict(payload["config"])
    if backend is not None:
        config = config.replace(backend=backend)
    try:
        resolve_name(config.backend, device)
    except RuntimeError as error:  # dispatch says "backend X cannot run on Y: <why>"
        raise ParameterError("backend", f"{config.backend!r} cannot run on {device}: "
                             f"{str(error).split(': ', 1)[-1]}") from None
    model = LNLAttenNet(config, load_backbone_weights=False)  # the checkpoint holds the backbone's weights
    expected, found = model.state_dict(), payload.get("ema", payload["model"])
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or unexpected:
        raise ValueError(f"checkpoint {path} does not match its config: missing {missing[:3]}, unexpected {unexpected[:3]}")
    wrong = [k for k in expected if tuple(expected[k].shape) != tuple(found[k].shape)]
    if wrong:
        k = wrong[0]
        raise ValueError(f"checkpoint {path} does not match its config (num_classes {config.num_classes}): {k} has "
                         f"shape {tuple(found[k].shape)}, the config's model {tuple(expected[k].shape)}")
    payload["class_names"] = class_names(payload, path)
    model.load_state_dict(found)
    return model.to(device).channels_last().eval(), payload


def image_paths(paths) -> list[Path]:
    """The image files `paths` name: a file as it is, a folder as the image files directly in it
    (by name; other files and subfolders are left out). MissingPathError("paths") for a path
    that does not exist or a folder without images."""
    found = []
    for path in map(Path, paths):
        if not path.exists():
            raise MissingPathError("paths", f"{path} does not exist")
        if path.is_dir():
            inside = image_files(path)
            if not inside:
                raise MissingPathError("paths", f"{path} is a folder without image files (suffixes "
                                       f"{', '.join(sorted(IMAGE_EXTENSIONS))})")
            found += inside
        else:
            found.append(path)
    return found


def load_images(paths, size: int) -> np.ndarray:
    """Image files (or folders of them: `image_paths`) -> uint8 (N, size, size, 3), decoded
    exactly as the training cache does."""
    return np.stack([decode_image(Sample(0, path=path), size) for path in image_paths(paths)])


@torch.no_grad()
def predict(model: LNLAttenNet, images_u8: np.ndarray, device: torch.device, precision: str = "fp32",
            batch_size: int | None = None):
    """Class probabilities (N, C), non-local weights (N, M) and local weights (N, M) of uint8
    (N, S, S, 3) images, `batch_size` at a time (default all at once), under `precision`."""
    step = batch_size or max(len(images_u8), 1)
    parts = []
    for lo in range(0, len(images_u8), step):
        x = to_model_input(torch.from_numpy(np.array(images_u8[lo:lo + step])).to(device))  # a copy: memmaps are read-only
        with autocast(precision, device):
            out = model(x)
        parts.append((out.logits.float().softmax(dim=1).cpu(), out.nonlocal_weights.float().cpu(),
                      out.local_weights.float().cpu()))
    return tuple(torch.cat(column) for column in zip(*parts))


@dataclass
class Predictions:
    """What `predict_files` found, one entry per image, in the order given (a folder's images by name)."""

    paths: list[Path]  # the image files
    images: np.ndarray  # uint8 (N, S, S, 3), as the model saw them
    ranked: list[list[tuple[str, float]]]  # the top classes of each image, most probable first
    nonlocal_weights: torch.Tensor  # w_g, (N, M)
    local_weights: torch.Tensor  # w_l, (N, M)
    geometry: PatchGeometry  # where each of the M regions lies


def predict_files(paths, checkpoint_path, device: str = "auto", top: int = 3) -> Predictions:
    """The `top` most probable expressions of each image file (`paths` may name folders: their
    images), by the model in `checkpoint_path` (a checkpoint file or a run directory)."""
    chosen = pick_device(device)
    model, payload = load_model(checkpoint_path, chosen)
    files = image_paths(paths)
    images = load_images(files, model.config.image_size)
    names = payload["class_names"]
    probs, nonlocal_weights, local_weights = predict(model, images, chosen)
    ranked = ranked_classes(probs, names, top, checkpoint_path)
    return Predictions(files, images, ranked, nonlocal_weights, local_weights, model.geometry)


def ranked_classes(probs: torch.Tensor, names: list[str], top: int, checkpoint_path) -> list[list[tuple[str, float]]]:
    """The `top` most probable of `names` for each row of `probs` (N, C), most probable first;
    ValueError naming `checkpoint_path` when its model gave NaN/inf probabilities."""
    if not bool(probs.isfinite().all()):
        raise ValueError(f"checkpoint {checkpoint_path} gives NaN/inf probabilities: its weights are broken "
                         "(a diverged run?)")
    best = probs.topk(min(top, len(names)), dim=1)
    return [[(names[c], p) for p, c in zip(values, indices)]
            for values, indices in zip(best.values.tolist(), best.indices.tolist())]

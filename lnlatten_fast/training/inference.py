"""Load a trained model from a checkpoint and run it on image files.

    from lnlatten_fast.training.inference import predict_files
    result = predict_files(["face.jpg"], "runs/rafdb-paper/best.pt")
    result.ranked[0]          # [("Happiness", 0.91), ("Neutral", 0.04), ("Surprise", 0.02)]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import LNLConfig
from ..data.cache import decode_image
from ..data.datasets import Sample
from ..data.pipeline import to_model_input
from ..geometry import PatchGeometry
from ..model import LNLAttenNet
from . import checkpoint
from .distributed import pick_device
from .precision import autocast

__all__ = ["load_model", "load_images", "predict", "Predictions", "predict_files"]


def load_model(path, device: torch.device, backend: str | None = None) -> tuple[LNLAttenNet, dict]:
    """The checkpoint's model in eval mode on `device` (on `backend`, default the run's), and the
    checkpoint's payload."""
    payload = checkpoint.load(path)
    config = LNLConfig.from_dict(payload["config"])
    if backend is not None:
        config = config.replace(backend=backend)
    model = LNLAttenNet(config)
    expected, found = model.state_dict(), payload["model"]
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or unexpected:
        raise ValueError(f"checkpoint {path} does not match its config: missing {missing[:3]}, unexpected {unexpected[:3]}")
    wrong = [k for k in expected if tuple(expected[k].shape) != tuple(found[k].shape)]
    if wrong:
        k = wrong[0]
        raise ValueError(f"checkpoint {path} does not match its config (num_classes {config.num_classes}): {k} has "
                         f"shape {tuple(found[k].shape)}, the config's model {tuple(expected[k].shape)}")
    model.load_state_dict(found)
    return model.to(device).channels_last().eval(), payload


def load_images(paths, size: int) -> np.ndarray:
    """Image files -> uint8 (N, size, size, 3), decoded exactly as the training cache does."""
    images = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"image {path} does not exist")
        images.append(decode_image(Sample(0, path=path), size))
    return np.stack(images)


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
    """What `predict_files` found, one entry per image, in the order given."""

    images: np.ndarray  # uint8 (N, S, S, 3), as the model saw them
    ranked: list[list[tuple[str, float]]]  # the top classes of each image, most probable first
    nonlocal_weights: torch.Tensor  # w_g, (N, M)
    local_weights: torch.Tensor  # w_l, (N, M)
    geometry: PatchGeometry  # where each of the M regions lies


def predict_files(paths, checkpoint_path, device: str = "auto", top: int = 3) -> Predictions:
    """The `top` most probable expressions of each image file, by the model in `checkpoint_path`."""
    chosen = pick_device(device)
    model, payload = load_model(checkpoint_path, chosen)
    images = load_images(paths, model.config.image_size)
    names = payload["class_names"]
    probs, nonlocal_weights, local_weights = predict(model, images, chosen)
    if not bool(probs.isfinite().all()):
        raise ValueError(f"checkpoint {checkpoint_path} gives NaN/inf probabilities: its weights are broken "
                         "(a diverged run?)")
    best = probs.topk(min(top, len(names)), dim=1)
    ranked = [
        [(names[c], p) for p, c in zip(values, indices)]
        for values, indices in zip(best.values.tolist(), best.indices.tolist())
    ]
    return Predictions(images, ranked, nonlocal_weights, local_weights, model.geometry)

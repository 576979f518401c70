"""Load a trained model from a checkpoint and run it on images."""

from __future__ import annotations

import numpy as np
import torch

from ..config import LNLConfig
from ..data.cache import decode_image
from ..data.pipeline import to_model_input
from ..data.readers import Sample
from ..model import LNLAttenNet
from . import checkpoint


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA device is visible to torch")
    return torch.device(device)


def load_model(path, device: torch.device, backend: str | None = None) -> tuple[LNLAttenNet, dict]:
    payload = checkpoint.load(path)
    config = LNLConfig.from_dict(payload["config"])
    if backend is not None:
        config = config.replace(backend=backend)
    model = LNLAttenNet(config)
    model.load_state_dict(payload["model"])
    return model.to(device).channels_last().eval(), payload


def load_images(paths, size: int) -> np.ndarray:
    """Image files -> uint8 (N, size, size, 3), decoded exactly as the training cache does."""
    from pathlib import Path

    images = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"image {path} does not exist")
        images.append(decode_image(Sample(0, path=path), size))
    return np.stack(images)


@torch.no_grad()
def predict(model: LNLAttenNet, images_u8: np.ndarray, device: torch.device):
    """Class probabilities (N, C), non-local weights (N, M) and local weights (N, M)."""
    out = model(to_model_input(torch.from_numpy(np.ascontiguousarray(images_u8)).to(device)))
    return out.logits.float().softmax(dim=1).cpu(), out.nonlocal_weights.float().cpu(), out.local_weights.float().cpu()

"""Checkpoints: written atomically, loadable with `torch.load(weights_only=True)`.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts: `model` (state
dict), `config` (LNLConfig fields), `settings` (the run's flags), `epoch`, `test_accuracy`,
`class_names`, and in `last.pt` also `optimizer`, `scheduler`, `history` and `rng` for --resume.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

FORMAT = "lnlatten_fast/1"


def save_atomic(payload: dict, path: Path) -> None:
    """Write to a temporary file in the same folder, then rename: a crash never leaves a torn file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save({"format": FORMAT, **payload}, tmp)
    os.replace(tmp, path)


def load(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a torn or foreign file: say which one
        raise ValueError(f"checkpoint {path} could not be read: {error}") from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"checkpoint {path} is not an lnlatten_fast checkpoint (format {FORMAT} expected)")
    return payload

"""Checkpoints: written atomically, loadable with `torch.load(weights_only=True)`.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts: `model` (state
dict), `config` (LNLConfig fields), `settings` (`TrainSettings.to_dict()`, the model nested
under `settings["model"]`), `epoch`, `test_accuracy`, `class_names`, `fold`, and in `last.pt`
also `optimizer`, `scheduler`, `history` and `rng` for --resume.

`load` returns every checkpoint in the current layout: older formats, and state_dicts with the
flat keys of the model before lnlatten_fast.nn (`model.migrate_state_dict`), are migrated here.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from ..model import migrate_state_dict

FORMAT = "lnlatten_fast/2"
# Format 1 kept the run's settings flat, with these model fields beside the run's own; its
# `config` recorded l2_lambda = 1e-4 whatever the run used (the settings held the real λ).
_FORMAT_1 = "lnlatten_fast/1"
_FORMAT_1_MODEL_FIELDS = ("variant", "alpha", "num_patches", "overlap", "image_size", "backend", "l2_lambda")


def save_atomic(payload: dict, path: Path) -> None:
    """Write to a temporary file in the same folder, then rename: a crash never leaves a torn file.
    Refuses a model with a NaN or infinite weight (a diverged run must not overwrite a good one)."""
    path = Path(path)
    floats = {name: t for name, t in (payload.get("model") or {}).items() if torch.is_floating_point(t)}
    # One check (one device sync); the names are looked up only when it fails.
    if floats and not bool(torch.stack([t.isfinite().all() for t in floats.values()]).all()):
        bad = [name for name, t in floats.items() if not bool(t.isfinite().all())]
        raise ValueError(f"refusing to save {path}: non-finite values in {', '.join(bad[:3])}")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            torch.save({**payload, "format": FORMAT}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as error:
        # A full disk surfaces from torch's writer as "unexpected pos ...": say what it is, and
        # never leave the partial file behind (it would keep the disk full).
        tmp.unlink(missing_ok=True)
        free = shutil.disk_usage(path.parent).free
        reason = "no space left on device" if free < 16 * 2**20 else str(error)
        raise OSError(f"could not write checkpoint {path}: {reason} ({free // 2**20} MiB free)") from error


def load(path, mmap: bool = False) -> dict:
    """The checkpoint as a dict in the current format. `mmap`: map the tensors from the file
    instead of reading them (cheap when only the settings or history are wanted)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:  # a torn or foreign file: say which one
        raise ValueError(f"checkpoint {path} could not be read: {error}") from error
    if isinstance(payload, dict) and payload.get("format") == _FORMAT_1:
        payload = _migrate_format_1(payload)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"checkpoint {path} is not an lnlatten_fast checkpoint (format {FORMAT} expected)")
    if "model" in payload:  # the state_dict's keys from before lnlatten_fast.nn
        payload["model"] = migrate_state_dict(payload["model"])
    return payload


def _migrate_format_1(payload: dict) -> dict:
    """Nest the flat settings' model fields: the model is the recorded `config` with the λ the
    run really used (format 1's `config` always said 1e-4)."""
    settings = dict(payload["settings"])
    model = dict(payload["config"], l2_lambda=settings["l2_lambda"])
    for name in _FORMAT_1_MODEL_FIELDS:
        settings.pop(name, None)
    return {**payload, "format": FORMAT, "config": model, "settings": {**settings, "model": model}}

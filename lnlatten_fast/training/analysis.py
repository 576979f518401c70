"""Everything `python -m lnlatten_fast.analyze RUN_DIR` draws, gathered from a finished run.

From the run directory alone: its checkpoint (the model, its settings), metrics.jsonl (the
final confusion matrix) and attention_trace.npz (w_g while training). The test images are
rebuilt as `evaluate` rebuilds them. Figures go to RUN_DIR/figures/:

    confusion.png                     figs. 8-9: final-epoch confusion matrix, class names
    nonlocal_weights.png              fig. 10: probe faces and their w_g
    nonlocal_weights_snapshots.png    fig. 11: w_g at moments of training
    nonlocal_weights_curves.png       fig. 12: w_g of every region against the step
    local_weights_occlusion_<i>.png   fig. 13: w_l with each patch occluded in turn
    nonlocal_weights_by_alpha.png     fig. 14: w_g's spread across α (given runs with other α)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .. import figures
from ..data import labels
from ..errors import MissingPathError, ParameterError
from . import distributed, localization, run_dir as runs, trace
from .inference import load_model, predict
from .loading import load_test_split
from .settings import TrainSettings

__all__ = ["FIGURES", "OCCLUSION_FACES", "analyze_run", "final_nonlocal_weights"]

FIGURES = "figures"
#: How many probe faces get an occlusion figure (fig. 13).
OCCLUSION_FACES = 2


def _checkpoint(run_dir: Path, which: str) -> Path:
    path = run_dir / f"{which}.pt"
    if not path.is_file():
        folds = sorted(p.name for p in run_dir.glob("fold*") if p.is_dir())
        hint = f" (a K-fold run: pass one fold's directory, e.g. {run_dir / folds[0]})" if folds else ""
        raise MissingPathError("run_dir", f"{run_dir} holds no {which}.pt{hint}")
    return path


def _last_record(run_dir: Path) -> dict:
    epochs = runs.read_epochs(run_dir)
    if not epochs:
        raise MissingPathError("run_dir", f"{run_dir} holds no metrics.jsonl: no epoch finished")
    return epochs[-1]


def final_nonlocal_weights(run_dir: Path) -> tuple[float, np.ndarray]:
    """(α, w_g (probes, M)) of a run: its trace's last record."""
    run_dir = Path(run_dir)
    path = run_dir / trace.FILE
    if not path.is_file():
        raise MissingPathError("alpha_runs", f"{run_dir} holds no {trace.FILE} (trained with trace_every 0?)")
    alpha = json.loads((run_dir / "config.json").read_text())["model"]["alpha"]
    return float(alpha), np.load(path)["w_g"][-1]


def analyze_run(run_dir, alpha_runs=(), device: str = "auto", checkpoint: str = "last") -> list[Path]:
    """Draw the figures of `run_dir` (and the α figure from `alpha_runs` with it); their paths."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MissingPathError("run_dir", f"{run_dir} is not a directory")
    if checkpoint not in ("last", "best"):
        raise ParameterError("checkpoint", f"must be last or best, got {checkpoint!r}")
    out = run_dir / FIGURES
    chosen = distributed.pick_device(device)
    model, payload = load_model(_checkpoint(run_dir, checkpoint), chosen)
    settings = TrainSettings.from_dict(payload["settings"])
    class_names = list(payload.get("class_names") or labels.CLASS_NAMES)
    geom = model.geometry
    written = []

    record = _last_record(run_dir)
    written.append(figures.confusion_matrix(
        record["confusion"], class_names, out / "confusion.png",
        f"{settings.dataset}: epoch {record['epoch']}, accuracy {record['test_accuracy']:.3f}"))

    test_set = load_test_split(settings, model.config.image_size, payload.get("fold"))
    traced = np.load(run_dir / trace.FILE) if (run_dir / trace.FILE).is_file() else None
    indices = traced["probe_index"] if traced is not None else trace.probe_indices(test_set.labels, settings.trace_images or 8)
    images = np.asarray(test_set.images[indices])
    truth = test_set.labels[indices]
    probabilities, w_g, w_l = predict(model, images, chosen)
    guessed = probabilities.argmax(dim=1).numpy()
    titles = [f"{class_names[t]} -> {class_names[g]}" for t, g in zip(truth, guessed)]
    written.append(figures.nonlocal_weight_grid(images, w_g.numpy(), titles, geom, out / "nonlocal_weights.png"))

    if traced is not None and len(traced["step"]):
        steps, traced_w_g = traced["step"], traced["w_g"]
        written.append(figures.nonlocal_weight_curves(steps, traced_w_g, titles, geom,
                                                      out / "nonlocal_weights_curves.png"))
        written.append(figures.nonlocal_weight_snapshots(images, steps, traced_w_g, geom,
                                                         out / "nonlocal_weights_snapshots.png"))

    if model.local_attention is not None:
        for k in range(min(OCCLUSION_FACES, len(images))):
            occluded = localization.occluded_copies(images[k], geom)
            _, _, w_l_occluded = predict(model, occluded, chosen)
            written.append(figures.local_weight_occlusion(
                images[k], occluded, w_l[k].numpy(), w_l_occluded.numpy(), geom,
                out / f"local_weights_occlusion_{k}.png",
                f"w_l of a {class_names[truth[k]]} face with each patch occluded in turn (fig. 13)"))

    if alpha_runs:
        runs = [run_dir, *[Path(r) for r in alpha_runs]]
        found = [final_nonlocal_weights(r) for r in runs]
        alphas = [a for a, _ in found]
        if len(set(alphas)) < 2:
            raise ParameterError("alpha_runs", f"the runs share one α ({alphas[0]}): give runs with different α")
        written.append(figures.nonlocal_weights_by_alpha(alphas, [w for _, w in found],
                                                         out / "nonlocal_weights_by_alpha.png"))
    return written

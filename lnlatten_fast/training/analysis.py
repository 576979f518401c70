"""Everything `python -m lnlatten_fast.analyze RUN_DIR` draws, gathered from a finished run.

From the run directory alone: its checkpoint (the model, its settings), metrics.jsonl (the
final confusion matrix) and attention_trace.npz (w_g while training). The test images are
rebuilt as `evaluate` rebuilds them. Figures go to RUN_DIR/figures/:

    nonlocal_weights.png              fig. 10: probe faces and their w_g
    nonlocal_weights_snapshots.png    fig. 11: w_g at moments of training
    nonlocal_weights_curves.png       fig. 12: w_g of every region against the step
    local_weights_occlusion_<i>.png   fig. 13: w_l with each patch occluded in turn
    nonlocal_weights_by_alpha.png     fig. 14: w_g's spread across α (given runs with other α)

Figs. 8-9, the final-epoch confusion matrix with class names, are the run's one
RUN_DIR/confusion_matrix.png, which `train` writes when the run finishes; it is drawn there from
the last finished epoch only where the run holds none (a K-fold run's fold, a stopped run).

w_g and w_l are the LNL head's, on a `backbone` run as on the U-Net's; the windows the figures
show and occlude are the head's, where they lie on the image (the model's `geometry`).

Fig. 14 compares runs that differ only in α: an `alpha_runs` run whose settings differ from
the main run's in anything outside ALPHA_RUNS_MAY_DIFFER is refused, naming the fields.
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

__all__ = ["FIGURES", "OCCLUSION_FACES", "ALPHA_RUNS_MAY_DIFFER", "analyze_run",
           "final_nonlocal_weights", "check_alpha_runs"]

FIGURES = "figures"
#: What an `alpha_runs` run may differ in from the main run besides α (model.alpha): the seed
#: (a sweep's runs at each α), what names the run (out, resume, restart), and where and how fast
#: the same training ran (device, workers, cache, compile, CUDA graphs, cuDNN's algorithms,
#: precision, op backend, the undecodable-image policy, how often the trace records, the progress
#: display). What and how long it learnt, on which data and probes, must match.
ALPHA_RUNS_MAY_DIFFER = frozenset({
    "alpha", "seed", "out", "resume", "restart", "device", "workers", "cache_dir", "compile", "cuda_graphs",
    "deterministic", "precision", "backend", "strict", "trace_every", "progress", "tensorboard",
})
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


def _run_config(run_dir: Path, parameter: str) -> dict:
    """The settings in the run's config.json (a K-fold fold's directory: its run's) as one flat
    dict, the model's fields beside the run's; a field the file predates holds its default, as
    the run trained with it."""
    places = [run_dir] + ([run_dir.parent] if run_dir.name.startswith("fold") else [])
    for config in (place / "config.json" for place in places):
        if config.is_file():
            try:
                settings = TrainSettings.from_dict(json.loads(config.read_text())["settings"]).to_dict()
            except (ValueError, KeyError, TypeError) as error:
                raise ParameterError(parameter, f"{config} holds no settings this version reads ({error})") from None
            model = settings.pop("model")
            return {**settings, **model}
    raise MissingPathError(parameter, f"{run_dir} holds no config.json (not a directory written by train?)")


def check_alpha_runs(run_dir: Path, alpha_runs) -> list[Path]:
    """The `alpha_runs` as paths, once each is checked to hold an attention trace and to differ
    from `run_dir` only in ALPHA_RUNS_MAY_DIFFER, and α to take two values or more."""
    run_dir, alpha_runs = Path(run_dir), [Path(r) for r in alpha_runs]
    main = _run_config(run_dir, "run_dir")
    if not (run_dir / trace.FILE).is_file():
        raise MissingPathError("alpha_runs", f"needs the main run's {trace.FILE} too, and {run_dir} holds none "
                                             "(trained with trace_every 0?)")
    alphas = {main["alpha"]}
    for other in alpha_runs:
        if not other.is_dir():
            raise MissingPathError("alpha_runs", f"{other} is not a directory")
        theirs = _run_config(other, "alpha_runs")
        differences = [f"{name} {theirs[name]!r} there, {main[name]!r} in the main run"
                       for name in sorted(set(main) - ALPHA_RUNS_MAY_DIFFER) if theirs[name] != main[name]]
        if differences:
            raise ParameterError("alpha_runs", f"{other} differs from the main run {run_dir} in more than α: "
                                 + "; ".join(differences) + " (fig. 14 compares runs that differ only in α)")
        if not (other / trace.FILE).is_file():
            raise MissingPathError("alpha_runs", f"{other} holds no {trace.FILE} (trained with trace_every 0?)")
        alphas.add(theirs["alpha"])
    if len(alphas) < 2:
        raise ParameterError("alpha_runs", f"the runs share one α ({main['alpha']}): give runs with different α")
    return alpha_runs


def final_nonlocal_weights(run_dir: Path) -> tuple[float, np.ndarray]:
    """(α, w_g (probes, M)) of a run: its trace's last record."""
    run_dir = Path(run_dir)
    path = run_dir / trace.FILE
    if not path.is_file():
        raise MissingPathError("alpha_runs", f"{run_dir} holds no {trace.FILE} (trained with trace_every 0?)")
    return float(_run_config(run_dir, "alpha_runs")["alpha"]), np.load(path)["w_g"][-1]


def analyze_run(run_dir, alpha_runs=(), device: str = "auto", checkpoint: str = "last") -> list[Path]:
    """Draw the figures of `run_dir` (and the α figure from `alpha_runs` with it); their paths."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MissingPathError("run_dir", f"{run_dir} is not a directory")
    if checkpoint not in ("last", "best"):
        raise ParameterError("checkpoint", f"must be last or best, got {checkpoint!r}")
    alpha_runs = check_alpha_runs(run_dir, alpha_runs) if alpha_runs else []
    out = run_dir / FIGURES
    chosen = distributed.pick_device(device)
    model, payload = load_model(_checkpoint(run_dir, checkpoint), chosen)
    settings = TrainSettings.from_dict(payload["settings"])
    class_names = list(payload.get("class_names") or labels.CLASS_NAMES)
    geom = model.geometry
    written = [_confusion_figure(run_dir, settings, class_names)]

    test_set = load_test_split(settings, model.config.image_size, payload.get("fold"))
    traced = np.load(run_dir / trace.FILE) if (run_dir / trace.FILE).is_file() else None
    indices = traced["probe_index"] if traced is not None else trace.probe_indices(test_set.labels, settings.trace_images or 8)
    images = np.asarray(test_set.images[indices])
    truth = test_set.labels[indices]
    probabilities, w_g, w_l = predict(model, images, chosen)
    guessed = probabilities.argmax(dim=1).numpy()
    # One name per probe face in every figure: its true class and its place in the test split.
    faces = [f"{class_names[t]} #{i}" for t, i in zip(truth, indices)]
    written.append(figures.nonlocal_weight_grid(
        images, w_g.numpy(), [f"{face}\npredicted {class_names[g]}" for face, g in zip(faces, guessed)], geom,
        out / "nonlocal_weights.png"))

    if traced is not None and len(traced["step"]):
        steps, traced_w_g = traced["step"], traced["w_g"]
        written.append(figures.nonlocal_weight_curves(steps, traced_w_g, faces, geom,
                                                      out / "nonlocal_weights_curves.png"))
        written.append(figures.nonlocal_weight_snapshots(images, steps, traced_w_g, geom,
                                                         out / "nonlocal_weights_snapshots.png",
                                                         row_labels=[face.replace(" #", "\n#") for face in faces]))

    if model.local_attention is not None:
        for k in range(min(OCCLUSION_FACES, len(images))):
            occluded = localization.occluded_copies(images[k], geom)
            _, _, w_l_occluded = predict(model, occluded, chosen)
            written.append(figures.local_weight_occlusion(
                images[k], occluded, w_l[k].numpy(), w_l_occluded.numpy(), geom,
                out / f"local_weights_occlusion_{k}.png",
                f"w_l of {faces[k]} with each patch greyed in turn (fig. 13)"))

    if alpha_runs:
        found = [final_nonlocal_weights(r) for r in [run_dir, *alpha_runs]]
        written.append(figures.nonlocal_weights_by_alpha([a for a, _ in found], [w for _, w in found],
                                                         out / "nonlocal_weights_by_alpha.png"))
    return written


def _confusion_figure(run_dir: Path, settings: TrainSettings, class_names: list[str]) -> Path:
    """The run's confusion_matrix.png: the one `train` wrote, else (a fold of a K-fold run, or a
    run stopped before its end) drawn there from the last finished epoch."""
    path = run_dir / runs.CONFUSION_FILE
    if not path.is_file():
        record = _last_record(run_dir)
        figures.confusion_matrix(
            record["confusion"], class_names, path,
            f"{settings.dataset}, {settings.preset}/{settings.model.variant}: epoch {record['epoch']}")
    return path

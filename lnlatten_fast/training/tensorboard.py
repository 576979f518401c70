"""TensorBoard logs of a training run (the `tensorboard` setting, `--tensorboard`), in RUN/tb.

    tensorboard --logdir runs/x/tb

Each finished epoch adds, at global step = the epoch's number (1, 2, ...):

    scalars  loss/train, accuracy/test, accuracy/test_mean_class, accuracy/val (with a
             validation set), lr, throughput/images_per_second, time/train_seconds,
             time/test_seconds, time/checkpoint_blocking_seconds, and gpu/<statistic> for each
             number of the epoch's GPU telemetry (utilisation, memory, power, temperature:
             on CUDA with NVML only; a CPU run has no gpu/ tags)
    images   confusion_matrix (figures.confusion_matrix, as confusion_matrix.png draws it) and
             nonlocal_weights (figures.nonlocal_weight_grid, fig. 10: the attention trace's
             probe test images and their w_g under the evaluated model, the EMA's when the run
             keeps one)

Every scalar is read from the epoch's record, the one metrics.jsonl holds: one source of truth.
The step is the epoch, not the training step, because the record is per epoch: every tag gets
one point per epoch, and runs of different batch sizes or dataset sizes line up.

A resumed run opens the writer with purge_step = its first epoch to train, so TensorBoard drops
whatever a killed run logged past its last checkpoint: each tag keeps one point per epoch. A
K-fold run logs each fold in its own RUN/foldK/tb. Only the main process writes (under torchrun,
rank 0). tensorboard is imported only when a writer is opened, so the base install trains
without it, and `require` refuses a run that asks for it before anything is written.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from .. import figures
from ..data import labels
from ..data.cache import ImageSet
from ..errors import ParameterError
from ..geometry import PatchGeometry
from .inference import predict
from .trace import probe_indices

__all__ = ["FOLDER", "SCALARS", "require", "EpochBoard"]

FOLDER = "tb"
#: The epoch record's fields logged as scalars, by tag; a field the record lacks is left out.
SCALARS = {
    "train_loss": "loss/train",
    "test_accuracy": "accuracy/test",
    "test_mean_class_accuracy": "accuracy/test_mean_class",
    "val_accuracy": "accuracy/val",
    "lr": "lr",
    "images_per_second": "throughput/images_per_second",
    "train_seconds": "time/train_seconds",
    "test_seconds": "time/test_seconds",
    "checkpoint_blocking_seconds": "time/checkpoint_blocking_seconds",
}
#: The probe faces drawn when the run has no attention trace (`trace_images` 0), as analyze draws.
DEFAULT_PROBES = 8


def require():
    """torch's SummaryWriter class; ParameterError("tensorboard") when the package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ParameterError("tensorboard", "needs the tensorboard package: pip install 'lnlatten_fast[tensorboard]'") \
            from None
    return SummaryWriter


class EpochBoard:
    """The writer of one run directory's RUN/tb; a context manager that flushes and closes it."""

    def __init__(self, run_dir: Path, first_epoch: int, test_set: ImageSet, probe_count: int, title: str):
        """`first_epoch`: the epochs the run's checkpoint holds (0 for a new run): anything logged
        at a later epoch is purged. `title`: what the run is, in the images' titles."""
        summary_writer = require()
        self.writer = summary_writer(log_dir=str(Path(run_dir) / FOLDER), purge_step=first_epoch + 1)
        self.title = title
        indices = probe_indices(test_set.labels, probe_count or DEFAULT_PROBES)
        self.probe_images = np.asarray(test_set.images[indices])
        # One name per probe face, as analyze's fig. 10 names it: its true class and its place in the test split.
        self.probe_names = [f"{labels.CLASS_NAMES[t]} #{i}" for t, i in zip(test_set.labels[indices], indices)]

    def __enter__(self) -> EpochBoard:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.writer.close()  # flushes

    def log_epoch(self, record: dict, model: torch.nn.Module, geometry: PatchGeometry, device: torch.device,
                  precision: str) -> None:
        """The scalars of `record` (an epoch's metrics line), its confusion matrix, and the probes'
        w_g under `model` (left in the mode it was in)."""
        step = record["epoch"]
        for field, tag in SCALARS.items():
            if field in record:
                self.writer.add_scalar(tag, record[field], step)
        for name, value in record.get("gpu", {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):  # not the GPU's name or driver
                self.writer.add_scalar(f"gpu/{name}", value, step)
        was_training = model.training
        model.eval()
        probabilities, w_g, _ = predict(model, self.probe_images, device, precision)
        model.train(was_training)
        guessed = probabilities.argmax(dim=1).tolist()
        titles = [f"{name}\npredicted {labels.CLASS_NAMES[g]}" for name, g in zip(self.probe_names, guessed)]
        with tempfile.TemporaryDirectory(prefix="lnlatten-tb-") as folder:
            confusion = figures.confusion_matrix(record["confusion"], labels.CLASS_NAMES,
                                                 Path(folder) / "confusion.png", f"{self.title}: epoch {step}")
            grid = figures.nonlocal_weight_grid(self.probe_images, w_g.numpy(), titles, geometry,
                                                Path(folder) / "nonlocal_weights.png")
            for tag, path in (("confusion_matrix", confusion), ("nonlocal_weights", grid)):
                self.writer.add_image(tag, _rgb(path), step, dataformats="HWC")
        self.writer.flush()


def _rgb(path: Path) -> np.ndarray:
    """A PNG as uint8 (H, W, 3)."""
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))

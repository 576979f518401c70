"""The attention trace: w_g and w_l of a fixed set of probe test images, every K training steps,
in RUN/attention_trace.npz (paper figs. 11-12: how the non-local weights move while training).

    trace = np.load("runs/x/attention_trace.npz")
    trace["w_g"]        # (T, P, M): T records of P probe images' non-local weights
    trace["epoch"], trace["step"] (of the run), trace["probe_index"], trace["probe_label"]

The probes are the first test image of each class in turn (a fixed, class-balanced choice), so
every run of a dataset traces the same faces. Records are taken in eval mode, without autocast
changes or RNG draws, so tracing does not change what is trained.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..data.cache import ImageSet
from ..data.pipeline import BatchLoader
from .precision import autocast

__all__ = ["probe_indices", "AttentionTrace"]

FILE = "attention_trace.npz"


def probe_indices(labels: np.ndarray, count: int) -> np.ndarray:
    """`count` test indices: round-robin over the classes, first images first."""
    by_class = [list(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    chosen = []
    while len(chosen) < min(count, len(labels)):
        for members in by_class:
            if members and len(chosen) < count:
                chosen.append(members.pop(0))
    return np.array(sorted(chosen), dtype=np.int64)


class AttentionTrace:
    """Records probes' (w_g, w_l) every `every` steps; `save` writes them atomically."""

    def __init__(self, run_dir: Path, test_set: ImageSet, every: int, count: int, device, steps_done: int):
        """`steps_done`: the training steps of the run its checkpoint holds (a resumed run keeps
        the records up to there and drops any a killed run took after it; 0: a new trace)."""
        self.path = Path(run_dir) / FILE
        self.every = every
        self.records: dict[str, list] = {"epoch": [], "step": [], "w_g": [], "w_l": []}
        self.indices = probe_indices(test_set.labels, count) if every > 0 else np.zeros(0, np.int64)
        self.labels = test_set.labels[self.indices]
        self.active = every > 0 and len(self.indices) > 0
        if not self.active:
            return
        loader = BatchLoader(test_set.images, test_set.labels, self.indices, len(self.indices), device)
        self.x, _ = next(iter(loader))
        if self.path.exists() and steps_done:
            old = np.load(self.path)
            keep = old["step"] <= steps_done
            self.records = {key: list(old[key][keep]) for key in self.records}

    @torch.no_grad()
    def maybe_record(self, model, epoch: int, step: int, steps_per_epoch: int, precision: str, device) -> None:
        """Record at every `every`-th step of the run, and at each epoch's last step."""
        global_step = (epoch - 1) * steps_per_epoch + step
        if not self.active or (global_step % self.every and step != steps_per_epoch):
            return
        was_training = model.training
        model.eval()
        with autocast(precision, device):
            out = model(self.x)
        model.train(was_training)
        self.records["epoch"].append(epoch)
        self.records["step"].append(global_step)
        self.records["w_g"].append(out.nonlocal_weights.float().cpu().numpy())
        self.records["w_l"].append(out.local_weights.float().cpu().numpy())

    def save(self) -> None:
        if not self.active or not self.records["step"]:
            return
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, epoch=np.array(self.records["epoch"]), step=np.array(self.records["step"]),
                     w_g=np.stack(self.records["w_g"]), w_l=np.stack(self.records["w_l"]),
                     probe_index=self.indices, probe_label=self.labels)
        os.replace(tmp, self.path)

"""Accuracy, mean class accuracy and the confusion matrix (rows: true class, columns: predicted)."""

from __future__ import annotations

import math

import torch


def confusion_matrix(predicted: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    flat = target.long() * num_classes + predicted.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def accuracy(confusion: torch.Tensor, unscored: torch.Tensor | None = None) -> float:
    """Correct / all; `unscored` (per true class) counts images without a prediction: wrong."""
    total = confusion.sum().item() + (0 if unscored is None else int(unscored.sum()))
    return confusion.diag().sum().item() / total if total else float("nan")


def class_recall(confusion: torch.Tensor, unscored: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per class (model order): the share of its images predicted as it (fp64; NaN for a class
    with no images) and how many images it has (`unscored` as in `accuracy`: in the support,
    never correct)."""
    support = confusion.sum(dim=1) + (0 if unscored is None else unscored.to(confusion.device))
    return confusion.diag().double() / support.double(), support


def mean_class_accuracy(confusion: torch.Tensor, unscored: torch.Tensor | None = None) -> float:
    """Mean of per-class recall over the classes present in the targets."""
    recall, support = class_recall(confusion, unscored)
    present = support > 0
    if not present.any():
        return float("nan")
    return recall[present].mean().item()


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return mean, math.sqrt(var)

"""Which images go where: subject-independent k-folds, stratified hold-outs, and per-sample
weights for class-balanced sampling.

    from lnlatten_fast.data.splits import kfold_by_subject, stratified_holdout
    for train_idx, test_idx in kfold_by_subject(ck_samples, k=5): ...
    keep, val = stratified_holdout(labels, 0.1, seed=0)

Everything is deterministic for a given seed and returns indices, never copies of the data.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import numpy as np

from ..errors import ParameterError
from .datasets import Sample

__all__ = ["kfold_by_subject", "stratified_holdout", "class_balanced_weights"]


def kfold_by_subject(
    samples: Sequence[Sample] | Sequence[str | None], k: int = 5, seed: int = 0
) -> list[tuple[list[int], list[int]]]:
    """Subject-independent k-fold split: ``[(train_indices, test_indices)] * k``.

    ``samples`` are records or just their subjects (one per image).

    Every subject's images land in exactly one test fold; the test folds partition
    ``range(len(samples))``. Folds are balanced by image count: subjects are assigned largest
    first to the fold with the fewest images so far (ties between equal-size subjects broken by
    a ``seed``-shuffled order, ties between folds by lowest index). Deterministic for a given
    ``seed``. Raises ValueError if a sample has no subject or there are fewer subjects than k.
    """
    if not isinstance(k, int) or k < 2:
        raise ValueError(f"kfold_by_subject: k must be an int >= 2, got {k!r}")
    groups: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        subject = s.subject if isinstance(s, Sample) else s
        if subject is None:
            where = f" ({s.path})" if isinstance(s, Sample) else ""
            raise ValueError(f"kfold_by_subject: sample {i}{where} has no subject")
        groups[subject].append(i)
    if len(groups) < k:
        raise ValueError(
            f"kfold_by_subject: {len(groups)} subject(s) cannot make {k} subject-independent folds"
        )
    names = sorted(groups)
    order = np.random.default_rng(seed).permutation(len(names))
    shuffled = [names[j] for j in order]
    shuffled.sort(key=lambda n: -len(groups[n]))  # stable: seed order among equal sizes
    fold_members: list[list[int]] = [[] for _ in range(k)]
    sizes = [0] * k
    for n in shuffled:
        f = min(range(k), key=lambda j: (sizes[j], j))
        fold_members[f].extend(groups[n])
        sizes[f] += len(groups[n])
    n_total = len(samples)
    folds = []
    for members in fold_members:
        test = sorted(members)
        in_test = set(test)
        train = [i for i in range(n_total) if i not in in_test]
        folds.append((train, test))
    return folds


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (keep, held_out) with `fraction` of every class held out."""
    if not 0.0 < fraction < 1.0:
        raise ParameterError("fraction", f"must lie in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    keep, held = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        cut = int(round(fraction * len(members)))
        held.append(members[:cut])
        keep.append(members[cut:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(held))


def class_balanced_weights(samples: Sequence[Sample]) -> np.ndarray:
    """Per-sample weights ∝ 1 / (count of the sample's class), for a weighted random sampler
    (AffectNet's optional class-balanced sampling, SPEC §5).

    Scaled so that every present class gets the same total weight and the weights sum to
    ``len(samples)``: ``w_i = N / (C * n_{y_i})`` with C the number of classes present.
    """
    if len(samples) == 0:
        return np.zeros(0, dtype=np.float64)
    labels = np.fromiter((s.label for s in samples), dtype=np.int64, count=len(samples))
    counts = np.bincount(labels)
    present = int(np.count_nonzero(counts))
    return len(labels) / (present * counts[labels].astype(np.float64))

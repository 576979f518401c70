"""The images a run trains and tests on: the dataset's own split, or subject-independent folds.

Training needs every (train, test) pair, with its validation hold-out (`load_run_splits`), and
says what it got (`dataset_summary`); evaluating a checkpoint needs only its test split,
rebuilt exactly as the run built it (same dataset, root, seed, sizes and fold).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.cache import BuildProgress, ImageSet
from ..data.datasets import SYNTHETIC, synthetic
from ..data.labels import CLASS_NAMES_8, NUM_CLASSES
from ..data.sources import LABEL_MAPS, load_split
from ..data.splits import kfold_by_subject, stratified_holdout
from ..errors import ParameterError
from .settings import TrainSettings

__all__ = ["RunSplits", "load_data", "load_run_splits", "dataset_summary", "load_test_split", "load_test_regions"]


def _common(settings: TrainSettings, image_size: int, progress: BuildProgress | None = None) -> dict:
    return dict(
        image_size=image_size, data_root=settings.data_root, cache_dir=settings.cache_dir,
        workers=settings.workers, seed=settings.seed, strict=settings.strict,
        synthetic_occlusion=settings.synthetic_occlusion, progress=progress,
    )


def _folds(settings: TrainSettings, image_size: int, progress: BuildProgress | None = None
           ) -> list[tuple[ImageSet, ImageSet]]:
    everything = load_split(settings.dataset, "all", **_common(settings, image_size, progress))
    if everything.subjects is None or any(s is None for s in everything.subjects):
        raise ParameterError("folds", f"{settings.num_folds} needs a subject per image; {settings.dataset} has none")
    folds = kfold_by_subject(everything.subjects, k=settings.num_folds, seed=settings.seed)
    return [(everything.subset(tr), everything.subset(te)) for tr, te in folds]


def load_data(settings: TrainSettings, image_size: int, progress: BuildProgress | None = None
              ) -> list[tuple[ImageSet, ImageSet]]:
    """[(train, test)]: one pair, or one per subject-independent fold. Building the image cache
    is shown by `progress` (none by default)."""
    if settings.num_folds:
        return _folds(settings, image_size, progress)
    common = _common(settings, image_size, progress)
    train = load_split(settings.dataset, "train", synthetic_size=settings.synthetic_train, **common)
    test = load_split(settings.dataset, "test", synthetic_size=settings.synthetic_test, **common)
    return [(train, test)]


@dataclass
class RunSplits:
    """The images one model trains on, selects its best epoch on (None: the test accuracy
    selects) and tests on; `fold` is the fold's index in a K-fold run, None otherwise."""

    train: ImageSet
    test: ImageSet
    validation: ImageSet | None = None
    fold: int | None = None

    def named(self) -> dict[str, ImageSet]:
        """The splits that hold images, by their name in the dataset summary."""
        prefix = "" if self.fold is None else f"fold {self.fold} "  # as its directory, fold<k>
        parts = {"train": self.train, "validation": self.validation, "test": self.test}
        return {prefix + name: images for name, images in parts.items() if images is not None}


def load_run_splits(settings: TrainSettings, image_size: int, progress: BuildProgress | None = None
                    ) -> list[RunSplits]:
    """`load_data`'s pairs with `val_fraction` of every class of the training images held out
    for validation; an empty split is refused naming the parameter that made it."""
    pairs = load_data(settings, image_size, progress)
    runs = []
    for index, (train, test) in enumerate(pairs):
        run = RunSplits(train, test, fold=index if len(pairs) > 1 else None)
        _check_not_empty(settings, run)
        if settings.val_fraction:
            keep, held = stratified_holdout(train.labels, settings.val_fraction, settings.seed)
            run.train, run.validation = train.subset(keep), train.subset(held)
            _check_not_empty(settings, run)
        runs.append(run)
    return runs


def _check_not_empty(settings: TrainSettings, run: RunSplits) -> None:
    """An empty split would train on nothing or report NaN accuracy: refuse it by name."""
    for name, images in run.named().items():
        if len(images) == 0:
            split = name.rsplit(" ", 1)[-1]
            where = f" of fold {run.fold}" if run.fold is not None else ""
            cause = ("val_fraction" if split == "validation"
                     else "dataset" if settings.data_root is None else "data_root")
            raise ParameterError(cause, f"gives an empty {split} split{where} ({settings.dataset!r})")


def _label_mapping(dataset: str) -> str:
    """How the dataset's labels become the canonical classes, in words."""
    if dataset not in LABEL_MAPS:
        return "labels: drawn as the classes themselves"
    by_class: dict[int, list[str]] = {}
    for own, label in LABEL_MAPS[dataset].items():
        by_class.setdefault(label, []).append(str(own))
    pairs = ", ".join(f"{'/'.join(by_class[label])} → {CLASS_NAMES_8[label]}" for label in sorted(by_class))
    return f"label mapping (dataset label → class): {pairs}"


def _class_table(splits: dict[str, ImageSet]) -> list[str]:
    """Images per class (columns) and split (rows), with the totals."""
    classes = max([NUM_CLASSES, *(int(images.labels.max()) + 1 for images in splits.values() if len(images))])
    names = [*CLASS_NAMES_8[:classes], "total"]
    rows = {name: [*np.bincount(images.labels, minlength=classes).tolist(), len(images)]
            for name, images in splits.items()}
    widths = [max(len(heading), *(len(str(row[i])) for row in rows.values())) for i, heading in enumerate(names)]
    first = max(len(name) for name in rows)
    lines = ["  " + " " * first + "".join(f"  {heading:>{w}}" for heading, w in zip(names, widths))]
    lines += ["  " + f"{name:<{first}}" + "".join(f"  {count:>{w}}" for count, w in zip(row, widths))
              for name, row in rows.items()]
    return lines


def dataset_summary(settings: TrainSettings, runs: list[RunSplits], skipped_file: Path) -> str:
    """What the run trains on: the dataset and how its labels map to the classes, the images
    per class and split, and how many images of each loaded split were left out (unreadable;
    their list goes to `skipped_file`)."""
    where = f" at {settings.data_root}" if settings.data_root is not None else ""
    lines = [f"dataset {settings.dataset}{where}; {_label_mapping(settings.dataset)}"]
    lines += _class_table({name: images for run in runs for name, images in run.named().items()})
    # Every split cut from a loaded split (a fold, a hold-out) keeps the loaded split's list of
    # the images left out: the folds' is the whole dataset's.
    first = runs[0]
    if first.fold is not None:
        counts = [str(len(first.train.skipped))]
    else:
        counts = [f"{len(first.train.skipped)} train", f"{len(first.test.skipped)} test"]
    if first.train.skipped or first.test.skipped:
        lines.append(f"  skipped (unreadable images): {', '.join(counts)} (listed in {skipped_file})")
    else:
        lines.append("  skipped (unreadable images): none")
    return "\n".join(lines)


def load_test_split(settings: TrainSettings, image_size: int, fold: int | None = None) -> ImageSet:
    """The test images of the run `settings` describe (of fold `fold` for a K-fold run)."""
    if settings.num_folds:
        return _folds(settings, image_size)[0 if fold is None else fold][1]
    common = _common(settings, image_size)
    return load_split(settings.dataset, "test", synthetic_size=settings.synthetic_test, **common)


def load_test_regions(settings: TrainSettings, image_size: int) -> np.ndarray | None:
    """The crucial-region masks of the test images, where the dataset has them (the synthetic
    one, without folds); None elsewhere."""
    if settings.dataset != SYNTHETIC or settings.num_folds:
        return None
    return synthetic.draw_regions("test", image_size, settings.seed, settings.synthetic_test,
                                  settings.synthetic_occlusion)

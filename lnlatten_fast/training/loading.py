"""The images a run trains and tests on: the dataset's own split, or subject-independent folds.

Training needs every (train, test) pair; evaluating a checkpoint needs only its test split,
rebuilt exactly as the run built it (same dataset, root, seed, sizes and fold).
"""

from __future__ import annotations

import numpy as np

from ..data.cache import ImageSet
from ..data.datasets import SYNTHETIC, synthetic
from ..data.sources import load_split
from ..data.splits import kfold_by_subject
from ..errors import ParameterError
from .settings import TrainSettings

__all__ = ["load_data", "load_test_split", "load_test_regions"]


def _common(settings: TrainSettings, image_size: int) -> dict:
    return dict(
        image_size=image_size, data_root=settings.data_root, cache_dir=settings.cache_dir,
        workers=settings.workers, seed=settings.seed, strict=settings.strict,
        synthetic_occlusion=settings.synthetic_occlusion,
    )


def _folds(settings: TrainSettings, image_size: int) -> list[tuple[ImageSet, ImageSet]]:
    everything = load_split(settings.dataset, "all", **_common(settings, image_size))
    if everything.subjects is None or any(s is None for s in everything.subjects):
        raise ParameterError("folds", f"{settings.num_folds} needs a subject per image; {settings.dataset} has none")
    folds = kfold_by_subject(everything.subjects, k=settings.num_folds, seed=settings.seed)
    return [(everything.subset(tr), everything.subset(te)) for tr, te in folds]


def load_data(settings: TrainSettings, image_size: int) -> list[tuple[ImageSet, ImageSet]]:
    """[(train, test)]: one pair, or one per subject-independent fold."""
    if settings.num_folds:
        return _folds(settings, image_size)
    common = _common(settings, image_size)
    train = load_split(settings.dataset, "train", synthetic_size=settings.synthetic_train, **common)
    test = load_split(settings.dataset, "test", synthetic_size=settings.synthetic_test, **common)
    return [(train, test)]


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

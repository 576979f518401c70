"""One entry point from a dataset name to decoded images: `load_split`.

Datasets on disk are listed by their reader (`datasets.DATASET_READERS`) and decoded once into
the `cache`; the synthetic one is drawn by `datasets.synthetic` and cached the same way.
`LABEL_MAPS` says how each reader maps its dataset's labels to the canonical classes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from ..errors import MissingPathError, ParameterError
from . import synthetic as faces
from .cache import BUILD_CHUNK, BuildProgress, ImageSet, build_image_cache, cached_arrays
from .datasets import DATASETS, SYNTHETIC, read_dataset
from .datasets import affectnet, ckplus, fer2013, ferplus, rafdb, sfew, synthetic
from .images import ImageDecodeError
from .labels import CLASS_SYNONYMS, NUM_CLASSES

__all__ = ["list_dataset", "load_split", "LABEL_MAPS"]

#: What `labels.parse_class_name` reads: a class name or synonym, or a canonical index.
_NAMES_OR_INDICES = {**CLASS_SYNONYMS, **{str(label): label for label in range(NUM_CLASSES)}}
#: Each on-disk dataset's own labels (codes, vote columns, class names) → canonical label, as
#: its reader maps them; the synthetic set is drawn in the canonical labels. A label the
#: readers of codes and columns do not list is left out (CK+'s and AffectNet's contempt,
#: FERPlus's unknown); a class name the name readers do not know is an error.
LABEL_MAPS: dict[str, dict] = {
    "rafdb": rafdb.LABEL_MAP,
    "affectnet": affectnet.LABEL_MAP,
    "sfew": sfew.CLASS_MAP,
    "ckplus": ckplus.LABEL_MAP,
    "fer2013": fer2013.LABEL_MAP,
    "ferplus": ferplus.COLUMN_MAP,
    "folder": _NAMES_OR_INDICES,
    "manifest": _NAMES_OR_INDICES,
}


def list_dataset(dataset: str, data_root: str | Path | None, split: str = "all"):
    """The samples of `split` of the on-disk `dataset` under `data_root`, read from its layout
    (no image decoded): ParameterError / MissingPathError("data_root") when the root is not
    given or missing, the reader's error when it lacks the dataset's layout."""
    if data_root is None:
        raise ParameterError("data_root", f"is required for dataset {dataset!r}")
    root = Path(data_root).expanduser()
    if not root.exists():
        raise MissingPathError("data_root", f"{root} does not exist")
    return read_dataset(dataset, root, split)


def load_split(
    dataset: str,
    split: str,
    image_size: int,
    data_root: str | Path | None = None,
    cache_dir: str | Path | None = None,
    workers: int = 0,
    seed: int = 0,
    synthetic_size: int | None = None,
    strict: bool = False,
    synthetic_occlusion: float = 0.0,
    progress: BuildProgress | None = None,
) -> ImageSet:
    """Images of `split` ("train", "test" or "all") of `dataset` at `image_size` px.

    `data_root` is the dataset's root (not needed for the synthetic set, which draws
    `synthetic_size` images from `seed` instead, each occluded with probability
    `synthetic_occlusion`); `workers` processes decode into `cache_dir`.
    An image that cannot be decoded, or an entry the reader's folder walk found named like an
    image that is not a readable image file (a directory, a broken link, a symlink loop), is
    left out and listed with the reason in the result's `skipped`; with `strict` it raises
    ImageDecodeError naming the file. Building a cache entry is shown by `progress` (none by
    default), as "<dataset> <split>".
    """
    if dataset not in DATASETS:
        raise ParameterError("dataset", f"must be one of {', '.join(DATASETS)}; got {dataset!r}")
    progress = progress if progress is not None else BuildProgress()
    what = f"{dataset} {split}"
    if dataset == SYNTHETIC:
        key = synthetic.cache_key(split, seed, synthetic_size, synthetic_occlusion)
        draw = lambda: _draw_synthetic(split, image_size, seed, synthetic_size, synthetic_occlusion,  # noqa: E731
                                       progress, what)
        return cached_arrays(cache_dir, f"synthetic-{split}", image_size, key, draw)
    samples = list_dataset(dataset, data_root, split)
    if strict and samples.skipped:
        raise ImageDecodeError(samples.skipped[0]["path"], samples.skipped[0]["reason"])
    root_tag = hashlib.sha256(str(Path(data_root).expanduser().resolve()).encode()).hexdigest()[:8]
    name = f"{dataset}-{split}-{root_tag}"
    images = build_image_cache(samples, image_size, name, cache_dir, workers, strict=strict, progress=progress,
                               what=what)
    images.skipped = [*samples.skipped, *images.skipped]
    return images


def _draw_synthetic(split: str, image_size: int, seed: int, count: int | None, occlusion: float,
                    progress: BuildProgress, what: str) -> tuple[np.ndarray, np.ndarray]:
    """`synthetic.draw`'s images and labels, drawn BUILD_CHUNK at a time to show the progress:
    a face depends only on its index (and the seed, size and occlusion), so the pieces make
    exactly the whole."""
    first, total = synthetic._split_range(split, count)
    images = np.empty((total, image_size, image_size, 3), dtype=np.uint8)
    labels = np.empty(total, dtype=np.int64)
    with progress.task(what, total) as advance:
        for lo in range(0, total, BUILD_CHUNK):
            piece = faces.generate(min(BUILD_CHUNK, total - lo), size=image_size, seed=seed,
                                   occlusion_prob=occlusion, start=first + lo)
            count = len(piece["labels"])
            images[lo:lo + count], labels[lo:lo + count] = piece["images"], piece["labels"]
            advance(count)
    return images, labels

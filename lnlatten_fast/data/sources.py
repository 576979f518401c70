"""One entry point from a dataset name to decoded images: `load_split`.

Datasets on disk are listed by their reader (`datasets.DATASET_READERS`) and decoded once into
the `cache`; the synthetic one is drawn by `datasets.synthetic` and cached the same way.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..errors import MissingPathError, ParameterError
from .cache import ImageSet, build_image_cache, cached_arrays
from .datasets import DATASETS, SYNTHETIC, read_dataset
from .datasets import synthetic
from .images import ImageDecodeError

__all__ = ["load_split"]


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
) -> ImageSet:
    """Images of `split` ("train", "test" or "all") of `dataset` at `image_size` px.

    `data_root` is the dataset's root (not needed for the synthetic set, which draws
    `synthetic_size` images from `seed` instead, each occluded with probability
    `synthetic_occlusion`); `workers` processes decode into `cache_dir`.
    An image that cannot be decoded, or an entry the reader's folder walk found named like an
    image that is not a readable image file (a directory, a broken link, a symlink loop), is
    left out and listed with the reason in the result's `skipped`; with `strict` it raises
    ImageDecodeError naming the file.
    """
    if dataset not in DATASETS:
        raise ParameterError("dataset", f"must be one of {', '.join(DATASETS)}; got {dataset!r}")
    if dataset == SYNTHETIC:
        key = synthetic.cache_key(split, seed, synthetic_size, synthetic_occlusion)
        draw = lambda: synthetic.draw(split, image_size, seed, synthetic_size, synthetic_occlusion)  # noqa: E731
        return cached_arrays(cache_dir, f"synthetic-{split}", image_size, key, draw)
    if data_root is None:
        raise ParameterError("data_root", f"is required for dataset {dataset!r}")
    root = Path(data_root).expanduser()
    if not root.exists():
        raise MissingPathError("data_root", f"{root} does not exist")
    samples = read_dataset(dataset, root, split)
    if strict and samples.skipped:
        raise ImageDecodeError(samples.skipped[0]["path"], samples.skipped[0]["reason"])
    root_tag = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:8]
    name = f"{dataset}-{split}-{root_tag}"
    images = build_image_cache(samples, image_size, name, cache_dir, workers, strict=strict)
    images.skipped = [*samples.skipped, *images.skipped]
    return images

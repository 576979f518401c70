"""One entry point from a dataset name to decoded images: `load_split`.

Datasets on disk are listed by their reader (`datasets.DATASET_READERS`) and decoded once into
the `cache`; the synthetic one is drawn by `datasets.synthetic` and cached the same way.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..errors import MissingPathError, ParameterError
from .cache import ImageSet, build_image_cache, cached_arrays, default_cache_dir
from .datasets import DATASETS, SYNTHETIC, read_dataset
from .datasets import synthetic

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
    An image that cannot be decoded is left out and listed in the result's `skipped`; with
    `strict` it raises ImageDecodeError naming the file.
    """
    if dataset not in DATASETS:
        raise ParameterError("dataset", f"must be one of {', '.join(DATASETS)}; got {dataset!r}")
    cache_dir = default_cache_dir() if cache_dir is None else Path(cache_dir)
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
    root_tag = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:8]
    name = f"{dataset}-{split}-{root_tag}"
    return build_image_cache(samples, image_size, name, cache_dir, workers, strict=strict)

"""One entry point from a dataset name to decoded images: `load_split`.

Real datasets are listed by `readers` and decoded once into the `cache`; the synthetic one is
drawn by `synthetic` (train and test use disjoint image indices of the same seed) and cached
the same way.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from . import readers, synthetic
from .cache import ImageSet, build_image_cache, cached_arrays, default_cache_dir

__all__ = ["DATASETS", "SYNTHETIC_SIZES", "load_split", "stratified_holdout"]

DATASETS = ("synthetic", "rafdb", "affectnet", "sfew", "ckplus", "fer2013", "ferplus", "folder", "manifest")
# Default synthetic split sizes, and where the test split's image indices start.
SYNTHETIC_SIZES = {"train": 2100, "test": 700}
_SYNTHETIC_TEST_START = 1_000_000


def load_split(
    dataset: str,
    split: str,
    image_size: int,
    data_root: str | Path | None = None,
    cache_dir: str | Path | None = None,
    workers: int = 0,
    seed: int = 0,
    synthetic_size: int | None = None,
) -> ImageSet:
    """Images of `split` ("train", "test" or "all") of `dataset` at `image_size` px."""
    if dataset not in DATASETS:
        raise ValueError(f"--dataset must be one of {', '.join(DATASETS)}; got {dataset!r}")
    cache_dir = default_cache_dir() if cache_dir is None else Path(cache_dir)
    if dataset == "synthetic":
        if split not in SYNTHETIC_SIZES:
            raise ValueError(f"the synthetic dataset has splits train and test, not {split!r}")
        count = SYNTHETIC_SIZES[split] if synthetic_size is None else synthetic_size
        start = 0 if split == "train" else _SYNTHETIC_TEST_START

        def draw():
            faces = synthetic.generate(count, size=image_size, seed=seed, start=start)
            return faces["images"], faces["labels"]

        key = f"v{synthetic.VERSION}-seed{seed}-start{start}-n{count}"
        return cached_arrays(cache_dir, f"synthetic-{split}", image_size, key, draw)
    if data_root is None:
        raise ValueError(f"--data-root is required for --dataset {dataset}")
    root = Path(data_root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"--data-root {root} does not exist")
    samples = readers.read_dataset(dataset, root, split)
    root_tag = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:8]
    name = f"{dataset}-{split}-{root_tag}"
    return build_image_cache(samples, image_size, name, cache_dir, workers)


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (keep, held_out) with `fraction` of every class held out."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"--val-fraction must lie in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    keep, held = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        cut = int(round(fraction * len(members)))
        held.append(members[:cut])
        keep.append(members[cut:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(held))

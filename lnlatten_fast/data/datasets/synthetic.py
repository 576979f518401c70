"""The built-in synthetic expression set: its splits, and how a split is drawn.

The faces themselves are rendered by :mod:`lnlatten_fast.data.synthetic`. Train and test are
disjoint ranges of image indices of the same seed, so they never share an image; they are
drawn at the requested size (no resizing) and cached by :func:`..sources.load_split`.
"""

from __future__ import annotations

import numpy as np

from ..synthetic import VERSION, generate

__all__ = ["SPLIT_SIZES", "TEST_START", "draw", "draw_regions", "cache_key"]

#: Default number of images per split.
SPLIT_SIZES = {"train": 2100, "test": 700}
#: Index of the test split's first image (train starts at 0).
TEST_START = 1_000_000


def _split_range(split: str, count: int | None) -> tuple[int, int]:
    """(first image index, number of images) of `split`."""
    if split not in SPLIT_SIZES:
        raise ValueError(f"the synthetic dataset has splits train and test, not {split!r}")
    start = 0 if split == "train" else TEST_START
    return start, SPLIT_SIZES[split] if count is None else count


def draw(split: str, image_size: int, seed: int = 0, count: int | None = None,
         occlusion: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, S, S, 3) and labels (N,) of `split` (`count` images, default SPLIT_SIZES;
    each face occluded by a rectangle with probability `occlusion`)."""
    start, count = _split_range(split, count)
    faces = generate(count, size=image_size, seed=seed, start=start, occlusion_prob=occlusion)
    return faces["images"], faces["labels"]


def draw_regions(split: str, image_size: int, seed: int = 0, count: int | None = None,
                 occlusion: float = 0.0) -> np.ndarray:
    """The ground-truth crucial-region masks (N, S, S) uint8 (REGION_CODES) of the images
    :func:`draw` gives for the same arguments."""
    start, count = _split_range(split, count)
    return generate(count, size=image_size, seed=seed, start=start, occlusion_prob=occlusion)["regions"]


def cache_key(split: str, seed: int = 0, count: int | None = None, occlusion: float = 0.0) -> str:
    """What identifies a drawn split in the cache: seed, index range and occlusion probability
    (the entry's identity), then the renderer's version (its fingerprint, last)."""
    start, count = _split_range(split, count)
    return f"seed{seed}-start{start}-n{count}" + (f"-occ{occlusion!r}" if occlusion else "") + f"-v{VERSION}"

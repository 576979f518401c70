"""Decode and resize images once into a uint8 cache that batches are sliced from.

A cache entry is `<name>-<size>px-<fingerprint>.npy` (N, S, S, 3 uint8, memory-mapped when
read) plus `.labels.npy` beside it. The fingerprint hashes every source (path, size, mtime,
label, crop box, or the pixels themselves), so a changed source gives a new entry and the
stale one is removed. Files are written under a temporary name and renamed into place, so an
interrupted build never leaves a half-written cache that looks finished.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from .datasets import Sample

__all__ = ["ImageSet", "default_cache_dir", "fingerprint", "build_image_cache", "cached_arrays", "decode_image"]


@dataclass
class ImageSet:
    """Decoded images ready for batching: uint8 (N, S, S, 3) and int64 labels (N,)."""

    images: np.ndarray
    labels: np.ndarray
    subjects: list | None = None

    def __post_init__(self):
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (N, S, S, 3), got {self.images.dtype} {self.images.shape}")
        if self.labels.shape != (len(self.images),):
            raise ValueError(f"labels must be ({len(self.images)},), got {self.labels.shape}")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices) -> "ImageSet":
        indices = np.asarray(indices, dtype=np.int64)
        subjects = None if self.subjects is None else [self.subjects[i] for i in indices]
        return ImageSet(np.ascontiguousarray(self.images[indices]), self.labels[indices], subjects)


def default_cache_dir() -> Path:
    root = os.environ.get("LNLATTEN_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lnlatten_fast"
    )
    return Path(root)


def fingerprint(samples: Sequence[Sample], size: int) -> str:
    digest = hashlib.sha256(f"v1 size={size} n={len(samples)}".encode())
    for sample in samples:
        if sample.path is not None:
            stat = sample.path.stat()
            digest.update(f"{sample.path}|{stat.st_size}|{stat.st_mtime_ns}".encode())
        else:
            digest.update(np.ascontiguousarray(sample.pixels).tobytes())
        digest.update(f"|{sample.label}|{sample.box}\n".encode())
    return digest.hexdigest()[:16]


def decode_image(sample: Sample, size: int) -> np.ndarray:
    """One record -> uint8 (size, size, 3) RGB, face box cropped when the dataset gives one."""
    if sample.path is not None:
        try:
            with Image.open(sample.path) as image:
                image = image.convert("RGB")
                image.load()
        except OSError as error:
            raise ValueError(f"cannot decode image {sample.path}: {error}") from error
    else:
        pixels = sample.pixels
        image = Image.fromarray(pixels if pixels.ndim == 3 else np.stack([pixels] * 3, axis=-1))
    if sample.box is not None:
        x, y, w, h = sample.box
        image = image.crop((x, y, x + w, y + h))
    return np.asarray(image.resize((size, size), Image.BILINEAR), dtype=np.uint8)


def _decode_chunk(args) -> np.ndarray:
    samples, size = args
    return np.stack([decode_image(s, size) for s in samples])


def _atomic_save(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, array)
    os.replace(tmp, path)


def cached_arrays(
    cache_dir: Path, name: str, size: int, key: str, build: Callable[[], tuple[np.ndarray, np.ndarray]]
) -> ImageSet:
    """The cache entry (name, size, key), built with `build()` when it is missing."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{name}-{size}px"
    images_path = cache_dir / f"{stem}-{key}.npy"
    labels_path = cache_dir / f"{stem}-{key}.labels.npy"
    if not (images_path.exists() and labels_path.exists()):
        images, labels = build()
        _atomic_save(labels_path, np.asarray(labels, dtype=np.int64))
        _atomic_save(images_path, images)  # written last: its presence marks a complete entry
        for stale in cache_dir.glob(f"{stem}-*.npy"):
            if not stale.name.startswith(f"{stem}-{key}"):
                stale.unlink(missing_ok=True)
    return ImageSet(np.load(images_path, mmap_mode="r"), np.load(labels_path))


def build_image_cache(
    samples: Sequence[Sample], size: int, name: str, cache_dir: Path | None = None, workers: int = 0
) -> ImageSet:
    """Decode `samples` once at `size` px (in `workers` processes) and serve them from disk."""
    if not samples:
        raise ValueError(f"{name}: no images to cache (the reader found none)")
    cache_dir = default_cache_dir() if cache_dir is None else Path(cache_dir)

    def build():
        chunk = 256
        jobs = [(samples[i : i + chunk], size) for i in range(0, len(samples), chunk)]
        if workers > 0:
            with ProcessPoolExecutor(workers) as pool:
                parts = list(pool.map(_decode_chunk, jobs))
        else:
            parts = [_decode_chunk(job) for job in jobs]
        return np.concatenate(parts), np.array([s.label for s in samples], dtype=np.int64)

    images = cached_arrays(cache_dir, name, size, fingerprint(samples, size), build)
    images.subjects = [s.subject for s in samples]
    return images

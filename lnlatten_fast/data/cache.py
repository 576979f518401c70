"""Decode and resize images once into a uint8 cache that batches are sliced from.

A cache entry is `<name>-<size>px-<fingerprint>.npy` (N, S, S, 3 uint8, memory-mapped when
read) plus `.labels.npy` beside it. The fingerprint hashes every source (path, size, mtime,
label, crop box, or the pixels themselves), so a changed source gives a new entry and the
stale one is removed. Files are written under a temporary name and renamed into place, so an
interrupted build never leaves a half-written cache that looks finished.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from .datasets import Sample
from .images import FaceBoxError, ImageDecodeError, load_image

__all__ = ["ImageSet", "default_cache_dir", "fingerprint", "build_image_cache", "cached_arrays", "decode_image"]


@dataclass
class ImageSet:
    """Decoded images ready for batching: uint8 (N, S, S, 3) and int64 labels (N,)."""

    images: np.ndarray
    labels: np.ndarray
    subjects: list | None = None
    skipped: list = dataclasses.field(default_factory=list)  # [{"path", "reason"}]: left out

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
        return ImageSet(np.ascontiguousarray(self.images[indices]), self.labels[indices], subjects, self.skipped)


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
    """One record -> uint8 (size, size, 3) RGB, face box cropped when the dataset gives one
    (`images.load_image` for files; ImageDecodeError names a file it cannot read)."""
    if sample.path is not None:
        try:
            return load_image(sample.path, size, sample.box)
        except FaceBoxError as error:  # the listing is wrong, not the file: always an error
            raise FaceBoxError(f"{sample.source}: {error}" if sample.source else str(error)) from None
    pixels = sample.pixels
    image = Image.fromarray(pixels if pixels.ndim == 3 else np.stack([pixels] * 3, axis=-1))
    if sample.box is not None:
        x, y, w, h = sample.box
        image = image.crop((x, y, x + w, y + h))
    return np.asarray(image.resize((size, size), Image.BILINEAR), dtype=np.uint8)


def _decode_chunk(args) -> tuple[np.ndarray, list[tuple[int, str, str]]]:
    """(images, failures): failures are (index in the chunk, path, reason); their rows are 0.
    With `strict` the first failure is raised instead."""
    samples, size, strict = args
    out = np.zeros((len(samples), size, size, 3), dtype=np.uint8)
    failures = []
    for i, sample in enumerate(samples):
        try:
            out[i] = decode_image(sample, size)
        except ImageDecodeError as error:
            if strict:
                raise
            failures.append((i, error.path, error.reason))
    return out, failures


def _atomic_save(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, array)
    os.replace(tmp, path)


def _load_entry(images_path: Path, labels_path: Path, skipped_path: Path) -> ImageSet | None:
    """The cache entry, or None (with a warning naming the file) when a file of it is torn."""
    try:
        images = np.load(images_path, mmap_mode="r")
        labels = np.load(labels_path)
        skipped = json.loads(skipped_path.read_text()) if skipped_path.exists() else []
        return ImageSet(images, labels, skipped=skipped)
    except (ValueError, OSError, EOFError) as error:
        print(f"warning: cache file {images_path} is unreadable ({error}); rebuilding it", file=sys.stderr)
        return None


def cached_arrays(
    cache_dir: Path, name: str, size: int, key: str, build: Callable[[], tuple]
) -> ImageSet:
    """The cache entry (name, size, key), built with `build()` -> (images, labels[, skipped])
    when it is missing or torn. `skipped`: [{"path", "reason"}] of images left out."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{name}-{size}px"
    images_path = cache_dir / f"{stem}-{key}.npy"
    labels_path = cache_dir / f"{stem}-{key}.labels.npy"
    skipped_path = cache_dir / f"{stem}-{key}.skipped.json"
    if images_path.exists() and labels_path.exists():
        entry = _load_entry(images_path, labels_path, skipped_path)
        if entry is not None:
            return entry
        images_path.unlink(missing_ok=True)
    built = build()
    images, labels = built[0], built[1]
    skipped = list(built[2]) if len(built) > 2 else []
    _atomic_save(labels_path, np.asarray(labels, dtype=np.int64))
    tmp = skipped_path.with_name(f".{skipped_path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(skipped))
    os.replace(tmp, skipped_path)
    _atomic_save(images_path, images)  # written last: its presence marks a complete entry
    for stale in cache_dir.glob(f"{stem}-*"):
        if not stale.name.startswith(f"{stem}-{key}"):
            stale.unlink(missing_ok=True)
    return ImageSet(np.load(images_path, mmap_mode="r"), np.load(labels_path), skipped=skipped)


def build_image_cache(
    samples: Sequence[Sample], size: int, name: str, cache_dir: Path | None = None, workers: int = 0,
    strict: bool = False,
) -> ImageSet:
    """Decode `samples` once at `size` px (in `workers` processes) and serve them from disk.

    An image that cannot be decoded is left out and listed in the result's `skipped`; with
    `strict` it raises ImageDecodeError naming the file instead."""
    if not samples:
        raise ValueError(f"{name}: no images to cache (the reader found none)")
    cache_dir = default_cache_dir() if cache_dir is None else Path(cache_dir)

    def build():
        chunk = 256
        jobs = [(samples[i : i + chunk], size, strict) for i in range(0, len(samples), chunk)]
        if workers > 0:
            with ProcessPoolExecutor(workers) as pool:
                parts = list(pool.map(_decode_chunk, jobs))
        else:
            parts = [_decode_chunk(job) for job in jobs]
        bad = {start + i: (path, reason) for start, (_, failures) in zip(range(0, len(samples), chunk), parts)
               for i, path, reason in failures}
        keep = np.array([i for i in range(len(samples)) if i not in bad], dtype=np.int64)
        images = np.concatenate([p[0] for p in parts])[keep]
        labels = np.array([samples[i].label for i in keep], dtype=np.int64)
        return images, labels, [{"path": path, "reason": reason} for path, reason in bad.values()]

    images = cached_arrays(cache_dir, name, size, fingerprint(samples, size), build)
    if strict and images.skipped:
        first = images.skipped[0]
        raise ImageDecodeError(first["path"], first["reason"])
    skipped_paths = {item["path"] for item in images.skipped}
    images.subjects = [s.subject for s in samples if s.path is None or str(s.path) not in skipped_paths]
    return images

"""Decode and resize images once into a uint8 cache that batches are sliced from.

An entry is `<identity>-<fingerprint>.npy` (N, S, S, 3 uint8, memory-mapped when read), with
`.labels.npy` and `.skipped.json` beside it and a `.lock` file. Its *identity* says which
images it holds, without their state: the caller's name (dataset, split, the root's hash or
the synthetic seed and index range), the size, and every part of the key but the last. Its
*fingerprint*, the key's last part (letters and digits only), hashes the sources' state (path,
size, mtime, label, crop box, or the pixels, or the renderer's version). So entries of
different identities (another seed, size, split or root) coexist, and a changed source gives
a new fingerprint of the same identity.

Clean-up is conservative:
- Superseded entries: after building an entry, the other fingerprints of the *same identity*
  are removed, since the one just built reflects the sources as they are now. A reader holds a
  shared flock on the entry's `.lock` from before it looks for the entry until it has opened
  it (memory-mapped: on POSIX an open file survives its removal); a remover takes the lock
  exclusively without waiting and skips the entry if that fails, so an entry is never removed
  under a process that is opening it. Nothing of another identity is ever removed.
- Temporaries: files are written as `.<file>.<host>-<pid>.tmp` and renamed into place (an
  interrupted build never leaves a half-written entry that looks finished). A temporary whose
  writer, on this host, is no longer alive is removed before the next build; a write that
  fails (a full disk) removes its own.

A cache directory that cannot be created or written is refused before anything is decoded,
and a failed write names the file and the `cache_dir` parameter (--cache-dir,
$LNLATTEN_CACHE). Without fcntl (not POSIX) there is no locking.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import sys
from concurrent.futures import ProcessPoolExecutor
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterator, Sequence

import numpy as np
from PIL import Image

from .. import jsonio
from ..errors import ParameterError
from .datasets import Sample
from .images import FaceBoxError, ImageDecodeError, load_image

try:
    import fcntl
except ImportError:  # not POSIX: no locking
    fcntl = None

__all__ = [
    "ImageSet", "BuildProgress", "BUILD_CHUNK", "default_cache_dir", "fingerprint", "build_image_cache",
    "cached_arrays", "decode_image",
]

#: Images per decoding job, and so per progress report while an entry is built.
BUILD_CHUNK = 256


class BuildProgress:
    """How the building of a cache entry is shown; this one shows nothing (a training run's
    own is training.progress.CacheProgress). `task` is entered only when an entry has to be
    built, never when it is read from the cache."""

    @contextlib.contextmanager
    def task(self, what: str, total: int) -> Iterator[Callable[[int], None]]:
        """Around the building of `total` images described as `what` (e.g. "rafdb train"); yields
        `advance(count)`, which the builder calls as `count` more images are done."""
        yield lambda count: None


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


def _cache_location(cache_dir: str | Path | None) -> tuple[Path, str]:
    """The cache directory, and for messages where it came from when it was not given."""
    if cache_dir is not None:
        return Path(cache_dir), ""
    origin = " (the default, from $LNLATTEN_CACHE)" if os.environ.get("LNLATTEN_CACHE") else " (the default)"
    return default_cache_dir(), origin


def _reason(error: OSError) -> str:
    return error.strerror or str(error)


def _unusable(directory: Path, origin: str, problem: str) -> ParameterError:
    return ParameterError(
        "cache_dir", f"{directory}{origin} {problem}: point `cache_dir` or $LNLATTEN_CACHE at a writable directory")


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


# ---- entries, their locks and temporaries ---------------------------------------------------
_FINGERPRINT = re.compile(r"[0-9A-Za-z]+")
#: An entry's data files; the images file first: removed first, written last, so that its
#: presence marks a complete entry.
_ENTRY_FILES = (".npy", ".labels.npy", ".skipped.json")
_HOST = socket.gethostname().replace(".", "_") or "localhost"  # a shared cache may span hosts
_TEMPORARY = re.compile(r"\..+\.(?:npy|json)\.(?:(?P<host>[^.]+)-)?(?P<pid>\d+)\.tmp")


@dataclass(frozen=True)
class _Entry:
    directory: Path
    identity: str
    fingerprint: str

    def file(self, suffix: str) -> Path:
        return self.directory / f"{self.identity}-{self.fingerprint}{suffix}"

    @property
    def images(self) -> Path:
        return self.file(".npy")

    @property
    def labels(self) -> Path:
        return self.file(".labels.npy")

    @property
    def skipped(self) -> Path:
        return self.file(".skipped.json")

    @property
    def lock(self) -> Path:
        return self.file(".lock")


def _lock(path: Path, exclusive: bool) -> IO | None:
    """The open lock file holding a shared flock (waiting for it) or an exclusive one (not
    waiting); None where that cannot be had, or the file cannot be opened (a read-only cache)."""
    while True:
        try:
            fh = open(path, "a+")
        except OSError:
            return None
        if fcntl is None:
            return fh
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB if exclusive else fcntl.LOCK_SH)
            current = os.stat(path).st_ino == os.fstat(fh.fileno()).st_ino
        except FileNotFoundError:
            current = False
        except OSError:
            fh.close()
            return None
        if current:
            return fh
        fh.close()  # a remover deleted this lock file while we waited for it: lock the new one


def _other_fingerprints(entry: _Entry) -> set[str]:
    """The fingerprints of the other entries of the same identity in the directory."""
    prefix = entry.identity + "-"
    found = set()
    for path in entry.directory.iterdir():
        if not path.name.startswith(prefix):
            continue
        rest = path.name[len(prefix):]
        for suffix in (*_ENTRY_FILES, ".lock"):
            candidate = rest[: -len(suffix)] if rest.endswith(suffix) else ""
            if _FINGERPRINT.fullmatch(candidate) and candidate != entry.fingerprint:
                found.add(candidate)
    return found


def _remove_superseded(entry: _Entry) -> None:
    """Remove the other fingerprints of `entry`'s identity, except those another process is opening."""
    for other in _other_fingerprints(entry):
        stale = dataclasses.replace(entry, fingerprint=other)
        lock = _lock(stale.lock, exclusive=True)
        if lock is None:
            continue  # being opened: a later build removes it
        with lock:
            for suffix in _ENTRY_FILES:
                stale.file(suffix).unlink(missing_ok=True)
            stale.lock.unlink(missing_ok=True)


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{_HOST}-{os.getpid()}.tmp")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _remove_dead_temporaries(directory: Path) -> None:
    """Remove the temporaries whose writer (on this host) is no longer alive: it was killed."""
    for path in directory.glob(".*.tmp"):
        match = _TEMPORARY.fullmatch(path.name)
        if match and match["host"] in (None, _HOST) and not _alive(int(match["pid"])):
            path.unlink(missing_ok=True)


def _write(path: Path, write: Callable[[IO], object], origin: str) -> None:
    """`write(fh)` into `path`'s temporary, then renamed into place. A failed write (a full
    disk) removes the temporary and names the file and `cache_dir`."""
    tmp = _temporary(path)
    try:
        with open(tmp, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise ParameterError(
                "cache_dir", f"{path.parent}{origin}: writing the cache file {path.name} failed ({_reason(error)}); "
                "the partial file was removed: free space there or point `cache_dir` or $LNLATTEN_CACHE elsewhere"
            ) from error
        raise


def _prepare_directory(directory: Path, origin: str) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _unusable(directory, origin, f"cannot be created ({_reason(error)})") from error


def _check_writable(entry: _Entry, origin: str) -> None:
    """Refuse a cache directory that cannot take the entry, before anything is decoded."""
    probe = _temporary(entry.images)
    try:
        probe.touch()
        probe.unlink()
    except OSError as error:
        raise _unusable(entry.directory, origin, f"is not writable ({_reason(error)})") from error


def _load_entry(entry: _Entry) -> ImageSet | None:
    """The cache entry, or None (with a warning naming the file) when a file of it is torn."""
    try:
        images = np.load(entry.images, mmap_mode="r")
        labels = np.load(entry.labels)
        skipped = json.loads(entry.skipped.read_text()) if entry.skipped.exists() else []
        return ImageSet(images, labels, skipped=skipped)
    except (ValueError, OSError, EOFError) as error:
        print(f"warning: cache file {entry.images} is unreadable ({error}); rebuilding it", file=sys.stderr)
        return None


def cached_arrays(
    cache_dir: str | Path | None, name: str, size: int, key: str, build: Callable[[], tuple]
) -> ImageSet:
    """The cache entry (name, size, key) in `cache_dir` (None: $LNLATTEN_CACHE, else
    ~/.cache/lnlatten_fast), built with `build()` -> (images, labels[, skipped]) when it is
    missing or torn. `skipped`: [{"path", "reason"}] of images left out. The last dash-separated
    part of `key` is the fingerprint, the rest belongs to the identity (the module's docstring)."""
    directory, origin = _cache_location(cache_dir)
    identity, _, stamp = f"{name}-{size}px-{key}".rpartition("-")
    if not _FINGERPRINT.fullmatch(stamp):
        raise ValueError(f"cache key {key!r} must end in a fingerprint of letters and digits")
    entry = _Entry(directory, identity, stamp)
    _prepare_directory(directory, origin)
    lock = _lock(entry.lock, exclusive=False)
    try:
        if entry.images.exists() and entry.labels.exists():
            loaded = _load_entry(entry)
            if loaded is not None:
                return loaded
            entry.images.unlink(missing_ok=True)
        _check_writable(entry, origin)
        _remove_dead_temporaries(directory)
        built = build()
        images, labels = built[0], np.asarray(built[1], dtype=np.int64)
        skipped = list(built[2]) if len(built) > 2 else []
        _write(entry.labels, lambda fh: np.save(fh, labels), origin)
        _write(entry.skipped, lambda fh: fh.write(jsonio.dumps(skipped).encode()), origin)
        _write(entry.images, lambda fh: np.save(fh, images), origin)
        _remove_superseded(entry)
        return ImageSet(np.load(entry.images, mmap_mode="r"), np.load(entry.labels), skipped=skipped)
    finally:
        if lock is not None:
            lock.close()


def build_image_cache(
    samples: Sequence[Sample], size: int, name: str, cache_dir: Path | None = None, workers: int = 0,
    strict: bool = False, progress: BuildProgress | None = None, what: str | None = None,
) -> ImageSet:
    """Decode `samples` once at `size` px (in `workers` processes) and serve them from disk.
    A build is shown by `progress` (none by default) as `what` (default: `name`).

    An image that cannot be decoded is left out and listed in the result's `skipped`; with
    `strict` it raises ImageDecodeError naming the file instead."""
    if not samples:
        raise ValueError(f"{name}: no images to cache (the reader found none)")
    progress = progress if progress is not None else BuildProgress()

    def build():
        starts = range(0, len(samples), BUILD_CHUNK)
        jobs = [(samples[i : i + BUILD_CHUNK], size, strict) for i in starts]
        parts = []
        with progress.task(what or name, len(samples)) as advance, \
                ProcessPoolExecutor(workers) if workers > 0 else contextlib.nullcontext() as pool:
            for part in pool.map(_decode_chunk, jobs) if pool is not None else map(_decode_chunk, jobs):
                parts.append(part)
                advance(len(part[0]))
        bad = {start + i: (path, reason) for start, (_, failures) in zip(starts, parts)
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

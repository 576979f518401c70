"""What every reader shares: the :class:`Sample` record, and the file-walking, CSV and error
helpers that keep the readers' messages alike.

A reader only *lists* records: image files are never opened or decoded here (that is the cache
builder's job). Every reader raises :class:`FileNotFoundError` naming the missing file or
directory and what was expected there, and :class:`ValueError` naming the file and line number
of a malformed entry.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..labels import CLASS_NAMES_8

__all__ = [
    "Sample", "IMAGE_EXTENSIONS", "check_split", "require_dir", "require_file", "child_dir",
    "subdirs", "image_files", "warn_ignored", "check_paths_exist", "open_csv", "parse_int", "check_listing",
]

#: Image file suffixes (lower-case) listed by the folder-based readers.
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})


@dataclass(frozen=True, eq=False)
class Sample:
    """One labelled image.

    label:   canonical label 0..6 (7 = Contempt, only from AffectNet with ``num_classes=8``).
    path:    the image file, or
    pixels:  the image itself, uint8 (H, W) or (H, W, 3) (CSV-embedded datasets); exactly one of
             ``path`` / ``pixels`` is set.
    subject: subject id, for subject-independent folds (CK+, manifests with a subject column).
    split:   "train" / "test" / "val" as the dataset defines it (None where it defines none).
    box:     face crop (x, y, w, h) in pixels when the dataset gives one (AffectNet).
    source:  where the record was listed ("<file>, line <n>"), for error messages.
    """

    label: int
    path: Path | None = None
    pixels: np.ndarray | None = None
    subject: str | None = None
    split: str | None = None
    box: tuple[int, int, int, int] | None = None
    source: str | None = None

    def __post_init__(self) -> None:
        label = self.label
        if type(label) is not int:
            if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)):
                raise TypeError(f"Sample.label must be an int, got {label!r}")
            object.__setattr__(self, "label", int(label))
            label = self.label
        if not 0 <= label < len(CLASS_NAMES_8):
            raise ValueError(f"Sample.label must be in 0..{len(CLASS_NAMES_8) - 1}, got {label}")
        if (self.path is None) == (self.pixels is None):
            raise ValueError("Sample needs exactly one of path / pixels")
        if self.path is not None and not isinstance(self.path, Path):
            object.__setattr__(self, "path", Path(self.path))
        if self.pixels is not None:
            px = self.pixels
            if not isinstance(px, np.ndarray) or px.dtype != np.uint8:
                raise TypeError("Sample.pixels must be a uint8 numpy array")
            if not (px.ndim == 2 or (px.ndim == 3 and px.shape[2] == 3)):
                raise ValueError(f"Sample.pixels must be (H, W) or (H, W, 3), got shape {px.shape}")
        if self.box is not None:
            box = tuple(int(v) for v in self.box)
            if len(box) != 4 or box[2] <= 0 or box[3] <= 0:
                raise ValueError(f"Sample.box must be (x, y, w, h) with w, h > 0, got {self.box!r}")
            object.__setattr__(self, "box", box)

    @property
    def class_name(self) -> str:
        return CLASS_NAMES_8[self.label]


def check_split(split: str, allowed: Sequence[str], reader: str) -> str:
    if not isinstance(split, str) or split.lower() not in allowed:
        raise ValueError(f"{reader}: split must be one of {', '.join(map(repr, allowed))}; got {split!r}")
    return split.lower()


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{what}: expected a directory at {path}, which does not exist")
    return path


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{what}: expected a file at {path}, which does not exist")
    return path


def child_dir(parent: Path, name: str) -> Path | None:
    """``parent/name`` matched case-insensitively (exact spelling preferred); None if absent."""
    exact = parent / name
    if exact.is_dir():
        return exact
    if not parent.is_dir():
        return None
    low = name.lower()
    for entry in sorted(os.scandir(parent), key=lambda e: e.name):
        if entry.name.lower() == low and entry.is_dir():
            return Path(entry.path)
    return None


def subdirs(parent: Path) -> list[Path]:
    return sorted(
        (Path(e.path) for e in os.scandir(parent) if e.is_dir() and not e.name.startswith(".")),
        key=lambda p: p.name,
    )


def image_files(folder: Path, ignored: dict | None = None) -> list[Path]:
    """The image files of `folder`, by name. `ignored` (if given) counts what was left out:
    "other files" (no image suffix) and "dangling links" (symlinks to nothing)."""
    found = []
    for e in os.scandir(folder):
        if e.name.startswith("."):
            continue
        if e.is_symlink() and not os.path.exists(e.path):
            if ignored is not None:
                ignored["dangling links"] = ignored.get("dangling links", 0) + 1
            continue
        if not e.is_file():
            continue
        if os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS:
            found.append(Path(e.path))
        elif ignored is not None:
            ignored["other files"] = ignored.get("other files", 0) + 1
    return sorted(found, key=lambda p: p.name)


def warn_ignored(ignored: dict, where: Path) -> None:
    """One warning line with the counts image_files left out under `where`."""
    if any(ignored.values()):
        counts = ", ".join(f"{n} {what}" for what, n in sorted(ignored.items()) if n)
        print(f"warning: {where}: ignored {counts} (image suffixes: {', '.join(sorted(IMAGE_EXTENSIONS))})",
              file=sys.stderr)


def check_listing(samples: list[Sample], what: str, warn: bool = True) -> list[Sample]:
    """A reader's records with exact duplicates dropped (one warning with their count). An image
    listed twice with different labels, face boxes or splits (a test image in the training
    set) is a ValueError naming both places."""
    first_of: dict[str, Sample] = {}
    kept: list[Sample] = []
    duplicates = 0
    for s in samples:
        if s.path is None:
            kept.append(s)
            continue
        first = first_of.setdefault(str(s.path), s)
        if first is s:
            kept.append(s)
            continue
        here, there = s.source or str(s.path), first.source or str(first.path)
        if first.label != s.label:
            raise ValueError(f"{here}: {s.path.name} is labelled {s.class_name} here but {first.class_name} at {there}")
        if first.split != s.split:
            raise ValueError(f"{here}: {s.path.name} is listed in {s.split!r} here and in {first.split!r} at {there}: "
                             "an image in both would leak the test set into training")
        if first.box != s.box:
            raise ValueError(f"{here}: {s.path.name} has face box {s.box} here but {first.box} at {there}")
        duplicates += 1
    if duplicates and warn:
        print(f"warning: {what}: {duplicates} exact duplicate record(s) ignored (same image, label and split)",
              file=sys.stderr)
    return kept


def check_paths_exist(paths: Iterable[Path], what: str) -> None:
    """Raise FileNotFoundError naming the first missing path (one listing per directory)."""
    listings: dict[Path, set[str] | None] = {}
    missing: list[Path] = []
    for p in paths:
        parent = p.parent
        if parent not in listings:
            try:
                listings[parent] = {e.name for e in os.scandir(parent) if not e.is_dir()}
            except (FileNotFoundError, NotADirectoryError):
                listings[parent] = None
        names = listings[parent]
        if names is None or (p.name not in names and not p.is_file()):
            missing.append(p)
    if missing:
        more = f" (and {len(missing) - 1} more missing)" if len(missing) > 1 else ""
        raise FileNotFoundError(
            f"{what}: expected image file {missing[0]}, which does not exist{more}; "
            "pass check_files=False to list the records without the images"
        )


def open_csv(path: Path):
    return open(path, newline="", encoding="utf-8-sig")


def parse_int(text: str, path: Path, line: int, column: str) -> int:
    t = text.strip()
    try:
        return int(t)
    except ValueError:
        pass
    try:
        f = float(t)
    except ValueError:
        f = float("nan")
    if f == f and f == int(f):
        return int(f)
    raise ValueError(f"{path}, line {line}: column {column!r} must be an integer, got {text!r}")

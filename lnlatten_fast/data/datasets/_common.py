"""What every reader shares: the :class:`Sample` record, and the file-walking, CSV and error
helpers that keep the readers' messages alike.

A reader only *lists* records: image files are never opened or decoded here (that is the cache
builder's job). Every reader raises :class:`FileNotFoundError` naming the missing file or
directory and what was expected there, and :class:`ValueError` naming the file and line number
of a malformed entry.

An entry named like an image that is not a readable image file (missing, a directory, a
dangling link or a symlink loop, a pipe or device, or unreadable: :func:`entry_problem` says
which) is treated the same way by every reader: a listing (a manifest, a label list, a CSV)
that names one is an error naming the listing's file and line; a folder walk leaves it out,
counts it in its warning line and keeps it, with the reason, in the listing's ``skipped``
(which `load_split` adds to the images' own, for RUN_DIR/skipped.txt).
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..labels import CLASS_NAMES_8

__all__ = [
    "Sample", "Listing", "LeftOut", "IMAGE_EXTENSIONS", "check_split", "require_dir", "require_file", "child_dir",
    "subdirs", "entry_problem", "image_files", "check_paths_exist", "open_csv", "parse_int", "check_listing",
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


class Listing(list):
    """A reader's records (a list of :class:`Sample`) and `skipped`: the entries its folder walks
    left out, as ``{"path", "reason"}`` (the form of ``ImageSet.skipped``)."""

    def __init__(self, samples: Iterable[Sample] = (), skipped: Iterable[dict] = ()):
        super().__init__(samples)
        self.skipped = list(skipped)


class LeftOut:
    """What folder walks left out: `counts` by kind for one warning line per folder (`warn`), and
    `skipped`, the entries named like images that are not readable image files, with the reason."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.skipped: list[dict] = []

    def add(self, kind: str, path: str | None = None, reason: str | None = None) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if path is not None:
            self.skipped.append({"path": path, "reason": reason})

    def warn(self, where: Path) -> None:
        """One warning line with the counts so far under `where`, then counting starts again."""
        if self.counts:
            counts = ", ".join(f"{n} {kind}" for kind, n in sorted(self.counts.items()))
            print(f"warning: {where}: ignored {counts} (image suffixes: {', '.join(sorted(IMAGE_EXTENSIONS))})",
                  file=sys.stderr)
        self.counts.clear()


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


def _is_dir(entry: os.DirEntry) -> bool:
    """Whether `entry` is a directory (through links); a symlink loop or an unreadable link is not."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def child_dir(parent: Path, name: str) -> Path | None:
    """``parent/name`` matched case-insensitively (exact spelling preferred); None if absent."""
    exact = parent / name
    if exact.is_dir():
        return exact
    if not parent.is_dir():
        return None
    low = name.lower()
    for entry in sorted(os.scandir(parent), key=lambda e: e.name):
        if entry.name.lower() == low and _is_dir(entry):
            return Path(entry.path)
    return None


def subdirs(parent: Path) -> list[Path]:
    return sorted(
        (Path(e.path) for e in os.scandir(parent) if not e.name.startswith(".") and _is_dir(e)),
        key=lambda p: p.name,
    )


# Why an entry is not a readable image file: (the kind, counted in a folder walk's warning;
# the reason, in skipped.txt and in a listing's error after the path).
_MISSING = ("missing files", "does not exist")
_DANGLING = ("dangling links", "is a symbolic link to nothing")
_LOOP = ("symlink loops", "is a symbolic link loop")
_DIRECTORY = ("directories named like images", "is a directory")
_SPECIAL = ("special files", "is not a regular file (a pipe, socket or device)")
_UNREADABLE = ("unreadable files", "cannot be read")


def entry_problem(path: str | os.PathLike) -> tuple[str, str] | None:
    """None if `path` is a readable regular file (through links), else (kind, reason): why not.
    The one test every reader applies to an entry it expects to be an image file."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return _DANGLING if os.path.islink(path) else _MISSING
    except OSError as error:
        if error.errno == errno.ELOOP:
            return _LOOP
        return _UNREADABLE[0], f"{_UNREADABLE[1]} ({error.strerror})"
    if stat.S_ISDIR(mode):
        return _DIRECTORY
    if not stat.S_ISREG(mode):
        return _SPECIAL
    if not os.access(path, os.R_OK):
        return _UNREADABLE[0], f"{_UNREADABLE[1]} (permission denied)"
    return None


def image_files(folder: Path, left_out: LeftOut | None = None) -> list[Path]:
    """The image files of `folder`, by name. `left_out` (if given) counts what was left out:
    "other files" (no image suffix; subfolders are not counted) and each entry named like an
    image that is not a readable image file (:func:`entry_problem`), kept with the reason."""
    found = []
    for e in sorted(os.scandir(folder), key=lambda e: e.name):
        if e.name.startswith("."):
            continue
        if os.path.splitext(e.name)[1].lower() not in IMAGE_EXTENSIONS:
            if left_out is not None and not _is_dir(e):
                left_out.add("other files")
            continue
        problem = entry_problem(e.path)
        if problem is None:
            found.append(Path(e.path))
        elif left_out is not None:
            left_out.add(problem[0], e.path, problem[1])
    return found


def check_listing(samples: list[Sample], what: str, warn: bool = True) -> Listing:
    """A reader's records with exact duplicates dropped (one warning with their count), its
    `skipped` kept. An image listed twice with different labels, face boxes or splits (a test
    image in the training set) is a ValueError naming both places."""
    first_of: dict[str, Sample] = {}
    kept = Listing(skipped=getattr(samples, "skipped", ()))
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


def check_paths_exist(samples: Iterable[Sample], what: str) -> None:
    """Raise FileNotFoundError naming the listing's file and line (`Sample.source`, else `what`)
    of the first record whose path is not a readable image file, and why (:func:`entry_problem`)."""
    bad = [(s, problem) for s in samples if s.path is not None and (problem := entry_problem(s.path))]
    if bad:
        sample, (_, reason) = bad[0]
        more = f" (and {len(bad) - 1} more listed path(s) that are not image files)" if len(bad) > 1 else ""
        raise FileNotFoundError(
            f"{sample.source or what}: expected an image file at {sample.path}, which {reason}{more}"
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

"""Dataset readers: list the labelled images of each FER dataset as :class:`Sample` records.

Every reader maps its dataset's own label codes to one canonical order (RAF-DB's)::

    0 Surprise, 1 Fear, 2 Disgust, 3 Happiness, 4 Sadness, 5 Anger, 6 Neutral

(:data:`CLASS_NAMES`). AffectNet read with ``num_classes=8`` adds ``7 Contempt``
(:data:`CLASS_NAMES_8`). The per-dataset maps are module constants (``RAFDB_LABEL_MAP``,
``AFFECTNET_LABEL_MAP``, ``SFEW_CLASS_MAP``, ``CKPLUS_LABEL_MAP``, ``FER2013_LABEL_MAP``,
``FERPLUS_COLUMN_MAP``, ``CLASS_SYNONYMS``) and are spelled out in each reader's docstring.

Readers only *list* records: image files are never opened or decoded here (that is the cache
builder's job). A record carries either a ``path`` to an image file or, for the CSV-embedded
datasets (FER2013, FERPlus), the ``pixels`` themselves.

    from lnlatten_fast.data.readers import read_dataset, kfold_by_subject
    train = read_dataset("rafdb", "/data/RAF-DB/basic", "train")
    ck = read_dataset("ckplus", "/data/CK+", "all")
    for train_idx, test_idx in kfold_by_subject(ck, k=5): ...

Every reader raises :class:`FileNotFoundError` naming the missing file or directory and what was
expected there, and :class:`ValueError` naming the file and line number of a malformed entry.
"""

from __future__ import annotations

import csv
import os
import re
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

__all__ = [
    "CLASS_NAMES",
    "CLASS_NAMES_8",
    "NUM_CLASSES",
    "Sample",
    "RAFDB_LABEL_MAP",
    "AFFECTNET_LABEL_MAP",
    "AFFECTNET_CONTEMPT",
    "SFEW_CLASS_MAP",
    "CKPLUS_LABEL_MAP",
    "CKPLUS_CONTEMPT",
    "FER2013_LABEL_MAP",
    "FER2013_USAGE_SPLITS",
    "FERPLUS_COLUMN_MAP",
    "FERPLUS_COLUMNS",
    "CLASS_SYNONYMS",
    "IMAGE_EXTENSIONS",
    "parse_class_name",
    "read_rafdb",
    "read_affectnet",
    "class_balanced_weights",
    "read_sfew",
    "read_ckplus",
    "read_fer2013",
    "read_ferplus",
    "read_folder",
    "read_manifest",
    "kfold_by_subject",
    "DATASET_READERS",
    "read_dataset",
]

# --------------------------------------------------------------------------------------------
# Canonical label space
# --------------------------------------------------------------------------------------------

#: Canonical class order (RAF-DB's): index = label.
CLASS_NAMES: tuple[str, ...] = ("Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral")
NUM_CLASSES = len(CLASS_NAMES)
#: Canonical order extended with Contempt = 7 (AffectNet read with ``num_classes=8`` only).
CLASS_NAMES_8: tuple[str, ...] = CLASS_NAMES + ("Contempt",)

#: Folder / manifest class names (lower-case) → canonical label. Numbers "0".."6" are accepted
#: separately as canonical indices.
CLASS_SYNONYMS: dict[str, int] = {
    "surprise": 0, "surprised": 0,
    "fear": 1, "fearful": 1,
    "disgust": 2, "disgusted": 2,
    "happiness": 3, "happy": 3,
    "sadness": 4, "sad": 4,
    "anger": 5, "angry": 5,
    "neutral": 6,
}

#: Image file suffixes (lower-case) listed by the folder-based readers.
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})

#: RAF-DB basic: 1 Surprise, 2 Fear, 3 Disgust, 4 Happiness, 5 Sadness, 6 Anger, 7 Neutral.
RAFDB_LABEL_MAP: dict[int, int] = {1: 0, 2: 1, 3: 2, 4: 3, 5: 4, 6: 5, 7: 6}

#: AffectNet ``expression``: 0 Neutral, 1 Happy, 2 Sad, 3 Surprise, 4 Fear, 5 Disgust, 6 Anger
#: (7 Contempt → :data:`AFFECTNET_CONTEMPT` with num_classes=8; 8 None, 9 Uncertain, 10 Non-face
#: are always dropped).
AFFECTNET_LABEL_MAP: dict[int, int] = {0: 6, 1: 3, 2: 4, 3: 0, 4: 1, 5: 2, 6: 5}
AFFECTNET_CONTEMPT = 7

#: SFEW 2.0 class folder (lower-case) → canonical label.
SFEW_CLASS_MAP: dict[str, int] = {
    "angry": 5, "disgust": 2, "fear": 1, "happy": 3, "neutral": 6, "sad": 4, "surprise": 0,
}

#: CK+ emotion code: 0 neutral, 1 anger, 3 disgust, 4 fear, 5 happy, 6 sadness, 7 surprise
#: (2 contempt = :data:`CKPLUS_CONTEMPT` is excluded).
CKPLUS_LABEL_MAP: dict[int, int] = {0: 6, 1: 5, 3: 2, 4: 1, 5: 3, 6: 4, 7: 0}
CKPLUS_CONTEMPT = 2

#: FER2013 ``emotion``: 0 Angry, 1 Disgust, 2 Fear, 3 Happy, 4 Sad, 5 Surprise, 6 Neutral.
FER2013_LABEL_MAP: dict[int, int] = {0: 5, 1: 2, 2: 1, 3: 3, 4: 4, 5: 0, 6: 6}
#: FER2013 / FERPlus ``Usage`` → split name.
FER2013_USAGE_SPLITS: dict[str, str] = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}

#: FERPlus vote columns, in file order.
FERPLUS_COLUMNS: tuple[str, ...] = (
    "neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt", "unknown", "NF",
)
#: FERPlus vote column → canonical label (contempt, unknown and NF have none: rows they win are dropped).
FERPLUS_COLUMN_MAP: dict[str, int] = {
    "neutral": 6, "happiness": 3, "surprise": 0, "sadness": 4, "anger": 5, "disgust": 2, "fear": 1,
}

_AFFECTNET_COLUMNS = (
    "subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
    "facial_landmarks", "expression", "valence", "arousal",
)


# --------------------------------------------------------------------------------------------
# Record type
# --------------------------------------------------------------------------------------------


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
    """

    label: int
    path: Path | None = None
    pixels: np.ndarray | None = None
    subject: str | None = None
    split: str | None = None
    box: tuple[int, int, int, int] | None = None

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


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _check_split(split: str, allowed: Sequence[str], reader: str) -> str:
    if not isinstance(split, str) or split.lower() not in allowed:
        raise ValueError(f"{reader}: split must be one of {', '.join(map(repr, allowed))}; got {split!r}")
    return split.lower()


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{what}: expected a directory at {path}, which does not exist")
    return path


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{what}: expected a file at {path}, which does not exist")
    return path


def _child_dir(parent: Path, name: str) -> Path | None:
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


def _subdirs(parent: Path) -> list[Path]:
    return sorted(
        (Path(e.path) for e in os.scandir(parent) if e.is_dir() and not e.name.startswith(".")),
        key=lambda p: p.name,
    )


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        (
            Path(e.path)
            for e in os.scandir(folder)
            if e.is_file()
            and not e.name.startswith(".")
            and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS
        ),
        key=lambda p: p.name,
    )


def _check_paths_exist(paths: Iterable[Path], what: str) -> None:
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


def parse_class_name(text: str) -> int:
    """A class name (case-insensitive, with synonyms, see :data:`CLASS_SYNONYMS`) or a canonical
    index "0".."6" → canonical label. Raises ValueError otherwise."""
    key = text.strip().lower()
    if key in CLASS_SYNONYMS:
        return CLASS_SYNONYMS[key]
    if key.isdigit() and 0 <= int(key) < NUM_CLASSES:
        return int(key)
    raise ValueError(
        f"unknown class {text!r}: expected a canonical index 0..{NUM_CLASSES - 1} or one of "
        f"{', '.join(sorted(CLASS_SYNONYMS))}"
    )


def _open_csv(path: Path):
    return open(path, newline="", encoding="utf-8-sig")


def _parse_int(text: str, path: Path, line: int, column: str) -> int:
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


# --------------------------------------------------------------------------------------------
# RAF-DB
# --------------------------------------------------------------------------------------------

_RAFDB_LIST = "list_patition_label.txt"  # sic: the dataset's spelling


def _rafdb_label_file(root: Path) -> Path:
    if root.is_file():
        return root
    for candidate in (root / "EmoLabel" / _RAFDB_LIST, root / _RAFDB_LIST):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"RAF-DB: expected the label list at {root / 'EmoLabel' / _RAFDB_LIST} "
        f"(or {root / _RAFDB_LIST}), which does not exist"
    )


def read_rafdb(root: str | os.PathLike, split: str, *, check_files: bool = True) -> list[Sample]:
    """RAF-DB (basic, 7 classes).

    Layout: ``root/EmoLabel/list_patition_label.txt`` with lines ``train_00001.jpg 5``; images at
    ``root/Image/aligned/<stem>_aligned.jpg`` when ``root/Image/aligned`` exists, else at
    ``root/Image/original/<name>``. ``root`` may also be the label list itself (or a directory
    holding it directly); images are then looked for next to the list's directory.

    Split by file-name prefix: ``train_`` → "train" (12,271), ``test_`` → "test" (3,068);
    ``split="all"`` gives both.

    Label map (RAF-DB code → canonical), i.e. canonical = code - 1:
    1 Surprise → 0, 2 Fear → 1, 3 Disgust → 2, 4 Happiness → 3, 5 Sadness → 4, 6 Anger → 5,
    7 Neutral → 6.

    check_files: when True (default) every listed image must exist (FileNotFoundError otherwise);
    when False the label list alone is enough.
    """
    split = _check_split(split, ("train", "test", "all"), "read_rafdb")
    root = Path(root)
    label_file = _rafdb_label_file(root)
    base = root if root.is_dir() else label_file.parent
    if label_file.parent.name == "EmoLabel" and not (base / "Image").is_dir():
        base = label_file.parent.parent
    aligned_dir = base / "Image" / "aligned"
    aligned = aligned_dir.is_dir()
    image_dir = aligned_dir if aligned else base / "Image" / "original"
    if check_files:
        _require_dir(
            image_dir,
            f"RAF-DB images (neither {aligned_dir} nor {image_dir} exists; "
            "pass check_files=False to read only the labels)",
        )

    want_train = split in ("train", "all")
    want_test = split in ("test", "all")
    samples: list[Sample] = []
    append = samples.append
    with open(label_file, encoding="utf-8-sig") as fh:
        text = fh.read()
    _parse_rafdb_lines(text, label_file, aligned, image_dir, want_train, want_test, append)
    if check_files:
        _check_paths_exist((s.path for s in samples), "RAF-DB")
    return samples


def _parse_rafdb_lines(text, label_file, aligned, image_dir, want_train, want_test, append) -> None:
    label_map = RAFDB_LABEL_MAP
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[1] not in ("1", "2", "3", "4", "5", "6", "7") or "/" in parts[0]:
            raise ValueError(
                f"{label_file}, line {lineno}: expected '<train_|test_NNNNN>.jpg <label 1-7>', got {line!r}"
            )
        name, code = parts
        if name.startswith("train_"):
            if not want_train:
                continue
            s = "train"
        elif name.startswith("test_"):
            if not want_test:
                continue
            s = "test"
        else:
            raise ValueError(
                f"{label_file}, line {lineno}: file name {name!r} must start with 'train_' or 'test_'"
            )
        if aligned:
            name = name.rsplit(".", 1)[0] + "_aligned.jpg"
        append(Sample(label_map[int(code)], path=image_dir / name, split=s))


# --------------------------------------------------------------------------------------------
# AffectNet
# --------------------------------------------------------------------------------------------


def read_affectnet(
    root: str | os.PathLike, split: str, num_classes: int = 7, *, check_files: bool = True
) -> list[Sample]:
    """AffectNet (manually annotated part).

    Layout: ``root/training.csv`` ("train") and ``root/validation.csv`` ("test": AffectNet's
    validation set is the usual test set; 3,500 images for 7 classes); ``split="all"`` gives
    both. Columns ``subDirectory_filePath,face_x,face_y,face_width,face_height,
    facial_landmarks,expression,valence,arousal`` (a file without the header row is read in that
    column order). Images at ``root/Manually_Annotated_Images/<subDirectory_filePath>``, or at
    ``root/<subDirectory_filePath>`` when that directory does not exist.
    ``box = (face_x, face_y, face_width, face_height)``.

    Label map (expression code → canonical):
    0 Neutral → 6, 1 Happy → 3, 2 Sad → 4, 3 Surprise → 0, 4 Fear → 1, 5 Disgust → 2,
    6 Anger → 5;
    7 Contempt → dropped with ``num_classes=7``, → 7 with ``num_classes=8``;
    8 None, 9 Uncertain, 10 Non-face → always dropped.

    check_files: when True (default) every kept image must exist.
    """
    split = _check_split(split, ("train", "test", "all"), "read_affectnet")
    if num_classes not in (7, 8):
        raise ValueError(
            f"read_affectnet: num_classes must be 7 or 8 (8 keeps Contempt as 7), got {num_classes!r}"
        )
    root = Path(root)
    _require_dir(root, "AffectNet root (holding training.csv / validation.csv)")
    image_root = root / "Manually_Annotated_Images"
    if not image_root.is_dir():
        image_root = root
    files = {
        "train": ["training.csv"],
        "test": ["validation.csv"],
        "all": ["training.csv", "validation.csv"],
    }[split]
    samples: list[Sample] = []
    for fname in files:
        csv_path = _require_file(root / fname, "AffectNet annotations")
        s = "train" if fname == "training.csv" else "test"
        samples.extend(_read_affectnet_csv(csv_path, image_root, s, num_classes))
    if check_files:
        _check_paths_exist((x.path for x in samples), "AffectNet")
    return samples


def _read_affectnet_csv(csv_path: Path, image_root: Path, split: str, num_classes: int) -> list[Sample]:
    out: list[Sample] = []
    with _open_csv(csv_path) as fh:
        reader = csv.reader(fh)
        col: dict[str, int] | None = None
        for row in reader:
            line = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if col is None:
                if row[0].strip() == _AFFECTNET_COLUMNS[0]:
                    header = [c.strip() for c in row]
                    missing = [c for c in _AFFECTNET_COLUMNS if c not in header and c != "facial_landmarks"]
                    if missing:
                        raise ValueError(
                            f"{csv_path}, line {line}: header lacks column(s) {missing}; expected "
                            f"{','.join(_AFFECTNET_COLUMNS)}"
                        )
                    col = {c: header.index(c) for c in _AFFECTNET_COLUMNS if c in header}
                    continue
                col = {c: i for i, c in enumerate(_AFFECTNET_COLUMNS)}
            need = max(col["subDirectory_filePath"], col["expression"], col["face_height"]) + 1
            if len(row) < need:
                raise ValueError(
                    f"{csv_path}, line {line}: expected {len(_AFFECTNET_COLUMNS)} columns "
                    f"({','.join(_AFFECTNET_COLUMNS)}), got {len(row)}"
                )
            code = _parse_int(row[col["expression"]], csv_path, line, "expression")
            if code in AFFECTNET_LABEL_MAP:
                label = AFFECTNET_LABEL_MAP[code]
            elif code == AFFECTNET_CONTEMPT:
                if num_classes != 8:
                    continue
                label = 7
            elif 8 <= code <= 10:
                continue
            else:
                raise ValueError(f"{csv_path}, line {line}: expression must be 0..10, got {code}")
            rel = row[col["subDirectory_filePath"]].strip()
            if not rel:
                raise ValueError(f"{csv_path}, line {line}: empty subDirectory_filePath")
            box = tuple(
                _parse_int(row[col[c]], csv_path, line, c)
                for c in ("face_x", "face_y", "face_width", "face_height")
            )
            if box[2] <= 0 or box[3] <= 0:
                raise ValueError(f"{csv_path}, line {line}: face_width / face_height must be > 0, got {box}")
            out.append(Sample(label, path=image_root / rel, split=split, box=box))
    return out


def class_balanced_weights(samples: Sequence[Sample]) -> np.ndarray:
    """Per-sample weights ∝ 1 / (count of the sample's class), for a weighted random sampler.

    Scaled so that every present class gets the same total weight and the weights sum to
    ``len(samples)``: ``w_i = N / (C * n_{y_i})`` with C the number of classes present.
    """
    if len(samples) == 0:
        return np.zeros(0, dtype=np.float64)
    labels = np.fromiter((s.label for s in samples), dtype=np.int64, count=len(samples))
    counts = np.bincount(labels)
    present = int(np.count_nonzero(counts))
    return len(labels) / (present * counts[labels].astype(np.float64))


# --------------------------------------------------------------------------------------------
# SFEW 2.0
# --------------------------------------------------------------------------------------------


def read_sfew(root: str | os.PathLike, split: str) -> list[Sample]:
    """SFEW 2.0.

    Layout: ``root/Train/<Class>/*.png|jpg`` ("train") and ``root/Val/<Class>/...`` ("test":
    SFEW's Val set is the usual test set); ``split="all"`` gives both. Folder names are matched
    case-insensitively; other files (non-images, hidden files) are ignored.

    Label map (class folder → canonical):
    Angry → 5, Disgust → 2, Fear → 1, Happy → 3, Neutral → 6, Sad → 4, Surprise → 0.
    """
    split = _check_split(split, ("train", "test", "all"), "read_sfew")
    root = Path(root)
    _require_dir(root, "SFEW root (holding Train/ and Val/)")
    parts = {
        "train": [("Train", "train")],
        "test": [("Val", "test")],
        "all": [("Train", "train"), ("Val", "test")],
    }
    samples: list[Sample] = []
    for folder, s in parts[split]:
        d = _child_dir(root, folder)
        if d is None:
            raise FileNotFoundError(
                f"SFEW: expected a directory at {root / folder} (class folders "
                f"{', '.join(k.capitalize() for k in SFEW_CLASS_MAP)}), which does not exist"
            )
        for cls_dir in _subdirs(d):
            key = cls_dir.name.lower()
            if key not in SFEW_CLASS_MAP:
                raise ValueError(
                    f"SFEW: unknown class folder {cls_dir}; expected one of "
                    f"{', '.join(k.capitalize() for k in SFEW_CLASS_MAP)}"
                )
            label = SFEW_CLASS_MAP[key]
            samples.extend(Sample(label, path=p, split=s) for p in _image_files(cls_dir))
    return samples


# --------------------------------------------------------------------------------------------
# CK+
# --------------------------------------------------------------------------------------------


def read_ckplus(root: str | os.PathLike, split: str = "all") -> list[Sample]:
    """CK+ (extended Cohn-Kanade).

    Layout: ``root/cohn-kanade-images/Sxxx/yyy/*.png`` and ``root/Emotion/Sxxx/yyy/*_emotion.txt``
    (one float such as ``   3.0000000e+00``). Only sequences with an emotion file are used; for
    each, the first frame (sorted by file name) is labelled Neutral and the last (peak) frame gets
    the sequence's emotion: 309 non-contempt sequences → 618 images. ``subject = "Sxxx"``,
    ``split = None`` (use :func:`kfold_by_subject`); only ``split="all"`` is accepted.

    Label map (emotion code → canonical):
    0 neutral → 6, 1 anger → 5, 3 disgust → 2, 4 fear → 1, 5 happy → 3, 6 sadness → 4,
    7 surprise → 0; 2 contempt → sequence excluded.
    """
    if split != "all":
        raise ValueError(
            f"read_ckplus: CK+ has no train/test split, only split='all' (got {split!r}); "
            "use kfold_by_subject() for subject-independent folds"
        )
    root = Path(root)
    img_root = _require_dir(root / "cohn-kanade-images", "CK+ images (Sxxx/yyy/*.png)")
    emo_root = _require_dir(root / "Emotion", "CK+ emotion labels (Sxxx/yyy/*_emotion.txt)")
    samples: list[Sample] = []
    for subj_dir in _subdirs(emo_root):
        for seq_dir in _subdirs(subj_dir):
            emo_files = sorted(
                p for p in seq_dir.iterdir() if p.is_file() and p.name.endswith("_emotion.txt")
            )
            if not emo_files:
                continue  # unlabelled sequence
            if len(emo_files) > 1:
                names = [p.name for p in emo_files]
                raise ValueError(f"CK+: more than one emotion file in {seq_dir}: {names}")
            emo_file = emo_files[0]
            text = emo_file.read_text().strip()
            try:
                value = float(text)
            except ValueError:
                value = float("nan")
            if not (value == value and value == int(value) and 0 <= int(value) <= 7):
                raise ValueError(
                    f"{emo_file}, line 1: expected one emotion code 0..7 (e.g. 3.0000000e+00), got {text!r}"
                )
            code = int(value)
            if code == CKPLUS_CONTEMPT:
                continue
            frames_dir = img_root / subj_dir.name / seq_dir.name
            _require_dir(frames_dir, f"CK+ frames for {emo_file}")
            frames = [p for p in _image_files(frames_dir)]
            if len(frames) < 2:
                raise ValueError(
                    f"CK+: sequence {frames_dir} has {len(frames)} image(s); "
                    "need at least 2 (first = neutral, last = peak)"
                )
            subject = subj_dir.name
            samples.append(Sample(CKPLUS_LABEL_MAP[0], path=frames[0], subject=subject))
            samples.append(Sample(CKPLUS_LABEL_MAP[code], path=frames[-1], subject=subject))
    return samples


# --------------------------------------------------------------------------------------------
# FER2013 / FERPlus
# --------------------------------------------------------------------------------------------

_FER_SIDE = 48
_FER_PIXELS = _FER_SIDE * _FER_SIDE


def _fer_csv_path(path: str | os.PathLike, name: str) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / name
    return _require_file(p, f"{name}")


def _parse_fer_pixels(text: str, path: Path, line: int) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            arr = np.fromstring(text, dtype=np.int32, sep=" ")
    except (ValueError, DeprecationWarning):
        arr = None
    if arr is None or arr.size != _FER_PIXELS or arr.min() < 0 or arr.max() > 255:
        raise ValueError(
            f"{path}, line {line}: 'pixels' must hold {_FER_PIXELS} space-separated integers 0..255 "
            f"({_FER_SIDE}x{_FER_SIDE}), got {len(text.split())} value(s)"
        )
    return arr.astype(np.uint8).reshape(_FER_SIDE, _FER_SIDE)


def _read_fer2013_rows(csv_path: Path) -> list[tuple[int, str, str, str]]:
    """(line number, emotion, pixels, Usage) per data row, unparsed."""
    rows: list[tuple[int, str, str, str]] = []
    with _open_csv(csv_path) as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{csv_path}: empty file; expected header 'emotion,pixels,Usage'")
        header = [h.strip() for h in header]
        try:
            ie, ip, iu = header.index("emotion"), header.index("pixels"), header.index("Usage")
        except ValueError:
            raise ValueError(
                f"{csv_path}, line 1: expected header 'emotion,pixels,Usage', got {','.join(header)!r}"
            ) from None
        need = max(ie, ip, iu) + 1
        for row in reader:
            line = reader.line_num
            if not row:
                continue
            if len(row) < need:
                raise ValueError(
                    f"{csv_path}, line {line}: expected columns emotion,pixels,Usage, got {len(row)} field(s)"
                )
            rows.append((line, row[ie], row[ip], row[iu].strip()))
    return rows


def _usage_split(usage: str, path: Path, line: int) -> str:
    try:
        return FER2013_USAGE_SPLITS[usage]
    except KeyError:
        raise ValueError(
            f"{path}, line {line}: Usage must be one of {', '.join(FER2013_USAGE_SPLITS)}, got {usage!r}"
        ) from None


def read_fer2013(csv_path: str | os.PathLike, split: str) -> list[Sample]:
    """FER2013 (``fer2013.csv``: columns ``emotion,pixels,Usage``; pixels are 2304
    space-separated ints → a 48×48 uint8 image in ``Sample.pixels``). ``csv_path`` may also be
    the directory holding fer2013.csv.

    Splits by Usage: Training → "train", PublicTest → "val", PrivateTest → "test" (the usual
    test set); ``split`` ∈ {"train", "val", "test", "all"}.

    Label map (emotion code → canonical):
    0 Angry → 5, 1 Disgust → 2, 2 Fear → 1, 3 Happy → 3, 4 Sad → 4, 5 Surprise → 0,
    6 Neutral → 6.
    """
    split = _check_split(split, ("train", "val", "test", "all"), "read_fer2013")
    path = _fer_csv_path(csv_path, "fer2013.csv")
    samples: list[Sample] = []
    for line, emotion, pixels, usage in _read_fer2013_rows(path):
        s = _usage_split(usage, path, line)
        if split != "all" and s != split:
            continue
        code = _parse_int(emotion, path, line, "emotion")
        if code not in FER2013_LABEL_MAP:
            raise ValueError(f"{path}, line {line}: emotion must be 0..6, got {code}")
        samples.append(Sample(FER2013_LABEL_MAP[code], pixels=_parse_fer_pixels(pixels, path, line), split=s))
    return samples


def _ferplus_label(votes: Sequence[float]) -> int | None:
    """Majority (plurality) vote over the 10 FERPlus columns; None → drop the row."""
    top = max(votes)
    if top <= 0:
        return None
    winners = [i for i, v in enumerate(votes) if v == top]
    if len(winners) != 1:
        return None  # tie
    return FERPLUS_COLUMN_MAP.get(FERPLUS_COLUMNS[winners[0]])  # None for contempt / unknown / NF


def read_ferplus(fer2013_csv: str | os.PathLike, ferplus_csv: str | os.PathLike, split: str) -> list[Sample]:
    """FERPlus: FER2013 images relabelled by 10 annotators.

    ``ferplus_csv`` (``fer2013new.csv``) has columns ``Usage,Image name,neutral,happiness,
    surprise,sadness,anger,disgust,fear,contempt,unknown,NF`` (vote counts) and its data rows are
    aligned one-to-one with ``fer2013_csv``'s rows, whose pixels are used (48×48 uint8). Splits
    as FER2013: Training → "train", PublicTest → "val", PrivateTest → "test" (+ "all"); the two
    files' Usage must agree row by row.

    Label rule: majority (plurality) vote over all 10 columns. The row is kept only if a single
    column has strictly the most votes and it is one of the 7 emotions, mapped
    neutral → 6, happiness → 3, surprise → 0, sadness → 4, anger → 5, disgust → 2, fear → 1.
    Dropped: ties for the top count, rows won by contempt / unknown / NF, rows with no votes, and
    rows with an empty image name.
    """
    split = _check_split(split, ("train", "val", "test", "all"), "read_ferplus")
    fer_path = _fer_csv_path(fer2013_csv, "fer2013.csv")
    plus_path = _fer_csv_path(ferplus_csv, "fer2013new.csv")
    fer_rows = _read_fer2013_rows(fer_path)
    samples: list[Sample] = []
    with _open_csv(plus_path) as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        expected = ("Usage", "Image name") + FERPLUS_COLUMNS
        if header is None or tuple(h.strip() for h in header[: len(expected)]) != expected:
            raise ValueError(f"{plus_path}, line 1: expected header {','.join(expected)!r}, got {header!r}")
        i = 0
        for row in reader:
            line = reader.line_num
            if not row:
                continue
            if i >= len(fer_rows):
                raise ValueError(
                    f"{plus_path}, line {line}: more data rows than {fer_path} ({len(fer_rows)}); "
                    "the files must be row-aligned"
                )
            fer_line, _, pixels, fer_usage = fer_rows[i]
            i += 1
            if len(row) < len(expected):
                raise ValueError(
                    f"{plus_path}, line {line}: expected {len(expected)} columns "
                    f"({','.join(expected)}), got {len(row)}"
                )
            usage = row[0].strip()
            s = _usage_split(usage, plus_path, line)
            if usage != fer_usage:
                raise ValueError(
                    f"{plus_path}, line {line}: Usage {usage!r} differs from {fer_path}, line {fer_line} "
                    f"({fer_usage!r}); the files must be row-aligned"
                )
            if split != "all" and s != split:
                continue
            raw_votes = row[2 : len(expected)]
            try:
                votes = [float(v) for v in raw_votes]
            except ValueError:
                votes = [-1.0]
            if any(v < 0 or v != v for v in votes):
                raise ValueError(
                    f"{plus_path}, line {line}: vote counts must be numbers >= 0, got {raw_votes}"
                )
            if not row[1].strip():
                continue
            label = _ferplus_label(votes)
            if label is None:
                continue
            samples.append(Sample(label, pixels=_parse_fer_pixels(pixels, fer_path, fer_line), split=s))
        if i != len(fer_rows):
            raise ValueError(
                f"{plus_path}: {i} data rows but {fer_path} has {len(fer_rows)}; "
                "the files must be row-aligned"
            )
    return samples


# --------------------------------------------------------------------------------------------
# Generic: class folders and CSV manifests
# --------------------------------------------------------------------------------------------


def _folder_label(d: Path) -> int:
    try:
        return parse_class_name(d.name)
    except ValueError as e:
        raise ValueError(f"class folder {d}: {e}") from None


def read_folder(root: str | os.PathLike, split: str) -> list[Sample]:
    """Class folders: ``root/<split>/<ClassName>/*`` (split directory matched case-insensitively),
    or ``root/<ClassName>/*`` with ``split="all"`` (when ``root`` holds split directories
    instead, ``split="all"`` gives all of them).

    Class names are matched case-insensitively with synonyms (:data:`CLASS_SYNONYMS`):
    surprise/surprised → 0, fear/fearful → 1, disgust/disgusted → 2, happiness/happy → 3,
    sadness/sad → 4, anger/angry → 5, neutral → 6; numeric folder names "0".."6" are canonical
    indices. Files with an image suffix (:data:`IMAGE_EXTENSIONS`) are listed; others ignored.
    """
    if not isinstance(split, str) or not split:
        raise ValueError(
            f"read_folder: split must be a non-empty string such as 'train', 'test' or 'all', got {split!r}"
        )
    split = split.lower()
    root = Path(root)
    _require_dir(root, "image folder root")

    def collect(d: Path, s: str | None) -> list[Sample]:
        out: list[Sample] = []
        for cls_dir in _subdirs(d):
            label = _folder_label(cls_dir)
            out.extend(Sample(label, path=p, split=s) for p in _image_files(cls_dir))
        return out

    if split != "all":
        d = _child_dir(root, split)
        if d is None:
            raise FileNotFoundError(
                f"read_folder: expected a directory at {root / split} holding class folders "
                "(or use split='all' for root/<ClassName>/*), which does not exist"
            )
        return collect(d, split)
    subdirs = _subdirs(root)
    if not subdirs:
        raise FileNotFoundError(f"read_folder: {root} holds no class folders")
    not_classes = []
    for d in subdirs:
        try:
            parse_class_name(d.name)
        except ValueError:
            not_classes.append(d)
    if not not_classes:
        return collect(root, None)
    split_dirs = [d for d in subdirs if d.name.lower() in ("train", "test", "val")]
    if len(split_dirs) != len(subdirs):
        for d in not_classes:
            if d not in split_dirs:
                _folder_label(d)  # raises, naming the folder
        raise ValueError(
            f"read_folder: {root} mixes split folders ({', '.join(d.name for d in split_dirs)}) with class "
            "folders; expected either root/<ClassName>/* or root/<split>/<ClassName>/*"
        )
    out: list[Sample] = []
    for d in split_dirs:
        out.extend(collect(d, d.name.lower()))
    return out


def read_manifest(csv_path: str | os.PathLike, split: str, *, check_files: bool = True) -> list[Sample]:
    """CSV manifest (MMI and any other dataset): header ``path,label[,subject][,split]`` (columns
    in any order; other columns ignored). ``csv_path`` may be the CSV or a directory holding
    ``manifest.csv``.

    ``path`` is relative to the CSV's directory (or absolute). ``label`` is a canonical index
    0..6 or a class name (case-insensitive, synonyms as :data:`CLASS_SYNONYMS`). ``subject``
    (optional, empty → None) feeds :func:`kfold_by_subject`. With a ``split`` column the rows
    whose split equals ``split`` (case-insensitive) are returned, all rows for ``split="all"``;
    without one only ``split="all"`` is accepted.

    check_files: when True (default) every listed image must exist.
    """
    if not isinstance(split, str) or not split:
        raise ValueError(f"read_manifest: split must be a non-empty string, got {split!r}")
    split = split.lower()
    path = Path(csv_path)
    if path.is_dir():
        path = path / "manifest.csv"
    _require_file(path, "manifest CSV (header path,label[,subject][,split])")
    base = path.parent
    samples: list[Sample] = []
    with _open_csv(path) as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: empty file; expected header 'path,label[,subject][,split]'")
        cols = [h.strip().lower() for h in header]
        if "path" not in cols or "label" not in cols:
            raise ValueError(
                f"{path}, line 1: header must name columns 'path' and 'label' (got {','.join(header)!r})"
            )
        ip, il = cols.index("path"), cols.index("label")
        isub = cols.index("subject") if "subject" in cols else None
        isplit = cols.index("split") if "split" in cols else None
        if isplit is None and split != "all":
            raise ValueError(
                f"{path}: split={split!r} requested but the manifest has no 'split' column; "
                "add a split column (path,label,subject,split) or read it with split='all'"
            )
        for row in reader:
            line = reader.line_num
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) < len(cols):
                raise ValueError(
                    f"{path}, line {line}: expected {len(cols)} columns ({','.join(header)}), got {len(row)}"
                )
            row_split = row[isplit].strip().lower() if isplit is not None else None
            if isplit is not None and not row_split:
                raise ValueError(f"{path}, line {line}: empty split value")
            if split != "all" and row_split != split:
                continue
            rel = row[ip].strip()
            if not rel:
                raise ValueError(f"{path}, line {line}: empty path")
            try:
                label = parse_class_name(row[il])
            except ValueError as e:
                raise ValueError(f"{path}, line {line}: {e}") from None
            subject = (row[isub].strip() or None) if isub is not None else None
            p = Path(rel)
            p = p if p.is_absolute() else base / p
            samples.append(Sample(label, path=p, subject=subject, split=row_split))
    if check_files:
        _check_paths_exist((s.path for s in samples), f"manifest {path}")
    return samples


# --------------------------------------------------------------------------------------------
# Subject-independent folds
# --------------------------------------------------------------------------------------------


def kfold_by_subject(
    samples: Sequence[Sample] | Sequence[str | None], k: int = 5, seed: int = 0
) -> list[tuple[list[int], list[int]]]:
    """Subject-independent k-fold split: ``[(train_indices, test_indices)] * k``.

    ``samples`` are records or just their subjects (one per image).

    Every subject's images land in exactly one test fold; the test folds partition
    ``range(len(samples))``. Folds are balanced by image count: subjects are assigned largest
    first to the fold with the fewest images so far (ties between equal-size subjects broken by
    a ``seed``-shuffled order, ties between folds by lowest index). Deterministic for a given
    ``seed``. Raises ValueError if a sample has no subject or there are fewer subjects than k.
    """
    if not isinstance(k, int) or k < 2:
        raise ValueError(f"kfold_by_subject: k must be an int >= 2, got {k!r}")
    groups: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        subject = s.subject if isinstance(s, Sample) else s
        if subject is None:
            where = f" ({s.path})" if isinstance(s, Sample) else ""
            raise ValueError(f"kfold_by_subject: sample {i}{where} has no subject")
        groups[subject].append(i)
    if len(groups) < k:
        raise ValueError(
            f"kfold_by_subject: {len(groups)} subject(s) cannot make {k} subject-independent folds"
        )
    names = sorted(groups)
    order = np.random.default_rng(seed).permutation(len(names))
    shuffled = [names[j] for j in order]
    shuffled.sort(key=lambda n: -len(groups[n]))  # stable: seed order among equal sizes
    fold_members: list[list[int]] = [[] for _ in range(k)]
    sizes = [0] * k
    for n in shuffled:
        f = min(range(k), key=lambda j: (sizes[j], j))
        fold_members[f].extend(groups[n])
        sizes[f] += len(groups[n])
    n_total = len(samples)
    folds = []
    for members in fold_members:
        test = sorted(members)
        in_test = set(test)
        train = [i for i in range(n_total) if i not in in_test]
        folds.append((train, test))
    return folds


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


def _read_fer2013_root(root: str | os.PathLike, split: str, **kw) -> list[Sample]:
    """FER2013 by root: the directory holding fer2013.csv, or the CSV itself."""
    return read_fer2013(root, split, **kw)


def _read_ferplus_root(root: str | os.PathLike, split: str, **kw) -> list[Sample]:
    """FERPlus by root: the directory holding both fer2013.csv and fer2013new.csv."""
    root = Path(root)
    if root.is_file():
        root = root.parent
    _require_dir(root, "FERPlus root (holding fer2013.csv and fer2013new.csv)")
    return read_ferplus(root / "fer2013.csv", root / "fer2013new.csv", split, **kw)


#: name → reader with the uniform signature ``(root, split, **kw) -> list[Sample]``.
DATASET_READERS: dict[str, Callable[..., list[Sample]]] = {
    "rafdb": read_rafdb,
    "affectnet": read_affectnet,
    "sfew": read_sfew,
    "ckplus": read_ckplus,
    "fer2013": _read_fer2013_root,
    "ferplus": _read_ferplus_root,
    "folder": read_folder,
    "manifest": read_manifest,
}


def _normalise_name(name: str) -> str:
    return re.sub(r"[\s_\-]", "", name.strip().lower().replace("+", "plus"))


def read_dataset(name: str, root: str | os.PathLike, split: str, **kw) -> list[Sample]:
    """Dispatch to the reader registered under ``name`` (see :data:`DATASET_READERS`; case,
    '-', '_' are ignored and '+' reads 'plus', so "RAF-DB" and "CK+" work).

    Roots: fer2013 → the directory holding fer2013.csv (or the CSV); ferplus → the directory
    holding fer2013.csv and fer2013new.csv; manifest → the CSV or a directory holding
    manifest.csv; the others → the dataset's root directory.
    """
    key = _normalise_name(name) if isinstance(name, str) else name
    if key not in DATASET_READERS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASET_READERS)}")
    return DATASET_READERS[key](root, split, **kw)

"""FER2013: one CSV whose rows hold 48×48 grey images as text, split by its ``Usage`` column.

    from lnlatten_fast.data.datasets import read_fer2013
    test = read_fer2013("/data/fer2013", "test")  # PrivateTest

The CSV helpers here serve FERPlus too (:mod:`.ferplus`), whose labels sit beside these rows.
"""

from __future__ import annotations

import csv
import os
import warnings
from pathlib import Path

import numpy as np

from ._common import Sample, check_split, open_csv, parse_int, require_file

__all__ = ["LABEL_MAP", "USAGE_SPLITS", "read_fer2013"]

#: FER2013 ``emotion`` → canonical: 0 Angry → 5, 1 Disgust → 2, 2 Fear → 1, 3 Happy → 3,
#: 4 Sad → 4, 5 Surprise → 0, 6 Neutral → 6.
LABEL_MAP: dict[int, int] = {0: 5, 1: 2, 2: 1, 3: 3, 4: 4, 5: 0, 6: 6}
#: FER2013 / FERPlus ``Usage`` → split name.
USAGE_SPLITS: dict[str, str] = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}

_FER_SIDE = 48
_FER_PIXELS = _FER_SIDE * _FER_SIDE


def fer_csv_path(path: str | os.PathLike, name: str) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / name
    return require_file(p, f"{name}")


def parse_fer_pixels(text: str, path: Path, line: int) -> np.ndarray:
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


def read_fer2013_rows(csv_path: Path) -> list[tuple[int, str, str, str]]:
    """(line number, emotion, pixels, Usage) per data row, unparsed."""
    rows: list[tuple[int, str, str, str]] = []
    with open_csv(csv_path) as fh:
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


def usage_split(usage: str, path: Path, line: int) -> str:
    try:
        return USAGE_SPLITS[usage]
    except KeyError:
        raise ValueError(
            f"{path}, line {line}: Usage must be one of {', '.join(USAGE_SPLITS)}, got {usage!r}"
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
    split = check_split(split, ("train", "val", "test", "all"), "read_fer2013")
    path = fer_csv_path(csv_path, "fer2013.csv")
    samples: list[Sample] = []
    for line, emotion, pixels, usage in read_fer2013_rows(path):
        s = usage_split(usage, path, line)
        if split != "all" and s != split:
            continue
        code = parse_int(emotion, path, line, "emotion")
        if code not in LABEL_MAP:
            raise ValueError(f"{path}, line {line}: emotion must be 0..6, got {code}")
        samples.append(Sample(LABEL_MAP[code], pixels=parse_fer_pixels(pixels, path, line), split=s))
    return samples

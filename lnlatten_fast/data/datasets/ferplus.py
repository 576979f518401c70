"""FERPlus: FER2013's images relabelled by 10 annotators' votes (``fer2013new.csv``).

    from lnlatten_fast.data.datasets import read_ferplus
    train = read_ferplus("/data/fer/fer2013.csv", "/data/fer/fer2013new.csv", "train")
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Sequence

from ._common import Sample, check_split, open_csv, require_dir
from .fer2013 import fer_csv_path, parse_fer_pixels, read_fer2013_rows, usage_split

__all__ = ["COLUMNS", "COLUMN_MAP", "read_ferplus", "read_ferplus_root"]

#: FERPlus vote columns, in file order.
COLUMNS: tuple[str, ...] = (
    "neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt", "unknown", "NF",
)
#: FERPlus vote column → canonical label (contempt, unknown and NF have none: rows they win are dropped).
COLUMN_MAP: dict[str, int] = {
    "neutral": 6, "happiness": 3, "surprise": 0, "sadness": 4, "anger": 5, "disgust": 2, "fear": 1,
}


def _ferplus_label(votes: Sequence[float]) -> int | None:
    """Majority (plurality) vote over the 10 FERPlus columns; None → drop the row."""
    top = max(votes)
    if top <= 0:
        return None
    winners = [i for i, v in enumerate(votes) if v == top]
    if len(winners) != 1:
        return None  # tie
    return COLUMN_MAP.get(COLUMNS[winners[0]])  # None for contempt / unknown / NF


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
    split = check_split(split, ("train", "val", "test", "all"), "read_ferplus")
    fer_path = fer_csv_path(fer2013_csv, "fer2013.csv")
    plus_path = fer_csv_path(ferplus_csv, "fer2013new.csv")
    fer_rows = read_fer2013_rows(fer_path)
    samples: list[Sample] = []
    with open_csv(plus_path) as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        expected = ("Usage", "Image name") + COLUMNS
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
            s = usage_split(usage, plus_path, line)
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
            samples.append(Sample(label, pixels=parse_fer_pixels(pixels, fer_path, fer_line), split=s))
        if i != len(fer_rows):
            raise ValueError(
                f"{plus_path}: {i} data rows but {fer_path} has {len(fer_rows)}; "
                "the files must be row-aligned"
            )
    return samples


def read_ferplus_root(root: str | os.PathLike, split: str, **kw) -> list[Sample]:
    """FERPlus by root: the directory holding both fer2013.csv and fer2013new.csv."""
    root = Path(root)
    if root.is_file():
        root = root.parent
    require_dir(root, "FERPlus root (holding fer2013.csv and fer2013new.csv)")
    return read_ferplus(root / "fer2013.csv", root / "fer2013new.csv", split, **kw)

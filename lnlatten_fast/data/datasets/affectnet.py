"""AffectNet (manually annotated part): two annotation CSVs and an image folder.

    from lnlatten_fast.data.datasets import read_affectnet
    test = read_affectnet("/data/AffectNet", "test")  # validation.csv, the usual test set
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from ._common import Sample, check_paths_exist, check_split, open_csv, parse_int, require_dir, require_file

__all__ = ["LABEL_MAP", "CONTEMPT", "COLUMNS", "read_affectnet"]

#: AffectNet ``expression`` → canonical: 0 Neutral → 6, 1 Happy → 3, 2 Sad → 4, 3 Surprise → 0,
#: 4 Fear → 1, 5 Disgust → 2, 6 Anger → 5. 7 Contempt (:data:`CONTEMPT`) → 7 with
#: ``num_classes=8``, else dropped; 8 None, 9 Uncertain, 10 Non-face are always dropped.
LABEL_MAP: dict[int, int] = {0: 6, 1: 3, 2: 4, 3: 0, 4: 1, 5: 2, 6: 5}
CONTEMPT = 7

#: The annotation CSVs' columns, in file order.
COLUMNS = (
    "subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
    "facial_landmarks", "expression", "valence", "arousal",
)


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
    split = check_split(split, ("train", "test", "all"), "read_affectnet")
    if num_classes not in (7, 8):
        raise ValueError(
            f"read_affectnet: num_classes must be 7 or 8 (8 keeps Contempt as 7), got {num_classes!r}"
        )
    root = Path(root)
    require_dir(root, "AffectNet root (holding training.csv / validation.csv)")
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
        csv_path = require_file(root / fname, "AffectNet annotations")
        s = "train" if fname == "training.csv" else "test"
        samples.extend(_read_affectnet_csv(csv_path, image_root, s, num_classes))
    if check_files:
        check_paths_exist(samples, "AffectNet")
    return samples


def _read_affectnet_csv(csv_path: Path, image_root: Path, split: str, num_classes: int) -> list[Sample]:
    out: list[Sample] = []
    with open_csv(csv_path) as fh:
        reader = csv.reader(fh)
        col: dict[str, int] | None = None
        for row in reader:
            line = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if col is None:
                if row[0].strip() == COLUMNS[0]:
                    header = [c.strip() for c in row]
                    missing = [c for c in COLUMNS if c not in header and c != "facial_landmarks"]
                    if missing:
                        raise ValueError(
                            f"{csv_path}, line {line}: header lacks column(s) {missing}; expected "
                            f"{','.join(COLUMNS)}"
                        )
                    col = {c: header.index(c) for c in COLUMNS if c in header}
                    continue
                col = {c: i for i, c in enumerate(COLUMNS)}
            need = max(col["subDirectory_filePath"], col["expression"], col["face_height"]) + 1
            if len(row) < need:
                raise ValueError(
                    f"{csv_path}, line {line}: expected {len(COLUMNS)} columns "
                    f"({','.join(COLUMNS)}), got {len(row)}"
                )
            code = parse_int(row[col["expression"]], csv_path, line, "expression")
            if code in LABEL_MAP:
                label = LABEL_MAP[code]
            elif code == CONTEMPT:
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
                parse_int(row[col[c]], csv_path, line, c)
                for c in ("face_x", "face_y", "face_width", "face_height")
            )
            if box[2] <= 0 or box[3] <= 0:
                raise ValueError(f"{csv_path}, line {line}: face_width / face_height must be > 0, got {box}")
            if box[0] < 0 or box[1] < 0:
                raise ValueError(f"{csv_path}, line {line}: face_x / face_y must be >= 0 (inside the image), got {box}")
            out.append(Sample(label, path=image_root / rel, split=split, box=box, source=f"{csv_path}, line {line}"))
    return out

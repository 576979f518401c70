"""RAF-DB (basic, 7 classes): a label list and a folder of aligned (or original) images.

    from lnlatten_fast.data.datasets import read_rafdb
    train = read_rafdb("/data/RAF-DB/basic", "train")
"""

from __future__ import annotations

import os
from pathlib import Path

from ._common import Sample, check_paths_exist, check_split, require_dir

__all__ = ["LABEL_MAP", "read_rafdb"]

#: RAF-DB code → canonical: 1 Surprise, 2 Fear, 3 Disgust, 4 Happiness, 5 Sadness, 6 Anger,
#: 7 Neutral (RAF-DB's order is the canonical one, so canonical = code - 1).
LABEL_MAP: dict[int, int] = {1: 0, 2: 1, 3: 2, 4: 3, 5: 4, 6: 5, 7: 6}

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
    split = check_split(split, ("train", "test", "all"), "read_rafdb")
    root = Path(root)
    label_file = _rafdb_label_file(root)
    base = root if root.is_dir() else label_file.parent
    if label_file.parent.name == "EmoLabel" and not (base / "Image").is_dir():
        base = label_file.parent.parent
    aligned_dir = base / "Image" / "aligned"
    aligned = aligned_dir.is_dir()
    image_dir = aligned_dir if aligned else base / "Image" / "original"
    if check_files:
        require_dir(
            image_dir,
            f"RAF-DB images (neither {aligned_dir} nor {image_dir} exists)",
        )

    want_train = split in ("train", "all")
    want_test = split in ("test", "all")
    samples: list[Sample] = []
    append = samples.append
    with open(label_file, encoding="utf-8-sig") as fh:
        text = fh.read()
    _parse_rafdb_lines(text, label_file, aligned, image_dir, want_train, want_test, append)
    if check_files:
        check_paths_exist(samples, "RAF-DB")
    return samples


def _parse_rafdb_lines(text, label_file, aligned, image_dir, want_train, want_test, append) -> None:
    label_map = LABEL_MAP
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
        append(Sample(label_map[int(code)], path=image_dir / name, split=s, source=f"{label_file}, line {lineno}"))

"""Class folders: ``root/<split>/<ClassName>/*`` or ``root/<ClassName>/*``, for any dataset laid
out that way. Class names go through :func:`..labels.parse_class_name` (synonyms, indices).

    from lnlatten_fast.data.datasets import read_folder
    train = read_folder("/data/faces", "train")
"""

from __future__ import annotations

import os
from pathlib import Path

from ..labels import parse_class_name
from ._common import LeftOut, Listing, Sample, child_dir, image_files, require_dir, subdirs

__all__ = ["read_folder"]


def _folder_label(d: Path) -> int:
    try:
        return parse_class_name(d.name)
    except ValueError as e:
        raise ValueError(f"class folder {d}: {e}") from None


def read_folder(root: str | os.PathLike, split: str) -> list[Sample]:
    """Class folders: ``root/<split>/<ClassName>/*`` (split directory matched case-insensitively),
    or ``root/<ClassName>/*`` with ``split="all"`` (when ``root`` holds split directories
    instead, ``split="all"`` gives all of them).

    Class names are matched case-insensitively with synonyms (:data:`..labels.CLASS_SYNONYMS`):
    surprise/surprised → 0, fear/fearful → 1, disgust/disgusted → 2, happiness/happy → 3,
    sadness/sad → 4, anger/angry → 5, neutral → 6; numeric folder names "0".."6" are canonical
    indices. Files with an image suffix (:data:`._common.IMAGE_EXTENSIONS`) are listed; others
    ignored. Entries named like images that are not readable image files (directories, broken
    links, symlink loops, unreadable files) are left out, counted in a warning and kept with the
    reason in the result's `skipped`.
    """
    if not isinstance(split, str) or not split:
        raise ValueError(
            f"read_folder: split must be a non-empty string such as 'train', 'test' or 'all', got {split!r}"
        )
    split = split.lower()
    root = Path(root)
    require_dir(root, "image folder root")

    left_out = LeftOut()

    def collect(d: Path, s: str | None) -> list[Sample]:
        out: list[Sample] = []
        for cls_dir in subdirs(d):
            label = _folder_label(cls_dir)
            out.extend(Sample(label, path=p, split=s) for p in image_files(cls_dir, left_out))
        left_out.warn(d)
        return out

    if split != "all":
        d = child_dir(root, split)
        if d is None:
            raise FileNotFoundError(
                f"read_folder: expected a directory at {root / split} holding class folders "
                "(or use split='all' for root/<ClassName>/*), which does not exist"
            )
        return Listing(collect(d, split), left_out.skipped)
    children = subdirs(root)
    if not children:
        raise FileNotFoundError(f"read_folder: {root} holds no class folders")
    not_classes = []
    for d in children:
        try:
            parse_class_name(d.name)
        except ValueError:
            not_classes.append(d)
    if not not_classes:
        return Listing(collect(root, None), left_out.skipped)
    split_dirs = [d for d in children if d.name.lower() in ("train", "test", "val")]
    if len(split_dirs) != len(children):
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
    return Listing(out, left_out.skipped)

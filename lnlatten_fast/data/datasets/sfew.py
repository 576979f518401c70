"""SFEW 2.0: ``Train/`` and ``Val/`` folders of class folders (Val is the usual test set).

    from lnlatten_fast.data.datasets import read_sfew
    test = read_sfew("/data/SFEW2", "test")
"""

from __future__ import annotations

import os
from pathlib import Path

from ._common import LeftOut, Listing, Sample, check_split, child_dir, image_files, require_dir, subdirs

__all__ = ["CLASS_MAP", "read_sfew"]

#: SFEW 2.0 class folder (lower-case) → canonical label.
CLASS_MAP: dict[str, int] = {
    "angry": 5, "disgust": 2, "fear": 1, "happy": 3, "neutral": 6, "sad": 4, "surprise": 0,
}


def read_sfew(root: str | os.PathLike, split: str) -> list[Sample]:
    """SFEW 2.0.

    Layout: ``root/Train/<Class>/*.png|jpg`` ("train") and ``root/Val/<Class>/...`` ("test":
    SFEW's Val set is the usual test set); ``split="all"`` gives both. Folder names are matched
    case-insensitively; other files (non-images, hidden files) are ignored, and entries named like
    images that are not readable image files are left out and kept in the result's `skipped`.

    Label map (class folder → canonical):
    Angry → 5, Disgust → 2, Fear → 1, Happy → 3, Neutral → 6, Sad → 4, Surprise → 0.
    """
    split = check_split(split, ("train", "test", "all"), "read_sfew")
    root = Path(root)
    require_dir(root, "SFEW root (holding Train/ and Val/)")
    parts = {
        "train": [("Train", "train")],
        "test": [("Val", "test")],
        "all": [("Train", "train"), ("Val", "test")],
    }
    samples: list[Sample] = []
    left_out = LeftOut()
    for folder, s in parts[split]:
        d = child_dir(root, folder)
        if d is None:
            raise FileNotFoundError(
                f"SFEW: expected a directory at {root / folder} (class folders "
                f"{', '.join(k.capitalize() for k in CLASS_MAP)}), which does not exist"
            )
        for cls_dir in subdirs(d):
            key = cls_dir.name.lower()
            if key not in CLASS_MAP:
                raise ValueError(
                    f"SFEW: unknown class folder {cls_dir}; expected one of "
                    f"{', '.join(k.capitalize() for k in CLASS_MAP)}"
                )
            label = CLASS_MAP[key]
            samples.extend(Sample(label, path=p, split=s) for p in image_files(cls_dir, left_out))
        left_out.warn(d)
    return Listing(samples, left_out.skipped)

"""CK+ (extended Cohn-Kanade): image sequences and one emotion file per labelled sequence.

    from lnlatten_fast.data.datasets import read_ckplus
    from lnlatten_fast.data.splits import kfold_by_subject
    ck = read_ckplus("/data/CK+")
    for train_idx, test_idx in kfold_by_subject(ck, k=5): ...
"""

from __future__ import annotations

import os
from pathlib import Path

from ._common import LeftOut, Listing, Sample, image_files, require_dir, subdirs

__all__ = ["LABEL_MAP", "CONTEMPT", "read_ckplus"]

#: CK+ emotion code → canonical: 0 neutral → 6, 1 anger → 5, 3 disgust → 2, 4 fear → 1,
#: 5 happy → 3, 6 sadness → 4, 7 surprise → 0 (2 contempt = :data:`CONTEMPT` is excluded).
LABEL_MAP: dict[int, int] = {0: 6, 1: 5, 3: 2, 4: 1, 5: 3, 6: 4, 7: 0}
CONTEMPT = 2


def read_ckplus(root: str | os.PathLike, split: str = "all") -> list[Sample]:
    """CK+ (extended Cohn-Kanade).

    Layout: ``root/cohn-kanade-images/Sxxx/yyy/*.png`` and ``root/Emotion/Sxxx/yyy/*_emotion.txt``
    (one float such as ``   3.0000000e+00``). Only sequences with an emotion file are used; for
    each, the first frame (sorted by file name) is labelled Neutral and the last (peak) frame gets
    the sequence's emotion: 309 non-contempt sequences → 618 images. ``subject = "Sxxx"``,
    ``split = None`` (use :func:`..splits.kfold_by_subject`); only ``split="all"`` is accepted.
    Frames named like images that are not readable image files are left out (kept in the
    result's `skipped`).

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
    img_root = require_dir(root / "cohn-kanade-images", "CK+ images (Sxxx/yyy/*.png)")
    emo_root = require_dir(root / "Emotion", "CK+ emotion labels (Sxxx/yyy/*_emotion.txt)")
    samples: list[Sample] = []
    left_out = LeftOut()
    for subj_dir in subdirs(emo_root):
        for seq_dir in subdirs(subj_dir):
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
            if code == CONTEMPT:
                continue
            frames_dir = img_root / subj_dir.name / seq_dir.name
            require_dir(frames_dir, f"CK+ frames for {emo_file}")
            frames = image_files(frames_dir, left_out)
            if len(frames) < 2:
                raise ValueError(
                    f"CK+: sequence {frames_dir} has {len(frames)} image(s); "
                    "need at least 2 (first = neutral, last = peak)"
                )
            subject = subj_dir.name
            samples.append(Sample(LABEL_MAP[0], path=frames[0], subject=subject))
            samples.append(Sample(LABEL_MAP[code], path=frames[-1], subject=subject))
    left_out.warn(img_root)
    return Listing(samples, left_out.skipped)

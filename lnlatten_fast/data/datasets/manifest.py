"""CSV manifests (MMI and any other dataset): ``path,label[,subject][,split]``.

    from lnlatten_fast.data.datasets import read_manifest
    mmi = read_manifest("/data/mmi/manifest.csv", "all")
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from ..labels import parse_class_name
from ._common import Sample, check_paths_exist, open_csv, require_file

__all__ = ["read_manifest", "MANIFEST_SPLITS"]

#: The split column's values (case-insensitive); anything else is an error naming the line.
MANIFEST_SPLITS = ("train", "test", "val")


def read_manifest(csv_path: str | os.PathLike, split: str, *, check_files: bool = True) -> list[Sample]:
    """CSV manifest (MMI and any other dataset): header ``path,label[,subject][,split]`` (columns
    in any order; other columns ignored). ``csv_path`` may be the CSV or a directory holding
    ``manifest.csv``.

    ``path`` is relative to the CSV's directory (or absolute). ``label`` is a canonical index
    0..6 or a class name (case-insensitive, synonyms as :data:`..labels.CLASS_SYNONYMS`).
    ``subject`` (optional, empty → None) feeds :func:`..splits.kfold_by_subject`. With a
    ``split`` column (values train, test, val; case-insensitive; anything else is an error) the
    rows whose split equals ``split`` are returned, all rows for ``split="all"``; without one
    only ``split="all"`` is accepted.

    check_files: when True (default) every listed path must be a readable image file (not missing,
    a directory or a broken link): FileNotFoundError naming the manifest's line otherwise.
    """
    if not isinstance(split, str) or not split:
        raise ValueError(f"read_manifest: split must be a non-empty string, got {split!r}")
    split = split.lower()
    path = Path(csv_path)
    if path.is_dir():
        path = path / "manifest.csv"
    require_file(path, "manifest CSV (header path,label[,subject][,split])")
    base = path.parent
    samples: list[Sample] = []
    with open_csv(path) as fh:
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
            if isplit is not None and row_split not in MANIFEST_SPLITS:
                raise ValueError(f"{path}, line {line}: split must be one of {', '.join(MANIFEST_SPLITS)}, "
                                 f"got {row[isplit].strip()!r}")
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
            samples.append(Sample(label, path=p, subject=subject, split=row_split, source=f"{path}, line {line}"))
    if check_files:
        check_paths_exist(samples, f"manifest {path}")
    return samples

"""The datasets the package reads, one module each, and THE registry of their names.

Each module holds one dataset's reader with its label map beside it (every reader maps the
dataset's own codes to the canonical order of :mod:`..labels`). A reader only *lists* records
(:class:`Sample`: a path or the pixels, a label, and the subject / split / face box where the
dataset gives them); the cache decodes them.

    from lnlatten_fast.data.datasets import read_dataset
    train = read_dataset("rafdb", "/data/RAF-DB/basic", "train")
    ck = read_dataset("ckplus", "/data/CK+", "all")

:data:`DATASET_READERS` maps each on-disk dataset's name to its reader, all with the signature
``(root, split, **kw) -> list[Sample]``; :data:`DATASETS` adds the built-in synthetic set
(:mod:`.synthetic`, drawn rather than read). `load_split` and the command lines' ``--dataset``
choices come from here.
"""

from __future__ import annotations

import os
import re
from typing import Callable

from ._common import IMAGE_EXTENSIONS, Listing, Sample, check_listing
from .affectnet import read_affectnet
from .ckplus import read_ckplus
from .fer2013 import read_fer2013
from .ferplus import read_ferplus, read_ferplus_root
from .folder import read_folder
from .manifest import read_manifest
from .rafdb import read_rafdb
from .sfew import read_sfew

__all__ = [
    "Sample", "Listing", "IMAGE_EXTENSIONS", "DATASET_READERS", "DATASETS", "SYNTHETIC", "read_dataset",
    "read_rafdb", "read_affectnet", "read_sfew", "read_ckplus", "read_fer2013", "read_ferplus",
    "read_folder", "read_manifest",
]

#: name → reader with the uniform signature ``(root, split, **kw) -> list[Sample]``. Roots:
#: fer2013 → the directory holding fer2013.csv (or the CSV); ferplus → the directory holding
#: fer2013.csv and fer2013new.csv; manifest → the CSV or a directory holding manifest.csv; the
#: others → the dataset's root directory.
DATASET_READERS: dict[str, Callable[..., list[Sample]]] = {
    "rafdb": read_rafdb,
    "affectnet": read_affectnet,
    "sfew": read_sfew,
    "ckplus": read_ckplus,
    "fer2013": read_fer2013,
    "ferplus": read_ferplus_root,
    "folder": read_folder,
    "manifest": read_manifest,
}

#: The built-in set, drawn by :mod:`.synthetic` at any size; needs no root.
SYNTHETIC = "synthetic"
#: Every dataset name a run can ask for.
DATASETS: tuple[str, ...] = (SYNTHETIC, *DATASET_READERS)


def _normalise_name(name: str) -> str:
    return re.sub(r"[\s_\-]", "", name.strip().lower().replace("+", "plus"))


def read_dataset(name: str, root: str | os.PathLike, split: str, **kw) -> Listing:
    """Dispatch to the reader registered under ``name`` (see :data:`DATASET_READERS`; case,
    '-', '_' are ignored and '+' reads 'plus', so "RAF-DB" and "CK+" work). The listing is
    checked (`check_listing`): exact duplicates dropped with a warning; an image listed with
    two labels, boxes or splits is a ValueError naming both places. The result is a `Listing`:
    its `skipped` holds the entries named like images that the folder walks left out (not
    readable image files), with the reason."""
    key = _normalise_name(name) if isinstance(name, str) else name
    if key not in DATASET_READERS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASET_READERS)}")
    reader = DATASET_READERS[key]
    samples = reader(root, split, **kw)
    if split != "all":  # an image in two splits is only visible in the whole listing
        check_listing(reader(root, "all", **kw), f"{key} listing of {root}", warn=False)
    return check_listing(samples, f"{key} {split} listing of {root}")

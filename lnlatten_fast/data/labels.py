"""The canonical label space: every reader maps its dataset's own codes to this order.

RAF-DB's order, index = label::

    0 Surprise, 1 Fear, 2 Disgust, 3 Happiness, 4 Sadness, 5 Anger, 6 Neutral

AffectNet read with ``num_classes=8`` adds ``7 Contempt`` (:data:`CLASS_NAMES_8`). Datasets that
name their classes in words (class folders, manifests) go through :func:`parse_class_name`.
"""

from __future__ import annotations

__all__ = ["CLASS_NAMES", "CLASS_NAMES_8", "NUM_CLASSES", "CLASS_SYNONYMS", "parse_class_name"]

#: Canonical class order (RAF-DB's): index = label.
CLASS_NAMES: tuple[str, ...] = ("Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral")
NUM_CLASSES = len(CLASS_NAMES)
#: Canonical order extended with Contempt = 7 (AffectNet read with ``num_classes=8`` only).
CLASS_NAMES_8: tuple[str, ...] = CLASS_NAMES + ("Contempt",)

#: Class names (lower-case) and their common spellings → canonical label, for the readers that
#: take class names (folder, manifest). Numbers "0".."6" are accepted separately as indices.
CLASS_SYNONYMS: dict[str, int] = {
    "surprise": 0, "surprised": 0,
    "fear": 1, "fearful": 1,
    "disgust": 2, "disgusted": 2,
    "happiness": 3, "happy": 3,
    "sadness": 4, "sad": 4,
    "anger": 5, "angry": 5,
    "neutral": 6,
}


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

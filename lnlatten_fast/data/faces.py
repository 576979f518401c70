"""Faces in ordinary photographs: where they are (OpenCV's Haar cascade), and each one cropped
the way the training images frame a face.

    from lnlatten_fast.data import load_image
    from lnlatten_fast.data.faces import detect_faces, crop_face
    photo = load_image("group.jpg")                  # uint8 (H, W, 3)
    boxes = detect_faces(photo)                      # [(x, y, w, h), ...], left to right
    faces = [crop_face(photo, box, 144) for box in boxes]

The detector is optional: the `detect` extra (`pip install 'lnlatten_fast[detect]'`), which is
opencv-python-headless 4.x. OpenCV's 4.x wheels carry the cascade files in `cv2.data`, so
nothing downloads; the 5.x wheels ship neither the files nor `cv2.CascadeClassifier`. Without a
usable OpenCV, `detect_faces` raises `DetectorMissingError`.

The frontal-face cascade finds upright, roughly frontal faces of at least 24x24 pixels; a
profile, a strongly tilted head or a smaller face is not found.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

from ..errors import ParameterError

__all__ = ["DetectorMissingError", "FACE_MARGIN", "detect_faces", "face_crop_box", "crop_face", "face_detector"]

#: The cascade file, from the ones OpenCV ships in `cv2.data.haarcascades`.
CASCADE_FILE = "haarcascade_frontalface_default.xml"

# Why the crop is the detector's box grown by 15% of its side on every side (1.3x the box):
# the model learns from the datasets' own face crops, to which the package adds no margin (the
# cache crops an AffectNet box as it is, and uses RAF-DB's aligned images whole). Those crops
# hold the whole face, eyebrows to chin, filling the square, the eyes a little above the middle
# (RAF-DB's aligned faces: eyes roughly 0.4 of the way down and 0.35-0.4 of the side apart).
# The Haar cascade's box is tighter and sits higher: on skimage.data.astronaut() it runs from
# the fringe to between the lower lip and the chin, its eyes 0.36 of the way down and 0.47 of
# its side apart. Grown by 15% a side it reaches the chin, with the eyes 0.39 down and 0.37 of
# the side apart, as in the training crops. The training's random crop (default crop_padding)
# shifts an image by up to image_size / 16 (6%) each way: the model has seen framings that far off.
FACE_MARGIN = 0.15


class DetectorMissingError(ImportError):
    """OpenCV's Haar cascade face detector cannot be used: the `detect` extra is not installed
    (`reason` None), or the installed OpenCV cannot load the cascade (`reason` says why)."""

    def __init__(self, reason: str | None = None):
        detail = f" ({reason})" if reason else ""
        super().__init__(f"the face detector needs the detect extra: pip install 'lnlatten_fast[detect]'{detail}")
        self.reason = reason


@functools.lru_cache(maxsize=1)
def face_detector():
    """OpenCV's frontal-face Haar cascade, loaded once from the file OpenCV ships;
    DetectorMissingError when OpenCV is missing or cannot load it."""
    try:
        import cv2
    except ImportError:
        raise DetectorMissingError() from None
    if not hasattr(cv2, "CascadeClassifier"):
        raise DetectorMissingError(f"OpenCV {cv2.__version__} has no CascadeClassifier; the extra installs 4.x")
    folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
    if folder is None:
        raise DetectorMissingError(f"OpenCV {cv2.__version__} ships no cascade files; the extra installs 4.x")
    detector = cv2.CascadeClassifier(str(folder) + CASCADE_FILE)
    if detector.empty():
        raise DetectorMissingError(f"OpenCV {cv2.__version__} could not load {folder}{CASCADE_FILE}")
    return detector


def _check_image(image_u8: np.ndarray) -> np.ndarray:
    image = np.asarray(image_u8)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ParameterError("image", f"must be uint8 (H, W, 3) RGB, got {image.dtype} {image.shape}")
    return image


def detect_faces(image_u8: np.ndarray) -> list[tuple[int, int, int, int]]:
    """The faces in uint8 (H, W, 3) RGB `image_u8`, as boxes (x, y, w, h) in its pixels, left to
    right; [] when there is none. DetectorMissingError without the `detect` extra."""
    image = _check_image(image_u8)
    detector = face_detector()
    import cv2

    grey = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
    # OpenCV's documented settings: a 10% scale pyramid, and 5 overlapping hits to count as a face.
    found = detector.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5)
    boxes = [tuple(int(v) for v in box) for box in np.asarray(found).reshape(-1, 4)]
    return sorted(boxes, key=lambda b: (b[0], b[1]))


def face_crop_box(box, margin: float = FACE_MARGIN) -> tuple[int, int, int, int]:
    """The part of a photo `crop_face` takes for the face in `box` (x, y, w, h): the box grown
    by `margin` times its width (height) on the left and right (top and bottom). It may reach
    past the photo's edges."""
    x, y, w, h = (int(v) for v in box)
    if w <= 0 or h <= 0:
        raise ParameterError("box", f"must be (x, y, w, h) with w, h > 0, got {tuple(box)}")
    if not 0 <= margin <= 1:
        raise ParameterError("margin", f"must be between 0 and 1 (a fraction of the box's side), got {margin}")
    dx, dy = round(margin * w), round(margin * h)
    return x - dx, y - dy, w + 2 * dx, h + 2 * dy


def crop_face(image_u8: np.ndarray, box, size: int, margin: float = FACE_MARGIN) -> np.ndarray:
    """uint8 (size, size, 3): the face in `box` (x, y, w, h) of `image_u8`, framed as the
    training crops frame a face (`face_crop_box`), resized with bilinear filtering as
    `load_image` resizes. Where the crop reaches past the photo its edge pixels are repeated,
    as the training's random crop pads."""
    image = _check_image(image_u8)
    x, y, w, h = face_crop_box(box, margin)
    height, width = image.shape[:2]
    inside = image[max(y, 0) : min(y + h, height), max(x, 0) : min(x + w, width)]
    if inside.size == 0:
        raise ParameterError("box", f"{tuple(box)} lies outside the {width}x{height} image")
    pad = ((max(-y, 0), max(y + h - height, 0)), (max(-x, 0), max(x + w - width, 0)), (0, 0))
    crop = np.pad(inside, pad, mode="edge")
    return np.asarray(Image.fromarray(crop).resize((size, size), Image.BILINEAR), dtype=np.uint8)

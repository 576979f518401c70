"""A checkpoint's model on the faces in ordinary photographs: each face found
(`data.faces.detect_faces`), cropped as the training images frame a face, and classified on its own.

    from lnlatten_fast.training.photos import predict_photos
    found = predict_photos(["party.jpg"], "runs/rafdb-paper")     # or a checkpoint file
    for face in found.photos[0].faces:
        face.box, face.ranked[0]      # (412, 80, 96, 96), ("Happiness", 0.91)

Needs the `detect` extra (DetectorMissingError without it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.faces import FACE_MARGIN, crop_face, detect_faces, face_crop_box, face_detector
from ..data.images import load_image
from ..geometry import PatchGeometry
from .distributed import pick_device
from .inference import checkpoint_file, image_paths, load_model, predict, ranked_classes

__all__ = ["Face", "Photo", "PhotoPredictions", "predict_photos"]


@dataclass
class Face:
    """One face found in a photo, and what the model says of it."""

    box: tuple[int, int, int, int]  # the detector's box (x, y, w, h) in the photo's pixels
    crop_box: tuple[int, int, int, int]  # what the model saw: the box grown by the margin (may pass the photo's edges)
    image: np.ndarray  # uint8 (S, S, 3), the crop as the model saw it
    ranked: list[tuple[str, float]]  # the top classes, most probable first
    nonlocal_weights: torch.Tensor  # w_g, (M,)
    local_weights: torch.Tensor  # w_l, (M,)


@dataclass
class Photo:
    path: Path
    image: np.ndarray  # uint8 (H, W, 3), upright, as load_image decodes it
    faces: list[Face]  # left to right; empty when the detector found none


@dataclass
class PhotoPredictions:
    """What `predict_photos` found, one Photo per image file, in the order given (a folder's by name)."""

    photos: list[Photo]
    geometry: PatchGeometry  # where each of the M regions lies in a face crop


def predict_photos(paths, checkpoint_path, device: str = "auto", top: int = 3, which: str = "best",
                   margin: float = FACE_MARGIN) -> PhotoPredictions:
    """The `top` most probable expressions of every face in each image file (`paths` may name
    folders: their images), by the model in `checkpoint_path` (a checkpoint file, or a run
    directory: its best.pt, or its last.pt with `which="last"`). Each face is cropped with
    `margin` (data.faces.face_crop_box) and resized to the model's input size."""
    face_detector()  # before anything is loaded: DetectorMissingError without the extra
    chosen = pick_device(device)
    path = checkpoint_file(checkpoint_path, which)
    model, payload = load_model(path, chosen)
    names, size = payload["class_names"], model.config.image_size
    photos = []
    for file in image_paths(paths):
        image = load_image(file)
        boxes = detect_faces(image)
        faces = []
        if boxes:
            crops = np.stack([crop_face(image, box, size, margin) for box in boxes])
            probs, nonlocal_weights, local_weights = predict(model, crops, chosen)
            faces = [Face(box, face_crop_box(box, margin), crop, ranked, w_g, w_l) for box, crop, ranked, w_g, w_l
                     in zip(boxes, crops, ranked_classes(probs, names, top, path), nonlocal_weights, local_weights)]
        photos.append(Photo(file, image, faces))
    return PhotoPredictions(photos, model.geometry)

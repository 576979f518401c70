"""`load_image`: the one image decoder of the package (training cache, evaluate, predict).

It returns an image as a viewer shows the file:
* EXIF orientation applied (a phone photo stored sideways is upright);
* 16-bit integer images (PNG/TIFF "I;16", "I") scaled from 0..65535 to 0..255, not clipped
  (clipping turns 97-99% of a typical 16-bit face white);
* float images ("F") scaled from 0..1 to 0..255 when they lie in [0, 1], else from their own
  range;
* any other mode (palette, grey, grey + alpha, RGBA, CMYK) converted to RGB by Pillow.

A file that cannot be decoded (unknown format, truncated, or a decompression bomb: more
pixels than Pillow's `Image.MAX_IMAGE_PIXELS`) raises `ImageDecodeError`, which names the
file and the reason. A face box outside the image raises `FaceBoxError`.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
from PIL import Image, ImageOps

__all__ = ["ImageDecodeError", "FaceBoxError", "load_image"]


class ImageDecodeError(ValueError):
    """`path` could not be decoded; `reason` says why."""

    def __init__(self, path, reason: str):
        super().__init__(f"cannot decode image {path}: {reason}")
        self.path = str(path)
        self.reason = reason


class FaceBoxError(ValueError):
    """A face box that does not lie inside its image: an error in the listing, not the file."""


def _to_uint8(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode.startswith("I;16") or mode == "I" or mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if mode == "F":
            low, high = (0.0, 1.0) if values.size and values.min() >= 0 and values.max() <= 1 else (
                float(values.min(initial=0.0)), float(values.max(initial=1.0)))
        else:  # 16-bit samples, whatever Pillow calls the mode
            low, high = 0.0, 65535.0 if values.max(initial=0) > 255 or mode.startswith("I;16") else 255.0
        scaled = np.clip((values - low) / max(high - low, 1e-12), 0.0, 1.0) * 255.0
        grey = np.rint(scaled).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def load_image(path: str | os.PathLike, size: int | None = None, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """uint8 (H, W, 3) RGB of `path` as a viewer shows it; cropped to `box` (x, y, w, h) in
    those (upright) coordinates, then resized to (size, size) with bilinear filtering when
    `size` is given."""
    try:
        with warnings.catch_warnings():
            # Pillow warns between 1x and 2x MAX_IMAGE_PIXELS and raises above: refuse both.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image = ImageOps.exif_transpose(image)
                image.load()
                pixels = _to_uint8(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageDecodeError(path, f"decompression bomb ({error})") from None
    except (OSError, SyntaxError, ValueError) as error:  # Pillow's ways of saying "not an image I can read"
        raise ImageDecodeError(path, str(error) or type(error).__name__) from None
    if box is not None:
        x, y, w, h = box
        height, width = pixels.shape[:2]
        if x < 0 or y < 0 or x + w > width or y + h > height:
            raise FaceBoxError(f"face box (x {x}, y {y}, w {w}, h {h}) lies outside the {width}x{height} image {path}")
        pixels = pixels[y : y + h, x : x + w]
    if size is not None:
        pixels = np.asarray(Image.fromarray(pixels).resize((size, size), Image.BILINEAR), dtype=np.uint8)
    return pixels

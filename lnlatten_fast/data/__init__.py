"""Datasets, caches and loaders for facial expression recognition.

labels    the canonical classes (RAF-DB's order) every reader maps to
datasets  one module per dataset, its label map beside its reader, and the registry of names
splits    subject-independent k-folds, stratified hold-outs, class-balanced weights
synthetic the built-in procedural faces
images    `load_image`: the one image decoder (EXIF, 16-bit and float images, named failures)
cache     decode and resize once into a memory-mapped uint8 cache
sources   `load_split`: a dataset name and a split to cached images
pipeline  batches sliced from the cache, flipped and cropped on the training device
"""

from .images import ImageDecodeError, load_image

__all__ = ["load_image", "ImageDecodeError"]

"""Patch arithmetic: where the M local windows of F9 lie.

`PatchGeometry` is the single owner of this arithmetic. Every op and module takes one and
nothing recomputes window positions on its own.

The lattice is n x n square windows of side `patch`, placed every `stride` pixels, that must
tile the square image exactly: ``(n - 1) * stride + patch == image_size`` (paper, eq. 5).
The overlap between neighbours is ``patch - stride`` (table VII's N).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

__all__ = ["PatchGeometry"]

# Eq. 5 asks for an overlap of "around a third" of the patch.
_DEFAULT_OVERLAP_FRACTION = Fraction(1, 3)


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return value


def grid_side(num_patches: int) -> int:
    """n = sqrt(M); M must be a perfect square."""
    _positive_int(num_patches, "num_patches")
    n = math.isqrt(num_patches)
    if n * n != num_patches:
        raise ValueError(
            f"num_patches must be a perfect square (M = n*n: 4, 9, 16, 25, 36...), got {num_patches}"
        )
    return n


@dataclass(frozen=True)
class PatchGeometry:
    """An n x n lattice of `patch` x `patch` windows every `stride` pixels on an image.

    Window m (0 <= m < grid*grid, row-major) has its top-left corner at
    ``(row(m) * stride, col(m) * stride)``.
    """

    image_size: int
    grid: int
    patch: int
    stride: int

    def __post_init__(self):
        for name in ("image_size", "grid", "patch", "stride"):
            _positive_int(getattr(self, name), name)
        if (self.grid - 1) * self.stride + self.patch != self.image_size:
            raise ValueError(
                "patch geometry violates (n-1)·stride + patch = image size: "
                f"({self.grid}-1)·{self.stride} + {self.patch} = "
                f"{(self.grid - 1) * self.stride + self.patch} != {self.image_size}"
            )
        if self.stride > self.patch:
            raise ValueError(
                f"stride ({self.stride}) must not exceed patch ({self.patch}): "
                "the windows must cover the whole image (overlap >= 0)"
            )

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def for_image(cls, image_size: int, num_patches: int = 16, overlap: int | None = None):
        """The geometry of eq. 5 / table VII.

        With `overlap` (N, pixels shared by neighbours) the patch is fixed by
        ``n·P - (n-1)·N = image_size``. Without it, the overlap is the integer solution closest
        to P/3 (eq. 5 with gamma ~ 1/3); for 144 px and M = 16 this is the paper's P = 48, N = 16.
        """
        _positive_int(image_size, "image_size")
        n = grid_side(num_patches)
        if n == 1:
            if overlap not in (None, 0):
                raise ValueError(f"overlap must be 0 or None for a single patch, got {overlap}")
            return cls(image_size, 1, image_size, image_size)
        if overlap is not None:
            if isinstance(overlap, bool) or not isinstance(overlap, int) or overlap < 0:
                raise ValueError(f"overlap must be a non-negative int, got {overlap!r}")
            total = image_size + (n - 1) * overlap
            if total % n:
                raise ValueError(
                    f"no integer patch satisfies (n-1)·stride + patch = image size with "
                    f"image_size={image_size}, num_patches={num_patches} (n={n}), overlap={overlap}: "
                    f"patch = (image_size + (n-1)·overlap)/n = {total}/{n} is not an integer"
                )
            patch = total // n
            stride = patch - overlap
            if stride <= 0:
                raise ValueError(
                    f"overlap={overlap} leaves a non-positive stride ({stride}) for patch {patch}"
                )
            return cls(image_size, n, patch, stride)
        return cls._closest_to_third(image_size, n)

    @classmethod
    def _closest_to_third(cls, image_size: int, n: int) -> "PatchGeometry":
        best = None
        for patch in range(1, image_size + 1):
            spare = n * patch - image_size  # = (n-1)·overlap
            if spare < 0 or spare % (n - 1):
                continue
            overlap = spare // (n - 1)
            if overlap >= patch:
                continue
            miss = abs(Fraction(overlap) - _DEFAULT_OVERLAP_FRACTION * patch)
            if best is None or miss < best[0]:
                best = (miss, patch, overlap)
        if best is None:
            raise ValueError(f"no patch geometry tiles image_size={image_size} with a {n}x{n} grid")
        _, patch, overlap = best
        return cls(image_size, n, patch, patch - overlap)

    # ---- derived quantities -------------------------------------------------------------
    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    @property
    def overlap(self) -> int:
        return self.patch - self.stride if self.grid > 1 else 0

    def origin(self, index: int) -> tuple[int, int]:
        """Top-left (row, col) of window `index` (row-major)."""
        if not 0 <= index < self.num_patches:
            raise IndexError(f"patch index {index} out of range [0, {self.num_patches})")
        return (index // self.grid) * self.stride, (index % self.grid) * self.stride

    def origins(self) -> list[tuple[int, int]]:
        return [self.origin(m) for m in range(self.num_patches)]

    def windows_covering(self, pixel: int) -> range:
        """Grid indices along one axis whose windows contain coordinate `pixel`."""
        first = max(0, -(-(pixel - self.patch + 1) // self.stride))
        last = min(self.grid - 1, pixel // self.stride)
        return range(first, last + 1)

    def scaled_to(self, image_size: int) -> "PatchGeometry":
        """These windows (on a feature map of side `self.image_size`) as they lie on an input of
        side `image_size`: where a backbone's high-resolution map, a fraction of the image (or a
        resize of it), puts the LNL head's windows on the photograph. The stride is rounded to
        whole pixels (down where rounding up would leave gaps) and the patch takes the remainder,
        so the windows still tile the image exactly. Same size: these windows themselves."""
        image_size = _positive_int(image_size, "image_size")
        if image_size == self.image_size:
            return self
        n = self.grid
        if n == 1:
            return PatchGeometry(image_size, 1, image_size, image_size)
        exact = Fraction(self.stride * image_size, self.image_size)
        stride = round(exact)
        if image_size - (n - 1) * stride < stride:
            stride = int(exact)  # floor: the patch, image_size - (n-1)·stride, is then at least the stride
        return PatchGeometry(image_size, n, image_size - (n - 1) * stride, stride)

    def __str__(self) -> str:
        return (
            f"PatchGeometry({self.image_size}px, {self.grid}x{self.grid} windows of "
            f"{self.patch}px, stride {self.stride}, overlap {self.overlap})"
        )

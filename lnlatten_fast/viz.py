"""Pictures of what the model attends to (w_g over the face, paper fig. 10), and the one colour
rule of every figure: each quantity has one colour map and one scale rule, here.

    w_g        viridis, 0 to max(2/M, the largest weight drawn); the uniform weight 1/M is
               marked on the colour bar
    w_l        viridis, 0 to 1 (a sigmoid's whole range)
    confusion  Blues, 0 to 1 (row-normalised rates)

w_g is scaled to the data, not clipped at a fixed 2/M: a trained model puts several times the
uniform weight on a few regions, and a clipped scale (even with an extended colour bar) draws
exactly those, the regions a reader looks for, in one colour. The floor of 2/M keeps a
near-uniform map at mid-scale instead of stretching its small differences over the whole map,
and the mark on the colour bar says where uniform lies. One scale serves a whole figure (all its
faces and moments), so colours compare within a figure; across figures, read the colour bar.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .geometry import PatchGeometry

__all__ = [
    "WEIGHT_COLORMAP", "CONFUSION_COLORMAP", "ColourScale", "nonlocal_weight_scale", "local_weight_scale",
    "confusion_scale", "add_colorbar", "region_weight_map", "draw_weight_overlay", "save_region_heatmap",
]

#: The colour map of every weight picture (w_g and w_l; predict, analyze, README).
WEIGHT_COLORMAP = "viridis"
#: The colour map of confusion matrices (the trainer's and analyze's).
CONFUSION_COLORMAP = "Blues"


@dataclass(frozen=True)
class ColourScale:
    """How one quantity's values become colours: the map, the range it spans, the colour bar's
    label, and values marked on the colour bar as (value, name)."""

    cmap: str
    vmin: float
    vmax: float
    label: str
    marks: tuple[tuple[float, str], ...] = ()

    def imshow_kwargs(self) -> dict:
        return {"cmap": self.cmap, "vmin": self.vmin, "vmax": self.vmax}

    def text_colour(self, value: float) -> str:
        """Black or white, whichever reads on the colour `value` gets."""
        import matplotlib

        fraction = (value - self.vmin) / (self.vmax - self.vmin)
        red, green, blue, _ = matplotlib.colormaps[self.cmap](float(np.clip(fraction, 0.0, 1.0)))
        return "black" if 0.299 * red + 0.587 * green + 0.114 * blue > 0.5 else "white"


def nonlocal_weight_scale(num_patches: int, weights=()) -> ColourScale:
    """The scale of a w_g figure drawing `weights` (any shape): 0 to the largest of them, at
    least 2/M, with the uniform weight 1/M marked. Nothing drawn is ever above the scale."""
    uniform = 1.0 / num_patches
    weights = np.asarray(weights, dtype=np.float64)
    largest = float(weights.max()) if weights.size else 0.0
    return ColourScale(WEIGHT_COLORMAP, 0.0, max(2.0 * uniform, largest), "w_g",
                       ((uniform, f"uniform 1/{num_patches}"),))


def local_weight_scale() -> ColourScale:
    """The scale of every w_l figure: a sigmoid's range, 0 to 1, so no weight is clipped."""
    return ColourScale(WEIGHT_COLORMAP, 0.0, 1.0, "w_l")


def confusion_scale() -> ColourScale:
    """The scale of every confusion matrix: row-normalised rates, 0 to 1."""
    return ColourScale(CONFUSION_COLORMAP, 0.0, 1.0, "share of the true class")


def add_colorbar(fig, mappable, scale: ColourScale, **kwargs):
    """A colour bar for `mappable` (drawn with `scale`), labelled, with the scale's marks drawn
    across it and named among its ticks. `kwargs` go to `fig.colorbar` (ax, fraction, ...)."""
    bar = fig.colorbar(mappable, label=scale.label, **kwargs)
    if scale.marks:
        span = scale.vmax - scale.vmin
        # Plain ticks too close to a mark would print over its name.
        ticks = [t for t in bar.get_ticks() if scale.vmin <= t <= scale.vmax
                 and all(abs(t - value) > 0.07 * span for value, _ in scale.marks)]
        labels = [f"{t:g}" for t in ticks]
        for value, name in scale.marks:
            bar.ax.axhline(value, color="white", lw=2.5)
            bar.ax.axhline(value, color="black", lw=1)
            ticks.append(value)
            labels.append(name)
        bar.set_ticks(ticks, labels=labels)
    return bar


def region_weight_map(weights: torch.Tensor, geom: PatchGeometry) -> np.ndarray:
    """Per-pixel weight: each pixel gets the mean weight of the windows covering it."""
    size = geom.image_size
    total = np.zeros((size, size))
    count = np.zeros((size, size))
    for m, (r, c) in enumerate(geom.origins()):
        total[r : r + geom.patch, c : c + geom.patch] += float(weights[m])
        count[r : r + geom.patch, c : c + geom.patch] += 1
    return total / count


def draw_weight_overlay(ax, image_u8: np.ndarray, weight_map: np.ndarray, num_patches: int, extent=None,
                        scale: ColourScale | None = None):
    """`weight_map` (per-pixel w_g, see region_weight_map) over `image_u8` on `ax`; `extent`
    (left, right, bottom, top) places it over a part of a larger image already drawn. `scale`:
    the figure's w_g scale (several overlays under one colour bar share one, made from all their
    weights); by default this map's own. Returns the mappable, for `add_colorbar`."""
    scale = scale or nonlocal_weight_scale(num_patches, weight_map)
    if extent is None:
        ax.imshow(image_u8)
    return ax.imshow(weight_map, alpha=0.45, extent=extent, **scale.imshow_kwargs())


def save_region_heatmap(image_u8: np.ndarray, weights, geom: PatchGeometry, path, title: str = "") -> None:
    """The face with its w_g overlaid, beside the n x n w_g with their values, under one colour bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    weights = torch.as_tensor(weights).float()
    scale = nonlocal_weight_scale(geom.num_patches, weights.numpy())
    fig, axes = plt.subplots(1, 2, figsize=(7, 3.2), layout="constrained")
    draw_weight_overlay(axes[0], image_u8, region_weight_map(weights, geom), geom.num_patches, scale=scale)
    axes[0].set_title(title or "non-local weights w_g")
    grid = weights.reshape(geom.grid, geom.grid).numpy()
    shown = axes[1].imshow(grid, **scale.imshow_kwargs())
    add_colorbar(fig, shown, scale, ax=axes, fraction=0.046, pad=0.02)
    for i in range(geom.grid):
        for j in range(geom.grid):
            axes[1].text(j, i, f"{grid[i, j]:.3f}", ha="center", va="center", fontsize=8,
                         color=scale.text_colour(grid[i, j]))
    axes[1].set_title(f"w_g per region ({geom.grid}x{geom.grid})")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)

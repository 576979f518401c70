"""Pictures of what the model attends to: w_g over the face (paper fig. 10)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .geometry import PatchGeometry


def region_weight_map(weights: torch.Tensor, geom: PatchGeometry) -> np.ndarray:
    """Per-pixel weight: each pixel gets the mean weight of the windows covering it."""
    size = geom.image_size
    total = np.zeros((size, size))
    count = np.zeros((size, size))
    for m, (r, c) in enumerate(geom.origins()):
        total[r : r + geom.patch, c : c + geom.patch] += float(weights[m])
        count[r : r + geom.patch, c : c + geom.patch] += 1
    return total / count


def nonlocal_weight_scale(num_patches: int) -> tuple[float, float]:
    """The fixed colour scale of w_g maps: 0 to 2/M, so the uniform weight 1/M sits mid-scale
    and the maps of different faces (and runs) compare by colour."""
    return 0.0, 2.0 / num_patches


#: The colour map of every weight picture (predict, analyze, README), so a colour means one weight everywhere.
WEIGHT_COLORMAP = "viridis"


def draw_weight_overlay(ax, image_u8: np.ndarray, weight_map: np.ndarray, num_patches: int, extent=None):
    """`weight_map` (per-pixel w_g, see region_weight_map) over `image_u8` on `ax`, on the w_g
    colour scale; `extent` (left, right, bottom, top) places it over a part of a larger image
    already drawn. Returns the mappable, for a colour bar."""
    vmin, vmax = nonlocal_weight_scale(num_patches)
    if extent is None:
        ax.imshow(image_u8)
    return ax.imshow(weight_map, cmap=WEIGHT_COLORMAP, alpha=0.45, vmin=vmin, vmax=vmax, extent=extent)


def save_region_heatmap(image_u8: np.ndarray, weights, geom: PatchGeometry, path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    weights = torch.as_tensor(weights).float()
    vmin, vmax = nonlocal_weight_scale(geom.num_patches)
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.6))
    draw_weight_overlay(axes[0], image_u8, region_weight_map(weights, geom), geom.num_patches)
    axes[0].set_title(title or "non-local weights w_g")
    grid = weights.reshape(geom.grid, geom.grid).numpy()
    shown = axes[1].imshow(grid, cmap=WEIGHT_COLORMAP, vmin=vmin, vmax=vmax)
    fig.colorbar(shown, ax=axes, fraction=0.046, pad=0.04, label=f"w_g (uniform = 1/{geom.num_patches})")
    for i in range(geom.grid):
        for j in range(geom.grid):
            axes[1].text(j, i, f"{grid[i, j]:.3f}", ha="center", va="center", fontsize=8, color="white")
    axes[1].set_title(f"w_g per region ({geom.grid}x{geom.grid})")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)

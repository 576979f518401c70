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


def save_region_heatmap(image_u8: np.ndarray, weights, geom: PatchGeometry, path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    weights = torch.as_tensor(weights).float()
    fig, axes = plt.subplots(1, 2, figsize=(7, 3.6))
    axes[0].imshow(image_u8)
    axes[0].imshow(region_weight_map(weights, geom), cmap="jet", alpha=0.45)
    axes[0].set_title(title or "non-local weights w_g")
    grid = weights.reshape(geom.grid, geom.grid).numpy()
    axes[1].imshow(grid, cmap="jet")
    for i in range(geom.grid):
        for j in range(geom.grid):
            axes[1].text(j, i, f"{grid[i, j]:.3f}", ha="center", va="center", fontsize=8, color="white")
    axes[1].set_title(f"w_g per region ({geom.grid}x{geom.grid})")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)

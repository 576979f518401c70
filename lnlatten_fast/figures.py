"""The paper's figures (confusion matrices, figs. 8-14) as matplotlib PNGs: arrays in, a file out.

Every w_g picture uses :func:`viz.nonlocal_weight_scale` (0 to 2/M, uniform mid-scale) and
every w_l picture 0 to 1 (a sigmoid), so figures of different faces and runs compare by
colour. `python -m lnlatten_fast.analyze` gathers the arrays from a run and calls these.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .geometry import PatchGeometry
from .viz import nonlocal_weight_scale

__all__ = ["confusion_matrix", "nonlocal_weight_grid", "nonlocal_weight_curves", "nonlocal_weight_snapshots", "local_weight_occlusion",
           "nonlocal_weights_by_alpha"]

_MAP = "viridis"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, dpi: int = 110) -> Path:
    """Write atomically (a temporary file, then rename), creating the folder."""
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    tmp.replace(path)
    return path


def _bare(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def _weight_grid(ax, weights: np.ndarray, grid: int, vmin: float, vmax: float, annotate: bool = True):
    shown = ax.imshow(np.asarray(weights).reshape(grid, grid), cmap=_MAP, vmin=vmin, vmax=vmax)
    if annotate and grid <= 6:
        for i in range(grid):
            for j in range(grid):
                value = weights[i * grid + j]
                ax.text(j, i, f"{value:.2f}" if vmax >= 0.5 else f"{value:.3f}", ha="center", va="center",
                        fontsize=6, color="white" if value < (vmin + vmax) / 2 else "black")
    _bare(ax)
    return shown


def confusion_matrix(confusion, class_names, path, title: str) -> Path:
    """Figs. 8-9: row-normalised rates with the counts beneath them (rows: true class)."""
    plt = _pyplot()
    counts = np.asarray(confusion, dtype=np.float64)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * n, 0.8 + 0.8 * n))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{rates[i, j]:.2f}\n{int(counts[i, j])}", ha="center", va="center", fontsize=7,
                    color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path, dpi=120)


def nonlocal_weight_grid(images: np.ndarray, w_g: np.ndarray, titles: list[str], geom: PatchGeometry, path) -> Path:
    """Fig. 10: each face above its n x n w_g, on one colour scale."""
    plt = _pyplot()
    count = len(images)
    columns = min(count, 8)
    rows = 2 * -(-count // columns)
    vmin, vmax = nonlocal_weight_scale(geom.num_patches)
    fig, axes = plt.subplots(rows, columns, figsize=(1.6 * columns + 1.2, 1.7 * rows), squeeze=False)
    shown = None
    for ax in axes.flat:
        ax.axis("off")
    for k in range(count):
        face, grid = axes[2 * (k // columns), k % columns], axes[2 * (k // columns) + 1, k % columns]
        face.axis("on"), grid.axis("on")
        face.imshow(images[k])
        face.set_title(titles[k], fontsize=7)
        _bare(face)
        shown = _weight_grid(grid, w_g[k], geom.grid, vmin, vmax)
    fig.suptitle(f"non-local weights w_g of {geom.num_patches} regions (fig. 10)")
    fig.colorbar(shown, ax=axes, fraction=0.02, pad=0.02, label=f"w_g (uniform = 1/{geom.num_patches})")
    return _save(fig, path)


def nonlocal_weight_curves(steps: np.ndarray, w_g: np.ndarray, titles: list[str], geom: PatchGeometry, path) -> Path:
    """Fig. 12: each probe's M weights against the training step. `w_g` is (T, P, M)."""
    plt = _pyplot()
    probes = w_g.shape[1]
    columns = min(probes, 4)
    rows = -(-probes // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False, sharey=True)
    colours = plt.get_cmap("tab20" if geom.num_patches <= 20 else "viridis")(np.linspace(0, 1, geom.num_patches))
    for ax in axes.flat[probes:]:
        ax.axis("off")
    for p in range(probes):
        ax = axes.flat[p]
        for m, (r, c) in enumerate(geom.origins()):
            ax.plot(steps, w_g[:, p, m], color=colours[m], lw=1,
                    label=f"({m // geom.grid + 1},{m % geom.grid + 1})")
        ax.axhline(1.0 / geom.num_patches, color="black", ls="--", lw=0.8)
        ax.set_title(titles[p], fontsize=8)
        ax.set_xlabel("training step")
        if p % columns == 0:
            ax.set_ylabel("w_g")
    if geom.num_patches <= 20:
        axes.flat[0].legend(title="patch (row, col)", fontsize=5, title_fontsize=6, ncol=2, loc="upper left")
    fig.suptitle("w_g of each region over training (fig. 12); dashed: uniform 1/M")
    fig.tight_layout()
    return _save(fig, path)


def nonlocal_weight_snapshots(images: np.ndarray, steps: np.ndarray, w_g: np.ndarray, geom: PatchGeometry,
                              path, snapshots: int = 6) -> Path:
    """Fig. 11: each probe face, then its w_g at `snapshots` moments of training and at the end."""
    plt = _pyplot()
    chosen = np.unique(np.linspace(0, len(steps) - 1, snapshots + 1).round().astype(int))
    probes = len(images)
    vmin, vmax = nonlocal_weight_scale(geom.num_patches)
    fig, axes = plt.subplots(probes, len(chosen) + 1, figsize=(1.6 * (len(chosen) + 1) + 1.2, 1.7 * probes),
                             squeeze=False)
    shown = None
    for p in range(probes):
        axes[p, 0].imshow(images[p])
        _bare(axes[p, 0])
        for k, t in enumerate(chosen, start=1):
            shown = _weight_grid(axes[p, k], w_g[t, p], geom.grid, vmin, vmax, annotate=False)
            if p == 0:
                axes[p, k].set_title("final" if t == len(steps) - 1 else f"step {int(steps[t])}", fontsize=7)
    fig.suptitle("w_g while training (fig. 11)")
    fig.colorbar(shown, ax=axes, fraction=0.02, pad=0.02, label=f"w_g (uniform = 1/{geom.num_patches})")
    return _save(fig, path)


def local_weight_occlusion(image: np.ndarray, occluded: np.ndarray, w_l: np.ndarray, w_l_occluded: np.ndarray,
                           geom: PatchGeometry, path, title: str = "") -> Path:
    """Fig. 13: the face and its w_l, then each copy with one patch greyed and its w_l (the
    greyed patch outlined in red)."""
    from matplotlib.patches import Rectangle

    plt = _pyplot()
    m = geom.num_patches
    columns = min(m + 1, 9)
    blocks = -(-(m + 1) // columns)
    fig, axes = plt.subplots(2 * blocks, columns, figsize=(1.5 * columns + 1.2, 1.6 * 2 * blocks), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    shown = None
    for k in range(m + 1):
        face = axes[2 * (k // columns), k % columns]
        grid = axes[2 * (k // columns) + 1, k % columns]
        face.axis("on"), grid.axis("on")
        face.imshow(image if k == 0 else occluded[k - 1])
        face.set_title("original" if k == 0 else f"patch {k} grey", fontsize=7)
        _bare(face)
        shown = _weight_grid(grid, w_l if k == 0 else w_l_occluded[k - 1], geom.grid, 0.0, 1.0)
        if k:
            r, c = divmod(k - 1, geom.grid)
            grid.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, edgecolor="red", lw=1.5))
    fig.suptitle(title or "local weights w_l with one patch occluded (fig. 13)")
    fig.colorbar(shown, ax=axes, fraction=0.02, pad=0.02, label="w_l")
    return _save(fig, path)


def nonlocal_weights_by_alpha(alphas: list[float], w_g: list[np.ndarray], path) -> Path:
    """Fig. 14: the spread of w_g for each α. `w_g[i]` is (images, M) of the run with alphas[i]."""
    plt = _pyplot()
    order = np.argsort(alphas)
    alphas = [alphas[i] for i in order]
    w_g = [np.asarray(w_g[i]) for i in order]
    m = w_g[0].shape[1]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.boxplot([w.ravel() for w in w_g], showfliers=False)
    left.set_xticks(range(1, len(alphas) + 1), [f"{a:g}" for a in alphas])
    left.axhline(1.0 / m, color="black", ls="--", lw=0.8, label="uniform 1/M")
    left.set_xlabel("α")
    left.set_ylabel("w_g")
    left.set_title("w_g of every probe region")
    left.legend(fontsize=8)
    # Per image: how far w_g is from uniform (M * std: 0 when equal) and from itself across
    # images (how "random" the choice of regions is).
    spread = [float((m * w.std(axis=1)).mean()) for w in w_g]
    disagreement = [float((m * w.std(axis=0)).mean()) for w in w_g]
    right.plot(alphas, spread, "o-", label="within a face: M·std over regions")
    right.plot(alphas, disagreement, "s-", label="across faces: M·std over images")
    right.set_xlabel("α")
    right.set_ylabel("spread of w_g (0 = uniform)")
    right.set_title("how unequal w_g is")
    right.legend(fontsize=8)
    fig.suptitle("non-local weights at different α (fig. 14)")
    fig.tight_layout()
    return _save(fig, path)

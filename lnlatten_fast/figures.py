"""The paper's figures (confusion matrices, figs. 8-14) as matplotlib PNGs: arrays in, a file out.

Colours follow :mod:`viz`'s one rule per quantity (w_g: viridis, 0 to the figure's largest
weight and at least 2/M, uniform 1/M marked on the colour bar; w_l: viridis, 0 to 1; confusion:
Blues, 0 to 1). Figures are sized to be read at their own pixel size, about as wide as a README
page shows (:data:`PAGE_WIDTH` inches at :data:`DPI`). `python -m lnlatten_fast.analyze` gathers
the arrays from a run and calls these.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .geometry import PatchGeometry
from .viz import add_colorbar, confusion_scale, local_weight_scale, nonlocal_weight_scale

__all__ = ["confusion_matrix", "nonlocal_weight_grid", "nonlocal_weight_curves", "nonlocal_weight_snapshots",
           "local_weight_occlusion", "nonlocal_weights_by_alpha", "PAGE_WIDTH", "DPI"]

#: The widest a figure is drawn (inches): at DPI, about the width a README page shows an image at.
PAGE_WIDTH = 8.2
DPI = 110
#: Points; the smallest text a figure uses, legible at the figure's own pixel size.
SMALL_TEXT = 7.5

# One line style per region column (figs. 12): with one colour per region row, M regions get M
# distinct (colour, style) pairs for grids up to len(_COLUMN_STYLES) x 10.
_COLUMN_STYLES = ("-", "--", ":", "-.", (0, (5, 1.5, 1, 1.5, 1, 1.5)), (0, (8, 2)))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    """Write atomically (a temporary file, then rename), creating the folder; the margins are
    cropped to what is drawn."""
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=DPI, bbox_inches="tight", pad_inches=0.06)
    plt.close(fig)
    tmp.replace(path)
    return path


def _bare(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def _offsets(count: int, cell: float, start: float, gap: float, gaps: dict[int, float]) -> list[float]:
    """Where each of `count` panels `cell` wide begins, `gap` apart (gaps[i] after panel i)."""
    starts = [start]
    for i in range(1, count):
        starts.append(starts[-1] + cell + gaps.get(i - 1, gap))
    return starts


def _panel_grid(rows: int, columns: int, cell: float, *, left: float, top: float, gap: float = 0.06,
                row_gaps: dict[int, float] | None = None, column_gaps: dict[int, float] | None = None,
                right: float = 0.0, bottom: float = 0.05):
    """A figure of rows x columns square panels `cell` inches wide, `gap` inches apart (other
    gaps after the rows and columns in `row_gaps` and `column_gaps`), with margins in inches: no
    space is left over. Returns (fig, axes (rows, columns), the right edge of the panels in inches)."""
    plt = _pyplot()
    xs = _offsets(columns, cell, left, gap, column_gaps or {})
    ys = _offsets(rows, cell, top, gap, row_gaps or {})  # from the top
    width, height = xs[-1] + cell + right, ys[-1] + cell + bottom
    fig = plt.figure(figsize=(width, height))
    axes = np.empty((rows, columns), dtype=object)
    for r in range(rows):
        for c in range(columns):
            axes[r, c] = fig.add_axes((xs[c] / width, (height - ys[r] - cell) / height, cell / width, cell / height))
    return fig, axes, xs[-1] + cell


def _colorbar_beside(fig, mappable, scale, panels_right: float, top: float, bottom: float):
    """A colour bar right of the panels, as tall as they are."""
    width, height = fig.get_size_inches()
    bar = fig.add_axes(((panels_right + 0.15) / width, bottom / height, 0.14 / width, (height - top - bottom) / height))
    return add_colorbar(fig, mappable, scale, cax=bar)


def _weight_grid(ax, weights: np.ndarray, grid: int, scale, annotate: bool = True):
    weights = np.asarray(weights)
    shown = ax.imshow(weights.reshape(grid, grid), **scale.imshow_kwargs())
    if annotate:
        for i in range(grid):
            for j in range(grid):
                value = weights[i * grid + j]
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=SMALL_TEXT - 1.5 * (grid > 4),
                        color=scale.text_colour(value))
    _bare(ax)
    return shown


def confusion_matrix(confusion, class_names, path, title: str) -> Path:
    """Figs. 8-9: row-normalised rates with the counts beneath them (rows: true class)."""
    plt = _pyplot()
    counts = np.asarray(confusion, dtype=np.float64)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    scale = confusion_scale()
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(1.4 + 0.62 * n, 1.2 + 0.62 * n), layout="constrained")
    ax.imshow(rates, **scale.imshow_kwargs())
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{rates[i, j]:.2f}\n{int(counts[i, j])}", ha="center", va="center", fontsize=SMALL_TEXT,
                    color=scale.text_colour(rates[i, j]))
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted class (each cell: share of its row, count)")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def nonlocal_weight_grid(images: np.ndarray, w_g: np.ndarray, titles: list[str], geom: PatchGeometry, path) -> Path:
    """Fig. 10: each face above its n x n w_g (values written in), under one colour scale."""
    count = len(images)
    columns = min(count, 4)
    blocks = -(-count // columns)
    cell, title_space = 1.55, 0.42
    scale = nonlocal_weight_scale(geom.num_patches, w_g[:count])
    top = 0.45 + title_space
    # Room for the faces' titles between a block's grids and the next block's faces.
    fig, axes, right = _panel_grid(2 * blocks, columns, cell, left=0.05, top=top, gap=0.08,
                                   row_gaps={2 * b + 1: title_space for b in range(blocks - 1)})
    shown = None
    for ax in axes.flat:
        ax.axis("off")
    for k in range(count):
        face, grid = axes[2 * (k // columns), k % columns], axes[2 * (k // columns) + 1, k % columns]
        face.axis("on"), grid.axis("on")
        face.imshow(images[k], interpolation="nearest")
        face.set_title(titles[k], fontsize=SMALL_TEXT + 0.5)
        _bare(face)
        shown = _weight_grid(grid, w_g[k], geom.grid, scale)
    fig.suptitle(f"non-local weights w_g of the {geom.num_patches} regions (fig. 10)", y=1 - 0.2 / fig.get_figheight(),
                 va="top", fontsize=11)
    _colorbar_beside(fig, shown, scale, right, top, 0.05)
    return _save(fig, path)


def _region_styles(grid: int) -> list[dict]:
    """Line properties of the grid x grid regions, row-major: colour from the region's row,
    line style from its column, so every region of a panel is told apart and its place on the
    face read off."""
    import matplotlib

    palette = matplotlib.colormaps["tab10"].colors
    return [{"color": palette[r % len(palette)], "linestyle": _COLUMN_STYLES[c % len(_COLUMN_STYLES)]}
            for r in range(grid) for c in range(grid)]


def nonlocal_weight_curves(steps: np.ndarray, w_g: np.ndarray, titles: list[str], geom: PatchGeometry, path) -> Path:
    """Fig. 12: one panel per probe face, its M weights against the training step, and one
    legend laid out as the region grid. `w_g` is (T, P, M)."""
    plt = _pyplot()
    probes = w_g.shape[1]
    columns = min(probes, 4)
    rows = -(-probes // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(PAGE_WIDTH, 1.75 * rows + 1.0 + 0.2 * geom.grid),
                             squeeze=False, sharex=True, sharey=True, layout="constrained")
    for ax in axes.flat[probes:]:
        ax.remove()
    styles = _region_styles(geom.grid)
    lines = []
    for p in range(probes):
        ax = axes.flat[p]
        ax.axhline(1.0 / geom.num_patches, color="0.75", lw=3, zorder=0)
        lines = [ax.plot(steps, w_g[:, p, m], lw=1.1, **styles[m])[0] for m in range(geom.num_patches)]
        ax.set_title(titles[p], fontsize=SMALL_TEXT + 0.5)
        ax.tick_params(labelsize=SMALL_TEXT)
        ax.grid(alpha=0.25)
    for ax in axes[-1] if probes % columns == 0 else axes.flat[probes - columns:probes]:
        ax.set_xlabel("training step", fontsize=SMALL_TEXT + 0.5)
        ax.xaxis.set_tick_params(labelbottom=True)
    for ax in axes[:, 0]:
        ax.set_ylabel("w_g", fontsize=SMALL_TEXT + 0.5)
    # The legend's rows and columns are the face's: matplotlib fills a legend column by column.
    order = [r * geom.grid + c for c in range(geom.grid) for r in range(geom.grid)]
    fig.legend([lines[m] for m in order], [f"({m // geom.grid + 1},{m % geom.grid + 1})" for m in order],
               loc="outside lower center", ncols=geom.grid, fontsize=SMALL_TEXT, handlelength=3.2,
               title="region (row, column), laid out as on the face: colour = row, line = column",
               title_fontsize=SMALL_TEXT + 0.5)
    fig.suptitle(f"w_g of each region over training (fig. 12); grey band: uniform 1/{geom.num_patches}",
                 fontsize=10)
    return _save(fig, path)


def nonlocal_weight_snapshots(images: np.ndarray, steps: np.ndarray, w_g: np.ndarray, geom: PatchGeometry,
                              path, row_labels: list[str] | None = None, snapshots: int = 6) -> Path:
    """Fig. 11: one row per probe face (labelled `row_labels`): the face, then its w_g at
    `snapshots` moments of training and at the end, under one colour scale."""
    chosen = np.unique(np.linspace(0, len(steps) - 1, snapshots + 1).round().astype(int))
    probes = len(images)
    scale = nonlocal_weight_scale(geom.num_patches, w_g[chosen][:, :probes])
    left, top, gap = 1.05, 0.75, 0.06
    columns = len(chosen) + 1
    cell = min(0.85, (PAGE_WIDTH - left - 1.3 - columns * gap) / columns)  # 1.3: the colour bar and its ticks
    fig, axes, right = _panel_grid(probes, columns, cell, left=left, top=top, gap=gap, column_gaps={0: 0.16})
    shown = None
    for p in range(probes):
        axes[p, 0].imshow(images[p], interpolation="nearest")
        _bare(axes[p, 0])
        if row_labels is not None:
            axes[p, 0].set_ylabel(row_labels[p], rotation=0, ha="right", va="center", fontsize=SMALL_TEXT + 0.5,
                                  labelpad=4)
        for k, t in enumerate(chosen, start=1):
            shown = _weight_grid(axes[p, k], w_g[t, p], geom.grid, scale, annotate=False)
    axes[0, 0].set_title("face", fontsize=SMALL_TEXT + 1)
    for k, t in enumerate(chosen, start=1):
        axes[0, k].set_title(("final\n" if t == len(steps) - 1 else "step\n") + f"{int(steps[t])}",
                             fontsize=SMALL_TEXT + 1)
    fig.suptitle("w_g while training (fig. 11)", y=1 - 0.12 / fig.get_figheight(), va="top", fontsize=11)
    _colorbar_beside(fig, shown, scale, right, top, 0.05)
    return _save(fig, path)


def local_weight_occlusion(image: np.ndarray, occluded: np.ndarray, w_l: np.ndarray, w_l_occluded: np.ndarray,
                           geom: PatchGeometry, path, title: str = "") -> Path:
    """Fig. 13: the face and its w_l, then w_l with each patch greyed in turn (the greyed patch
    outlined in red; `occluded[0]` shows what greying looks like)."""
    from matplotlib.patches import Rectangle

    m = geom.num_patches
    panels = m + 3  # the face, one greyed copy, the clean w_l, then M occluded w_l
    rows = -(-panels // 6)
    columns = -(-panels // rows)  # rows as evenly filled as 6 columns at most allow
    scale = local_weight_scale()
    top, gap = 0.6, 0.08
    cell = min(1.25, (PAGE_WIDTH - 1.0 - (columns - 1) * gap) / columns)
    # The gaps between rows hold the panels' titles.
    fig, axes, right = _panel_grid(rows, columns, cell, left=0.05, top=top, gap=gap,
                                   row_gaps={r: 0.3 for r in range(rows)})
    for ax in axes.flat:
        ax.axis("off")
    flat = axes.flat
    for ax, picture, name in ((flat[0], image, "the face"), (flat[1], occluded[0], "patch (1,1) greyed")):
        ax.axis("on")
        ax.imshow(picture, interpolation="nearest")
        ax.set_title(name, fontsize=SMALL_TEXT + 0.5)
        _bare(ax)
    shown = None
    for k in range(m + 1):
        ax = flat[k + 2]
        ax.axis("on")
        shown = _weight_grid(ax, w_l if k == 0 else w_l_occluded[k - 1], geom.grid, scale)
        if k:
            r, c = divmod(k - 1, geom.grid)
            ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, edgecolor="red", lw=2))
            ax.set_title(f"({r + 1},{c + 1}) greyed", fontsize=SMALL_TEXT + 0.5)
        else:
            ax.set_title("w_l, nothing greyed", fontsize=SMALL_TEXT + 0.5)
    fig.suptitle(title or "local weights w_l with one patch occluded (fig. 13)", y=1 - 0.1 / fig.get_figheight(),
                 va="top", fontsize=10)
    _colorbar_beside(fig, shown, scale, right, top, 0.05)
    return _save(fig, path)


def nonlocal_weights_by_alpha(alphas: list[float], w_g: list[np.ndarray], path) -> Path:
    """Fig. 14: the spread of w_g for each α. `w_g[i]` is (images, M) of the run with alphas[i];
    every run has the same M."""
    plt = _pyplot()
    order = np.argsort(alphas)
    alphas = [alphas[i] for i in order]
    w_g = [np.asarray(w_g[i]) for i in order]
    m = w_g[0].shape[1]
    fig, (left, right) = plt.subplots(1, 2, figsize=(PAGE_WIDTH, 3.3), layout="constrained")
    left.boxplot([w.ravel() for w in w_g], showfliers=False)
    left.set_xticks(range(1, len(alphas) + 1), [f"{a:g}" for a in alphas])
    left.axhline(1.0 / m, color="black", ls="--", lw=0.8, label=f"uniform 1/{m}")
    left.set_xlabel("α")
    left.set_ylabel("w_g")
    left.set_title("w_g of every probe region", fontsize=9)
    left.legend(fontsize=SMALL_TEXT)
    # Per image: how far w_g is from uniform (M * std: 0 when equal) and from itself across
    # images (how "random" the choice of regions is).
    spread = [float((m * w.std(axis=1)).mean()) for w in w_g]
    disagreement = [float((m * w.std(axis=0)).mean()) for w in w_g]
    right.plot(alphas, spread, "o-", label="within a face: M·std over regions")
    right.plot(alphas, disagreement, "s-", label="across faces: M·std over images")
    right.set_xlabel("α")
    right.set_ylabel("spread of w_g (0 = uniform)")
    right.set_title("how unequal w_g is", fontsize=9)
    right.legend(fontsize=SMALL_TEXT)
    fig.suptitle("non-local weights at different α (fig. 14)", fontsize=10)
    return _save(fig, path)

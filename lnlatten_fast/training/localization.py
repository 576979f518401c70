"""Does the model find the crucial regions without landmarks? Measured on the synthetic faces,
whose ground truth marks the eyes, brows and mouth of every image.

The paper shows this only by eye (figs. 10-13). Here it is three numbers:

- ``crucial_mass_ratio``: the share of w_g's mass on the patches that overlap a crucial region,
  divided by the share uniform weights would give them (|crucial| / M); 1 is no preference. Its
  ceiling, all mass on the crucial patches, is M / |crucial| and is reported beside it
  (``crucial_mass_ratio_ceiling``): on faces that fill the image most windows touch a cue.
- ``crucial_rank_corr``: Spearman's correlation between w_g and each patch's crucial-region
  area (pixels), averaged over the images.
- ``occlusion_selectivity``: the mean drop of a patch's w_l when that patch is filled with grey,
  divided by the mean drop of the other patches' w_l (paper fig. 13: an obscured patch's weight
  falls, the others stay). Both drops are reported beside it.

Every figure is a mean over images of a per-image value, so the numbers of runs of different
lengths and datasets compare. A figure the images cannot define is None (null in summary.json,
"undefined" in summary.md): the ratios when every patch touches a cue (always so at M = 1), the
correlation when w_g or the cue areas are constant, the others' drop when there is no other patch.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..geometry import PatchGeometry
from .inference import predict

__all__ = [
    "OCCLUSION_FILL", "patch_areas", "spearman", "crucial_mass_ratio", "crucial_rank_corr", "occluded_copies",
    "occlusion_drops", "measure", "summary_lines",
]

#: The grey an occluded patch is filled with (uint8 RGB), as the synthetic occluders' grey.
OCCLUSION_FILL = 128
#: Images per forward pass.
BATCH = 64


def patch_areas(mask: np.ndarray, geom: PatchGeometry) -> np.ndarray:
    """(N, S, S) bool -> (N, M): how many pixels of each window the mask covers."""
    mask = np.asarray(mask, dtype=bool)
    return np.stack([mask[:, r:r + geom.patch, c:c + geom.patch].sum(axis=(1, 2)) for r, c in geom.origins()], axis=1)


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1 along the last axis; ties get their mean rank (as Spearman's rho needs)."""
    order = np.argsort(values, axis=-1, kind="stable")
    ranks = np.empty(values.shape, dtype=np.float64)
    np.put_along_axis(ranks, order, np.arange(values.shape[-1], dtype=np.float64)[None].repeat(len(values), 0), -1)
    for row in range(len(values)):
        uniques, inverse = np.unique(values[row], return_inverse=True)
        if len(uniques) < values.shape[-1]:
            sums = np.bincount(inverse, weights=ranks[row])
            ranks[row] = (sums / np.bincount(inverse))[inverse]
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman's rho of each row pair of (N, M) arrays; NaN where either row is constant."""
    ra, rb = _ranks(np.asarray(a, dtype=np.float64)), _ranks(np.asarray(b, dtype=np.float64))
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    denominator = np.sqrt((ra**2).sum(axis=1) * (rb**2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (ra * rb).sum(axis=1) / denominator, np.nan)


def crucial_mass_ratio(w_g: np.ndarray, areas: np.ndarray) -> tuple[float, float]:
    """(mean ratio, mean ceiling) over the images with at least one crucial and one other patch
    (in the rest every weighting gives 1)."""
    crucial = areas > 0
    count = crucial.sum(axis=1)
    keep = (count > 0) & (count < areas.shape[1])
    if not keep.any():
        return float("nan"), float("nan")
    uniform_share = count[keep] / areas.shape[1]
    share = np.where(crucial, w_g, 0.0).sum(axis=1)[keep]
    return float(np.mean(share / uniform_share)), float(np.mean(1.0 / uniform_share))


def crucial_rank_corr(w_g: np.ndarray, areas: np.ndarray) -> float:
    rho = spearman(w_g, areas)
    return float(np.nanmean(rho)) if np.isfinite(rho).any() else float("nan")


def occluded_copies(image: np.ndarray, geom: PatchGeometry) -> np.ndarray:
    """(S, S, 3) uint8 -> (M, S, S, 3): the image with window m filled grey, for each m."""
    copies = np.repeat(image[None], geom.num_patches, axis=0)
    for m, (r, c) in enumerate(geom.origins()):
        copies[m, r:r + geom.patch, c:c + geom.patch] = OCCLUSION_FILL
    return copies


def _defined(value: float) -> float | None:
    return value if np.isfinite(value) else None


def _weights(model, images_u8: np.ndarray, device, precision: str) -> tuple[np.ndarray, np.ndarray]:
    """(w_g, w_l) as numpy, BATCH images at a time."""
    _, w_g, w_l = predict(model, images_u8, device, precision, batch_size=BATCH)
    return w_g.numpy(), w_l.numpy()


def occlusion_drops(model, images_u8: np.ndarray, clean_w_l: np.ndarray, device, precision: str = "fp32") -> np.ndarray:
    """(N, M, M): entry [i, j, k] is how much patch k's w_l (`clean_w_l[i, k]` unoccluded)
    falls when patch j of image i is occluded (positive: it fell)."""
    drops = []
    for image, base in zip(images_u8, clean_w_l):
        _, occluded = _weights(model, occluded_copies(image, model.geometry), device, precision)
        drops.append(base[None, :] - occluded)
    return np.stack(drops)


def measure(model, images_u8: np.ndarray, regions: np.ndarray, device, precision: str = "fp32",
            occlusion_images: int = 56) -> dict:
    """The localisation figures of `model` on images with their region masks (REGION_CODES;
    anything but 0 is crucial). The occlusion test runs on the first `occlusion_images`."""
    was_training = model.training
    model.eval()
    try:
        geom = model.geometry
        areas = patch_areas(regions > 0, geom)
        w_g, w_l = _weights(model, images_u8, device, precision)
        ratio, ceiling = crucial_mass_ratio(w_g, areas)
        result = {
            "images": int(len(images_u8)),
            "crucial_patches_mean": float((areas > 0).sum(axis=1).mean()),
            "crucial_mass_ratio": _defined(ratio),
            "crucial_mass_ratio_ceiling": _defined(ceiling),
            "crucial_rank_corr": _defined(crucial_rank_corr(w_g, areas)),
        }
        if model.local_attention is None:  # w_l is 1 everywhere: nothing to measure
            return dict(result, occlusion_selectivity=None)
        drops = occlusion_drops(model, images_u8[:occlusion_images], w_l[:occlusion_images], device, precision)
        own = np.diagonal(drops, axis1=1, axis2=2)
        own_mean, others_mean = float(own.mean()), None
        if geom.num_patches > 1:  # one patch has no others to compare it with
            others_mean = float(((drops.sum(axis=2) - own) / (geom.num_patches - 1)).mean())
        return dict(
            result,
            occlusion_images=int(len(drops)),
            occlusion_own_drop=own_mean,
            occlusion_other_drop=others_mean,
            # A ratio of drops is only meaningful when the others' drop is positive.
            occlusion_selectivity=own_mean / others_mean if others_mean is not None and others_mean > 0 else None,
        )
    finally:
        model.train(was_training)


def _w_l_change(whose: str, drop: float) -> str:
    """How occlusion moved `whose` w_l, by `drop` (occlusion_drops' sign: positive, it fell)."""
    amount = f"{abs(drop):.4f}"
    if float(amount) == 0:
        return f"leaves {whose} w_l unchanged (to 4 decimals)"
    return f"{'lowers' if drop > 0 else 'raises'} {whose} w_l by {amount}"


def summary_lines(found: dict, strong: Callable[[str], str] = lambda text: f"**{text}**") -> list[str]:
    """The figures of `measure` as the summary's bullet lines ("undefined" where one is None),
    the headline figures passed through `strong` (Markdown bold by default; `str` for plain text)."""
    def shown(key: str, form: str = ".2f", suffix: str = "") -> str:
        return "undefined" if found.get(key) is None else f"{found[key]:{form}}{suffix}"

    if found["crucial_mass_ratio"] is None:
        preference = ("w_g's preference for the patches that touch a cue is undefined (no face has both such "
                      "patches and others)")
    else:
        ratio = strong(f"{found['crucial_mass_ratio']:.2f}x")
        preference = (f"w_g puts {ratio} the uniform share of its mass on the "
                      f"{found['crucial_patches_mean']:.1f} patches that touch a cue (ceiling "
                      f"{shown('crucial_mass_ratio_ceiling', suffix='x')})")
    lines = [
        f"- localisation on {found['images']} test faces (ground-truth eyes, brows, mouth): {preference}; "
        f"Spearman(w_g, cue area) {shown('crucial_rank_corr')}",
    ]
    if "occlusion_own_drop" in found:
        selectivity = found["occlusion_selectivity"]
        others = found["occlusion_other_drop"]
        lines.append(
            f"- occluding a patch {_w_l_change('its own', found['occlusion_own_drop'])}"
            + ("" if others is None else " and " + _w_l_change("the others'", others))
            + " on average: selectivity "
            + (strong(f"{selectivity:.2f}") if selectivity is not None
               else "undefined (there are no other patches)" if others is None
               else "undefined (the others' w_l did not fall)")
        )
    return lines

"""`python -m lnlatten_fast.predict IMAGE... --checkpoint RUN`: top-3 expressions, and each
region's non-local weight w_g and local weight w_l (row-major, rows separated by |).

An IMAGE may be a folder: every image file directly in it, by name. --checkpoint may be the run
directory itself: its best.pt, or its last.pt with --which last.

Without --detect-faces each image is taken to be a face crop, as the training images are. With
it, OpenCV's face detector (the detect extra) finds every face in the photo; each is cropped as
the training images frame a face and classified on its own. An image in which no face is found
gets one line saying so, and no heat map; the others go on, and the exit status stays 0.

--heatmap OUT.png overlays the non-local weights w_g (one cell per local region) on each face,
on the one colour scale of every weight picture, with a colour bar; with --detect-faces it is
the whole photo, each face's crop boxed and labelled with its top expression.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import cli
from .data.faces import DetectorMissingError
from .training.inference import checkpoint_file, predict_files
from .training.photos import Photo, predict_photos
from .viz import add_colorbar, draw_weight_overlay, nonlocal_weight_scale, region_weight_map, save_region_heatmap

#: Why a photo can hold a face the detector does not report, said where none is found.
NO_FACE_HINT = ("the detector finds upright, roughly frontal faces of at least 24x24 pixels; "
                "without --detect-faces the whole image is classified as one face")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lnlatten_fast.predict", description=__doc__.split("\n\n")[0])
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="image files (any size; resized like the training data), or folders: every image file "
                        "directly in one, by name")
    cli.add_checkpoint_flags(p)
    p.add_argument("--detect-faces", action="store_true",
                   help="find the faces in each photo (OpenCV's Haar cascade, the detect extra) and classify each "
                        "one, cropped as the training faces are (a photo without one gets a line saying so); without it "
                        "each image is taken to be one face crop")
    p.add_argument("--heatmap", default=None, metavar="OUT.png",
                   help="write the w_g overlay here (several images: OUT-<i>.png); with --detect-faces the whole "
                        "photo, every face boxed and labelled")
    cli.add_device_flag(p)
    p.add_argument("--top", type=int, default=3,
                   help="how many of the most probable expressions to print, 1 to 7 (default: 3)")
    return p


def heatmap_path(template: str, index: int, count: int) -> Path:
    """--heatmap OUT.png itself for one image, OUT-<index>.png for several."""
    out = Path(template)
    return out if count == 1 else out.with_name(f"{out.stem}-{index}{out.suffix or '.png'}")


HEATMAP_FORMATS = (".png", ".jpg", ".jpeg", ".pdf", ".svg")

#: Width of the annotated photo in inches: fonts and lines are sized against it, so they keep
#: their share of the picture whatever the photo's resolution.
_PHOTO_FIGURE_INCHES = 8.0
#: The annotated photo keeps the photo's own pixels, but is drawn at least this wide, so a small
#: photo's labels stay legible.
_PHOTO_MIN_WIDTH = 768
#: The colour bar's backdrop on the annotated photo: (width, height), fractions of the photo's.
_BAR_BACKDROP = (0.20, 0.42)


def colour_bar_corner(boxes, width: int, height: int) -> tuple[float, float]:
    """Where the colour bar's backdrop goes on a `width` x `height` photo, as (left, bottom) in
    fractions of the photo: the first of the lower right, lower left, upper right and upper left
    corners that overlaps none of `boxes` (x, y, w, h in pixels), else the one overlapping least."""
    span_x, span_y = _BAR_BACKDROP
    corners = [(0.98 - span_x, 0.02), (0.02, 0.02), (0.98 - span_x, 0.98 - span_y), (0.02, 0.98 - span_y)]

    def covered(corner) -> float:
        left, right = corner[0] * width, (corner[0] + span_x) * width
        top, bottom = (1 - corner[1] - span_y) * height, (1 - corner[1]) * height
        return sum(max(0.0, min(right, x + w) - max(left, x)) * max(0.0, min(bottom, y + h) - max(top, y))
                   for x, y, w, h in boxes)

    return min(corners, key=covered)  # min keeps the first of equals: the first uncovered corner


def save_photo_heatmap(photo: Photo, geometry, path) -> None:
    """`photo` with each face's crop boxed, labelled "<n>: <top class> <probability>" and overlaid
    with its w_g map, and a colour bar; the picture has the photo's aspect ratio, and its size
    when the photo is at least _PHOTO_MIN_WIDTH (768) pixels wide."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import patheffects
    from matplotlib.patches import Rectangle

    height, width = photo.image.shape[:2]
    fig = plt.figure(figsize=(_PHOTO_FIGURE_INCHES, _PHOTO_FIGURE_INCHES * height / width),
                     dpi=max(width, _PHOTO_MIN_WIDTH) / _PHOTO_FIGURE_INCHES)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(photo.image)
    # One scale for every face in the photo, so their colours compare under the one colour bar.
    scale = nonlocal_weight_scale(geometry.num_patches, [face.nonlocal_weights.numpy() for face in photo.faces])
    shown = None
    for number, face in enumerate(photo.faces, 1):
        x, y, w, h = face.crop_box
        shown = draw_weight_overlay(ax, photo.image, region_weight_map(face.nonlocal_weights, geometry),
                                    geometry.num_patches, extent=(x, x + w, y + h, y), scale=scale)
        # White with a black rim: visible on light and dark backgrounds alike.
        ax.add_patch(Rectangle((x, y), w, h, fill=False, edgecolor="white", linewidth=1.5,
                               path_effects=[patheffects.withStroke(linewidth=3, foreground="black")]))
        name, probability = face.ranked[0]
        above = y > 0.06 * height  # room for the label above the box, else below it
        ax.text(x, y if above else y + h, f"{number}: {name} {probability:.2f}", fontsize=11,
                va="bottom" if above else "top", ha="left", color="black",
                bbox=dict(facecolor="white", alpha=0.85, edgecolor="none", pad=2))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_axis_off()
    if shown is not None:
        # The colour bar sits inside the photo, on a pale backdrop, so the picture keeps the photo's
        # shape: in the first corner whose backdrop covers no face, else the one covering least.
        left, bottom = colour_bar_corner([face.crop_box for face in photo.faces], width, height)
        ax.add_patch(Rectangle((left, bottom), *_BAR_BACKDROP, transform=ax.transAxes, facecolor="white", alpha=0.8,
                               edgecolor="none"))
        bar_axes = ax.inset_axes((left + 0.045, bottom + 0.03, 0.025, _BAR_BACKDROP[1] - 0.06))
        add_colorbar(fig, shown, scale, cax=bar_axes)
        bar_axes.yaxis.set_label_position("left")
        bar_axes.tick_params(labelsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def print_weights(nonlocal_weights, local_weights, grid: int, indent: str = "  ") -> None:
    for label, weights in (("w_g", nonlocal_weights), ("w_l", local_weights)):
        rows = weights.reshape(grid, grid).tolist()
        print(f"{indent}{label} ({grid}x{grid}): " + " | ".join(" ".join(f"{w:.3f}" for w in row) for row in rows))


def ranked_text(ranked) -> str:
    return ", ".join(f"{name} {p:.3f}" for name, p in ranked)


def predict_crops(args) -> None:
    """Each image as one face crop."""
    found = predict_files(args.images, checkpoint_file(args.checkpoint, args.which or "best"), args.device, args.top)
    for i, (path, ranked) in enumerate(zip(found.paths, found.ranked)):
        print(f"{path}: {ranked_text(ranked)}")
        print_weights(found.nonlocal_weights[i], found.local_weights[i], found.geometry.grid)
        if args.heatmap:
            out = heatmap_path(args.heatmap, i, len(found.paths))
            name, p = ranked[0]
            save_region_heatmap(
                found.images[i], found.nonlocal_weights[i], found.geometry, out, title=f"{name} ({p:.2f})"
            )
            print(f"  heat map: {out}")


def predict_faces(args) -> None:
    """Every face the detector finds in each photo."""
    found = predict_photos(args.images, args.checkpoint, args.device, args.top, args.which or "best")
    for i, photo in enumerate(found.photos):
        if not photo.faces:
            print(f"{photo.path}: no face found ({NO_FACE_HINT})")
            continue
        for number, face in enumerate(photo.faces, 1):
            x, y, w, h = face.box
            print(f"{photo.path} face {number} of {len(photo.faces)} at (x {x}, y {y}, w {w}, h {h}): "
                  f"{ranked_text(face.ranked)}")
            print_weights(face.nonlocal_weights, face.local_weights, found.geometry.grid)
        if args.heatmap:
            out = heatmap_path(args.heatmap, i, len(found.photos))
            save_photo_heatmap(photo, found.geometry, out)
            print(f"  heat map: {out}")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not 1 <= args.top <= 7:
        print(f"error: --top {args.top}: expected 1 to 7 (there are 7 expressions)", file=sys.stderr)
        return 2
    if args.heatmap and Path(args.heatmap).suffix.lower() not in HEATMAP_FORMATS:
        print(f"error: --heatmap {args.heatmap}: expected a file ending in {', '.join(HEATMAP_FORMATS)}", file=sys.stderr)
        return 2
    if (status := cli.refuse_which_with_a_file(args)) is not None:
        return status
    try:
        (predict_faces if args.detect_faces else predict_crops)(args)
    except DetectorMissingError as error:
        detail = f" ({error.reason})" if error.reason else ""
        print(f"error: --detect-faces needs the detect extra: pip install 'lnlatten_fast[detect]'{detail}",
              file=sys.stderr)
        return 2
    except cli.LIBRARY_ERRORS as error:
        return cli.fail(error, {"paths": "IMAGE"})
    return 0


if __name__ == "__main__":
    sys.exit(main())

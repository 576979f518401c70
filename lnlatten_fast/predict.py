"""`python -m lnlatten_fast.predict IMAGE... --checkpoint RUN/best.pt`: top-3 expressions, and
each region's non-local weight w_g and local weight w_l (row-major, rows separated by |).

An IMAGE may be a folder: every image file directly in it, by name. --checkpoint may be the run
directory itself: its best.pt.

--heatmap OUT.png overlays the non-local weights w_g (one cell per local region) on each face,
on a fixed colour scale (0 to 2/M, with a colour bar) so maps of different faces compare.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import cli
from .training.inference import predict_files
from .viz import save_region_heatmap


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lnlatten_fast.predict", description=__doc__.split("\n\n")[0])
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="image files (any size; resized like the training data), or folders: every image file "
                        "directly in one, by name")
    p.add_argument("--checkpoint", required=True,
                   help="a best.pt or last.pt written by lnlatten_fast.train, or its run directory (its best.pt)")
    p.add_argument("--heatmap", default=None, help="write the w_g overlay here (several images: OUT-<i>.png)")
    p.add_argument("--device", default="auto")
    p.add_argument("--top", type=int, default=3)
    return p


def heatmap_path(template: str, index: int, count: int) -> Path:
    """--heatmap OUT.png itself for one image, OUT-<index>.png for several."""
    out = Path(template)
    return out if count == 1 else out.with_name(f"{out.stem}-{index}{out.suffix or '.png'}")


HEATMAP_FORMATS = (".png", ".jpg", ".jpeg", ".pdf", ".svg")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not 1 <= args.top <= 7:
        print(f"error: --top {args.top}: expected 1 to 7 (there are 7 expressions)", file=sys.stderr)
        return 2
    if args.heatmap and Path(args.heatmap).suffix.lower() not in HEATMAP_FORMATS:
        print(f"error: --heatmap {args.heatmap}: expected a file ending in {', '.join(HEATMAP_FORMATS)}", file=sys.stderr)
        return 2
    try:
        found = predict_files(args.images, args.checkpoint, args.device, args.top)
    except cli.LIBRARY_ERRORS as error:
        return cli.fail(error, {"paths": "IMAGE"})
    for i, (path, ranked) in enumerate(zip(found.paths, found.ranked)):
        print(f"{path}: " + ", ".join(f"{name} {p:.3f}" for name, p in ranked))
        grid = found.geometry.grid
        for label, weights in (("w_g", found.nonlocal_weights[i]), ("w_l", found.local_weights[i])):
            rows = weights.reshape(grid, grid).tolist()
            print(f"  {label} ({grid}x{grid}): " + " | ".join(" ".join(f"{w:.3f}" for w in row) for row in rows))
        if args.heatmap:
            out = heatmap_path(args.heatmap, i, len(found.paths))
            name, p = ranked[0]
            save_region_heatmap(
                found.images[i], found.nonlocal_weights[i], found.geometry, out, title=f"{name} ({p:.2f})"
            )
            print(f"  heat map: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m lnlatten_fast.predict IMAGE... --checkpoint RUN/best.pt`: top-3 expressions.

--heatmap OUT.png overlays the non-local weights w_g (one cell per local region) on each face.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .training.inference import load_images, load_model, pick_device, predict
from .viz import save_region_heatmap


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m lnlatten_fast.predict", description=__doc__.split("\n\n")[0])
    p.add_argument("images", nargs="+", help="image files (any size; resized like the training data)")
    p.add_argument("--checkpoint", required=True, help="a best.pt or last.pt written by lnlatten_fast.train")
    p.add_argument("--heatmap", default=None, help="write the w_g overlay here (several images: OUT-<i>.png)")
    p.add_argument("--device", default="auto")
    p.add_argument("--top", type=int, default=3)
    args = p.parse_args(argv)
    try:
        device = pick_device(args.device)
        model, payload = load_model(args.checkpoint, device)
        images = load_images(args.images, model.config.image_size)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    names = payload["class_names"]
    probs, nonlocal_weights, _ = predict(model, images, device)
    for i, path in enumerate(args.images):
        top = probs[i].topk(min(args.top, len(names)))
        ranked = ", ".join(f"{names[c]} {p:.3f}" for p, c in zip(top.values.tolist(), top.indices.tolist()))
        print(f"{path}: {ranked}")
        if args.heatmap:
            out = Path(args.heatmap)
            if len(args.images) > 1:
                out = out.with_name(f"{out.stem}-{i}{out.suffix or '.png'}")
            save_region_heatmap(images[i], nonlocal_weights[i], model.geometry, out,
                                title=f"{names[int(top.indices[0])]} ({float(top.values[0]):.2f})")
            print(f"  heat map: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m lnlatten_fast.export RUN_OR_CKPT --format {onnx,pt2} --out FILE`: a trained model
as a file that runs without this package's training code.

- onnx: the reference ops as standard ONNX ops, a dynamic batch axis; input `image` (float32
  (B, 3, S, S), RGB as (pixel / 255 - 0.5) / 0.5), outputs `logits`, `w_g` and `w_l`; the class
  names and S in its metadata. Needs the export extra: pip install 'lnlatten_fast[export]'.
- pt2: a torch.export program of the model on --device and the backend it runs on there, its
  fused ops kept as lnlatten_fast custom ops: `import lnlatten_fast` before
  torch.export.load(FILE).

RUN_OR_CKPT is a run directory (its best.pt; `--which last`: its last.pt) or a checkpoint file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import cli
from .training.export import FORMATS, SUFFIXES, export_checkpoint
from .training.inference import RUN_CHECKPOINTS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lnlatten_fast.export", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", metavar="RUN_OR_CKPT",
                   help="a run directory written by lnlatten_fast.train (its best.pt, or --which), or a best.pt "
                        "or last.pt")
    p.add_argument("--format", required=True, choices=FORMATS,
                   help="onnx: for onnxruntime and other ONNX runtimes; pt2: a torch.export program")
    p.add_argument("--out", required=True, metavar="FILE",
                   help=f"the file to write, ending in {' or '.join(SUFFIXES.values())} as --format says "
                        "(replaced if it exists)")
    p.add_argument("--which", choices=tuple(RUN_CHECKPOINTS), default=None,
                   help="which of the run directory's models: its best epoch's (best.pt, the default) or its "
                        "last (last.pt)")
    p.add_argument("--dynamic-batch", action="store_true",
                   help="pt2: a program for any batch size (default: one image at a time); an onnx file always "
                        "takes any batch size")
    cli.add_device_flag(p)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.which is not None and Path(args.checkpoint).is_file():
        print(f"error: --which {args.which}: {args.checkpoint} is a checkpoint file, not a run directory",
              file=sys.stderr)
        return 2
    try:
        out = export_checkpoint(args.checkpoint, args.format, args.out, which=args.which or "best",
                                dynamic_batch=args.dynamic_batch, device=args.device)
    except cli.LIBRARY_ERRORS as error:
        return cli.fail(error, {"checkpoint": "RUN_OR_CKPT"})
    print(f"wrote {out} ({args.format})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

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

from . import cli
from .training.export import FORMATS, SUFFIXES, export_checkpoint


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lnlatten_fast.export", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_checkpoint_flags(p, positional=True)
    p.add_argument("--format", required=True, choices=FORMATS,
                   help="onnx: for onnxruntime and other ONNX runtimes; pt2: a torch.export program")
    p.add_argument("--out", required=True, metavar="FILE",
                   help=f"the file to write, ending in {' or '.join(SUFFIXES.values())} as --format says "
                        "(replaced if it exists)")
    p.add_argument("--dynamic-batch", action="store_true",
                   help="pt2: a program for any batch size (default: one image at a time); an onnx file always "
                        "takes any batch size")
    cli.add_device_flag(p)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if (status := cli.refuse_which_with_a_file(args, checkpoint_flag="")) is not None:
        return status
    try:
        out = export_checkpoint(args.checkpoint, args.format, args.out, which=args.which or "best",
                                dynamic_batch=args.dynamic_batch, device=args.device)
    except cli.LIBRARY_ERRORS as error:
        return cli.fail(error, {"checkpoint": "RUN_OR_CKPT"})
    print(f"wrote {out} ({args.format})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

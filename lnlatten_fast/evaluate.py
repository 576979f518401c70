"""`python -m lnlatten_fast.evaluate --checkpoint RUN/best.pt`: test accuracy of a saved model.

The dataset, its root and the synthetic seed default to those the run was trained with.
"""

from __future__ import annotations

import argparse
import sys

from . import cli, jsonio
from .data.datasets import DATASETS
from .training.evaluation import evaluate_checkpoint
from .training.precision import PRECISIONS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lnlatten_fast.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True,
                   help="a best.pt or last.pt written by lnlatten_fast.train, or its run directory (its best.pt)")
    p.add_argument("--dataset", choices=DATASETS, default=None, help="default: the run's dataset")
    p.add_argument("--data-root", default=None, help="default: the run's --data-root")
    p.add_argument("--device", default="auto")
    cli.add_model_flags(p, ["backend"], default=lambda name: f"the run's {name}")
    p.add_argument("--precision", choices=PRECISIONS, default=None, help="default: the run's precision")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        print(f"error: --batch-size {args.batch_size}: expected a positive number of images", file=sys.stderr)
        return 2
    try:
        result = evaluate_checkpoint(
            args.checkpoint, dataset=args.dataset, data_root=args.data_root, device=args.device,
            backend=cli.model_overrides(args, ["backend"]).get("backend"), precision=args.precision,
            batch_size=args.batch_size,
        )
    except cli.LIBRARY_ERRORS as error:
        return cli.fail(error)
    if args.json:
        print(jsonio.dumps(result))
    else:
        print(f"{result['dataset']} test set, {result['images']} images, checkpoint epoch {result['epoch']}")
        recorded = result["recorded_test_accuracy"]  # None: saved within an epoch (a stop signal)
        print(f"test accuracy        {result['accuracy']:.4f} "
              + (f"(recorded at training: {recorded:.4f})" if recorded is not None else "(saved mid-epoch: none recorded)"))
        print(f"mean class accuracy  {result['mean_class_accuracy']:.4f}")
    if result["skipped"]:
        print(f"warning: {len(result['skipped'])} test image(s) could not be decoded and were left out, e.g. "
              f"{result['skipped'][0]['path']}: {result['skipped'][0]['reason']}", file=sys.stderr)
    if result["nonfinite"]:
        print(f"warning: {result['nonfinite']} of {result['images']} images got NaN/inf logits; "
              "they are counted as wrong (the checkpoint's weights or inputs are broken)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

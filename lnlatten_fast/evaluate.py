"""`python -m lnlatten_fast.evaluate --checkpoint RUN`: test accuracy of a saved model, overall
and per class, and its confusion matrix.

--checkpoint is a run directory (its best.pt; `--which last`: its last.pt) or a checkpoint file.
The dataset, its root and the synthetic seed default to those the run was trained with.
`--out DIR` also writes DIR/evaluation.json (what --json prints) and DIR/confusion_matrix.png.
"""

from __future__ import annotations

import argparse
import sys

from . import cli, jsonio
from .data.datasets import DATASETS
from .training.evaluation import evaluate_checkpoint, write_evaluation
from .training.precision import PRECISIONS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lnlatten_fast.evaluate", description=__doc__.split("\n\n")[0])
    cli.add_checkpoint_flags(p)
    p.add_argument("--dataset", choices=DATASETS, default=None, help="default: the run's dataset")
    p.add_argument("--data-root", default=None, help="default: the run's --data-root")
    cli.add_device_flag(p)
    cli.add_model_flags(p, ["backend"], default=lambda name: f"the run's {name}")
    p.add_argument("--precision", choices=PRECISIONS, default=None, help="default: the run's precision")
    p.add_argument("--batch-size", type=int, default=128, help="test images per forward pass (default: 128)")
    p.add_argument("--json", action="store_true",
                   help="print the result as JSON (with the confusion matrix and per_class: each class's "
                        "images and accuracy)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="also write DIR/evaluation.json (what --json prints) and DIR/confusion_matrix.png "
                        "(DIR is created; not a training run's own directory)")
    return p


def _print_result(result: dict) -> None:
    print(f"{result['dataset']} test set, {result['images']} images, {result['checkpoint']} (epoch {result['epoch']})")
    recorded = result["recorded_test_accuracy"]  # None: saved within an epoch (a stop signal)
    print(f"test accuracy        {result['accuracy']:.4f} "
          + (f"(recorded at training: {recorded:.4f})" if recorded is not None else "(saved mid-epoch: none recorded)"))
    print(f"mean class accuracy  {result['mean_class_accuracy']:.4f}")
    print("confusion matrix (rows: true class, columns: predicted):")
    for line in confusion_table(result["confusion"], list(result["per_class"])):
        print(f"  {line}")
    print("per-class accuracy:")
    width = max(len(name) for name in result["per_class"])
    for name, entry in result["per_class"].items():
        accuracy = "     —" if entry["accuracy"] is None else f"{entry['accuracy']:.4f}"
        print(f"  {name:{width}s}  {accuracy}  ({entry['images']} images)")


def confusion_table(confusion: list[list[int]], names: list[str]) -> list[str]:
    """The counts as aligned text: a header of the predicted classes, then one row per true class."""
    row_width = max(len(name) for name in names)
    widths = [max(len(name), *(len(str(row[j])) for row in confusion)) for j, name in enumerate(names)]
    header = " " * row_width + "".join(f"  {name:>{w}}" for name, w in zip(names, widths))
    return [header] + [f"{name:{row_width}s}" + "".join(f"  {count:>{w}}" for count, w in zip(row, widths))
                       for name, row in zip(names, confusion)]


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        print(f"error: --batch-size {args.batch_size}: expected a positive number of images", file=sys.stderr)
        return 2
    if (status := cli.refuse_which_with_a_file(args)) is not None:
        return status
    try:
        result = evaluate_checkpoint(
            args.checkpoint, which=args.which or "best", dataset=args.dataset, data_root=args.data_root,
            device=args.device, backend=cli.model_overrides(args, ["backend"]).get("backend"),
            precision=args.precision, batch_size=args.batch_size,
        )
        written = write_evaluation(result, args.out) if args.out is not None else []
    except cli.LIBRARY_ERRORS as error:
        return cli.fail(error)
    if args.json:
        print(jsonio.dumps(result))
    else:
        _print_result(result)
    for path in written:
        print(f"wrote {path}", file=sys.stderr if args.json else sys.stdout)
    if result["skipped"]:
        print(f"warning: {len(result['skipped'])} test image(s) could not be decoded and were left out, e.g. "
              f"{result['skipped'][0]['path']}: {result['skipped'][0]['reason']}", file=sys.stderr)
    if result["nonfinite"]:
        print(f"warning: {result['nonfinite']} of {result['images']} images got NaN/inf logits; "
              "they are counted as wrong (the checkpoint's weights or inputs are broken)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m lnlatten_fast.evaluate --checkpoint RUN/best.pt`: test accuracy of a saved model.

The dataset, its root and the synthetic seed default to those the run was trained with.
"""

from __future__ import annotations

import argparse
import json
import sys

from .data.sources import DATASETS
from .training import distributed
from .training.inference import load_model, pick_device
from .training.trainer import PRECISIONS, TrainSettings, evaluate, load_data


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m lnlatten_fast.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="a best.pt or last.pt written by lnlatten_fast.train")
    p.add_argument("--dataset", choices=DATASETS, default=None, help="default: the run's dataset")
    p.add_argument("--data-root", default=None, help="default: the run's --data-root")
    p.add_argument("--device", default="auto")
    p.add_argument("--backend", default=None, help="default: the run's backend")
    p.add_argument("--precision", choices=PRECISIONS, default=None, help="default: the run's precision")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args(argv)
    try:
        device = pick_device(args.device)
        model, payload = load_model(args.checkpoint, device, args.backend)
        settings = TrainSettings(**payload["settings"])
        settings.dataset = args.dataset or settings.dataset
        settings.data_root = args.data_root or settings.data_root
        splits = load_data(settings, model.config.image_size)
        fold = payload.get("fold")
        _, test_set = splits[fold if fold is not None else 0]
        precision = args.precision or settings.precision
        result = evaluate(model, test_set, args.batch_size, distributed.Context(device=device), precision)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    result.update(
        checkpoint=str(args.checkpoint), epoch=payload["epoch"], dataset=settings.dataset,
        images=len(test_set), recorded_test_accuracy=payload["test_accuracy"],
    )
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{settings.dataset} test set, {len(test_set)} images, checkpoint epoch {payload['epoch']}")
        print(f"test accuracy        {result['accuracy']:.4f} (recorded at training: {payload['test_accuracy']:.4f})")
        print(f"mean class accuracy  {result['mean_class_accuracy']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

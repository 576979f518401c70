"""Test accuracy: of a model on a set of images, and of a saved checkpoint on its run's test split.

    from lnlatten_fast.training.evaluation import evaluate_checkpoint
    result = evaluate_checkpoint("runs/rafdb-paper/best.pt")
    result["accuracy"], result["recorded_test_accuracy"]
    write_evaluation(result, "runs/rafdb-paper/evaluation")  # evaluation.json, confusion_matrix.png
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .. import figures, jsonio
from ..data.cache import ImageSet
from ..data.pipeline import BatchLoader
from ..errors import ParameterError
from ..model import LNLAttenNet
from . import distributed, metrics
from .run_dir import CONFUSION_FILE
from .inference import checkpoint_file, load_model
from .loading import load_test_split
from .precision import autocast, resolve_precision
from .settings import TrainSettings

__all__ = ["EVALUATION_FILE", "evaluate", "evaluate_checkpoint", "per_class", "write_evaluation"]

#: The JSON `write_evaluation` writes: everything `evaluate_checkpoint` returns.
EVALUATION_FILE = "evaluation.json"


def per_class(confusion: list[list[int]], unscored: list[int], names: list[str]) -> dict[str, dict]:
    """{class name: {"images": its test images, "accuracy": the share of them predicted as it
    (None where it has none)}}, the classes in model order; `unscored` images are wrong."""
    recall, support = metrics.class_recall(torch.tensor(confusion), torch.tensor(unscored))
    return {name: {"images": int(support[index]), "accuracy": recall[index].item() if support[index] else None}
            for index, name in enumerate(names)}


@torch.no_grad()
def evaluate(
    model: LNLAttenNet, images: ImageSet, batch_size: int, ctx: distributed.Context, precision: str = "auto"
) -> dict:
    """Accuracy, mean class accuracy and confusion matrix, summed over every rank's share.
    Every rank evaluates rank 0's model (the one its checkpoints hold): its buffers are sent to
    the others first. `nonfinite`: images whose logits held NaN or inf; they are wrong in both
    accuracies and absent from the confusion matrix (`unscored`: how many of them of each true
    class)."""
    distributed.broadcast_buffers(model, ctx)
    model.eval()
    precision = resolve_precision(precision, ctx.device)  # once, and before any batch is loaded
    indices = np.arange(ctx.rank, len(images), ctx.world_size)  # disjoint shares, no padding
    loader = BatchLoader(images.images, images.labels, indices, batch_size, ctx.device)
    num_classes = model.config.num_classes
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=ctx.device)
    unscored = torch.zeros(num_classes, dtype=torch.int64, device=ctx.device)  # per true class
    for x, y in loader:
        with autocast(precision, ctx.device):
            logits = model(x).logits
        # NaN/inf logits have no prediction (argmax would say class 0): they count as wrong.
        finite = logits.isfinite().all(dim=1)
        confusion += metrics.confusion_matrix(logits[finite].argmax(dim=1), y[finite], num_classes)
        unscored += torch.bincount(y[~finite], minlength=num_classes)
    confusion = distributed.all_reduce_sum(confusion, ctx).cpu()
    unscored = distributed.all_reduce_sum(unscored, ctx).cpu()
    return {
        "accuracy": metrics.accuracy(confusion, unscored),
        "mean_class_accuracy": metrics.mean_class_accuracy(confusion, unscored),
        "confusion": confusion.tolist(),
        "unscored": unscored.tolist(),
        "nonfinite": int(unscored.sum()),
    }


def evaluate_checkpoint(
    checkpoint: str | Path,
    *,
    which: str = "best",
    dataset: str | None = None,
    data_root: str | None = None,
    device: str = "auto",
    backend: str | None = None,
    precision: str | None = None,
    batch_size: int = 128,
) -> dict:
    """Load `checkpoint` (a checkpoint file, or a run directory: its best.pt, or with
    `which="last"` its last.pt), rebuild its run's test split (its fold for a K-fold run) and
    evaluate.

    `dataset`, `data_root`, `backend` and `precision` default to the run's. Returns `evaluate`'s
    result plus `checkpoint` (the file evaluated), `epoch`, `dataset`, `images`,
    `recorded_test_accuracy` (what the run measured when it saved the checkpoint) and
    `per_class` (see `per_class`, by the checkpoint's class names).
    """
    checkpoint = checkpoint_file(checkpoint, which)
    chosen = distributed.pick_device(device)
    model, payload = load_model(checkpoint, chosen, backend)
    settings = TrainSettings.from_dict(payload["settings"])
    settings.dataset = dataset or settings.dataset
    settings.data_root = data_root or settings.data_root
    test_set = load_test_split(settings, model.config.image_size, payload.get("fold"))
    ctx = distributed.Context(device=chosen)
    result = evaluate(model, test_set, batch_size, ctx, precision or settings.precision)
    result.update(
        checkpoint=str(checkpoint), epoch=payload["epoch"], dataset=settings.dataset,
        images=len(test_set), recorded_test_accuracy=payload["test_accuracy"], skipped=test_set.skipped,
        per_class=per_class(result["confusion"], result["unscored"], payload["class_names"]),
    )
    return result


def write_evaluation(result: dict, out) -> list[Path]:
    """`evaluate_checkpoint`'s `result` as files in the folder `out` (created): EVALUATION_FILE
    (the result, the confusion counts and per-class accuracy with it) and the confusion matrix
    figure under the one name a run gives it (CONFUSION_FILE). A training run's own directory is
    refused: its CONFUSION_FILE is the run's final epoch, not this evaluation."""
    out = Path(out)
    if (out / "config.json").is_file():
        raise ParameterError("out", f"{out} is a training run's directory (it holds config.json), whose "
                                    f"{CONFUSION_FILE} is the run's own: give another folder")
    json_path = out / EVALUATION_FILE
    try:
        out.mkdir(parents=True, exist_ok=True)
        json_path.write_text(jsonio.dumps(result, indent=2))
    except OSError as error:
        raise ParameterError("out", f"{out}: cannot write {EVALUATION_FILE} there ({error.strerror or error})") from None
    checkpoint = Path(result["checkpoint"])
    title = f"{result['dataset']} test set: {checkpoint.parent.name}/{checkpoint.name}, epoch {result['epoch']}"
    return [json_path, figures.confusion_matrix(result["confusion"], list(result["per_class"]), out / CONFUSION_FILE,
                                                title)]

"""`python -m lnlatten_fast.train`: train LNLAttenNet with the paper's protocol.

With no arguments: the tiny preset on the built-in synthetic expression dataset, on this
machine's CPU or GPU. With --dataset and --data-root: a real dataset (SPEC §5).
Under `torchrun --nproc_per_node N -m lnlatten_fast.train ...` it trains data-parallel.
"""

from __future__ import annotations

import argparse
import sys

from .config import BACKENDS, VARIANTS
from .data.sources import DATASETS, SYNTHETIC_SIZES
from .training.trainer import PRECISIONS, TrainSettings, train


def optional_int(text: str) -> int | None:
    return None if text.lower() in ("none", "auto") else int(text)


def build_parser() -> argparse.ArgumentParser:
    d = TrainSettings()
    p = argparse.ArgumentParser(
        prog="python -m lnlatten_fast.train",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = p.add_argument_group("data")
    data.add_argument("--dataset", choices=DATASETS, default=d.dataset,
                      help="synthetic is built in; the others read --data-root (layouts in SPEC §5 / README)")
    data.add_argument("--data-root", default=None,
                      help="dataset folder (or CSV for fer2013/manifest); not needed for synthetic")
    data.add_argument("--workers", type=int, default=d.workers, help="processes decoding images into the cache")
    data.add_argument("--cache-dir", default=None, help="decoded-image cache (default: $LNLATTEN_CACHE or ~/.cache/lnlatten_fast)")
    data.add_argument("--folds", type=int, default=None,
                      help="subject-independent K-fold cross-validation (default: 5 for ckplus, else the dataset's own split)")
    data.add_argument("--val-fraction", type=float, default=d.val_fraction,
                      help="hold out this fraction of the training set (per class) as validation; 0 = none")
    data.add_argument("--synthetic-train", type=int, default=None,
                      help=f"synthetic training images (default {SYNTHETIC_SIZES['train']})")
    data.add_argument("--synthetic-test", type=int, default=None,
                      help=f"synthetic test images (default {SYNTHETIC_SIZES['test']})")

    model = p.add_argument_group("model")
    model.add_argument("--preset", choices=("tiny", "paper"), default=d.preset, help="tiny: widths / 8, 64 px; paper: SPEC §1")
    model.add_argument("--variant", choices=VARIANTS, default=d.variant, help="table IV: full, local, nonlocal, simple")
    model.add_argument("--alpha", type=float, default=d.alpha, help="eq. 1 mixing weight of s")
    model.add_argument("--num-patches", type=int, default=d.num_patches, help="M, a perfect square (table VI)")
    model.add_argument("--overlap", type=optional_int, default=None, help="pixels shared by neighbouring patches (table VII); default ~P/3")
    model.add_argument("--image-size", type=optional_int, default=None, help="input size (default: the preset's, 64 tiny / 144 paper)")
    model.add_argument("--backend", choices=BACKENDS, default=d.backend, help="op implementation (see python -m lnlatten_fast.info)")

    run = p.add_argument_group("optimisation and run")
    run.add_argument("--epochs", type=int, default=d.epochs)
    run.add_argument("--batch-size", type=int, default=None, help="per process (default: 64 paper, 32 tiny)")
    run.add_argument("--lr", type=float, default=None,
                     help="Adam learning rate, x0.95 every epoch (default: 3e-4 paper, 1e-3 tiny)")
    run.add_argument("--l2-lambda", type=float, default=d.l2_lambda, help="eq. 3's λ")
    run.add_argument("--l2-mode", choices=("decoupled", "loss"), default=d.l2_mode,
                     help="decoupled: W <- W - lr·2λ·W outside Adam (AdamW); loss: λ·Σ‖W‖² in the loss as eq. 3 "
                          "writes it (with Adam this stalls the network from Xavier init)")
    run.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N")
    run.add_argument("--seed", type=int, default=d.seed)
    run.add_argument("--out", default=None, help="run directory (default runs/<dataset>-<preset>-<time>)")
    run.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    run.add_argument("--precision", choices=PRECISIONS, default=d.precision,
                     help="auto: bf16 autocast on CUDA, fp32 on CPU; bf16: autocast on any device "
                          "(CPU autocast runs the GPU's precision path); master weights stay fp32")
    run.add_argument("--compile", action="store_true",
                     help="torch.compile(fullgraph=True) the training step (on CUDA, auto's conv "
                          "choices are measured eagerly first)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    settings = TrainSettings(**{k: v for k, v in vars(args).items()})
    if settings.resume and settings.out is None:
        build_parser().error("--resume needs --out RUN_DIR (the run to continue)")
    try:
        train(settings)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

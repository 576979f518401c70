"""How long the training loop waits for an epoch's checkpoints, at the paper preset, side by side:

- synchronous: best.pt and last.pt written on the training thread with `checkpoint.save_atomic`
  (what the trainer did before the background writer);
- background: the trainer's own `_start_checkpoint` (the host copy begins on a thread), its
  evaluation of the test images (here 4 of them: the copy overlaps it), and its
  `_finish_checkpoint` (wait for what is left of the copy, hand the write over). Timed is what
  the loop waits for in those two calls, not the evaluation. The write itself finishes outside
  the timed region, as it does while the next epoch trains.

    pytest bench/bench_checkpoint.py --benchmark-only --benchmark-group-by=group

The model and its Adam state are the paper preset's (89.7 M parameters: best.pt ~0.36 GB,
last.pt ~1.08 GB), on CPU: the machine CI and the README measure on.
"""

from __future__ import annotations

import pytest
import torch

import lnlatten_fast as lf
from lnlatten_fast.data import labels
from lnlatten_fast.training import checkpoint, trainer
from lnlatten_fast.training.settings import TrainSettings
from lnlatten_fast.training.step import build_optimizer, init_optimizer_state

@pytest.fixture(scope="module")
def paper_state():
    torch.manual_seed(0)
    cfg = lf.LNLConfig.preset("paper")
    model = lf.LNLAttenNet(cfg)
    optimizer = build_optimizer(model, lr=3e-4, weight_decay=2 * cfg.l2_lambda)
    init_optimizer_state(optimizer)  # Adam's two moments: what last.pt carries after epoch 1
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.95)
    settings = TrainSettings(preset="paper", model=cfg)
    settings.validate()
    history = [{"epoch": 1, "test_accuracy": 0.5, "confusion": [[0] * 7] * 7}]
    return model, optimizer, scheduler, settings, history


def test_synchronous_checkpoints(benchmark, measure, paper_state, tmp_path):
    model, optimizer, scheduler, settings, history = paper_state

    def save():
        payload = dict(model=model.state_dict(), config=settings.model.to_dict(), settings=settings.to_dict(),
                       epoch=1, test_accuracy=0.5, class_names=list(labels.CLASS_NAMES), fold=None)
        checkpoint.save_atomic(payload, tmp_path / "best.pt")
        checkpoint.save_atomic(dict(payload, optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                                    history=history, rng=torch.get_rng_state()), tmp_path / "last.pt")

    benchmark.group = "checkpoint time the training loop waits for, paper preset, CPU"
    benchmark.extra_info.update(mode="synchronous (before)")
    measure(save)


def test_background_checkpoints(benchmark, measure, paper_state, tmp_path):
    from lnlatten_fast.data.cache import ImageSet
    from lnlatten_fast.training import distributed
    from lnlatten_fast.training.evaluation import evaluate

    model, optimizer, scheduler, settings, history = paper_state
    images = ImageSet(torch.randint(0, 256, (4, 144, 144, 3), dtype=torch.uint8).numpy(), torch.arange(4).numpy())
    ctx = distributed.Context(device=torch.device("cpu"))
    blocked = []
    with checkpoint.CheckpointWriter() as writer:

        def start_and_evaluate():
            writer.wait()  # the previous round's files on disk, as the next epoch would find them
            started = trainer._start_checkpoint(writer, model, optimizer, scheduler, tmp_path)
            test = evaluate(model, images, 4, ctx, "fp32")
            model.train()
            return (started, test), {}

        def finish(started, test):
            trainer._finish_checkpoint(writer, started, [dict(history[0])], settings, test, None, tmp_path,
                                       improved=True)
            blocked.append(started[1])

        benchmark.group = "checkpoint time the training loop waits for, paper preset, CPU"
        benchmark.extra_info.update(mode="background writer (after)")
        measure(finish, setup=start_and_evaluate)
        benchmark.extra_info["start_seconds_max"] = max(blocked)  # the untimed half: waiting to start the copy
    assert checkpoint.load(tmp_path / "last.pt")["epoch"] == 1  # the writes did happen

"""Faults a long training run meets, and what the run does about them (issue: a diverged or
interrupted run never lies, bad data never slips through silently).

Each test names the fault it injects; each was seen to fail before its fix.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import lnlatten_fast.training.trainer as trainer_module
from lnlatten_fast.config import LNLConfig
from lnlatten_fast.data.cache import ImageSet
from lnlatten_fast.errors import TrainingDivergedError
from lnlatten_fast.model import LNLAttenNet
from lnlatten_fast.training import checkpoint, distributed, metrics
from lnlatten_fast.training.evaluation import evaluate
from lnlatten_fast.training.settings import TrainSettings
from lnlatten_fast.training.trainer import train


def small_settings(out, **changes):
    base = dict(
        epochs=3, batch_size=16, model=LNLConfig.tiny(image_size=32), synthetic_train=56, synthetic_test=21,
        out=str(out), cache_dir=str(out.parent / "cache"), seed=3,
    )
    base.update(changes)
    return TrainSettings(**base)


def all_finite(state: dict) -> bool:
    return all(bool(t.isfinite().all()) for t in state.values() if torch.is_floating_point(t))


# ---- divergence -------------------------------------------------------------------------------
def test_a_run_that_diverges_after_good_epochs_stops_and_keeps_its_good_checkpoints(tmp_path, monkeypatch):
    """Fault: the loss turns NaN at epoch 2, step 2 (56 images, batch 16: 3 steps an epoch).
    Before: the run went on, logged `loss nan`, and best.pt could be replaced by the NaN model."""
    real_loss, calls = trainer_module.lnl_loss, []

    def loss_turning_nan(*args, **kwargs):
        calls.append(1)
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if len(calls) >= 5 else loss

    monkeypatch.setattr(trainer_module, "lnl_loss", loss_turning_nan)
    out = tmp_path / "run"
    with pytest.raises(TrainingDivergedError) as error:
        train(small_settings(out))
    message = str(error.value)
    assert "epoch 2, step 2: loss nan at lr" in message
    assert f"last good checkpoint is {out / 'last.pt'} (epoch 1)" in message
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1]
    for name in ("last.pt", "best.pt"):
        payload = checkpoint.load(out / name)
        assert payload["epoch"] == 1 and all_finite(payload["model"])


def test_lr_1e6_exits_nonzero_with_one_error_line(tmp_path):
    """Fault: `--lr 1e6`. Before: every epoch logged `loss nan`, exit 0, NaN checkpoints."""
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "lnlatten_fast.train", "--image-size", "32", "--epochs", "3", "--batch-size", "16",
         "--synthetic-train", "56", "--synthetic-test", "21", "--lr", "1e6", "--out", str(out),
         "--cache-dir", str(tmp_path / "cache")],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert result.returncode == 1, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "training diverged at epoch" in errors[0] and "lr 1e+06" in errors[0]
    assert "Traceback" not in result.stderr
    for path in out.glob("*.pt"):
        assert all_finite(checkpoint.load(path)["model"])


def test_a_checkpoint_with_non_finite_weights_is_never_written(tmp_path):
    state = {"w": torch.tensor([1.0, float("inf")]), "steps": torch.tensor([3])}
    with pytest.raises(ValueError, match="non-finite values in w"):
        checkpoint.save_atomic({"model": state}, tmp_path / "x.pt")
    assert list(tmp_path.iterdir()) == []


def test_non_finite_logits_count_as_wrong():
    """Fault: a model with a NaN weight. Before: NaN logits argmax to class 0, so "accuracy" was
    class 0's share of the test set."""
    model = LNLAttenNet(LNLConfig.tiny(image_size=32))
    labels = np.array([0, 0, 0, 1, 2, 3, 4, 5, 6, 0])
    images = ImageSet(np.zeros((10, 32, 32, 3), dtype=np.uint8), labels)
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    result = evaluate(model, images, 4, distributed.Context(device=torch.device("cpu")))
    assert result["nonfinite"] == 10
    assert result["accuracy"] == 0.0 and result["mean_class_accuracy"] == 0.0


def test_accuracies_with_unscored_images():
    confusion = torch.tensor([[3, 1], [0, 2]])
    unscored = torch.tensor([2, 0])
    assert metrics.accuracy(confusion, unscored) == pytest.approx(5 / 8)
    assert metrics.mean_class_accuracy(confusion, unscored) == pytest.approx((3 / 6 + 2 / 2) / 2)

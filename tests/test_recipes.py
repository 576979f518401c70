"""The training recipes (issue 21, item 2), each against an independent computation: balanced
sampling's class frequencies, label smoothing's closed form, the EMA recursion, the cosine
schedule's formula, the clipped global norm, mixup's and cutmix's convex combinations; a
kill-and-resume run with the recipes on reproduces the uninterrupted run bit for bit; bad values
and recipe changes on --resume are refused with one line naming the flag."""

from __future__ import annotations

import math
import signal

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import lnlatten_fast as lf
from helpers import micro_config, read_metrics
from test_preemption import _assert_same_checkpoint, _run, _signalled_run

from lnlatten_fast import train as train_cli
from lnlatten_fast.nn import regularized_weights
from lnlatten_fast.training import checkpoint
from lnlatten_fast.training.recipes import (BalancedSampler, BatchMixer, WeightAverage, build_scheduler,
                                            clip_gradients, recipe_loss)
from lnlatten_fast.training.distributed import Context
from lnlatten_fast.training.settings import TrainSettings
from lnlatten_fast.training.step import TrainStep
from lnlatten_fast.training.trainer import train_sampler


# ---- balanced sampling -----------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["inverse", "sqrt"])
def test_balanced_sampler_class_frequencies_are_within_2_percent_of_the_target(mode):
    counts = np.array([12, 60, 240, 45, 6, 120, 300])  # AffectNet-like imbalance
    labels = np.repeat(np.arange(7), counts)
    np.random.default_rng(0).shuffle(labels)
    target = np.full(7, 1 / 7) if mode == "inverse" else np.sqrt(counts) / np.sqrt(counts).sum()
    world = 2
    samplers = [BalancedSampler(labels, mode, world_size=world, rank=rank, seed=4) for rank in range(world)]
    drawn = []
    for epoch in range(1000):  # 783 000 draws: the smallest target's 2% is 3.5 standard deviations
        shares = []
        for sampler in samplers:
            sampler.set_epoch(epoch)
            shares.append(list(sampler))
            assert len(shares[-1]) == len(sampler) == -(-len(labels) // world)
        drawn += [i for share in shares for i in share]
    frequency = np.bincount(labels[drawn], minlength=7) / len(drawn)
    assert np.all(np.abs(frequency - target) <= 0.02 * target), (frequency, target)
    # The same (seed, epoch) draws the same order: what a resumed epoch relies on.
    samplers[0].set_epoch(3)
    again = BalancedSampler(labels, mode, world_size=world, rank=0, seed=4)
    again.set_epoch(3)
    assert list(again) == list(samplers[0])


@pytest.mark.parametrize("world", [1, 2])
def test_the_trainer_draws_its_epochs_with_the_balanced_sampler_on_every_rank(world):
    labels = np.repeat(np.arange(7), [5, 10, 80, 20, 10, 40, 35])  # 200 images
    settings = TrainSettings(balanced_sampling="inverse", seed=1)
    drawn = []
    for epoch in range(2000):  # 400 000 draws: 2% is 5 standard deviations
        for rank in range(world):
            sampler = train_sampler(settings, labels, Context(rank=rank, world_size=world))
            sampler.set_epoch(epoch)
            drawn += list(sampler)
    assert len(drawn) == 2000 * 200
    frequency = np.bincount(labels[drawn], minlength=7) / len(drawn)
    assert np.all(np.abs(frequency - 1 / 7) <= 0.02 / 7), frequency
    default = train_sampler(TrainSettings(seed=1), labels, Context())  # the paper's: every image once
    assert sorted(default) == list(range(200))


# ---- label smoothing, mixup, cutmix -------------------------------------------------------------------
def test_label_smoothing_equals_the_closed_form_and_keeps_eq3_l2_term():
    torch.manual_seed(0)
    logits, target, eps, classes = torch.randn(5, 7, dtype=torch.float64), torch.tensor([0, 3, 6, 2, 3]), 0.1, 7
    log_p = torch.log_softmax(logits, dim=1)
    per_image = [-(1 - eps) * log_p[i, target[i]] - eps / classes * log_p[i].sum() for i in range(5)]
    smoothed = sum(per_image) / 5
    model = lf.LNLAttenNet(micro_config("reference"))
    assert torch.allclose(recipe_loss(eps)(logits, target, model, l2_lambda=0.0), smoothed, rtol=1e-12)
    l2 = sum((w.detach().double() ** 2).sum() for w in regularized_weights(model))
    got = recipe_loss(eps)(logits, target, model, l2_lambda=1e-3)
    assert torch.allclose(got, smoothed + 1e-3 * l2, rtol=1e-6)


def test_mixup_mixes_images_and_its_loss_is_the_convex_combination_of_the_two_cross_entropies():
    torch.manual_seed(1)
    x, y = torch.randn(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 4, 5])
    mixer = BatchMixer(mixup=0.4, cutmix=0.0, num_classes=7, seed=9)
    mixed, target = mixer(x, y, epoch=2, step=5)
    lam, perm, _ = mixer.draw(6, 2, 5)
    assert 0.0 < lam < 1.0
    assert torch.allclose(mixed, lam * x + (1 - lam) * x[perm], atol=1e-6)
    logits = torch.randn(6, 7, dtype=torch.float64)
    expected = lam * F.cross_entropy(logits, y) + (1 - lam) * F.cross_entropy(logits, y[perm])
    assert torch.allclose(recipe_loss(0.0)(logits, target.double(), None, l2_lambda=0.0), expected, rtol=1e-6)
    again, _ = mixer(x, y, epoch=2, step=5)  # a function of (seed, epoch, step): a resume redraws it
    assert torch.equal(again, mixed)


def test_cutmix_pastes_one_box_and_weights_the_labels_by_the_uncovered_area():
    torch.manual_seed(2)
    x, y = torch.randn(6, 3, 16, 16), torch.tensor([0, 1, 2, 3, 4, 5])
    mixer = BatchMixer(mixup=0.0, cutmix=1.0, num_classes=7, seed=3)
    for step in range(1, 6):
        mixed, target = mixer(x, y, epoch=0, step=step)
        _, perm, _ = mixer.draw(6, 0, step)
        moved = [i for i in range(6) if perm[i] != i]
        pasted = (mixed[moved] != x[moved]).any(dim=1)  # (images, H, W): the box, the same in each image
        assert torch.equal(pasted, pasted[:1].expand_as(pasted))
        assert torch.equal(mixed[moved][:, :, pasted[0]], x[perm[moved]][:, :, pasted[0]])
        lam = 1.0 - pasted[0].float().mean().item()
        expected = lam * F.one_hot(y, 7).float() + (1 - lam) * F.one_hot(y[perm], 7).float()
        assert torch.allclose(target, expected, atol=1e-6)


# ---- EMA ---------------------------------------------------------------------------------------------------
def test_ema_after_k_steps_equals_the_recursion_by_hand():
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    decay = 0.9
    ema = WeightAverage(model, decay)
    by_hand = {k: v.double().clone() for k, v in model.state_dict().items() if v.is_floating_point()}
    for _ in range(5):
        with torch.no_grad():  # a "step": new weights and new BatchNorm statistics
            for p in model.parameters():
                p.add_(torch.randn_like(p))
            model.train()(torch.randn(8, 4))
        ema.update(model)
        for k, v in model.state_dict().items():
            if k in by_hand:
                by_hand[k] = decay * by_hand[k] + (1 - decay) * v.double()
    averaged = ema.state_dict()
    for k, expected in by_hand.items():
        assert torch.allclose(averaged[k].double(), expected, rtol=1e-5, atol=1e-6), k
    assert averaged["1.num_batches_tracked"] == 5  # integer buffers are copied, not averaged
    assert not any(p.requires_grad for p in ema.module.parameters())


# ---- schedule ----------------------------------------------------------------------------------------------
def _lrs(schedule, epochs, warmup):
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.01)
    scheduler = build_scheduler(optimizer, schedule, lr_decay=0.95, epochs=epochs, warmup_epochs=warmup)
    lrs = []
    for _ in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_cosine_lr_with_warm_up_at_chosen_epochs_equals_the_formula():
    lrs = _lrs("cosine", epochs=10, warmup=3)
    for epoch, expected in [(0, 0.01 / 3), (1, 0.02 / 3), (2, 0.01), (3, 0.01),
                            (5, 0.005 * (1 + math.cos(math.pi * 2 / 7))), (9, 0.005 * (1 + math.cos(math.pi * 6 / 7)))]:
        assert lrs[epoch] == pytest.approx(expected, rel=1e-12), epoch
    assert _lrs("cosine", epochs=4, warmup=0) == pytest.approx([0.005 * (1 + math.cos(math.pi * e / 4)) for e in range(4)])
    assert _lrs("paper", epochs=4, warmup=0) == pytest.approx([0.01 * 0.95**e for e in range(4)], rel=1e-12)


# ---- clipping -----------------------------------------------------------------------------------------------
def test_clipping_bounds_the_global_norm_and_keeps_the_direction():
    torch.manual_seed(4)
    params = [torch.zeros(5, 3, requires_grad=True), torch.zeros(7, requires_grad=True)]
    raw = [torch.randn(5, 3) * 10, torch.randn(7) * 10]
    for p, g in zip(params, raw):
        p.grad = g.clone()
    norm = math.sqrt(sum((g.double() ** 2).sum().item() for g in raw))
    assert norm > 1.0
    clip_gradients(params, 1.0)
    clipped = math.sqrt(sum((p.grad.double() ** 2).sum().item() for p in params))
    assert clipped <= 1.0 + 1e-6 and clipped == pytest.approx(1.0, rel=1e-5)
    for p, g in zip(params, raw):
        assert torch.allclose(p.grad, g / norm, rtol=1e-5, atol=1e-7)
    small = [g / (10 * norm) for g in raw]  # below the bound: untouched
    for p, g in zip(params, small):
        p.grad = g.clone()
    clip_gradients(params, 1.0)
    assert all(torch.equal(p.grad, g) for p, g in zip(params, small))


def test_the_training_step_clips_before_the_update():
    """With plain SGD at lr 1 the update is minus the gradient: its global norm is the bound."""
    torch.manual_seed(5)
    model = lf.LNLAttenNet(micro_config("reference"))
    before = [p.detach().clone() for p in model.parameters()]
    step = TrainStep(model, torch.optim.SGD(model.parameters(), lr=1.0), precision="fp32", device="cpu",
                     clip_grad_norm=1e-3)
    step(torch.randn(2, 3, 32, 32), torch.tensor([1, 4]))
    moved = math.sqrt(sum(((p.detach() - b).double() ** 2).sum().item() for p, b in zip(model.parameters(), before)))
    assert moved == pytest.approx(1e-3, rel=1e-3)


# ---- the trainer: kill and resume, refusals --------------------------------------------------------------
RECIPES = ["--ema", "0.9", "--balanced-sampling", "sqrt", "--schedule", "cosine", "--clip-grad-norm", "2",
           "--label-smoothing", "0.1", "--mixup", "0.4"]


def _flags(out, cache):
    return ["--image-size", "32", "--epochs", "2", "--batch-size", "4", "--synthetic-train", "8",
            "--synthetic-test", "7", "--trace-every", "0", "--seed", "3", "--progress", "none",
            "--out", str(out), "--cache-dir", str(cache), *RECIPES]


def test_sigterm_then_resume_with_the_recipes_on_reproduces_the_uninterrupted_run(tmp_path, capsys):
    cache = tmp_path / "cache"
    whole = tmp_path / "whole"
    result = _run("-m", "lnlatten_fast.train", *_flags(whole, cache))
    assert result.returncode == 0, result.stderr[-2000:]
    out = tmp_path / "run"
    # Stopped twice: at the end of epoch 1 (its own last.pt), then mid-epoch 2 (a partial last.pt).
    stopped = _signalled_run(2, "SIGTERM", _flags(out, cache))  # 2 steps an epoch
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-2000:]
    after_epoch_1 = checkpoint.load(out / "last.pt")
    assert after_epoch_1["epoch"] == 1 and "partial" not in after_epoch_1
    stopped = _signalled_run(1, "SIGTERM", ["--resume", "--out", str(out)])
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-2000:]
    assert checkpoint.load(out / "last.pt")["partial"]["step"] == 1
    resumed = _run("-m", "lnlatten_fast.train", "--resume", "--out", str(out))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    history = read_metrics(out)
    assert history == read_metrics(whole)
    for name in ("last.pt", "best.pt"):
        _assert_same_checkpoint(out / name, whole / name)
    # cosine over 2 epochs, no warm-up: lr, then lr·(1 + cos(π/2))/2 (the tiny preset's lr is 1e-3)
    assert [h["lr"] for h in history] == pytest.approx([1e-3, 5e-4], rel=1e-6)
    last, best = checkpoint.load(out / "last.pt"), checkpoint.load(out / "best.pt")
    assert last["settings"]["ema"] == 0.9 and last["settings"]["balanced_sampling"] == "sqrt"
    assert last["ema"].keys() == last["model"].keys()
    assert any(not torch.equal(last["ema"][k], last["model"][k]) for k in last["model"])
    # best.pt holds the evaluated weights: the EMA's at its epoch
    ema_at_best = (after_epoch_1 if best["epoch"] == 1 else last)["ema"]
    assert all(torch.equal(best["model"][k], ema_at_best[k]) for k in best["model"])
    # A recipe cannot change on --resume.
    assert train_cli.main(["--resume", "--out", str(out), "--ema", "0.5"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --ema cannot change when resuming: the run has 0.9, not 0.5")
    # Nor may a cosine run's length: the lr curve it followed was the 2-epoch one.
    assert train_cli.main(["--resume", "--out", str(out), "--epochs", "3"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --epochs cannot change when resuming a --schedule cosine run")


def test_the_trainer_trains_with_the_recipes_it_is_given(tmp_path, monkeypatch):
    """The flags reach the step the trainer runs: its loss is label smoothing's closed form,
    every batch it gets is mixed (two-class targets), and it clips at the bound given."""
    from lnlatten_fast.training import trainer

    seen = {"targets": []}

    class RecordingStep(TrainStep):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen["step"] = self

        def __call__(self, x, y):
            seen["targets"].append(y.detach().clone())
            return super().__call__(x, y)

    monkeypatch.setattr(trainer, "TrainStep", RecordingStep)
    argv = ["--image-size", "32", "--epochs", "1", "--batch-size", "4", "--synthetic-train", "8",
            "--synthetic-test", "7", "--trace-every", "0", "--progress", "none", "--out", str(tmp_path / "run"),
            "--cache-dir", str(tmp_path / "cache"), "--label-smoothing", "0.2", "--mixup", "0.4",
            "--clip-grad-norm", "2"]
    assert train_cli.main(argv) == 0
    step = seen["step"]
    assert step.clip_grad_norm == 2.0
    torch.manual_seed(6)
    logits = torch.randn(3, 7, dtype=torch.float64)
    target = torch.softmax(torch.randn(3, 7, dtype=torch.float64), dim=1)
    smoothed = 0.8 * target + 0.2 / 7
    expected = -(smoothed * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()
    assert torch.allclose(step.loss_fn(logits, target, None, l2_lambda=0.0), expected, rtol=1e-12)
    trained = seen["targets"][-2:]  # the epoch's two steps (a warm-up step may come first)
    assert len(trained) == 2 and all(t.shape == (4, 7) and t.dtype.is_floating_point for t in trained)
    assert all(torch.allclose(t.sum(dim=1), torch.ones(4, dtype=t.dtype)) for t in trained)
    assert any(((t > 0).sum(dim=1) == 2).any() for t in trained)  # an image's two labels, mixed


def test_an_ema_runs_checkpoints_are_used_with_its_ema_weights(tmp_path, capsys):
    """evaluate, predict, export and analyze load the weights the run evaluated: a last.pt's EMA
    (its raw weights are for resuming), so evaluate --which last finds the recorded accuracy."""
    import json

    from lnlatten_fast import evaluate as evaluate_cli
    from lnlatten_fast.training.inference import load_model

    run = tmp_path / "run"
    argv = ["--image-size", "32", "--epochs", "1", "--batch-size", "4", "--synthetic-train", "8",
            "--synthetic-test", "7", "--trace-every", "0", "--progress", "none", "--out", str(run),
            "--cache-dir", str(tmp_path / "cache"), "--ema", "0.5"]
    assert train_cli.main(argv) == 0
    payload = checkpoint.load(run / "last.pt")
    assert any(not torch.equal(payload["ema"][k], payload["model"][k]) for k in payload["model"])
    model, _ = load_model(run / "last.pt", torch.device("cpu"))
    assert all(torch.equal(v, payload["ema"][k]) for k, v in model.state_dict().items())
    capsys.readouterr()
    assert evaluate_cli.main(["--checkpoint", str(run), "--which", "last", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["accuracy"] == pytest.approx(payload["history"][-1]["test_accuracy"], abs=1e-12)


@pytest.mark.parametrize("argv, flag", [
    (["--ema", "1.5"], "--ema"), (["--ema", "-0.1"], "--ema"), (["--label-smoothing", "1"], "--label-smoothing"),
    (["--clip-grad-norm", "-1"], "--clip-grad-norm"), (["--clip-grad-norm", "nan"], "--clip-grad-norm"),
    (["--mixup", "-0.2"], "--mixup"), (["--mixup", "0.2", "--cutmix", "1"], "--cutmix"),
    (["--warmup-epochs", "1"], "--warmup-epochs"), (["--schedule", "cosine", "--warmup-epochs", "30"], "--warmup-epochs"),
])
def test_bad_recipe_values_are_refused_with_one_line_naming_the_flag(tmp_path, capsys, argv, flag):
    out = tmp_path / "run"
    assert train_cli.main([*argv, "--out", str(out), "--progress", "none"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {flag} "), lines
    assert not out.exists()

"""Preemption: a scheduler's SIGTERM (or SIGUSR1, its usual warning, or a SIGINT) stops a run
after the current step with a mid-epoch last.pt, and --resume continues it as if it had never
stopped (issue 19, deliverable 2).

The signals are real: a small driver process wraps TrainStep.__call__ to send one to itself
after a chosen step, then runs the train command line's main, so the library's own path runs.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from helpers import read_metrics

from lnlatten_fast.data.pipeline import BatchLoader
from lnlatten_fast.training import checkpoint
from lnlatten_fast.training.trainer import StopSignals, TrainingInterrupted

STEPS_PER_EPOCH = 4  # 32 training faces, batches of 8
EPOCHS = 2


def _flags(out, cache, epochs=EPOCHS):
    return ["--image-size", "32", "--epochs", str(epochs), "--batch-size", "8", "--synthetic-train", "32",
            "--synthetic-test", "14", "--trace-every", "3", "--seed", "3", "--out", str(out), "--cache-dir", str(cache)]


# Sends itself a signal right after training step `argv[1]` (counted over the run), then runs
# the train command line with the rest of argv; exits with main's status.
_DRIVER = r"""
import os, signal, sys
from lnlatten_fast import train as train_cli
from lnlatten_fast.training import step as step_module

stop_after, signum = int(sys.argv[1]), getattr(signal, sys.argv[2])
real_call, calls = step_module.TrainStep.__call__, [0]

def call(self, x, y):
    loss = real_call(self, x, y)
    calls[0] += 1
    if calls[0] == stop_after:
        os.kill(os.getpid(), signum)
    return loss

step_module.TrainStep.__call__ = call
sys.exit(train_cli.main(sys.argv[3:]))
"""


def _run(*argv):
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=600, check=False)


def _signalled_run(step: int, name: str, flags):
    return _run("-c", _DRIVER, str(step), name, *flags)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cache):
    out = tmp_path_factory.mktemp("whole") / "run"
    result = _run("-m", "lnlatten_fast.train", *_flags(out, cache))
    assert result.returncode == 0, result.stderr[-2000:]
    return out


def _tensors(value, prefix=""):
    """Every tensor in a checkpoint payload by its place, e.g. "/optimizer/state/0/exp_avg"."""
    if isinstance(value, torch.Tensor):
        yield prefix, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _tensors(item, f"{prefix}/{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _tensors(item, f"{prefix}/{i}")


def _assert_same_checkpoint(path, expected_path):
    got, expected = checkpoint.load(path), checkpoint.load(expected_path)
    got_tensors, expected_tensors = dict(_tensors(got)), dict(_tensors(expected))
    assert got_tensors.keys() == expected_tensors.keys(), path
    differing = [key for key in expected_tensors if not torch.equal(got_tensors[key], expected_tensors[key])]
    assert not differing, f"{path.name}: {differing[:5]}"
    for key in ("epoch", "test_accuracy", "scheduler"):
        assert got.get(key) == expected.get(key), (path.name, key)


def test_sigterm_at_a_random_step_then_resume_reproduces_the_uninterrupted_run(uninterrupted, cache, tmp_path):
    """Fault: SIGTERM from a scheduler mid-epoch. Before: the process died at once (status -15),
    nothing was printed or saved, and the partial epoch was lost. The step is drawn at random;
    PREEMPT_SEED=<seed> repeats a draw."""
    seed = int(os.environ.get("PREEMPT_SEED", time.time_ns()))
    step = random.Random(seed).randint(1, EPOCHS * STEPS_PER_EPOCH)
    print(f"SIGTERM after step {step} of {EPOCHS * STEPS_PER_EPOCH} (PREEMPT_SEED={seed})")
    out = tmp_path / "run"
    stopped = _signalled_run(step, "SIGTERM", _flags(out, cache))
    epoch, within = divmod(step - 1, STEPS_PER_EPOCH)
    within += 1
    assert stopped.returncode == 128 + signal.SIGTERM, (step, stopped.stderr[-2000:])
    assert "Traceback" not in stopped.stderr
    if within < STEPS_PER_EPOCH:
        saved = f"at epoch {epoch + 1}, step {within} of {STEPS_PER_EPOCH}"
        assert checkpoint.load(out / "last.pt")["partial"]["step"] == within
    else:  # the epoch's last step: the epoch's own checkpoint is as near
        saved = f"after epoch {epoch + 1}"
    assert stopped.stderr.strip().splitlines()[-1] == (
        f"stopped by SIGTERM: saved {out / 'last.pt'} {saved}; continue it with --resume --out {out}"), step
    finished = epoch + (within == STEPS_PER_EPOCH)
    lines = read_metrics(out) if (out / "metrics.jsonl").exists() else []
    assert [h["epoch"] for h in lines] == list(range(1, finished + 1))  # no line for a partial epoch

    resumed = _run("-m", "lnlatten_fast.train", "--resume", "--out", str(out))
    assert resumed.returncode == 0, (step, resumed.stderr[-2000:])
    assert read_metrics(out) == read_metrics(uninterrupted), step
    for name in ("last.pt", "best.pt"):
        _assert_same_checkpoint(out / name, uninterrupted / name)
    trace, expected = np.load(out / "attention_trace.npz"), np.load(uninterrupted / "attention_trace.npz")
    assert trace.files == expected.files
    for key in expected.files:
        assert np.array_equal(trace[key], expected[key]), (step, key)


@pytest.mark.parametrize("name", ["SIGINT", "SIGUSR1"])
def test_sigint_and_sigusr1_save_mid_epoch_with_one_line_and_the_conventional_status(cache, tmp_path, name):
    """Fault: Ctrl-C (SIGINT) or a scheduler's SIGUSR1 warning mid-epoch. Before: SIGINT printed a
    20-line traceback and SIGUSR1 killed the run; neither saved the partial epoch."""
    out = tmp_path / "run"
    stopped = _signalled_run(2, name, _flags(out, cache, epochs=1))
    assert stopped.returncode == 128 + getattr(signal, name), stopped.stderr[-2000:]
    assert "Traceback" not in stopped.stderr
    assert stopped.stderr.strip().splitlines()[-1] == (
        f"stopped by {name}: saved {out / 'last.pt'} at epoch 1, step 2 of {STEPS_PER_EPOCH}; "
        f"continue it with --resume --out {out}")
    partial = checkpoint.load(out / "last.pt")["partial"]
    assert (partial["epoch"], partial["step"], partial["loader"]["batches"]) == (1, 2, 2)
    assert not (out / "metrics.jsonl").exists()  # no line for a partial epoch


def test_stop_signals_record_inside_the_loop_raise_outside_and_restore_the_handlers(tmp_path):
    previous = signal.getsignal(signal.SIGUSR1)
    with StopSignals(tmp_path) as stop:
        with stop.deferred():
            os.kill(os.getpid(), signal.SIGUSR1)
            assert stop.received == signal.SIGUSR1  # recorded for the loop, nothing raised
        with pytest.raises(TrainingInterrupted, match="stopped by SIGTERM: no training step was in progress") as error:
            os.kill(os.getpid(), signal.SIGTERM)
        assert error.value.exit_status == 143 and error.value.run_dir == tmp_path
    assert signal.getsignal(signal.SIGUSR1) is previous


def test_a_loader_started_at_a_position_continues_the_pass_exactly():
    """The batches and augmentation draws after a saved position are the uninterrupted pass's."""
    images = np.random.default_rng(0).integers(0, 255, (20, 8, 8, 3), dtype=np.uint8)
    labels = np.arange(20) % 7

    def loader(start=None):
        return BatchLoader(images, labels, np.arange(20), 3, "cpu", shuffle=True, augment=True, crop_padding=2,
                           epoch_seed=5, start=start)

    whole = list(loader())
    interrupted = loader()
    passes = iter(interrupted)
    for _ in range(3):
        next(passes)
    rest = list(loader(start=interrupted.position()))
    assert len(rest) == len(whole) - 3
    for (x, y), (x_expected, y_expected) in zip(rest, whole[3:], strict=True):
        assert torch.equal(x, x_expected) and torch.equal(y, y_expected)

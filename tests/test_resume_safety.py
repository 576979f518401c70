"""--resume never destroys finished work (issue 19, deliverable 1): a lost or unreadable last.pt
is refused with what exists and `--restart` moves the run aside; a bad best.pt is rebuilt;
an unreadable checkpoint is one line everywhere it is loaded."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import read_metrics, small_settings

from lnlatten_fast import evaluate as evaluate_cli
from lnlatten_fast import predict as predict_cli
from lnlatten_fast import train as train_cli
from lnlatten_fast.training import checkpoint
from lnlatten_fast.training.trainer import train


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory):
    """A finished 1-epoch run (metrics.jsonl, best.pt, last.pt), copied by each test."""
    out = tmp_path_factory.mktemp("base") / "run"
    train(small_settings(out, epochs=1))
    return out


@pytest.fixture
def run(one_epoch, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(one_epoch, out)
    return out


def _files(directory):
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in directory.rglob("*")
            if p.is_file() and p.name != ".lock"}


def _errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def test_resume_without_last_pt_refuses_naming_what_exists_and_restart_moves_the_run_aside(run, capsys):
    """Fault: last.pt deleted, best.pt and metrics present, --resume. Before: "no epoch was saved:
    starting over", metrics.jsonl cut back and best.pt overwritten."""
    (run / "last.pt").unlink()
    before = _files(run)
    assert train_cli.main(["--resume", "--out", str(run)]) == 2
    (error,) = _errors(capsys.readouterr().err)
    assert error == (
        f"error: --resume cannot continue {run}: {run / 'last.pt'} is missing, and starting over would overwrite "
        f"finished work: {run / 'metrics.jsonl'} holds 1 epoch(s); {run / 'best.pt'} holds epoch 1. "
        f"Pass --restart to move the run aside to {run / 'previous-1'} and start over")
    assert _files(run) == before

    assert train_cli.main(["--resume", "--restart", "--out", str(run)]) == 0
    assert f"moved the earlier run in {run} aside to {run / 'previous-1'} (nothing was deleted)" in capsys.readouterr().out
    assert _files(run / "previous-1") == before  # every byte kept
    assert [h["epoch"] for h in read_metrics(run)] == [1] and checkpoint.load(run / "last.pt")["epoch"] == 1
    assert checkpoint.load(run / "last.pt")["settings"]["restart"] is False  # a later --resume continues, not restarts


def test_a_torn_best_pt_is_rebuilt_from_the_next_epoch(run, capsys):
    """Fault: best.pt half-written (zero bytes: the next test), then --resume. Before: not
    checked; the run ended "successfully" with no loadable best model (the next epoch did not
    beat epoch 1)."""
    best = run / "best.pt"
    best.write_bytes(best.read_bytes()[: best.stat().st_size // 2])
    train(small_settings(run, resume=True, epochs=2))
    assert checkpoint.load(best)["epoch"] == 2 and checkpoint.problem(best) is None
    warning = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and warning[0].startswith(f"warning: {best} is truncated or not a checkpoint (")
    assert "it is rebuilt from epoch 2's model on" in warning[0]


def test_a_torn_best_pt_with_no_epoch_left_is_named(run, capsys):
    (run / "best.pt").write_bytes(b"")
    train(small_settings(run, resume=True, epochs=1))
    assert (f"warning: {run / 'best.pt'} is truncated or not a checkpoint (0 bytes), and no epoch is left to "
            f"rebuild it from (epoch 1's model, the best recorded, is lost); last.pt holds epoch 1's model"
            in capsys.readouterr().err)


def test_a_zero_byte_last_pt_is_one_line_for_resume_evaluate_and_predict(run, tmp_path, capsys):
    """Fault: a zero-byte last.pt. Before: exit 2 naming the file, but the reason was torch's
    internals ("mmap", "_use_new_zipfile_serialization") or empty."""
    last = run / "last.pt"
    last.write_bytes(b"")
    before = _files(run)
    assert train_cli.main(["--resume", "--out", str(run)]) == 2
    (error,) = _errors(capsys.readouterr().err)
    assert error.startswith(f"error: --resume cannot continue {run}: {last} is truncated or not a checkpoint "
                            f"(0 bytes), and starting over would overwrite finished work: ")
    assert error.endswith(f"Pass --restart to move the run aside to {run / 'previous-1'} and start over")
    assert _files(run) == before

    face = tmp_path / "face.png"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(face)
    expected = (f"error: checkpoint {last} is truncated or not a checkpoint (0 bytes): pass another one "
                f"(a run's best.pt or last.pt), or copy it again from where it came")
    for main, argv in ((evaluate_cli.main, ["--checkpoint", str(last)]),
                       (predict_cli.main, [str(face), "--checkpoint", str(last)])):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert _errors(err) == [expected] and "Traceback" not in err


def test_best_pt_with_non_finite_weights_is_a_problem(tmp_path):
    state = {"w": torch.tensor([1.0, float("nan")])}
    torch.save({"model": state, "format": checkpoint.FORMAT}, tmp_path / "best.pt")
    assert checkpoint.problem(tmp_path / "best.pt") == "holds non-finite weights (w)"
    assert checkpoint.problem(tmp_path / "none.pt") == "does not exist"

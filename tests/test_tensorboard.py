"""`tensorboard` / `--tensorboard`: RUN/tb read back with TensorBoard's own reader, checked against
metrics.jsonl (read with json), on resume, without the package, and for a GPU's telemetry."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator  # the [tensorboard] extra, in [test]
from torch.utils.tensorboard import SummaryWriter

import lnlatten_fast as lf
from lnlatten_fast import figures
from lnlatten_fast import train as train_cli
from lnlatten_fast.data import labels
from lnlatten_fast.data.cache import ImageSet
from lnlatten_fast.training.inference import load_model, predict
from lnlatten_fast.training.loading import load_test_split
from lnlatten_fast.training.tensorboard import EpochBoard
from lnlatten_fast.training.trainer import train

from helpers import WALL_CLOCK, small_settings

# What every epoch of a CPU run must log, by metrics.jsonl's field (the module docstring's list).
CPU_SCALARS = {
    "train_loss": "loss/train",
    "test_accuracy": "accuracy/test",
    "test_mean_class_accuracy": "accuracy/test_mean_class",
    "lr": "lr",
    "images_per_second": "throughput/images_per_second",
    "train_seconds": "time/train_seconds",
    "test_seconds": "time/test_seconds",
    "checkpoint_blocking_seconds": "time/checkpoint_blocking_seconds",
}
IMAGES = ("confusion_matrix", "nonlocal_weights")


def read_board(run_dir) -> event_accumulator.EventAccumulator:
    """RUN/tb as TensorBoard shows it, every event kept."""
    board = event_accumulator.EventAccumulator(
        str(run_dir / "tb"), size_guidance={kind: 0 for kind in event_accumulator.DEFAULT_SIZE_GUIDANCE})
    board.Reload()
    return board


def read_metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def png_pixels(encoded: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(encoded)) as image:
        return np.asarray(image.convert("RGB"))


def png_size(encoded: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(encoded)) as image:
        assert image.format == "PNG"
        image.load()
        return image.size


def assert_scalars_match(board, records: list[dict], fields: dict) -> None:
    """Each field's tag has exactly one event per epoch, holding metrics.jsonl's value."""
    for field, tag in fields.items():
        events = board.Scalars(tag)
        assert [e.step for e in events] == [r["epoch"] for r in records], tag
        expected = [np.float32(r[field]) for r in records]
        assert [np.float32(e.value) for e in events] == expected, tag


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    """A 2-epoch run with a validation set, logged to TensorBoard."""
    out = tmp_path_factory.mktemp("tensorboard") / "run"
    train(small_settings(out, tensorboard=True, val_fraction=0.25, trace_images=4, progress="none"))
    return out


def test_every_scalar_and_image_is_logged_each_epoch(logged_run):
    records = read_metrics(logged_run)
    assert [r["epoch"] for r in records] == [1, 2]
    board = read_board(logged_run)
    fields = dict(CPU_SCALARS, val_accuracy="accuracy/val")
    assert set(board.Tags()["scalars"]) == set(fields.values())  # a CPU run has no gpu/ telemetry
    assert_scalars_match(board, records, fields)
    for tag in IMAGES:
        events = board.Images(tag)
        assert [e.step for e in events] == [1, 2], tag
        assert all(png_size(e.encoded_image_string) == (e.width, e.height) for e in events), tag
    # Each epoch's confusion matrix as the trainer's figure draws metrics.jsonl's.
    for record, event in zip(records, board.Images("confusion_matrix")):
        reference = figures.confusion_matrix(record["confusion"], labels.CLASS_NAMES, logged_run.parent / "c.png",
                                             f"synthetic, tiny/full: epoch {record['epoch']}")
        same = np.array_equal(png_pixels(event.encoded_image_string), png_pixels(reference.read_bytes()))
        assert same, f"epoch {record['epoch']}'s confusion_matrix is not metrics.jsonl's"
    # The last epoch's w_g grid as fig. 10 draws last.pt's model on the trace's probe faces.
    settings = small_settings(logged_run, val_fraction=0.25)
    settings.validate()  # fills in the preset's model
    model, _ = load_model(logged_run / "last.pt", torch.device("cpu"))
    indices = np.load(logged_run / "attention_trace.npz")["probe_index"]
    test_set = load_test_split(settings, 32)
    faces = np.asarray(test_set.images[indices])
    probabilities, w_g, _ = predict(model, faces, torch.device("cpu"))
    titles = [f"{labels.CLASS_NAMES[t]} #{i}\npredicted {labels.CLASS_NAMES[g]}"
              for t, i, g in zip(test_set.labels[indices], indices, probabilities.argmax(dim=1).tolist())]
    reference = figures.nonlocal_weight_grid(faces, w_g.numpy(), titles, model.geometry, logged_run.parent / "w.png")
    last = board.Images("nonlocal_weights")[-1].encoded_image_string
    same = np.array_equal(png_pixels(last), png_pixels(reference.read_bytes()))
    assert same, "the last epoch's nonlocal_weights is not fig. 10 of last.pt's model"


def test_logging_changes_nothing_and_the_default_run_needs_no_tensorboard(logged_run, monkeypatch):
    """The run without `tensorboard`, with the package made unimportable, trains exactly the
    logged run: the same metrics, weights and attention trace."""
    for name in ("tensorboard", "torch.utils.tensorboard"):
        monkeypatch.setitem(sys.modules, name, None)
    plain = logged_run.parent / "plain"
    train(small_settings(plain, val_fraction=0.25, trace_images=4, progress="none"))
    assert not (plain / "tb").exists()
    strip = lambda records: [{k: v for k, v in r.items() if k not in WALL_CLOCK} for r in records]  # noqa: E731
    assert strip(read_metrics(plain)) == strip(read_metrics(logged_run))
    ours, theirs = (torch.load(run / "last.pt", weights_only=True)["model"] for run in (plain, logged_run))
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    ours, theirs = (np.load(run / "attention_trace.npz") for run in (plain, logged_run))
    assert np.array_equal(ours["w_g"], theirs["w_g"])


def test_importing_the_trainer_does_not_import_tensorboard():
    code = ("import sys, lnlatten_fast.train, lnlatten_fast.training.trainer; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'tensorboard' or 'utils.tensorboard' in m))")
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert found.strip() == "[]"


def test_resume_logs_each_epoch_once(tmp_path):
    """A run killed after logging epoch 2 but before epoch 2's last.pt was written retrains
    epoch 2: TensorBoard must show that epoch once, with the values of the epoch trained again."""
    out = tmp_path / "run"
    train(small_settings(out, epochs=1, tensorboard=True, progress="none"))
    killed = SummaryWriter(str(out / "tb"))  # what the killed run logged of epoch 2
    for tag in CPU_SCALARS.values():
        killed.add_scalar(tag, 99.0, 2)
    for tag in IMAGES:
        killed.add_image(tag, np.zeros((4, 4, 3), np.uint8), 2, dataformats="HWC")
    killed.close()
    train(small_settings(out, epochs=2, tensorboard=True, progress="none", resume=True))
    records = read_metrics(out)
    assert [r["epoch"] for r in records] == [1, 2]
    board = read_board(out)
    assert_scalars_match(board, records, CPU_SCALARS)
    for tag in IMAGES:
        assert [(e.step, e.width > 4) for e in board.Images(tag)] == [(1, True), (2, True)], tag


def test_missing_package_is_one_error_line(tmp_path, monkeypatch, capsys):
    for name in ("tensorboard", "torch.utils.tensorboard"):
        monkeypatch.setitem(sys.modules, name, None)
    out = tmp_path / "run"
    status = train_cli.main(["--tensorboard", "--epochs", "1", "--synthetic-train", "14", "--synthetic-test", "7",
                             "--image-size", "32", "--out", str(out), "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(err) == 1 and err[0].startswith("error: --tensorboard"), err
    assert "pip install 'lnlatten_fast[tensorboard]'" in err[0]
    assert not out.exists()  # refused before anything was written


def test_gpu_telemetry_becomes_scalars(tmp_path):
    """A CUDA epoch's record carries `gpu`: each of its numbers is logged, its name and driver are not."""
    rng = np.random.default_rng(0)
    test_set = ImageSet(rng.integers(0, 256, (7, 32, 32, 3), dtype=np.uint8), np.arange(7))
    model = lf.LNLAttenNet(lf.LNLConfig.tiny(image_size=32))
    gpu = {"gpu": "NVIDIA H100", "driver": "550.1", "samples": 4, "utilisation_mean": 87.5,
           "utilisation_peak": 99.0, "memory_used_peak_bytes": 3 * 2**30, "power_mean_watts": 412.25,
           "temperature_peak_c": 61.0, "torch_max_memory_allocated_bytes": 2**31}
    record = {"epoch": 3, "train_loss": 1.5, "test_accuracy": 0.5, "test_mean_class_accuracy": 0.25, "lr": 3e-4,
              "train_seconds": 2.0, "test_seconds": 0.5, "images_per_second": 1000.0,
              "confusion": np.eye(7, dtype=int).tolist(), "gpu": gpu}
    with EpochBoard(tmp_path, 2, test_set, 4, "a test") as board:
        board.log_epoch(record, model, model.geometry, torch.device("cpu"), "fp32")
    logged = read_board(tmp_path)
    numbers = {k: v for k, v in gpu.items() if k not in ("gpu", "driver")}
    assert {t for t in logged.Tags()["scalars"] if t.startswith("gpu/")} == {f"gpu/{k}" for k in numbers}
    for name, value in numbers.items():
        [event] = logged.Scalars(f"gpu/{name}")
        assert (event.step, event.value) == (3, np.float32(value)), name

"""Faults a long training run meets, and what the run does about them (issue: a diverged or
interrupted run never lies, bad data never slips through silently).

Each test names the fault it injects; each was seen to fail before its fix.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers import read_metrics
from helpers import small_settings as shared_small_settings

import lnlatten_fast.training.trainer as trainer_module
from lnlatten_fast.config import LNLConfig
from lnlatten_fast.data.cache import ImageSet
from lnlatten_fast.errors import TrainingDivergedError
from lnlatten_fast.model import LNLAttenNet
from lnlatten_fast.training import checkpoint, distributed, metrics
from lnlatten_fast.training.evaluation import evaluate
from lnlatten_fast.training.trainer import train


def small_settings(out, **changes):
    """helpers.small_settings with 3 epochs: divergence and kills happen in epoch 2."""
    return shared_small_settings(out, **{"epochs": 3, **changes})


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


# ---- interrupted runs and resume ------------------------------------------------------------------
from lnlatten_fast.training import run_dir as runs  # noqa: E402

@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "whole"
    train(small_settings(out))
    return out


# A training process that SIGKILLs itself at one point of epoch 2 (argv: out, cache, point).
_KILLED_RUN = r"""
import os, signal, sys
from pathlib import Path
import torch
from lnlatten_fast.config import LNLConfig
from lnlatten_fast.training import checkpoint, run_dir as runs
from lnlatten_fast.training.settings import TrainSettings
from lnlatten_fast.training.trainer import train

out, cache, point, epoch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
real_replace, real_append = os.replace, runs.append_epoch

def replace(src, dst):
    if point == "before-rename" and Path(dst).name == "last.pt" and torch.load(src, weights_only=True)["epoch"] == epoch:
        os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(src, dst)

def append(run_dir, record):
    if point == "after-rename" and record["epoch"] == epoch:
        os.kill(os.getpid(), signal.SIGKILL)
    return real_append(run_dir, record)

checkpoint.os.replace = replace
runs.append_epoch = append
train(TrainSettings(epochs=3, batch_size=16, model=LNLConfig.tiny(image_size=32), synthetic_train=56,
                    synthetic_test=21, out=out, cache_dir=cache, seed=3))
"""


@pytest.mark.parametrize("point,epoch", [("before-rename", 2), ("after-rename", 2), ("before-rename", 1)])
def test_a_run_killed_between_its_writes_resumes_to_the_uninterrupted_history(uninterrupted, tmp_path, point, epoch):
    """Fault: SIGKILL with last.pt's temporary written but not renamed (in epoch 2, or in epoch 1
    when no last.pt exists yet), or with last.pt renamed but the metrics not yet appended.
    Before: --resume wrote epochs [1, 2, 2, 3] (or silently started over: [1, 1, 2, 3]), and
    the temporary file stayed."""
    out = tmp_path / "run"
    killed = subprocess.run([sys.executable, "-c", _KILLED_RUN, str(out), str(tmp_path / "cache"), point, str(epoch)],
                            capture_output=True, text=True, timeout=600, check=False)
    assert killed.returncode == -9, killed.stderr[-2000:]
    if point == "before-rename":
        assert list(out.glob(".last.pt.*.tmp"))  # the killed writer's leftover
    train(small_settings(out, resume=True))
    assert read_metrics(out) == read_metrics(uninterrupted)
    assert checkpoint.load(out / "last.pt")["epoch"] == 3
    assert [line.split(",")[0] for line in (out / "metrics.csv").read_text().splitlines()] == ["epoch", "1", "2", "3"]
    assert not list(out.glob(".*.tmp"))


def _cli(*argv, timeout=600):
    return subprocess.run([sys.executable, "-m", "lnlatten_fast.train", *argv], capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.fixture(scope="module")
def one_epoch_cli_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    out = root / "run"
    result = _cli("--image-size", "32", "--epochs", "1", "--batch-size", "16", "--synthetic-train", "56",
                  "--synthetic-test", "21", "--lr", "0.001", "--out", str(out), "--cache-dir", str(root / "cache"))
    assert result.returncode == 0, result.stderr[-2000:]
    return out


@pytest.mark.parametrize("flags,named", [
    (["--image-size", "48"], "--image-size"),
    (["--lr", "0.5"], "--lr"),
    (["--seed", "9"], "--seed"),
    (["--num-patches", "9"], "--num-patches"),
    (["--batch", "8"], "--batch-size"),  # an abbreviation is the same flag
])
def test_resume_refuses_a_changed_setting_before_writing_anything(one_epoch_cli_run, flags, named):
    """Fault: --resume with flags that change the model, data or optimisation. Before: accepted
    silently (trained at the new size, ignored the lr, rewrote config.json), or a size-mismatch
    traceback after config.json was overwritten."""
    out = one_epoch_cli_run
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != ".lock"}
    result = _cli("--resume", "--out", str(out), "--epochs", "2", *flags)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {named} cannot change when resuming"), result.stderr
    assert "Traceback" not in result.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != ".lock"} == before


def test_resume_takes_the_runs_settings_and_repeated_flags_are_fine(one_epoch_cli_run, tmp_path):
    """The run's lr (0.001) is kept without --lr; repeating it is allowed; only --epochs changes."""
    out = tmp_path / "copy"
    import shutil

    shutil.copytree(one_epoch_cli_run, out)
    result = _cli("--resume", "--out", str(out), "--epochs", "2", "--lr", "0.001")
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"resuming {out} at epoch 1" in result.stdout
    payload = checkpoint.load(out / "last.pt")
    assert payload["settings"]["lr"] == 0.001 and payload["epoch"] == 2 and payload["settings"]["epochs"] == 2
    assert [h["epoch"] for h in read_metrics(out)] == [1, 2]


def test_resume_of_a_run_that_does_not_exist_is_an_error(tmp_path):
    """Fault: `--resume --out typo`. Before: a fresh run started silently."""
    result = _cli("--resume", "--out", str(tmp_path / "typo"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: --out {tmp_path / 'typo'} holds no run to resume (no last.pt, no config.json)")
    assert not (tmp_path / "typo").exists()


def test_a_second_process_on_the_same_run_directory_is_refused(tmp_path):
    """Fault: two runs on one --out. Before: their metrics interleaved."""
    out = tmp_path / "run"
    with runs.RunLock(out):
        with pytest.raises(ValueError, match="in use by another training process") as error:
            train(small_settings(out))
        assert error.value.parameter == "out"
        assert not (out / "config.json").exists()


def test_a_full_disk_names_the_file_and_leaves_no_partial_file(tmp_path, monkeypatch):
    """Fault: ENOSPC while saving. Before: torch's `unexpected pos ...`, and the partial
    temporary file kept the disk full."""

    def torn_save(obj, fh):
        fh.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:778] . unexpected pos 64 vs 0")

    monkeypatch.setattr(checkpoint.torch, "save", torn_save)
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda path: type("U", (), {"free": 0})())
    with pytest.raises(OSError, match=r"could not write checkpoint .*last\.pt: no space left on device"):
        checkpoint.save_atomic({"model": {"w": torch.ones(2)}}, tmp_path / "last.pt")
    assert list(tmp_path.iterdir()) == []


def test_a_write_error_is_one_cli_line(tmp_path):
    """Fault: an --out that cannot be created (under a regular file; a read-only folder does not
    stop root). Before: a NotADirectoryError traceback."""
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = _cli("--image-size", "32", "--epochs", "1", "--synthetic-train", "16", "--synthetic-test", "8",
                  "--out", str(blocker / "run"), "--cache-dir", str(tmp_path / "cache"))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and str(blocker) in last


# ---- validation up front -------------------------------------------------------------------------
@pytest.mark.parametrize("flags,message", [
    (["--image-size", "16"], "error: --image-size 16 with 16 windows gives 4 px windows; SimpleNet's three 2x2 pools "
                             "need >= 8 px: use --image-size >= 32 or fewer --num-patches"),
    (["--synthetic-train", "0"], "error: --synthetic-train must be positive"),
    (["--synthetic-test", "0"], "error: --synthetic-test must be positive"),
    (["--val-fraction", "0.01", "--synthetic-train", "7"], "error: --val-fraction gives an empty validation split"),
    (["--backend", "triton"], "error: --backend 'triton' cannot run on cpu: "),
])
def test_bad_runs_are_refused_up_front_with_one_line(tmp_path, flags, message):
    """Faults: windows too small for three poolings (before: failed inside the forward pass,
    naming no flag), --synthetic-train 0 (before: trained forever on nothing), an empty
    validation split (before: NaN accuracy, no best.pt), the triton backend on a CPU without the
    interpreter (before: a traceback). Nothing is written."""
    if flags[0] == "--backend" and torch.cuda.is_available():
        pytest.skip("a CUDA machine runs the triton backend")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # a user's plain shell
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "lnlatten_fast.train", "--epochs", "1", "--out", str(out),
                             "--cache-dir", str(tmp_path / "cache"), *flags],
                            capture_output=True, text=True, timeout=600, check=False, env=env)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(message), result.stderr
    assert not (out / "metrics.jsonl").exists() and not list(out.glob("*.pt"))


def test_smallest_image_size_per_patch_count():
    assert LNLConfig.tiny(num_patches=16).smallest_image_size() == 32
    assert LNLConfig.tiny(num_patches=4).smallest_image_size() == 16
    assert LNLConfig.tiny(num_patches=1).smallest_image_size() == 16


def test_a_checkpoint_whose_class_count_disagrees_with_its_config_is_one_error(tmp_path, capsys):
    """Fault: a checkpoint whose head has 8 classes while its config says 7. Before: a
    size-mismatch traceback from load_state_dict."""
    from lnlatten_fast import evaluate as evaluate_cli

    model = LNLAttenNet(LNLConfig.tiny(image_size=32))
    state = model.state_dict()
    head = [k for k in state if state[k].shape[:1] == (7,)][-1]
    state[head] = torch.zeros((8, *state[head].shape[1:]))
    settings = small_settings(tmp_path / "run")
    settings.validate()
    checkpoint.save_atomic(dict(model=state, config=settings.model.to_dict(), settings=settings.to_dict(), epoch=1,
                                test_accuracy=0.5, class_names=[], fold=None), tmp_path / "bad.pt")
    assert evaluate_cli.main(["--checkpoint", str(tmp_path / "bad.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: checkpoint {tmp_path / 'bad.pt'} does not match its config") and head in err


@pytest.mark.parametrize("flags,message", [
    (["--top", "0"], "error: --top 0: expected 1 to 7"),
    (["--heatmap", "out.tiff"], "error: --heatmap out.tiff: expected a file ending in .png"),
])
def test_predict_refuses_bad_flags_before_loading(tmp_path, capsys, flags, message):
    from lnlatten_fast import predict as predict_cli

    assert predict_cli.main(["face.png", "--checkpoint", str(tmp_path / "none.pt"), *flags]) == 2
    assert capsys.readouterr().err.strip().startswith(message)


# ---- images -------------------------------------------------------------------------------------
from PIL import Image  # noqa: E402

from lnlatten_fast.data import load_image  # noqa: E402
from lnlatten_fast.data.images import FaceBoxError, ImageDecodeError  # noqa: E402


def test_16_bit_images_are_scaled_not_saturated(tmp_path):
    """Fault: a 16-bit PNG. Before: 97-99% of the pixels became 255."""
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)  # 0..65520
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")
    pixels = load_image(path)
    assert pixels.shape == (64, 64, 3) and pixels.dtype == np.uint8
    expected = np.rint(ramp.astype(np.float64) / 65535 * 255)
    assert np.abs(pixels[..., 0].astype(np.float64) - expected).max() <= 1
    assert (pixels == 255).mean() < 0.01


def test_float_images_in_0_1_are_scaled(tmp_path):
    values = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    path = tmp_path / "float.tiff"
    Image.fromarray(values, mode="F").save(path)
    pixels = load_image(path)
    assert pixels[0, 0, 0] == 0 and pixels[-1, -1, 0] == 255 and 120 <= pixels[16, 0, 0] <= 135


def test_exif_orientation_is_applied(tmp_path):
    """Fault: a phone photo stored sideways with EXIF Orientation 6. Before: decoded sideways."""
    stored = np.zeros((20, 40, 3), dtype=np.uint8)  # 40 wide, 20 high as stored
    stored[:, :20] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to view
    path = tmp_path / "phone.jpg"
    Image.fromarray(stored).save(path, exif=exif, quality=95)
    pixels = load_image(path)
    assert pixels.shape == (40, 20, 3)  # upright: 20 wide, 40 high
    assert pixels[:20].mean() > 200 and pixels[20:].mean() < 50  # the white half is now on top


def test_a_decompression_bomb_is_named(tmp_path, monkeypatch):
    """Fault: an image whose header claims far more pixels than Pillow allows. Before: a
    DecompressionBombError traceback that never named the file."""
    path = tmp_path / "bomb.png"
    Image.fromarray(np.zeros((40, 40), dtype=np.uint8)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ImageDecodeError, match=r"cannot decode image .*bomb\.png: decompression bomb"):
        load_image(path)


def test_a_box_outside_the_image_is_an_error(tmp_path):
    """Fault: an AffectNet face box past the image's edge. Before: an all-black training image."""
    path = tmp_path / "face.png"
    Image.fromarray(np.zeros((30, 30, 3), dtype=np.uint8)).save(path)
    with pytest.raises(FaceBoxError, match="outside the 30x30 image"):
        load_image(path, 16, box=(10, 10, 30, 5))
    assert load_image(path, 16, box=(0, 0, 30, 30)).shape == (16, 16, 3)


def _face_folder(root, corrupt: int = 0):
    """root/{train,test}/<Class>/<i>.png: 2 train and 1 test image per class, `corrupt` of the
    training files replaced by bytes that are not an image."""
    rng = np.random.default_rng(0)
    from lnlatten_fast.data.labels import CLASS_NAMES

    for split, count in (("train", 2), ("test", 1)):
        for name in CLASS_NAMES:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    bad = sorted((root / "train").glob("*/0.png"))[:corrupt]
    for path in bad:
        path.write_bytes(b"\x89PNG truncated")
    return bad


def test_an_undecodable_image_is_skipped_and_listed_or_fatal_with_strict(tmp_path):
    """Fault: one corrupt image in the training set. Before: the whole cache build aborted."""
    data = tmp_path / "faces"
    bad = _face_folder(data, corrupt=1)
    base = ["--dataset", "folder", "--data-root", str(data), "--image-size", "32", "--epochs", "1",
            "--batch-size", "4", "--cache-dir", str(tmp_path / "cache")]
    result = _cli(*base, "--out", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr[-2000:]
    listed = (tmp_path / "run" / "skipped.txt").read_text().splitlines()
    assert len(listed) == 1 and listed[0].startswith(f"{bad[0]}\t")
    assert "1 image(s) could not be decoded" in result.stderr
    strict = _cli(*base, "--strict", "--out", str(tmp_path / "strict"))
    assert strict.returncode == 2 and "Traceback" not in strict.stderr
    assert strict.stderr.strip().splitlines()[-1].startswith(f"error: cannot decode image {bad[0]}")


def test_a_torn_cache_file_is_rebuilt_and_named(tmp_path, capsys):
    """Fault: a cache .npy cut short (a full disk, a killed copy). Before: it stayed broken and
    its name was never given."""
    from lnlatten_fast.data.sources import load_split

    first = load_split("synthetic", "train", 32, cache_dir=tmp_path, synthetic_size=14)
    expected = np.array(first.images)
    (npy,) = [p for p in tmp_path.glob("synthetic-train-32px-*.npy") if not p.name.endswith(".labels.npy")]
    npy.write_bytes(npy.read_bytes()[:1000])
    again = load_split("synthetic", "train", 32, cache_dir=tmp_path, synthetic_size=14)
    assert np.array_equal(np.array(again.images), expected)
    assert f"warning: cache file {npy} is unreadable" in capsys.readouterr().err


# ---- readers ------------------------------------------------------------------------------------
from lnlatten_fast.data.datasets import read_affectnet, read_dataset, read_ferplus, read_manifest  # noqa: E402


def _manifest(tmp_path, rows):
    path = tmp_path / "manifest.csv"
    path.write_text("path,label,split\n" + "".join(f"{r}\n" for r in rows))
    return path


def test_unknown_manifest_split_values_are_errors(tmp_path):
    """Fault: split `training`. Before: the row was dropped silently."""
    path = _manifest(tmp_path, ["a.png,happy,train", "b.png,sad,training"])
    with pytest.raises(ValueError, match=rf"{path}, line 3: split must be one of train, test, val, got 'training'"):
        read_manifest(path, "all", check_files=False)


def test_an_image_in_both_train_and_test_is_an_error(tmp_path):
    """Fault: the same file listed in train and test. Before: accepted, leaking the test set."""
    path = _manifest(tmp_path, ["a.png,happy,train", "b.png,sad,test", "a.png,happy,test"])
    for split in ("train", "all"):
        with pytest.raises(ValueError, match=rf"line 4: a.png is listed in 'test' here and in 'train' at {path}, line 2"):
            read_dataset("manifest", path, split, check_files=False)


def test_rafdb_duplicates_conflicting_labels_are_errors_exact_ones_warnings(tmp_path, capsys):
    """Fault: an image listed twice with different labels. Before: both were kept."""
    labels = tmp_path / "list_patition_label.txt"
    labels.write_text("train_00001.jpg 4\ntrain_00002.jpg 1\ntrain_00001.jpg 4\n")
    samples = read_dataset("rafdb", labels, "train", check_files=False)
    assert len(samples) == 2 and "1 exact duplicate record(s) ignored" in capsys.readouterr().err
    labels.write_text("train_00001.jpg 4\ntrain_00002.jpg 1\ntrain_00001.jpg 5\n")
    with pytest.raises(ValueError, match=rf"{labels}, line 3: train_00001.jpg is labelled Sadness here but Happiness at {labels}, line 1"):
        read_dataset("rafdb", labels, "train", check_files=False)


def test_ignored_files_and_dangling_links_are_counted(tmp_path, capsys):
    """Fault: a dangling symlink and a .txt among the images. Before: skipped without a count."""
    _face_folder(tmp_path / "faces")
    happy = tmp_path / "faces" / "train" / "Happiness"
    (happy / "notes.txt").write_text("x")
    (happy / "gone.png").symlink_to(tmp_path / "nowhere.png")
    samples = read_dataset("folder", tmp_path / "faces", "train")
    assert len(samples) == 14
    err = capsys.readouterr().err
    assert "ignored 1 dangling links, 1 other files" in err


def test_a_box_outside_the_image_names_the_csv_line(tmp_path):
    images = tmp_path / "Manually_Annotated_Images" / "1"
    images.mkdir(parents=True)
    Image.fromarray(np.zeros((30, 30, 3), dtype=np.uint8)).save(images / "f.png")
    from lnlatten_fast.data.cache import build_image_cache
    from lnlatten_fast.data.datasets import Sample

    sample = Sample(3, path=images / "f.png", box=(5, 5, 40, 40), source="training.csv, line 7")
    with pytest.raises(FaceBoxError, match=r"training.csv, line 7: face box .* outside the 30x30 image"):
        build_image_cache([sample], 16, "box", tmp_path / "cache")


# ---- the parsers take any text: they parse it or raise the documented error ------------------------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FUZZ_EXAMPLES = int(os.environ.get("LNL_FUZZ_EXAMPLES", 60))
_TEXT = st.text(st.sampled_from(list("train_test0123456789.jpgpn,;\" \t\n\rxyzHSAF-/\\é\x00")),
                max_size=300)
_LINES = st.lists(st.one_of(
    st.sampled_from(["train_00001.jpg 4", "test_00002.jpg 7", "train_00001.jpg 5", "x 1", "", "  ",
                     "a.png,happy,train", "a.png,3,test", "b.png,Angry,val", "path,label,split", ",,", "a.png,9,train",
                     "train/x.jpg,4,0,0,10,10,1,0,0", "x.jpg,1,1,-3,5,5,2,0,0", "Training,fer0.png,10,0,0,0,0,0,0,0,0,0"]),
    _TEXT), max_size=12).map("\n".join)


def _parses_or_raises_value_error(call, path):
    try:
        result = call()
    except ValueError as error:
        assert str(path) in str(error) or "split" in str(error), str(error)
        return
    assert isinstance(result, list)


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=_LINES)
def test_fuzz_rafdb_list(tmp_path, text):
    path = tmp_path / "list_patition_label.txt"
    path.write_text(text, encoding="utf-8")
    _parses_or_raises_value_error(lambda: read_dataset("rafdb", path, "all", check_files=False), path)


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=_LINES)
def test_fuzz_manifest(tmp_path, text):
    path = tmp_path / "manifest.csv"
    path.write_text("path,label,split\n" + text, encoding="utf-8")
    _parses_or_raises_value_error(lambda: read_dataset("manifest", path, "train", check_files=False), path)


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=_LINES)
def test_fuzz_affectnet_csv(tmp_path, text):
    root = tmp_path / "affectnet"
    root.mkdir(exist_ok=True)
    header = "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal\n"
    (root / "training.csv").write_text(header + text, encoding="utf-8")
    (root / "validation.csv").write_text(header, encoding="utf-8")
    _parses_or_raises_value_error(lambda: read_affectnet(root, "train", check_files=False), root)


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=_LINES)
def test_fuzz_ferplus_csv(tmp_path, text):
    fer = tmp_path / "fer2013.csv"
    fer.write_text("emotion,pixels,Usage\n" + "0," + " ".join(["0"] * 2304) + ",Training\n", encoding="utf-8")
    plus = tmp_path / "fer2013new.csv"
    plus.write_text("Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF\n"
                    + text, encoding="utf-8")
    _parses_or_raises_value_error(lambda: read_ferplus(fer, plus, "all"), tmp_path)


def test_predict_refuses_nan_probabilities(tmp_path, capsys):
    """Fault: a checkpoint with NaN weights (written before checkpoints refused them). Before:
    `predict` printed `nan` probabilities."""
    from lnlatten_fast import predict as predict_cli

    model = LNLAttenNet(LNLConfig.tiny(image_size=32))
    state = model.state_dict()
    next(iter(v for v in state.values() if torch.is_floating_point(v))).fill_(float("nan"))
    settings = small_settings(tmp_path / "run")
    settings.validate()
    torch.save(dict(model=state, config=settings.model.to_dict(), settings=settings.to_dict(), epoch=1,
                    test_accuracy=0.5, class_names=["a"] * 7, fold=None, format=checkpoint.FORMAT), tmp_path / "nan.pt")
    face = tmp_path / "face.png"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(face)
    assert predict_cli.main([str(face), "--checkpoint", str(tmp_path / "nan.pt")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: checkpoint {tmp_path / 'nan.pt'} gives NaN/inf probabilities: its weights are broken (a diverged run?)")

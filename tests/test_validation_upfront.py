"""Validation up front, in one place (issue 19, deliverable 5): a run that cannot fit is refused
before anything is written, checkpoints are checked against their class names and may be
given as run directories, undefined figures are null (never a bare NaN) in every JSON file,
and every message names the flag at the command line.

Each test names the fault it injects; each was seen to fail before its fix.
"""

from __future__ import annotations

import json
import math
import re
import resource
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import small_settings

import lnlatten_fast
from lnlatten_fast import evaluate as evaluate_cli
from lnlatten_fast import jsonio
from lnlatten_fast import predict as predict_cli
from lnlatten_fast import sweep as sweep_cli
from lnlatten_fast import train as train_cli
from lnlatten_fast.config import LNLConfig
from lnlatten_fast.data.labels import CLASS_NAMES
from lnlatten_fast.errors import ParameterError
from lnlatten_fast.model import LNLAttenNet
from lnlatten_fast.training import checkpoint, inference, memory, run_dir
from lnlatten_fast.training.settings import TrainSettings
from lnlatten_fast.training.trainer import train

GiB = 2**30


def strict_json(text: str):
    """json.loads that refuses the bare NaN / Infinity Python's json writes by default."""
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


def error_lines(text: str) -> list[str]:
    return [line for line in text.strip().splitlines() if line.startswith("error:")]


def save_checkpoint(path: Path, num_classes: int = 7, class_names=None, favourite: int | None = None) -> Path:
    """An untrained tiny 32 px model saved as lnlatten_fast.train saves best.pt; `favourite`
    gets a large bias, so it is every image's top class."""
    config = LNLConfig.tiny(image_size=32, num_classes=num_classes)
    state = LNLAttenNet(config).state_dict()
    if favourite is not None:
        bias = [k for k in state if k.endswith("bias") and state[k].shape == (num_classes,)][-1]
        state[bias][favourite] = 100.0
    settings = small_settings(path.parent)
    settings.validate()
    path.parent.mkdir(parents=True, exist_ok=True)
    names = list(CLASS_NAMES) if class_names is None else class_names
    checkpoint.save_atomic(dict(model=state, config=config.to_dict(), settings=settings.to_dict(), epoch=1,
                                test_accuracy=0.5, class_names=names, fold=None), path)
    return path


def save_faces(folder: Path, names) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.fromarray(np.full((40, 40, 3), 40 * i, dtype=np.uint8)).save(folder / name)
    return folder


# ---- memory, before anything is written -----------------------------------------------------------
def test_image_size_10000_is_refused_by_its_flags_before_anything_is_written(tmp_path):
    """Fault: `--image-size 10000`. Before: config.json was written, then numpy failed to
    allocate 17.9 GiB (or the OOM killer came first). The child's address space is capped, so
    a regression fails on the allocation instead of exhausting the machine."""
    out = tmp_path / "run"
    cap = 16 * GiB
    result = subprocess.run(
        [sys.executable, "-m", "lnlatten_fast.train", "--image-size", "10000", "--out", str(out),
         "--cache-dir", str(tmp_path / "cache")],
        capture_output=True, text=True, timeout=120, check=False,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (cap, cap)),
    )
    assert result.returncode == 2, result.stderr[-2000:]
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert errors[0].startswith("error: --image-size 10000 with --batch-size 32 needs at least "), errors[0]
    assert re.search(r"needs at least \d+\.\d GiB of host memory \(.*cached images.*activations", errors[0])
    assert not out.exists() and not (tmp_path / "cache").exists()


def test_a_batch_that_cannot_fit_is_refused_by_batch_size_in_the_library(tmp_path):
    """The library names the parameters: `batch_size` first when a smaller batch would fit."""
    settings = TrainSettings(preset="paper", dataset="rafdb", data_root=str(tmp_path), batch_size=10**6,
                             out=str(tmp_path / "run"))
    with pytest.raises(ParameterError) as error:
        train(settings)
    assert error.value.parameter == "batch_size" and "`image_size` 144" in error.value.problem
    assert "smaller `batch_size` or `image_size`" in error.value.problem
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("changes", [
    dict(),  # the README's default run
    dict(preset="paper"),  # on the built-in synthetic faces
    dict(preset="paper", dataset="rafdb", data_root="unread"),
])
def test_the_default_run_and_the_paper_preset_fit_a_24_gib_machine(changes, device):
    settings = TrainSettings(**changes)
    settings.validate()
    need = memory.check_memory(settings, torch.device(device), host_available=24 * GiB, device_available=24 * GiB)
    assert need["activations"] > 0 and need["weights"] > 0


# ---- checkpoints -----------------------------------------------------------------------------------
def test_predict_refuses_a_checkpoint_with_8_classes_and_7_class_names(tmp_path, capsys):
    """Fault: a checkpoint whose model has 8 classes and whose class_names are 7. Before:
    `IndexError: list index out of range` from predict."""
    bad = save_checkpoint(tmp_path / "bad" / "best.pt", num_classes=8, favourite=7)
    faces = save_faces(tmp_path / "faces", ["a.png"])
    assert predict_cli.main([str(faces / "a.png"), "--checkpoint", str(bad)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: --checkpoint {bad}: its model has 8 classes but it carries 7 class names (Surprise, Fear, "
        "Disgust, Happiness, Sadness, Anger, Neutral); it was not written by lnlatten_fast.train, or was changed since")
    assert evaluate_cli.main(["--checkpoint", str(bad)]) == 2
    assert error_lines(capsys.readouterr().err)[0].startswith(f"error: --checkpoint {bad}: its model has 8 classes")


def test_predict_uses_the_checkpoints_own_class_names(tmp_path, capsys):
    names = [f"class{i}" for i in range(8)]
    good = save_checkpoint(tmp_path / "good" / "best.pt", num_classes=8, class_names=names, favourite=7)
    faces = save_faces(tmp_path / "faces", ["a.png"])
    assert predict_cli.main([str(faces / "a.png"), "--checkpoint", str(good), "--top", "1"]) == 0
    assert capsys.readouterr().out.startswith(f"{faces / 'a.png'}: class7 1.000")


def test_checkpoint_may_be_a_run_directory_and_image_a_folder(tmp_path, capsys):
    """Fault: `predict DIR` and `--checkpoint RUN_DIR`. Before: both "does not exist".
    Now a folder stands for its image files by name, a run directory for its best.pt."""
    run = tmp_path / "run"
    save_checkpoint(run / "best.pt")
    faces = save_faces(tmp_path / "faces", ["b.png", "a.jpg", "c.PNG"])
    (faces / "notes.txt").write_text("not an image")
    (faces / "inner").mkdir()
    assert predict_cli.main([str(faces), "--checkpoint", str(run)]) == 0
    printed = [line.split(":")[0] for line in capsys.readouterr().out.splitlines() if not line.startswith(" ")]
    assert printed == [str(faces / name) for name in ("a.jpg", "b.png", "c.PNG")]
    assert evaluate_cli.main(["--checkpoint", str(run), "--json"]) == 0
    assert strict_json(capsys.readouterr().out)["checkpoint"] == str(run / "best.pt")  # the file evaluated


def test_a_run_directory_without_best_pt_and_a_folder_without_images_are_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"")
    (run / "metrics.jsonl").write_text("")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert predict_cli.main([str(empty), "--checkpoint", str(run)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: --checkpoint {run} is a directory without best.pt (it holds last.pt, metrics.jsonl); "
        f"pass {run / 'last.pt'} for its last epoch")
    save_checkpoint(run / "best.pt")
    assert predict_cli.main([str(empty), "--checkpoint", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: IMAGE {empty} is a folder without image files (suffixes ") and "\n" not in err


# ---- JSON: null where a figure is undefined ---------------------------------------------------------
def test_num_patches_1_writes_strict_json_and_says_undefined(tmp_path):
    """Fault: `--num-patches 1`. Before: summary.json held a bare NaN, summary.md said "nanx",
    and a RuntimeWarning (division by zero) was printed."""
    out = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        train(small_settings(out, epochs=1, trace_every=0, model=LNLConfig.tiny(image_size=32, num_patches=1)))
    found = strict_json((out / "summary.json").read_text())["localization"]
    assert found["crucial_mass_ratio"] is None and found["crucial_rank_corr"] is None
    assert found["occlusion_other_drop"] is None and found["occlusion_selectivity"] is None
    assert math.isfinite(found["occlusion_own_drop"])
    text = (out / "summary.md").read_text()
    assert "undefined" in text and "nan" not in text.lower().replace("nonlocal", "")
    for line in (out / "metrics.jsonl").read_text().splitlines():
        strict_json(line)
    strict_json((out / "config.json").read_text())


def test_metrics_lines_write_nan_as_null(tmp_path):
    run_dir.append_epoch(tmp_path, {"epoch": 1, "train_loss": float("nan"), "confusion": [[float("inf"), 1.0]]})
    run_dir.rewrite_metrics(tmp_path, [{"epoch": 1, "test_accuracy": float("-inf")}])
    assert strict_json((tmp_path / "metrics.jsonl").read_text()) == {"epoch": 1, "test_accuracy": None}
    assert jsonio.dumps({"a": float("nan"), "b": (1.5, float("inf"))}) == '{"a": null, "b": [1.5, null]}'


def test_every_json_file_the_package_writes_goes_through_jsonio():
    package = Path(lnlatten_fast.__file__).parent
    raw = [f"{path.relative_to(package)}:{n}" for path in package.rglob("*.py") if path.name != "jsonio.py"
           for n, line in enumerate(path.read_text().splitlines(), 1) if re.search(r"\bjson\.dumps?\(", line)]
    assert raw == []


# ---- messages name flags ------------------------------------------------------------------------------
TRAIN_CASES = [
    (["--seed", "-1"], "--seed"),
    (["--seed", str(2**64)], "--seed"),
    (["--image-size", "10000"], "--image-size"),
    (["--preset", "paper", "--dataset", "rafdb", "--data-root", ".", "--batch-size", "1000000"], "--batch-size"),
    (["--num-patches", "2"], "--num-patches"),
    (["--overlap", "-1"], "--num-patches"),
    (["--local-feature-size", "3"], "--local-feature-size"),
    (["--synthetic-occlusion", "2"], "--synthetic-occlusion"),
    (["--trace-images", "-1"], "--trace-images"),
    (["--workers", "-1"], "--workers"),
    (["--folds", "2"], "--folds"),
]


@pytest.mark.parametrize("flags,flag", TRAIN_CASES, ids=[" ".join(flags) for flags, _ in TRAIN_CASES])
def test_train_names_the_flag_and_writes_nothing(tmp_path, capsys, flags, flag):
    """Fault: `--seed -1`. Before: "error: seed must be >= 0" (the data layer's name), after
    config.json was written. Every bad value in the table is refused by its flag up front."""
    out = tmp_path / "run"
    assert train_cli.main([*flags, "--out", str(out), "--cache-dir", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err
    assert len(error_lines(err)) == 1 and error_lines(err)[0].startswith(f"error: {flag} "), err
    assert not out.exists()


def test_evaluate_predict_and_sweep_name_their_flags(tmp_path, capsys, monkeypatch):
    """Faults: `evaluate --batch-size 0` ("batch_size must be positive", the loader's name) and a
    backend that cannot run on the device (a RuntimeError traceback)."""
    run = tmp_path / "run"
    save_checkpoint(run / "best.pt")

    def cannot_run(backend, device):  # as dispatch refuses Triton on a machine without it
        raise RuntimeError(f"backend {backend!r} cannot run on {torch.device(device).type}: no GPU here")

    monkeypatch.setattr(inference, "resolve_name", cannot_run)
    cases = [
        (lambda: evaluate_cli.main(["--checkpoint", str(run), "--batch-size", "0"]), "error: --batch-size 0"),
        (lambda: evaluate_cli.main(["--checkpoint", str(run), "--backend", "triton", "--device", "cpu"]),
         "error: --backend 'triton' cannot run on cpu: no GPU here"),
        (lambda: sweep_cli.main(["variants", "--out", str(tmp_path / "sweep"), "--epochs", "0"]), "error: --epochs"),
        (lambda: sweep_cli.main(["variants", "--out", str(tmp_path / "sweep"), "--seed", "3"]), "error: --seed"),
    ]
    for call, message in cases:
        assert call() == 2, message
        err = capsys.readouterr().err
        assert len(error_lines(err)) == 1 and error_lines(err)[0].startswith(message), (message, err)

"""The trainer end to end on a small synthetic run, its CLIs, resume, and 2-process DDP."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers import read_metrics, small_settings

from lnlatten_fast import evaluate as evaluate_cli
from lnlatten_fast import predict as predict_cli
from lnlatten_fast import train as train_cli
from lnlatten_fast.config import LNLConfig
from lnlatten_fast.errors import ParameterError, cli_message
from lnlatten_fast.training import checkpoint, metrics
from lnlatten_fast.training.settings import TrainSettings
from lnlatten_fast.training.trainer import train

RUN_FILES = {
    "config.json", "metrics.jsonl", "metrics.csv", "last.pt", "best.pt",
    "confusion_matrix.png", "summary.md", "summary.json",
}
SUMMARY_KEYS = {
    "test_accuracy_last10_mean", "test_accuracy_best", "mean_class_accuracy", "epochs",
    "images_per_second", "dataset", "preset", "variant", "backend",
}
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    summary = train(small_settings(out))
    return out, summary


def test_run_directory_holds_every_artefact(finished_run):
    out, summary = finished_run
    assert RUN_FILES <= {p.name for p in out.iterdir()}
    written = json.loads((out / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(written)
    assert written["epochs"] == 2 and written["dataset"] == "synthetic" and written["preset"] == "tiny"
    history = read_metrics(out)
    assert [h["epoch"] for h in history] == [1, 2]
    assert written["test_accuracy_last10_mean"] == pytest.approx(sum(h["test_accuracy"] for h in history) / 2)
    assert written["test_accuracy_best"] == max(h["test_accuracy"] for h in history)
    csv_lines = (out / "metrics.csv").read_text().splitlines()
    assert len(csv_lines) == 3 and csv_lines[0].startswith("epoch,")
    for name in ("last.pt", "best.pt"):
        payload = torch.load(out / name, weights_only=True)
        assert payload["config"]["image_size"] == 32 and "model" in payload
    assert "test accuracy" in (out / "summary.md").read_text()
    # The background writer: each epoch says how long the loop waited for its checkpoint, and
    # last.pt's history is the metrics file's, field for field.
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(0 <= line["checkpoint_blocking_seconds"] < 60 for line in lines)
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["history"] == lines
    assert set(last["rng"]) >= {"cpu"}  # every device's generator (see checkpoint.rng_state)
    assert written["warmup_seconds"] == 0.0  # CPU eager: nothing to warm up before epoch 1


def test_same_seed_gives_identical_metrics(finished_run, tmp_path):
    out, _ = finished_run
    train(small_settings(tmp_path / "again"))
    assert read_metrics(tmp_path / "again") == read_metrics(out)


def test_resume_continues_exactly(finished_run, tmp_path):
    out, _ = finished_run
    half = tmp_path / "half"
    train(small_settings(half, epochs=1))
    train(small_settings(half, epochs=2, resume=True))
    assert read_metrics(half) == read_metrics(out)


def test_refuses_to_overwrite_a_finished_run(finished_run):
    out, _ = finished_run
    with pytest.raises(FileExistsError, match="pass `resume`") as error:
        train(small_settings(out))
    assert error.value.parameter == "out"
    assert "already holds a run; pass --resume" in cli_message(error.value)


def test_evaluate_reproduces_the_recorded_accuracy(finished_run, capsys):
    out, _ = finished_run
    for name in ("best.pt", "last.pt"):
        assert evaluate_cli.main(["--checkpoint", str(out / name), "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["accuracy"] == pytest.approx(result["recorded_test_accuracy"], abs=1e-9)
    last = json.loads((out / "summary.json").read_text())["test_accuracy_final"]
    assert result["accuracy"] == pytest.approx(last, abs=1e-9)


def test_predict_prints_top3_and_draws_the_heatmap(finished_run, tmp_path, capsys):
    from PIL import Image

    from lnlatten_fast.data.synthetic import generate

    out, _ = finished_run
    face = tmp_path / "face.png"
    Image.fromarray(generate(1, size=80, seed=9)["images"][0]).save(face)
    heatmap = tmp_path / "heat.png"
    code = predict_cli.main([str(face), "--checkpoint", str(out / "best.pt"), "--heatmap", str(heatmap)])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    probs = [float(part.split()[-1]) for part in lines[0].split(": ", 1)[1].split(", ")]
    assert len(probs) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    # w_g and w_l of the 4x4 regions: w_g sums to 1, w_l in (0, 1)
    w_g = [float(v) for v in lines[1].split(": ", 1)[1].replace("|", " ").split()]
    w_l = [float(v) for v in lines[2].split(": ", 1)[1].replace("|", " ").split()]
    assert lines[1].startswith("  w_g (4x4): ") and lines[2].startswith("  w_l (4x4): ")
    assert len(w_g) == len(w_l) == 16 and abs(sum(w_g) - 1) < 0.01 and all(0 < w < 1 for w in w_l)
    assert heatmap.stat().st_size > 1000


def _train_one_cli_epoch(out, *flags):
    """`python -m lnlatten_fast.train` for one small CPU epoch into `out`; returns `out`."""
    code = train_cli.main(["--device", "cpu", "--epochs", "1", "--image-size", "32", "--batch-size", "16",
                           "--out", str(out), "--cache-dir", str(out.parent / "cache"), *flags])
    assert code == 0
    return out


def test_bf16_precision_trains_on_cpu_and_evaluates(tmp_path, capsys):
    """--precision bf16 on CPU runs the GPU's path (bf16 autocast) end to end; evaluate reuses
    the run's precision and reproduces the recorded accuracy."""
    out = _train_one_cli_epoch(tmp_path / "bf16", "--precision", "bf16", "--synthetic-train", "64",
                               "--synthetic-test", "32")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["precision"] == "bf16"
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    for key in ("train_loss", "test_accuracy", "test_mean_class_accuracy"):
        assert record[key] == record[key] and abs(record[key]) != float("inf"), key  # finite
    assert 0 <= record["test_accuracy"] <= 1 and record["train_loss"] > 0
    capsys.readouterr()
    assert evaluate_cli.main(["--checkpoint", str(out / "last.pt"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["accuracy"] == pytest.approx(result["recorded_test_accuracy"], abs=1e-9)


def test_precision_resolves_per_device():
    from lnlatten_fast.training.precision import resolve_precision

    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp8", torch.device("cpu"))


def test_cli_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit):
        train_cli.main(["--help"])
    text = capsys.readouterr().out
    for flag in ("--dataset", "--data-root", "--preset", "--epochs", "--batch-size", "--lr", "--variant",
                 "--alpha", "--num-patches", "--overlap", "--backend", "--device", "--seed", "--out",
                 "--resume", "--workers", "--compile", "--cuda-graphs", "--deterministic", "--folds", "--precision"):
        assert flag in text


def test_cli_bad_flags_are_named(tmp_path, capsys):
    assert train_cli.main(["--epochs", "0", "--out", str(tmp_path / "x")]) == 2
    assert "--epochs must be positive" in capsys.readouterr().err
    assert train_cli.main(["--dataset", "rafdb", "--out", str(tmp_path / "y")]) == 2
    assert "--data-root is required" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_cli.main(["--resume"])
    with pytest.raises(SystemExit):
        train_cli.main(["--precision", "fp8"])
    assert "--precision" in capsys.readouterr().err
    assert train_cli.main(["--cuda-graphs", "--out", str(tmp_path / "g")]) == 2
    assert "--cuda-graphs needs compile" in capsys.readouterr().err
    if not torch.cuda.is_available():  # named before anything is written
        assert train_cli.main(["--cuda-graphs", "--compile", "--device", "cpu", "--out", str(tmp_path / "c")]) == 2
        assert "--cuda-graphs needs a CUDA device" in capsys.readouterr().err
        assert not (tmp_path / "c").exists()


def test_model_flags_are_the_config_fields(capsys):
    """Every LNLConfig field with flag help is a flag, documented with its per-preset default;
    the flags given land in the preset's config, and nothing else does."""
    from lnlatten_fast.cli import MODEL_FLAGS

    assert {"image_size", "num_patches", "overlap", "alpha", "variant", "l2_lambda", "backend"} <= set(MODEL_FLAGS)
    with pytest.raises(SystemExit):
        train_cli.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in MODEL_FLAGS:
        assert "--" + name.replace("_", "-") in text
    assert "tiny 64, paper 144" in text  # --image-size's default under each preset
    parse = train_cli.build_parser().parse_args
    settings = train_cli.settings_from_args(parse([]))
    assert settings.preset == "tiny" and settings.model == LNLConfig.tiny()
    settings = train_cli.settings_from_args(parse(
        ["--preset", "paper", "--alpha", "0.5", "--image-size", "auto", "--overlap", "none", "--l2-lambda", "0.002"]
    ))
    assert settings.model == LNLConfig.paper(alpha=0.5, l2_lambda=0.002)
    settings = train_cli.settings_from_args(parse(["--num-patches", "9", "--overlap", "4", "--variant", "local"]))
    assert settings.model == LNLConfig.tiny(num_patches=9, overlap=4, variant="local")


def test_l2_lambda_reaches_the_model_config(tmp_path):
    """--l2-lambda used to stop at TrainSettings: config.json and the checkpoints said 1e-4
    whatever the run used. Now it is the model config's λ, and the optimizer uses it."""
    out = _train_one_cli_epoch(tmp_path / "l2", "--synthetic-train", "16", "--synthetic-test", "8",
                               "--l2-lambda", "0.003")
    recorded = json.loads((out / "config.json").read_text())
    assert recorded["settings"]["model"]["l2_lambda"] == 0.003 == recorded["model"]["l2_lambda"]
    for name in ("best.pt", "last.pt"):
        payload = torch.load(out / name, weights_only=True)
        assert payload["config"]["l2_lambda"] == 0.003 == payload["settings"]["model"]["l2_lambda"]
    decay = torch.load(out / "last.pt", weights_only=True)["optimizer"]["param_groups"][0]["weight_decay"]
    assert decay == pytest.approx(2 * 0.003)  # decoupled: W <- W - lr·2λ·W


# The settings a format-1 checkpoint held: the run's fields and seven model fields, flat.
FORMAT_1_SETTINGS = {
    "dataset", "data_root", "preset", "epochs", "batch_size", "lr", "lr_decay", "l2_lambda", "l2_mode",
    "variant", "alpha", "num_patches", "overlap", "image_size", "backend", "device", "seed", "out",
    "resume", "workers", "compile", "precision", "folds", "val_fraction", "cache_dir",
    "synthetic_train", "synthetic_test", "crop_padding",
}


def as_format_1(path, l2_lambda):
    """Rewrite a checkpoint as the code before nested settings wrote it."""
    payload = torch.load(path, weights_only=True)
    settings = dict(payload["settings"])
    model = settings.pop("model")
    for later in ("strict", "trace_every", "trace_images", "synthetic_occlusion", "cuda_graphs", "deterministic",
                  "progress", "restart", "balanced_sampling", "label_smoothing", "ema", "schedule",
                  "warmup_epochs", "clip_grad_norm", "mixup", "cutmix", "freeze_backbone_epochs",
                  "backbone_lr_scale", "tensorboard"):  # added after format 1
        settings.pop(later)
    settings.update({name: model[name] for name in ("variant", "alpha", "num_patches", "overlap", "image_size", "backend")})
    settings["l2_lambda"] = l2_lambda
    assert set(settings) == FORMAT_1_SETTINGS
    for later in ("backbone", "backbone_levels", "backbone_weights"):  # model fields added after format 1
        model.pop(later)
    payload.update(format="lnlatten_fast/1", settings=settings, config=dict(model, l2_lambda=1e-4))
    torch.save(payload, path)


def test_format_1_checkpoints_still_load(finished_run, tmp_path, capsys):
    """Checkpoints with flat settings load for evaluate, predict and --resume; the λ they really
    used (format 1 kept it in the settings only) becomes the model config's."""
    out, _ = finished_run
    old = tmp_path / "old.pt"
    old.write_bytes((out / "best.pt").read_bytes())
    as_format_1(old, l2_lambda=5e-4)
    payload = checkpoint.load(old)
    assert payload["format"] == checkpoint.FORMAT
    assert payload["config"]["l2_lambda"] == 5e-4 == payload["settings"]["model"]["l2_lambda"]
    settings = TrainSettings.from_dict(payload["settings"])
    assert settings.model == LNLConfig.tiny(image_size=32, l2_lambda=5e-4) and settings.epochs == 2
    assert evaluate_cli.main(["--checkpoint", str(old), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["accuracy"] == pytest.approx(result["recorded_test_accuracy"], abs=1e-9)
    face = tmp_path / "face.png"
    from PIL import Image

    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(face)
    assert predict_cli.main([str(face), "--checkpoint", str(old)]) == 0
    assert capsys.readouterr().out.startswith(f"{face}: ")

    half = tmp_path / "half"
    train(small_settings(half, epochs=1))
    for name in ("best.pt", "last.pt"):
        as_format_1(half / name, l2_lambda=1e-4)
    train(small_settings(half, epochs=2, resume=True))
    assert read_metrics(half) == read_metrics(out)


def test_cli_translates_library_errors_to_flags(tmp_path, capsys):
    """Library errors name parameters; each command line shows the flag, on one error: line."""
    cases = [
        (["--alpha", "1.5"], "error: --alpha must lie in [0, 1]"),
        (["--num-patches", "10"], "error:"),
        (["--val-fraction", "1.5"], "error: --val-fraction must lie in [0, 1)"),
        (["--device", "gpu"], "error: --device must be auto, cpu, cuda or cuda:N"),
        (["--lr", "0"], "error: --lr must be a positive number"),
    ]
    for flags, message in cases:
        assert train_cli.main(flags + ["--out", str(tmp_path / "x")]) == 2, flags
        err = capsys.readouterr().err
        assert err.startswith(message) and len(err.strip().splitlines()) == 1, (flags, err)
    assert not (tmp_path / "x").exists()
    assert evaluate_cli.main(["--checkpoint", str(tmp_path / "none.pt")]) == 2
    assert capsys.readouterr().err.startswith("error: checkpoint")
    assert predict_cli.main([str(tmp_path / "none.png"), "--checkpoint", str(tmp_path / "none.pt")]) == 2
    assert capsys.readouterr().err.startswith("error: checkpoint")
    with pytest.raises(ParameterError, match="^epochs must be positive"):
        train(TrainSettings(epochs=0, out=str(tmp_path / "y")))


def test_metrics_on_a_known_confusion():
    predicted = torch.tensor([0, 0, 1, 2, 2, 2])
    target = torch.tensor([0, 1, 1, 2, 2, 0])
    cm = metrics.confusion_matrix(predicted, target, 3)
    assert cm.tolist() == [[1, 0, 1], [1, 1, 0], [0, 0, 2]]
    assert metrics.accuracy(cm) == pytest.approx(4 / 6)
    assert metrics.mean_class_accuracy(cm) == pytest.approx((1 / 2 + 1 / 2 + 1) / 3)
    assert metrics.mean_std([0.5, 0.7]) == pytest.approx((0.6, 0.1414213562))


def test_ddp_two_processes_on_gloo(tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "lnlatten_fast.train", "--epochs", "2", "--batch-size", "8", "--image-size", "32",
        "--synthetic-train", "56", "--synthetic-test", "21", "--device", "cpu",
        "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
    ]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    history = read_metrics(out)
    assert [h["epoch"] for h in history] == [1, 2]  # one writer: rank 0
    summary = json.loads((out / "summary.json").read_text())
    # every test image counted once across the two ranks
    assert sum(map(sum, summary["confusion"])) == 21
    assert evaluate_cli.main(["--checkpoint", str(out / "last.pt"), "--json"]) == 0


def test_attention_trace_records_probes_and_survives_resume(finished_run, tmp_path):
    """RUN/attention_trace.npz: w_g and w_l of the same probe test images, at every K-th step
    and each epoch's last; a resumed run keeps its saved epochs' records and continues."""
    out, _ = finished_run
    trace = np.load(out / "attention_trace.npz")
    steps_per_epoch = 56 // 16  # drop_last
    assert trace["step"].tolist() == [3, 6] and trace["epoch"].tolist() == [1, 2]  # K = 50 > 6 steps
    assert trace["w_g"].shape == (2, 8, 16) and trace["w_l"].shape == (2, 8, 16)  # 8 probes (the default)
    assert np.allclose(trace["w_g"].sum(-1), 1, atol=1e-5) and ((trace["w_l"] > 0) & (trace["w_l"] < 1)).all()
    assert sorted(trace["probe_label"].tolist()) == [0, *range(7)]  # every class once, then again from the first

    half = tmp_path / "half"
    train(small_settings(half, epochs=1, trace_every=2, trace_images=3))
    train(small_settings(half, epochs=2, trace_every=2, trace_images=3, resume=True))
    resumed = np.load(half / "attention_trace.npz")
    assert resumed["step"].tolist() == [2, 3, 4, 6] and resumed["epoch"].tolist() == [1, 1, 2, 2]
    assert resumed["w_g"].shape == (4, 3, 16) and steps_per_epoch == 3

"""`python -m lnlatten_fast.export` (issue 20, deliverable 1): a trained tiny run exported as
ONNX and as a torch.export program, each compared with the PyTorch model it came from on random
and real images at batch sizes other than the one traced; the README's onnxruntime snippet run
as written; and the command line's answers to bad input.

The run is 32 px with M = 9 windows: its F5 is 2 x 2 and its grid 3 x 3, so the export meets
the uneven adaptive max-pool (2 -> 3) that ONNX has no op for, and the graph (the reference
backend convolves window by window) stays smaller than with the tiny preset's 16.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from skimage import data as skimage_data

from helpers import small_settings

from lnlatten_fast import export as export_cli
from lnlatten_fast.config import LNLConfig
from lnlatten_fast.data.pipeline import to_model_input
from lnlatten_fast.training import export
from lnlatten_fast.training.inference import load_images, load_model
from lnlatten_fast.training.trainer import train

README = Path(__file__).resolve().parents[1] / "README.md"
# The largest difference allowed between an exported model's output and the PyTorch model's:
# 1e-4 of the largest magnitude in that output tensor (the fp32 bound, relative).
# Measured per tensor, not per element: a logit near 0 has no meaningful relative error, and
# the two sides differ only by fp32 summation order (ONNX Runtime's convolutions and matmuls
# against torch's, the reference ops against the native ones), about 1e-6 of the scale.
RELATIVE_BOUND = 1e-4


def assert_close(got, expected, what: str) -> None:
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    assert got.shape == expected.shape, f"{what}: shape {got.shape} != {expected.shape}"
    scale = np.abs(expected).max()
    worst = np.abs(got - expected).max()
    assert scale > 0 and worst <= RELATIVE_BOUND * scale, f"{what}: max |diff| {worst:.3g} > 1e-4 x {scale:.3g}"


def error_lines(text: str) -> list[str]:
    return [line for line in text.strip().splitlines() if line.startswith("error:")]


# ---- the run and its exports, made once ----------------------------------------------------------
@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "run"
    train(small_settings(out, epochs=1, model=LNLConfig.tiny(image_size=32, num_patches=9),
                         synthetic_train=32, synthetic_test=8))
    return out


@pytest.fixture(scope="session")
def trained(run_dir):
    """The run's best.pt as the PyTorch model (its own backend, `auto`: native on the CPU)."""
    return load_model(run_dir, torch.device("cpu"))


@pytest.fixture(scope="session")
def onnx_file(run_dir):
    out = run_dir.parent / "lnl.onnx"
    assert export_cli.main([str(run_dir), "--format", "onnx", "--out", str(out), "--device", "cpu"]) == 0
    return out


@pytest.fixture(scope="session")
def last_only(run_dir):
    """A run directory that holds only last.pt (no best.pt): `--which last` must find it."""
    folder = run_dir.parent / "last-only"
    folder.mkdir()
    shutil.copy(run_dir / "last.pt", folder / "last.pt")
    return folder


@pytest.fixture(scope="session")
def pt2_file(last_only):
    out = last_only.parent / "lnl.pt2"
    assert export_cli.main([str(last_only), "--which", "last", "--format", "pt2", "--dynamic-batch",
                            "--out", str(out), "--device", "cpu"]) == 0
    return out


@pytest.fixture(scope="session")
def face_file(run_dir):
    """A real photograph's face: scikit-image's astronaut (Eileen Collins), cropped to her face."""
    path = run_dir.parent / "astronaut-face.png"
    Image.fromarray(skimage_data.astronaut()[20:220, 140:330]).save(path)
    return path


def real_images(face_file, size: int) -> torch.Tensor:
    """Model inputs of real photographs: the astronaut's face, the whole picture, and the face
    mirrored, decoded and scaled as the training data are."""
    whole = face_file.with_name("astronaut.png")
    Image.fromarray(skimage_data.astronaut()).save(whole)
    faces = load_images([face_file, whole], size)
    faces = np.concatenate([faces, faces[:1, :, ::-1]])
    return to_model_input(torch.from_numpy(np.ascontiguousarray(faces)))


def random_images(batch: int, size: int) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))


def model_outputs(model, images):
    with torch.no_grad():
        out = model(images)
    return out.logits, out.nonlocal_weights, out.local_weights


# ---- onnx ----------------------------------------------------------------------------------------
def test_onnx_matches_the_model_on_random_and_real_images(onnx_file, trained, face_file):
    model, payload = trained
    size = model.config.image_size
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert [o.name for o in session.get_outputs()] == ["logits", "w_g", "w_l"]
    assert isinstance(session.get_inputs()[0].shape[0], str)  # a named (dynamic) batch axis
    # Traced at batch 2; run at 5, 1 and 3.
    for what, images in (("random x5", random_images(5, size)), ("random x1", random_images(1, size)),
                         ("real photos", real_images(face_file, size))):
        got = session.run(None, {"image": images.numpy()})
        for name, g, expected in zip(("logits", "w_g", "w_l"), got, model_outputs(model, images)):
            assert_close(g, expected, f"{what} {name}")
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["class_names"]) == payload["class_names"] and int(meta["image_size"]) == size


def test_onnx_file_is_standard_onnx_at_opset_17_or_later(onnx_file):
    model = onnx.load(str(onnx_file))
    onnx.checker.check_model(model)
    opset = {entry.domain: entry.version for entry in model.opset_import}
    assert opset[""] >= 17
    # The reference path: only standard ops, nothing of lnlatten_fast's.
    assert {node.domain for node in model.graph.node} <= {"", "ai.onnx"}


def test_adaptive_max_pool_rewrite_matches_torch_on_uneven_sizes():
    x = torch.randn(2, 3, 7, 5, generator=torch.Generator().manual_seed(0))
    for size in ((1, 1), (2, 2), (3, 4), (7, 5), (9, 6), (4, None)):
        expected, expected_indices = F.adaptive_max_pool2d(x, size, return_indices=True)
        got, indices = export._adaptive_max_pool2d(x, size)
        assert torch.equal(got, expected) and torch.equal(indices, expected_indices), size


def test_readme_onnxruntime_snippet_runs_without_torch(onnx_file, face_file, trained, tmp_path):
    lines = README.read_text().splitlines()
    marker = next(i for i, line in enumerate(lines) if "onnxruntime snippet" in line)
    start = next(i for i in range(marker, len(lines)) if lines[i].strip() == "```python") + 1
    end = next(i for i in range(start, len(lines)) if lines[i].strip() == "```")
    snippet = "\n".join(lines[start:end])
    assert snippet.count('"lnl.onnx"') == 1 and snippet.count('"face.jpg"') == 1
    snippet = snippet.replace('"lnl.onnx"', repr(str(onnx_file))).replace('"face.jpg"', repr(str(face_file)))
    dump = tmp_path / "outputs.npz"
    script = snippet + (f"\nnp.savez({str(dump)!r}, logits=logits, w_g=w_g, w_l=w_l)"
                        "\nimport sys; assert 'torch' not in sys.modules and 'lnlatten_fast' not in sys.modules")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    model, payload = trained
    # The snippet's own decoding and scaling against the library's (the training cache's).
    images = to_model_input(torch.from_numpy(load_images([face_file], model.config.image_size)))
    expected = model_outputs(model, images)
    outputs = np.load(dump)
    for name, e in zip(("logits", "w_g", "w_l"), expected):
        assert_close(outputs[name], e, f"README snippet {name}")
    top = payload["class_names"][int(expected[0][0].argmax())]
    assert done.stdout.split()[0] == top, done.stdout


# ---- pt2 -----------------------------------------------------------------------------------------
def test_pt2_program_matches_the_model_at_other_batch_sizes(pt2_file, last_only):
    model, payload = load_model(last_only / "last.pt", torch.device("cpu"))
    extra = {export.CLASS_NAMES_FILE: ""}
    program = torch.export.load(str(pt2_file), extra_files=extra)
    assert json.loads(extra[export.CLASS_NAMES_FILE]) == payload["class_names"]
    # The fused ops stay lnlatten_fast's custom ops (the native backend's, on the CPU).
    custom = {str(node.target) for node in program.graph.nodes if str(node.target).startswith("lnlatten_fast.")}
    assert any("native_l1_attention" in name for name in custom), custom
    module = program.module()
    size = model.config.image_size
    for batch in (5, 1):  # traced at 2
        images = random_images(batch, size)
        for name, g, e in zip(("logits", "w_g", "w_l"), module(images), model_outputs(model, images)):
            assert_close(g.detach(), e, f"pt2 batch {batch} {name}")


@pytest.mark.filterwarnings("error::UserWarning")  # torch.export.save's, on channels-last weights
def test_pt2_without_dynamic_batch_serves_one_image_only(trained, tmp_path):
    model, _ = trained
    out = export.export_pt2(model, tmp_path / "one.pt2")
    module = torch.export.load(str(out)).module()
    size = model.config.image_size
    assert_close(module(random_images(1, size))[0].detach(), model_outputs(model, random_images(1, size))[0], "pt2")
    with pytest.raises(Exception, match="batch|shape|size|Expected"):
        module(random_images(3, size))
    assert model.backend == "auto" and not model.training  # the caller's model as it was


def test_pt2_loads_after_import_lnlatten_fast_and_not_before(pt2_file):
    script = (
        "import torch\n"
        f"path = {str(pt2_file)!r}\n"
        "try:\n"
        "    torch.export.load(path)\n"
        "except Exception as error:\n"
        "    print('refused before import:', type(error).__name__)\n"
        "import lnlatten_fast\n"
        "out = torch.export.load(path).module()(torch.zeros(3, 3, 32, 32))\n"
        "print('after import:', [tuple(t.shape) for t in out])\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "refused before import:" in done.stdout
    assert "after import: [(3, 7), (3, 9), (3, 9)]" in done.stdout


# ---- the command line ----------------------------------------------------------------------------
def test_missing_checkpoint_is_one_error_line(tmp_path, capsys):
    code = export_cli.main([str(tmp_path / "nothing"), "--format", "pt2", "--out", str(tmp_path / "m.pt2")])
    err = capsys.readouterr().err
    assert code == 2 and len(error_lines(err)) == 1 and "Traceback" not in err
    assert "nothing" in error_lines(err)[0] and "does not exist" in err


def test_run_directory_without_best_pt_needs_which_last(last_only, tmp_path, capsys):
    code = export_cli.main([str(last_only), "--format", "pt2", "--out", str(tmp_path / "m.pt2")])
    err = capsys.readouterr().err
    assert code == 2 and len(error_lines(err)) == 1 and "best.pt" in err and "last.pt" in err
    code = export_cli.main([str(last_only / "last.pt"), "--which", "last", "--format", "pt2",
                            "--out", str(tmp_path / "m.pt2")])
    err = capsys.readouterr().err
    assert code == 2 and error_lines(err) == [
        f"error: --which last: {last_only / 'last.pt'} is a checkpoint file, not a run directory"]


def test_unknown_format_and_unknown_flags_are_argparse_errors(tmp_path, capsys):
    for argv in (["run", "--format", "tflite", "--out", "m.tflite"],
                 ["run", "--format", "onnx", "--out", "m.onnx", "--bogus"]):
        with pytest.raises(SystemExit) as stop:
            export_cli.main(argv)
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert ("invalid choice: 'tflite'" in err) if "tflite" in argv else ("unrecognized arguments: --bogus" in err)


def test_out_must_end_in_the_formats_suffix_in_a_folder_that_exists(run_dir, tmp_path, capsys):
    for out, expected in ((tmp_path / "m.pt2", "--out .*m.pt2: expected a file name ending in .onnx for format onnx"),
                          (tmp_path / "no" / "m.onnx", "--out .*m.onnx: its folder .*no does not exist")):
        code = export_cli.main([str(run_dir), "--format", "onnx", "--out", str(out)])
        lines = error_lines(capsys.readouterr().err)
        assert code == 2 and len(lines) == 1 and re.match("error: " + expected, lines[0]), lines


@pytest.mark.parametrize("module", ["onnx", "onnxscript"])
def test_onnx_without_the_export_extra_names_it(run_dir, tmp_path, capsys, monkeypatch, module):
    monkeypatch.setitem(sys.modules, module, None)  # `import <module>` now raises ImportError
    code = export_cli.main([str(run_dir), "--format", "onnx", "--out", str(tmp_path / "m.onnx")])
    assert code == 2 and error_lines(capsys.readouterr().err) == [
        f"error: --format onnx needs the export extra: pip install 'lnlatten_fast[export]' ({module} is not installed)"]
    assert not (tmp_path / "m.onnx").exists()

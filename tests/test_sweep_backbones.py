"""`sweep backbones` (issue 21, Deliver 4): the paper's U-Net beside the configured backbones,
each with the LNL head, in one table; a backbone whose library does not import is a "not run"
row with its reason, and a bad spec fails before anything trains.

Each test was seen to fail before the sweep learned the table.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import sys
from pathlib import Path

import pytest

from lnlatten_fast import sweep as sweep_cli
from lnlatten_fast.config import LNLConfig
from lnlatten_fast.model import LNLAttenNet
from lnlatten_fast.training import sweeps

STANDIN = "module:tests.backbone_standins:resnet18_standin"
# Made unimportable in the test (None in sys.modules), so the row is "not run" wherever
# torchvision is installed too.
UNIMPORTABLE = "torchvision:resnet18"
# The spec names the stand-in as the README does, from the repository's root: importable by the
# sweep (its up-front check) and by its children however pytest was started.
REPOSITORY = str(Path(__file__).resolve().parents[1])
TINY = ["--preset", "tiny", "--epochs", "1", "--synthetic-train", "14", "--synthetic-test", "7",
        "--image-size", "32", "--batch-size", "8", "--trace-every", "0"]


def reach_the_repository(patch: pytest.MonkeyPatch) -> None:
    patch.syspath_prepend(REPOSITORY)
    patch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [REPOSITORY, os.environ.get("PYTHONPATH")])))


@pytest.fixture(autouse=True)
def repository_on_the_path(monkeypatch):
    reach_the_repository(monkeypatch)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """One tiny backbones sweep: the U-Net, the ResNet-18 stand-in and an unimportable torchvision."""
    root = tmp_path_factory.mktemp("backbones")
    out = root / "sweep"
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.setitem(sys.modules, "torchvision", None)
        reach_the_repository(patch)
        code = sweep_cli.main(["backbones", "--out", str(out), "--backbones", f"{STANDIN},{UNIMPORTABLE}",
                               "--jobs", "2", "--cache-dir", str(root / "cache"), *TINY])
    assert code == 0, printed.getvalue()
    with open(out / "table.csv", newline="") as fh:
        rows = {row["backbone"]: row for row in csv.DictReader(fh)}
    return out, rows, (out / "table.md").read_text(), printed.getvalue()


def _run_dir(out, spec):
    """The run directory of `spec`: the one whose config.json names it."""
    found = [path.parent for path in out.glob("*/seed0/config.json")
             if json.loads(path.read_text())["model"]["backbone"] == spec]
    assert len(found) == 1, found
    return found[0]


@pytest.mark.parametrize("spec", ["unet", STANDIN])
def test_each_trained_row_shows_its_own_runs_accuracy(swept, spec):
    out, rows, markdown, _ = swept
    summary = json.loads((_run_dir(out, spec) / "summary.json").read_text())
    accuracy = 100.0 * summary["test_accuracy_last10_mean"]
    assert rows[spec]["seeds"] == "1"
    assert float(rows[spec]["accuracy_mean"]) == pytest.approx(accuracy, abs=5e-5)
    line = next(line for line in markdown.splitlines() if line.startswith(f"| {spec} |"))
    assert f"| {accuracy:.2f} |" in line


@pytest.mark.parametrize("spec", ["unet", STANDIN])
def test_each_trained_row_counts_its_backbone_and_head(swept, spec):
    out, rows, _, _ = swept
    model_config = json.loads((_run_dir(out, spec) / "config.json").read_text())["model"]
    model = LNLAttenNet(LNLConfig.from_dict(model_config))  # allocated, as the run built it
    head = sum(p.numel() for name, p in model.named_parameters() if name.startswith("head."))
    total = sum(p.numel() for p in model.parameters())
    assert (int(rows[spec]["backbone_parameters"]), int(rows[spec]["head_parameters"])) == (total - head, head)
    assert int(rows[spec]["parameters"]) == total


def test_a_backbone_whose_library_does_not_import_is_a_not_run_row_with_its_reason(swept):
    out, rows, markdown, printed = swept
    reason = rows[UNIMPORTABLE]["not_run"]
    assert "needs torchvision, which failed to import" in reason
    assert rows[UNIMPORTABLE]["seeds"] == "0" and rows[UNIMPORTABLE]["accuracy_mean"] == ""
    assert f"not run: {reason}" in next(line for line in markdown.splitlines() if line.startswith(f"| {UNIMPORTABLE} |"))
    assert f"{UNIMPORTABLE}: not run: {reason}" in printed  # said as the sweep starts, not only in the table
    assert not any("torchvision" in json.loads(path.read_text())["model"]["backbone"]
                   for path in out.glob("*/seed*/config.json"))


@pytest.mark.parametrize("spec,says", [
    ("tensorflow:resnet18", "must be unet, module:"),
    ("module:no_such_package_here:build", "cannot import no_such_package_here"),
    ("module:tests.backbone_standins:not_a_module", "gave a str, not an nn.Module"),
])
def test_a_bad_backbone_spec_fails_before_anything_trains_naming_the_flag(tmp_path, capsys, monkeypatch, spec, says):
    def no_run(*args, **kwargs):
        raise AssertionError("a run was started")

    monkeypatch.setattr(sweep_cli.subprocess, "Popen", no_run)
    out = tmp_path / "sweep"
    assert sweep_cli.main(["backbones", "--out", str(out), "--backbones", f"{STANDIN},{spec}", *TINY]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: --backbones "), errors
    assert spec in errors[0] and says in errors[0]
    assert not out.exists()


@pytest.mark.parametrize("flags,named", [
    (["--backbone", STANDIN], "--backbone "),  # the swept field
    (["--backbone-lr-scale", "0.1"], "--backbone-lr-scale "),  # one backbone's, not the U-Net row's
])
def test_the_backbones_sweep_refuses_a_flag_of_one_backbone(tmp_path, capsys, flags, named):
    out = tmp_path / "sweep"
    assert sweep_cli.main(["backbones", "--out", str(out), *TINY, *flags]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith(f"error: {named}") and "the sweep backbones" in errors[0], errors
    assert not out.exists()


def test_backbones_is_refused_by_the_other_sweeps(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        sweep_cli.main(["variants", "--out", str(tmp_path / "sweep"), "--backbones", STANDIN])
    assert exited.value.code == 2
    assert "--backbones is for the sweep backbones" in capsys.readouterr().err



def test_the_unet_row_stands_beside_the_papers_lnlattennet_on_its_datasets(tmp_path):
    """The paper reports its U-Net model (table IV, LNLAttenNet) on RAF-DB at 86.15%; a backbone
    it never trained has no paper number."""
    settings = sweeps.backbone_settings([STANDIN])
    directory = sweeps.run_dir(tmp_path, settings[0], 0)
    directory.mkdir(parents=True)
    (directory / "summary.json").write_text(json.dumps({"test_accuracy_last10_mean": 0.8, "epochs_averaged": 10}))
    rows = sweeps.collect(tmp_path, "backbones", [0], {s.slug: 1 for s in settings}, settings)
    markdown, table = sweeps.write_tables(tmp_path, "backbones", rows, "rafdb", "test")
    assert "| unet | 1 | — | — | 80.00 | 86.15 |" in markdown.read_text()  # no split given: none shown
    assert f"| {STANDIN} | 1 | — | — | — | — |" in markdown.read_text()
    with open(table, newline="") as fh:
        assert [row["paper"] for row in csv.DictReader(fh)] == ["86.15", ""]

"""`evaluate`'s confusion matrix: printed as a table of class names, written with per-class
accuracy to --out DIR (evaluation.json and confusion_matrix.png), checked against a matrix
counted here from predictions the test chooses."""

import json

import numpy as np
import pytest
import torch
from test_validation_upfront import error_lines, save_checkpoint

from lnlatten_fast import evaluate as evaluate_cli
from lnlatten_fast.data.labels import CLASS_NAMES
from lnlatten_fast.data.pipeline import to_model_input
from lnlatten_fast.nn import LNLOutput
from lnlatten_fast.training import evaluation
from lnlatten_fast.training.loading import load_test_split
from lnlatten_fast.training.settings import TrainSettings

NO_PREDICTION = -1  # the chosen "class" of an image whose logits are NaN


class ChosenPredictions(torch.nn.Module):
    """A model that gives each known input the class the test chose for it (NaN logits for
    NO_PREDICTION): the nearest stored input's choice."""

    def __init__(self, config, inputs: torch.Tensor, chosen: list[int]):
        super().__init__()
        self.config, self.inputs, self.chosen = config, inputs, chosen

    def forward(self, x):
        nearest = torch.cdist(x.flatten(1).float(), self.inputs.flatten(1)).argmin(dim=1)
        logits = torch.zeros(len(x), self.config.num_classes)
        for row, index in enumerate(nearest.tolist()):
            if self.chosen[index] == NO_PREDICTION:
                logits[row] = float("nan")
            else:
                logits[row, self.chosen[index]] = 1.0
        m = 16
        return LNLOutput(logits, torch.full((len(x), m), 1 / m), torch.zeros(len(x), m))


@pytest.fixture
def chosen_run(tmp_path, monkeypatch):
    """A run directory whose model predicts random classes the test knows, one image unscored;
    returns (run, the test labels, the chosen predictions)."""
    run = tmp_path / "run"
    path = save_checkpoint(run / "best.pt")
    payload = torch.load(path, weights_only=True)
    settings = TrainSettings.from_dict(payload["settings"])
    test_set = load_test_split(settings, 32)
    chosen = np.random.default_rng(0).integers(0, len(CLASS_NAMES), len(test_set)).tolist()
    chosen[4] = NO_PREDICTION
    inputs = to_model_input(torch.from_numpy(np.array(test_set.images)))
    real_load = evaluation.load_model

    def load_chosen(checkpoint, device, backend=None):
        model, loaded = real_load(checkpoint, device, backend)
        return ChosenPredictions(model.config, inputs, chosen), loaded

    monkeypatch.setattr(evaluation, "load_model", load_chosen)
    return run, np.asarray(test_set.labels), np.asarray(chosen)


def expected_confusion(labels: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    scored = chosen != NO_PREDICTION
    counts = np.zeros((len(CLASS_NAMES), len(CLASS_NAMES)), dtype=np.int64)
    np.add.at(counts, (labels[scored], chosen[scored]), 1)
    return counts


def test_evaluate_prints_the_confusion_matrix_as_a_table_of_class_names(chosen_run, capsys):
    """Before: per-class accuracy only, no matrix."""
    run, labels, chosen = chosen_run
    expected = expected_confusion(labels, chosen)
    assert len(set(chosen.tolist())) > 4 and expected.sum() == len(labels) - 1  # a matrix worth checking
    assert evaluate_cli.main(["--checkpoint", str(run), "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    start = lines.index("confusion matrix (rows: true class, columns: predicted):") + 1
    table = lines[start:start + 1 + len(CLASS_NAMES)]
    assert table[0].split() == list(CLASS_NAMES)
    rows = [line.split() for line in table[1:]]
    assert [row[0] for row in rows] == list(CLASS_NAMES)
    assert np.array_equal(np.array([[int(v) for v in row[1:]] for row in rows]), expected)
    # Aligned: every column's numbers end where its class name ends.
    ends = [table[0].index(name) + len(name) for name in CLASS_NAMES]
    for line, row in zip(table[1:], expected):
        assert [line[end - len(str(count)):end] for end, count in zip(ends, row)] == [str(c) for c in row]
    assert len({len(line) for line in table}) == 1


def test_evaluate_out_writes_the_counts_per_class_accuracy_and_the_figure(chosen_run, tmp_path, capsys):
    run, labels, chosen = chosen_run
    out = tmp_path / "evaluation"
    assert evaluate_cli.main(["--checkpoint", str(run), "--device", "cpu", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["confusion_matrix.png", "evaluation.json"]
    assert (out / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    written = json.loads((out / "evaluation.json").read_text())
    expected = expected_confusion(labels, chosen)
    assert np.array_equal(np.array(written["confusion"]), expected)
    # Per class: right answers over all its images, the unscored one counted as wrong.
    for index, name in enumerate(CLASS_NAMES):
        images = int((labels == index).sum())
        assert written["per_class"][name] == {"images": images, "accuracy": expected[index, index] / images}
    assert written["nonfinite"] == 1
    assert written["accuracy"] == pytest.approx(np.trace(expected) / len(labels))
    printed = capsys.readouterr().out.splitlines()
    assert printed[-2:] == [f"wrote {out / 'evaluation.json'}", f"wrote {out / 'confusion_matrix.png'}"]


def test_evaluate_out_refuses_the_runs_own_directory(chosen_run, capsys):
    """The run's confusion_matrix.png is its final epoch's (one confusion file per run): an
    evaluation never overwrites it."""
    run, _, _ = chosen_run
    (run / "config.json").write_text("{}")
    (run / "confusion_matrix.png").write_bytes(b"the run's own")
    assert evaluate_cli.main(["--checkpoint", str(run), "--device", "cpu", "--out", str(run)]) == 2
    [line] = error_lines(capsys.readouterr().err)
    assert line.startswith(f"error: --out {run} is a training run's directory")
    assert (run / "confusion_matrix.png").read_bytes() == b"the run's own"
    assert not (run / "evaluation.json").exists()


def test_evaluate_out_that_cannot_be_written_is_one_error_line(chosen_run, tmp_path, capsys):
    run, _, _ = chosen_run
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    assert evaluate_cli.main(["--checkpoint", str(run), "--device", "cpu", "--out", str(a_file)]) == 2
    assert error_lines(capsys.readouterr().err) == [
        f"error: --out {a_file}: cannot write evaluation.json there (File exists)"]

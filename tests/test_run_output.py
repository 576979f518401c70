"""What a training run says (issue 20, consistent output): the dataset it trains on and the
image cache's build at the start, the lr each epoch trained with, the mean of the epochs it
really averaged, the summary as plain text on the terminal and as Markdown in summary.md, and
occlusion's effect on w_l in words that fit its sign.

Faults before: "mean of the last 10 epochs" for a 2-epoch run; metrics.csv's epoch 1 showed the
lr already decayed for epoch 2; the terminal got raw Markdown (`**0.9401**`, `![...](...)`);
"lowers its own w_l by -0.0158"; the run started silently while the cache was built.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json

import numpy as np
import pytest

from helpers import small_settings

from lnlatten_fast.data import sources
from lnlatten_fast.data.cache import ImageSet, build_image_cache
from lnlatten_fast.data.datasets import DATASET_READERS, Sample, synthetic
from lnlatten_fast.data.sources import LABEL_MAPS, load_split
from lnlatten_fast.training import localization
from lnlatten_fast.training.loading import RunSplits, dataset_summary
from lnlatten_fast.training.progress import CacheProgress
from lnlatten_fast.training.trainer import summarize, train

LR = 1e-3
TRAIN_IMAGES, TEST_IMAGES = 14, 7  # two whole blocks of the 7 classes: 2 train images of each


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 2-epoch run at lr 1e-3 on a fresh cache, its stdout and stderr captured."""
    out = tmp_path_factory.mktemp("runs") / "run"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        train(small_settings(out, lr=LR, progress="lines", synthetic_train=TRAIN_IMAGES,
                             synthetic_test=TEST_IMAGES, batch_size=7))
    return out, stdout.getvalue(), stderr.getvalue()


# ---- the mean of the epochs it averaged -------------------------------------------------------
def test_a_2_epoch_run_says_it_averaged_its_2_epochs(run):
    out, printed, _ = run
    summary = json.loads((out / "summary.json").read_text())
    accuracies = [json.loads(line)["test_accuracy"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert "- test accuracy, mean of the last 2 epochs: " in printed
    assert "- test accuracy, mean of the last 2 epochs: **" in (out / "summary.md").read_text()
    assert "last 10" not in printed + (out / "summary.md").read_text()
    # summary.json keeps its key, and says how many epochs its mean is of
    assert summary["test_accuracy_last10_mean"] == pytest.approx(sum(accuracies) / 2)
    assert summary["epochs_averaged"] == 2


def _history(accuracies):
    return [dict(test_accuracy=a, images_per_second=1.0, train_seconds=1.0, test_mean_class_accuracy=a,
                 confusion=[[1]]) for a in accuracies]


def test_a_longer_run_averages_the_papers_last_10_epochs(tmp_path):
    settings = small_settings(tmp_path / "run")
    twelve = summarize(_history([0.0] * 2 + [0.5] * 10), settings, "reference", "fp32")
    assert twelve["epochs_averaged"] == 10 and twelve["test_accuracy_last10_mean"] == 0.5
    one = summarize(_history([0.25]), settings, "reference", "fp32")
    assert one["epochs_averaged"] == 1 and one["test_accuracy_last10_mean"] == 0.25


# ---- the lr each epoch trained with -----------------------------------------------------------
def test_each_epochs_lr_is_the_lr_it_trained_with(run):
    out, _, _ = run
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["lr"] == LR  # exactly: nothing decayed it before epoch 1 trained
    assert lines[1]["lr"] == pytest.approx(LR * 0.95, rel=1e-12)  # the default decay, once
    with open(out / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert float(rows[0]["lr"]) == LR and rows[0]["lr"] == "0.001"


# ---- plain text on the terminal, Markdown in summary.md ---------------------------------------
def test_the_terminal_gets_plain_text_and_summary_md_markdown_of_the_same_lines(run):
    out, printed, _ = run
    markdown = (out / "summary.md").read_text()
    terminal = printed[printed.index("LNLAttenNet on synthetic"):printed.index("run directory:")].strip()
    assert "**" not in terminal and "![" not in terminal and "#" not in terminal
    assert terminal.splitlines()[-1] == f"confusion matrix: {out / 'confusion_matrix.png'}"
    assert markdown.startswith("# LNLAttenNet on synthetic\n") and "**" in markdown
    assert markdown.rstrip().splitlines()[-1] == "![confusion matrix](confusion_matrix.png)"
    # Everything else is the same text: one source, two renderings.
    assert markdown.replace("**", "").removeprefix("# ").rstrip().splitlines()[:-1] == terminal.splitlines()[:-1]


# ---- occlusion's effect on w_l, for both signs ------------------------------------------------
FOUND = dict(images=7, crucial_mass_ratio=None, crucial_rank_corr=None, occlusion_selectivity=None)


def test_a_rise_of_w_l_is_said_as_a_rise():
    line = localization.summary_lines(dict(FOUND, occlusion_own_drop=-0.0158, occlusion_other_drop=0.0013))[-1]
    assert "raises its own w_l by 0.0158 and lowers the others' w_l by 0.0013 on average" in line
    line = localization.summary_lines(dict(FOUND, occlusion_own_drop=0.0053, occlusion_other_drop=-0.0013))[-1]
    assert "lowers its own w_l by 0.0053 and raises the others' w_l by 0.0013 on average" in line
    line = localization.summary_lines(dict(FOUND, occlusion_own_drop=0.0053, occlusion_other_drop=None))[-1]
    assert "lowers its own w_l by 0.0053 on average: selectivity undefined (there are no other patches)" in line
    assert "by -" not in line


# ---- the dataset summary and the cache's build at the start -----------------------------------
def test_the_run_starts_with_the_cache_build_and_the_dataset_summary(run):
    out, printed, errors = run
    lines = printed.splitlines()
    assert lines[:4] == [
        f"synthetic train: building the image cache ({TRAIN_IMAGES} images)…",
        lines[1], f"synthetic test: building the image cache ({TEST_IMAGES} images)…", lines[3],
    ]
    assert lines[1].startswith("synthetic train: image cache built in ")
    assert lines[4].startswith("dataset synthetic; labels:")
    assert lines[5].split() == ["Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral", "total"]
    assert lines[6].split() == ["train", *["2"] * 7, str(TRAIN_IMAGES)]
    assert lines[7].split()[0] == "test" and lines[7].split()[-1] == str(TEST_IMAGES)
    assert lines[8] == "  skipped (unreadable images): none"
    assert lines[9].startswith("epoch   1 ")
    assert "\r" not in errors  # "lines": no redraws


def _images(labels, skipped=()):
    labels = np.asarray(labels, dtype=np.int64)
    return ImageSet(np.zeros((len(labels), 1, 1, 3), np.uint8), labels, skipped=list(skipped))


def test_a_dataset_with_its_own_codes_shows_the_mapping_and_what_was_skipped(tmp_path):
    bad = [{"path": "a.jpg", "reason": "truncated"}, {"path": "b.jpg", "reason": "empty"}]
    runs = [RunSplits(_images([0, 0, 6], skipped=bad), _images([3]))]
    settings = small_settings(tmp_path / "run", dataset="rafdb", data_root="/data/RAF-DB/basic")
    text = dataset_summary(settings, runs, tmp_path / "run" / "skipped.txt")
    # RAF-DB's own codes: 1 Surprise, 2 Fear, 3 Disgust, 4 Happiness, 5 Sadness, 6 Anger, 7 Neutral
    assert text.splitlines()[0] == (
        "dataset rafdb at /data/RAF-DB/basic; label mapping (dataset label → class): 1 → Surprise, 2 → Fear, "
        "3 → Disgust, 4 → Happiness, 5 → Sadness, 6 → Anger, 7 → Neutral")
    assert text.splitlines()[2].split() == ["train", "2", "0", "0", "0", "0", "0", "1", "3"]
    listed = tmp_path / "run" / "skipped.txt"
    assert text.splitlines()[-1] == f"  skipped (unreadable images): 2 train, 0 test (listed in {listed})"
    ckplus = dataset_summary(small_settings(tmp_path / "ck", dataset="ckplus", data_root="/data/CK+"), runs, tmp_path)
    # CK+'s emotion codes: 0 neutral, 1 anger, 2 contempt (left out), 3 disgust, ... 7 surprise
    assert ("7 → Surprise, 4 → Fear, 3 → Disgust, 5 → Happiness, 6 → Sadness, 1 → Anger, 0 → Neutral"
            in ckplus)
    assert "2 →" not in ckplus


def test_k_folds_are_named_as_their_directories_and_skip_once(tmp_path):
    bad = [{"path": "a.png", "reason": "truncated"}]
    everything = _images([0, 1, 2, 3], skipped=bad)
    runs = [RunSplits(everything.subset([0, 1]), everything.subset([2, 3]), fold=k) for k in range(2)]
    text = dataset_summary(small_settings(tmp_path / "run", dataset="ckplus", data_root="/ck"), runs, tmp_path / "s")
    assert [line.split()[:3] for line in text.splitlines()[2:6]] == [
        ["fold", "0", "train"], ["fold", "0", "test"], ["fold", "1", "train"], ["fold", "1", "test"]]
    assert text.splitlines()[-1] == f"  skipped (unreadable images): 1 (listed in {tmp_path / 's'})"


def test_every_reader_has_its_label_map():
    assert LABEL_MAPS.keys() == DATASET_READERS.keys()


class Clock:
    """Moves a minute each time it is read: every report is past the line interval."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 61.0
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _build(progress, tmp_path, name):
    samples = [Sample(i % 7, pixels=np.full((8, 8), 10 * i, np.uint8)) for i in range(5)]
    return build_image_cache(samples, 8, name, tmp_path / "cache", progress=progress, what="faces train")


def test_the_cache_build_shows_progress_as_the_mode_says(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("lnlatten_fast.data.cache.BUILD_CHUNK", 2)  # 5 images: 3 reports
    log = io.StringIO()
    _build(CacheProgress("lines", stream=log, clock=Clock()), tmp_path, "lines")
    # The clock reads 61 s at the start, then 122, 183 (2 and 4 done), 244 (5), 305 at the end.
    assert log.getvalue().splitlines() == ["faces train: image cache 2/5 images  ETA 1m32s",  # 61 s for 2: 91.5 s
                                           "faces train: image cache 4/5 images  ETA 30s"]  # 122 s for 4: 30.5 s
    assert capsys.readouterr().out.splitlines() == ["faces train: building the image cache (5 images)…",
                                                    "faces train: image cache built in 4m04s"]
    quiet = io.StringIO()
    _build(CacheProgress("none", stream=quiet, clock=Clock()), tmp_path, "none")
    assert quiet.getvalue() == "" and len(capsys.readouterr().out.splitlines()) == 2
    terminal = Terminal()
    _build(CacheProgress("auto", stream=terminal), tmp_path, "bar")
    assert "\r" in terminal.getvalue() and "/5 " in terminal.getvalue()
    capsys.readouterr()
    other_rank = Terminal()
    _build(CacheProgress("auto", stream=other_rank, enabled=False), tmp_path, "other-rank")
    assert other_rank.getvalue() == "" and capsys.readouterr().out == ""
    _build(CacheProgress("lines", stream=log), tmp_path, "lines")  # read from the cache: no build to show
    assert "building" not in capsys.readouterr().out


def test_the_synthetic_set_drawn_in_pieces_is_the_whole(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sources, "BUILD_CHUNK", 5)
    images = load_split("synthetic", "test", 32, cache_dir=tmp_path, seed=3, synthetic_size=12,
                        progress=CacheProgress("none"))
    whole = synthetic.draw("test", 32, 3, 12)
    assert np.array_equal(images.images, whole[0]) and np.array_equal(images.labels, whole[1])
    assert "synthetic test: building the image cache (12 images)…" in capsys.readouterr().out


def test_the_default_runs_start_adds_under_1_kb_to_its_log(tmp_path):
    """The default run (2100 + 700 synthetic faces) logs the two builds and the summary;
    test_progress keeps its epochs under 6 KB, the summary adds about 1 KB: under 10 KB in all."""
    blocks = np.arange(2100) % 7, np.arange(700) % 7
    text = dataset_summary(small_settings(tmp_path / "run"), [RunSplits(_images(blocks[0]), _images(blocks[1]))],
                           tmp_path / "skipped.txt")
    builds = "".join(f"synthetic {split}: building the image cache ({n} images)…\nsynthetic {split}: image cache "
                     "built in 1m05s\n" for split, n in (("train", 2100), ("test", 700)))
    assert len((text + "\n" + builds).encode()) < 1_000

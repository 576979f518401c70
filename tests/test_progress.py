"""training/progress.py: a bar on a terminal, plain lines in a batch job's log, `--progress`.

Fault (issue 19): training output redirected to a file was ~88% progress-bar redraws on one
line (about 1.3 KB per 13 steps, growing with steps). Now a log gets no redraws: one line per
epoch, and for long epochs one line a minute with step, loss, img/s and ETA.
"""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
from tqdm import tqdm

from lnlatten_fast.errors import ParameterError
from lnlatten_fast.train import build_parser
from lnlatten_fast.training.progress import (
    LINE_INTERVAL_SECONDS, Progress, format_duration, resolve_mode,
)
from lnlatten_fast.training.settings import TrainSettings

DEFAULT_RUN_EPOCHS, DEFAULT_RUN_STEPS = 24, 2100 // 32  # README's main command: tiny, 2100 faces, batch 32
EPOCH_LINE = "epoch  24  loss 0.0671  test acc 0.9671  mean class acc 0.9672  212 img/s"


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def run_epochs(progress: Progress, clock: FakeClock, epochs: int, steps: int, seconds_per_step: float,
               first_epoch: int = 0) -> None:
    """The trainer's loop, with a clock that moves `seconds_per_step` a step."""
    for epoch in range(first_epoch, epochs):
        for step, _ in enumerate(progress.epoch(range(steps), epoch), start=1):
            clock.now += seconds_per_step
            if step % 10 == 0:
                progress.report(loss=1.2345, images_per_second=212.0)
        progress.epoch_done(EPOCH_LINE)


def test_a_log_gets_one_plain_line_per_interval_with_img_s_and_eta():
    clock, log = FakeClock(), io.StringIO()
    progress = Progress("auto", epochs=1, stream=log, clock=clock)
    assert progress.mode == "lines"  # a StringIO is not a terminal
    run_epochs(progress, clock, epochs=1, steps=100, seconds_per_step=7.0)  # 700 s: 63 s between lines
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert len(lines) == 11  # steps 9, 18, ..., 99: none at the last step (the epoch's line follows)
    assert lines[0] == "epoch 1/1  step 9/100  epoch ETA 10m37s"  # before the first report: no loss yet
    assert lines[1] == "epoch 1/1  step 18/100  loss 1.2345  212 img/s  epoch ETA 9m34s"


def test_an_epoch_shorter_than_the_interval_prints_only_its_epoch_line(capsys):
    clock, log = FakeClock(), io.StringIO()
    progress = Progress("lines", epochs=3, stream=log, clock=clock)
    run_epochs(progress, clock, epochs=3, steps=65, seconds_per_step=(LINE_INTERVAL_SECONDS - 1) / 65)
    assert log.getvalue() == ""
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and "\r" not in "".join(out)
    assert out[0].endswith("  ETA 1m58s") and out[1].endswith("  ETA 59s") and out[2] == EPOCH_LINE  # last: no ETA


def test_the_default_runs_log_stays_under_10_kb_even_ten_times_slower(capsys):
    """README's main command takes about 11 s an epoch on a 2-core CPU; at 110 s an epoch its
    progress and epoch lines (the summary adds about 1 KB) still stay under 6 KB."""
    clock, log = FakeClock(), io.StringIO()
    progress = Progress("lines", epochs=DEFAULT_RUN_EPOCHS, stream=log, clock=clock)
    run_epochs(progress, clock, DEFAULT_RUN_EPOCHS, DEFAULT_RUN_STEPS, seconds_per_step=110 / DEFAULT_RUN_STEPS)
    size = len(log.getvalue().encode()) + len(capsys.readouterr().out.encode())
    assert size < 6_000, size
    assert "\r" not in log.getvalue()


def test_a_resumed_run_estimates_from_its_own_epochs(capsys):
    clock = FakeClock()
    progress = Progress("none", epochs=10, first_epoch=8, clock=clock)
    run_epochs(progress, clock, epochs=10, steps=5, seconds_per_step=2.0, first_epoch=8)
    assert capsys.readouterr().out.splitlines() == [EPOCH_LINE + "  ETA 10s", EPOCH_LINE]


def test_the_runs_eta_follows_the_latest_epochs_pace(capsys):
    """A shared machine that frees up mid-run: the ETA follows within ETA_EPOCHS epochs."""
    clock = FakeClock()
    progress = Progress("none", epochs=10, clock=clock)
    run_epochs(progress, clock, epochs=3, steps=10, seconds_per_step=10.0)  # 100 s an epoch
    run_epochs(progress, clock, epochs=6, steps=10, seconds_per_step=1.0, first_epoch=3)  # then 10 s
    etas = [line.rsplit("ETA ", 1)[1] for line in capsys.readouterr().out.splitlines()]
    assert etas == ["15m00s", "13m20s", "11m40s", "7m00s", "3m20s", "40s"]


class ResumedLoader:
    """Like BatchLoader resumed at batch 60 of 100: its length is the epoch's, it yields the rest."""

    def __len__(self) -> int:
        return 100

    def __iter__(self):
        return iter(range(60, 100))


def test_an_epoch_resumed_mid_way_counts_from_its_saved_step(capsys):
    clock, log = FakeClock(), io.StringIO()
    progress = Progress("lines", epochs=2, stream=log, clock=clock)
    for _ in progress.epoch(ResumedLoader(), 0, steps_done=60):
        clock.now += 7.0
    progress.epoch_done(EPOCH_LINE)  # 280 s for 40% of an epoch: 700 s an epoch
    assert log.getvalue().splitlines()[0] == "epoch 1/2  step 69/100  epoch ETA 3m37s"
    assert capsys.readouterr().out.splitlines() == [EPOCH_LINE + "  ETA 11m40s"]
    terminal = Terminal()
    list(Progress("bar", epochs=2, stream=terminal).epoch(ResumedLoader(), 0, steps_done=60))
    assert "60/100" in terminal.getvalue()  # the bar starts where the epoch stopped


def test_a_terminal_gets_the_bar_and_none_gets_nothing():
    terminal = Terminal()
    assert resolve_mode("auto", terminal) == "bar" and resolve_mode("lines", terminal) == "lines"
    progress = Progress("auto", epochs=1, stream=terminal)
    assert list(progress.epoch(range(5), 0)) == list(range(5))
    assert "\r" in terminal.getvalue()  # the redraws the log must not get
    quiet = Terminal()
    assert list(Progress("none", epochs=1, stream=quiet).epoch(range(5), 0)) == list(range(5))
    assert list(Progress("bar", epochs=1, stream=quiet, enabled=False).epoch(range(5), 0)) == list(range(5))
    assert quiet.getvalue() == ""


def test_a_loop_that_stops_early_erases_its_bar():
    """A preempted or diverged epoch leaves its loop mid-way: the bar must not stay open."""
    progress = Progress("bar", epochs=1, stream=Terminal())
    for step in progress.epoch(range(10), 0):
        if step == 3:
            break
    assert not tqdm._instances


def test_format_duration():
    assert [format_duration(s) for s in (0.4, 59.6, 187, 7500)] == ["0s", "1m00s", "3m07s", "2h05m"]


def test_an_unknown_mode_is_refused_by_name():
    with pytest.raises(ParameterError, match="progress"):
        TrainSettings(progress="fancy").validate()
    assert build_parser().parse_args(["--progress", "lines"]).progress == "lines"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--progress", "fancy"])


def test_a_redirected_training_run_logs_no_redraws(tmp_path):
    """The CLI with its default --progress auto, stdout and stderr to a file, as a batch job's."""
    log = tmp_path / "train.log"
    with open(log, "wb") as fh:
        result = subprocess.run(
            [sys.executable, "-m", "lnlatten_fast.train", "--image-size", "32", "--epochs", "2", "--batch-size", "8",
             "--synthetic-train", "24", "--synthetic-test", "7", "--trace-every", "0", "--out", str(tmp_path / "run"),
             "--cache-dir", str(tmp_path / "cache")],
            stdout=fh, stderr=subprocess.STDOUT, timeout=300, check=False,
        )
    data = log.read_bytes()  # bytes: read_text would turn each '\r' into a newline
    text = data.decode()
    assert result.returncode == 0, text[-2000:]
    assert b"\r" not in data
    epoch_lines = [line for line in text.splitlines() if line.startswith("epoch ")]
    assert len(epoch_lines) == 2 and "ETA" in epoch_lines[0]
    assert len(data) < 2_500, text  # two epoch lines and the summary (about 1 KB)

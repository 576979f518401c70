"""A sweep owns its training runs (issue 19, sweeps own their children): killed with SIGKILL or
SIGTERM, it leaves no run behind, and a rerun resumes the half-done one.

Each test names the fault it injects; each was seen to fail before its fix.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lnlatten_fast import sweep as sweep_cli
from lnlatten_fast.training import sweeps


def _process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state) of every process, from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:  # gone meanwhile
                continue
            state, parent = stat[stat.rindex(")") + 2 :].split()[:2]  # the name may hold spaces
            table[int(entry.name)] = (int(parent), state)
    return table


def _descendants(pid: int) -> set[int]:
    table = _process_table()
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, (parent, _) in table.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pids: set[int]) -> set[int]:
    table = _process_table()
    return {pid for pid in pids if pid in table and table[pid][1] != "Z"}  # a zombie has exited


def _wait_for(condition, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        time.sleep(0.05)
    return result


FLAGS = ["--synthetic-train", "14", "--synthetic-test", "7", "--image-size", "32", "--batch-size", "8"]


@pytest.mark.parametrize("kill", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_killed_sweep_leaves_no_run_behind_and_its_rerun_resumes(tmp_path, capsys, kill):
    """Fault: `python -m lnlatten_fast.sweep` killed. Before: its child `train` kept running with
    PPID 1, and a rerun marked that setting FAILED ("in use by another training process")."""
    out = tmp_path / "sweep"
    for setting in sweeps.SWEEPS["variants"][1][1:]:  # only Model-S is left to train
        directory = sweeps.run_dir(out, setting, 0)
        directory.mkdir(parents=True)
        (directory / "summary.json").write_text(json.dumps({"test_accuracy_last10_mean": 0.5}))
    flags = [*FLAGS, "--cache-dir", str(tmp_path / "cache")]
    run_dir = out / "simple" / "seed0"
    with open(tmp_path / "sweep.log", "wb") as log:
        sweep = subprocess.Popen([sys.executable, "-m", "lnlatten_fast.sweep", "variants", "--out", str(out),
                                  "--epochs", "1000", *flags], stdout=log, stderr=subprocess.STDOUT)
    runs = set()
    try:
        _wait_for(lambda: (run_dir / "last.pt").is_file(), 120, "the run's first epoch")
        runs = _descendants(sweep.pid)
        assert runs, "the sweep has no running child"
        sweep.send_signal(kill)
        sweep.wait(timeout=60)
        _wait_for(lambda: not _alive(runs), 30, f"the sweep's runs {sorted(_alive(runs))} to end")
    finally:
        for pid in _alive(runs | {sweep.pid}):  # an orphan must not outlive the test
            os.kill(pid, signal.SIGKILL)
    if kill == signal.SIGTERM:
        assert sweep.returncode == 128 + signal.SIGTERM
        assert "sweep stopped by SIGTERM: stopping 1 run(s)" in (tmp_path / "sweep.log").read_text()

    done = len((run_dir / "metrics.jsonl").read_text().splitlines())
    assert sweep_cli.main(["variants", "--out", str(out), "--epochs", str(done + 1), *flags]) == 0
    assert "simple seed 0: finished" in capsys.readouterr().out
    epochs = [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, done + 2))  # resumed: the killed run's epochs kept, one more trained
    assert (run_dir / "summary.json").is_file()


def test_a_run_killed_before_its_first_epoch_is_resumed_too(tmp_path):
    """Fault: the sweep killed before a run saved its first epoch. Before: only a last.pt meant
    `--resume`; the rerun now continues any run whose config.json was written."""
    setting = sweeps.SWEEPS["variants"][1][0]
    directory = sweeps.run_dir(tmp_path, setting, 0)
    assert "--resume" not in sweep_cli._command(setting, 0, directory, [])
    directory.mkdir(parents=True)
    (directory / "config.json").write_text("{}")
    assert sweep_cli._command(setting, 0, directory, [])[-1] == "--resume"

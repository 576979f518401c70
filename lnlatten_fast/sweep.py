"""`python -m lnlatten_fast.sweep {variants,alpha,patches,overlap,backbones} --out DIR`: one of the
paper's ablations (tables IV-VII), or the paper's U-Net beside other backbones under the LNL head,
every setting trained and the table written.

Any other flag is a `python -m lnlatten_fast.train` flag and goes to every run (`--dataset`,
`--epochs`, `--preset`, `--image-size`, ...). Each (setting, seed) trains in DIR/<setting>/seed<k>
as its own process, `--jobs` at a time; a rerun skips the finished ones and resumes the
interrupted ones. DIR/table.md (the paper's layout, its numbers beside ours when the dataset is
one of its) and DIR/table.csv are rewritten after every run.

`backbones` trains the U-Net and each spec of `--backbones` (default: the DEFAULT_BACKBONES of
lnlatten_fast.training.sweeps); a spec whose library does not import here is not trained, and
its row, like the sweep's output, says why.

The runs die with the sweep: SIGTERM or SIGINT is passed on to each (a second one kills them)
and the sweep waits for them; on Linux each run also gets SIGTERM when the sweep is killed
outright (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from . import cli, train
from .errors import ParameterError, as_flag
from .training import distributed, memory, sweeps

# The sweep chooses these for each run; the swept fields are refused too (see _refused).
_OWN_FLAGS = {"out", "seed", "resume"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m lnlatten_fast.sweep", description=__doc__.split("\n\n")[0],
        epilog="Every other flag is passed to python -m lnlatten_fast.train (see its --help).",
        formatter_class=cli.HelpFormatter, allow_abbrev=False)  # "--seed" must reach train, not be --seeds
    p.add_argument("sweep", choices=sorted(sweeps.SWEEPS),
                   help="variants: table IV; alpha: table V; patches (M): table VI; overlap (N): table VII; "
                        "backbones: the U-Net and --backbones, each with the LNL head")
    p.add_argument("--out", required=True, help="the sweep's directory: one run directory per setting and seed")
    p.add_argument("--seeds", type=int, default=1, help="seeds 0..K-1 per setting; the table gives mean ± std")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs at once, as independent processes (each gets cores / jobs CPU threads)")
    p.add_argument("--backbones", metavar="BACKBONE[,BACKBONE...]",
                   help="backbones only: the backbones beside the U-Net, each a --backbone of train "
                        f"(default: {','.join(sweeps.DEFAULT_BACKBONES)})")
    return p


def _setting_flags(setting: sweeps.Setting) -> list[str]:
    return [arg for name, value in setting.model.items()
            for arg in (as_flag(name), "none" if value is None else str(value))]


def _refused(sweep: str) -> set[str]:
    swept = {name for setting in sweeps.SWEEPS[sweep][1] for name in setting.model}
    return _OWN_FLAGS | swept


def plan(sweep: str, passed: list[str], settings_list: list[sweeps.Setting] | None = None) -> tuple[dict, dict]:
    """Check the passed-through train flags before anything runs, as train checks them before
    it writes anything: every setting's settings (`settings_list`, the sweep's own unless
    given), the device and the dataset on disk (shared: once), and every setting's memory.
    ({slug: TrainSettings}, {slug: why it is not run}): a backbones row whose library does not
    import here is not run."""
    parser = train.build_parser()
    given = cli.given_flags(parser, passed)
    clashing = sorted(given & _refused(sweep))
    if clashing:
        raise ParameterError(clashing[0], f"is set by the sweep {sweep} itself; leave it out")
    if sweep == "backbones" and given & set(sweeps.BACKBONE_ONLY):
        raise ParameterError(sorted(given & set(sweeps.BACKBONE_ONLY))[0],
                             "is for one backbone, and the sweep backbones gives every row, the U-Net's "
                             "included, the same flags: leave it out (each backbone starts untrained, at its "
                             "family's default levels)")
    planned, not_run = {}, {}
    for setting in sweeps.SWEEPS[sweep][1] if settings_list is None else settings_list:
        settings = train.settings_from_args(parser.parse_args([*passed, *_setting_flags(setting), "--out", "unused"]))
        settings.validate()  # a setting this image size cannot hold fails here, by name
        reason = sweeps.backbone_not_run(settings.model) if sweep == "backbones" else None
        if reason is None:
            planned[setting.slug] = settings
        else:
            not_run[setting.slug] = reason
    shared = next(iter(planned.values()))  # the settings differ only in the swept model fields
    device = distributed.pick_device(shared.device)
    sweeps.check_dataset(shared)
    for settings in planned.values():
        memory.check_memory(settings, device)
    return planned, not_run


def _command(setting: sweeps.Setting, seed: int, directory: Path, passed: list[str]) -> list[str]:
    command = [sys.executable, "-m", "lnlatten_fast.train", *passed, *_setting_flags(setting),
               "--seed", str(seed), "--out", str(directory)]
    # A run killed with its sweep continues where it stopped (before its first epoch: from config.json).
    started = (directory / "last.pt").is_file() or (directory / "config.json").is_file()
    return command + (["--resume"] if started else [])


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _child_setup() -> Callable[[], None] | None:
    """What each run does between fork and exec: leave the terminal's process group (a Ctrl-C
    reaches the sweep, which passes it on once) and, on Linux, ask for SIGTERM when the sweep
    dies, however it dies (SIGKILL included)."""
    sweep = os.getpid()
    prctl = None
    if sys.platform.startswith("linux"):
        try:
            prctl = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):
            prctl = None

    def setup() -> None:
        os.setpgid(0, 0)
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
            if os.getppid() != sweep:  # the sweep died before the request was made
                os.kill(os.getpid(), signal.SIGTERM)
    return setup if os.name == "posix" else None


def _stop_runs(running: list, signals: list[int]) -> None:
    """SIGTERM to every run (each saves where it is) and wait for them; a further signal to the
    sweep kills them instead of waiting."""
    for process, _, _ in running:
        process.send_signal(signal.SIGTERM)
    first = len(signals)
    while any(process.poll() is None for process, _, _ in running):
        if len(signals) > first:
            for process, _, _ in running:
                process.kill()
            first = len(signals)
        time.sleep(0.1)


def run(sweep: str, out: Path, seeds: int, jobs: int, passed: list[str],
        settings_list: list[sweeps.Setting] | None = None) -> int:
    settings_list = sweeps.SWEEPS[sweep][1] if settings_list is None else settings_list
    planned, not_run = plan(sweep, passed, settings_list)
    split = {slug: sweeps.parameter_split(settings.model) for slug, settings in planned.items()}
    parameters = {setting.slug: sum(split[setting.slug]) if setting.slug in split else None
                  for setting in settings_list}
    dataset = next(iter(planned.values())).dataset
    out.mkdir(parents=True, exist_ok=True)
    trained = [setting for setting in settings_list if setting.slug in planned]
    todo = [(setting, seed) for setting in trained for seed in range(seeds)
            if not sweeps.is_finished(sweeps.run_dir(out, setting, seed))]
    done = len(trained) * seeds - len(todo)
    print(f"sweep {sweep}: {len(todo)} run(s) to train, {done} finished before"
          + (f", {len(not_run)} setting(s) not run" if not_run else ""), flush=True)
    for setting in settings_list:
        if setting.slug in not_run:
            print(f"  {setting.name}: not run: {not_run[setting.slug]}", flush=True)
    env = dict(os.environ)
    if jobs > 1 and "OMP_NUM_THREADS" not in env:  # jobs processes share the cores, not each take all
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    description = "Every run: " + " ".join(["python -m lnlatten_fast.train", *passed]) + " plus the setting's flags."
    running: list[tuple[subprocess.Popen, str, Path]] = []
    signals: list[int] = []  # SIGTERM / SIGINT received, in order

    def write_tables() -> tuple[Path, Path]:
        rows = sweeps.collect(out, sweep, list(range(seeds)), parameters, settings_list,
                              split if sweep == "backbones" else None, not_run)
        return sweeps.write_tables(out, sweep, rows, dataset, description)
    failed: list[tuple[str, Path]] = []

    def reap(block: bool) -> None:
        while running and not signals:
            for entry in list(running):
                process, name, log = entry
                if process.poll() is not None:
                    running.remove(entry)
                    status = "finished" if process.returncode == 0 else f"FAILED (exit {process.returncode}, see {log})"
                    print(f"  {name}: {status}", flush=True)
                    if process.returncode:
                        failed.append((name, log))
                    write_tables()
                    if not block:
                        return
            if not block and len(running) < jobs:
                return
            time.sleep(0.5)

    child_setup = _child_setup()
    handled = (signal.SIGTERM, signal.SIGINT)
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {number: signal.signal(number, lambda number, _: signals.append(number)) for number in handled}
    try:
        for setting, seed in todo:
            if signals:
                break
            directory = sweeps.run_dir(out, setting, seed)
            directory.parent.mkdir(parents=True, exist_ok=True)
            log = directory.parent / f"seed{seed}.log"
            name = f"{setting.slug} seed {seed}"
            print(f"  {name}: training in {directory}", flush=True)
            with open(log, "ab") as fh:  # preexec_fn: the sweep starts no threads of its own
                process = subprocess.Popen(_command(setting, seed, directory, passed), stdin=subprocess.DEVNULL,
                                           stdout=fh, stderr=subprocess.STDOUT, env=env,
                                           preexec_fn=child_setup)  # noqa: PLW1509
            running.append((process, name, log))
            while len(running) >= jobs and not signals:
                reap(block=False)
        reap(block=True)
    finally:
        if running:  # a signal, or an error of the sweep itself: no run outlives it
            name = signal.Signals(signals[0]).name if signals else "an error"
            print(f"sweep stopped by {name}: stopping {len(running)} run(s); rerun the same command "
                  "to resume them", file=sys.stderr, flush=True)
            _stop_runs(running, signals)
        for number, handler in previous.items():
            signal.signal(number, signal.SIG_DFL if handler is None else handler)
    markdown, table = write_tables()
    if signals:
        return 128 + signals[0]
    print(markdown.read_text())
    print(f"tables: {markdown}, {table}")
    if failed:
        print(f"error: {len(failed)} run(s) failed: " + "; ".join(f"{name} (log {log})" for name, log in failed)
              + "; rerun the same command to retry them", file=sys.stderr)
        return cli.RUN_FAILED
    return 0


def main(argv=None) -> int:
    parser = build_parser()
    args, passed = parser.parse_known_args(argv)
    _, unknown = train.build_parser().parse_known_args(passed)
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.seeds < 1:
        parser.error("--seeds must be >= 1")
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")
    if args.backbones is not None and args.sweep != "backbones":
        parser.error(f"--backbones is for the sweep backbones, not {args.sweep}")
    try:
        settings_list = None
        if args.sweep == "backbones" and args.backbones is not None:
            settings_list = sweeps.backbone_settings(spec.strip() for spec in args.backbones.split(","))
        return run(args.sweep, Path(args.out), args.seeds, args.jobs, passed, settings_list)
    except cli.LIBRARY_ERRORS as error:
        return cli.fail(error)


if __name__ == "__main__":
    sys.exit(main())

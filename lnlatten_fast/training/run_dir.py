"""The run directory: its lock, its metrics files, and what --resume may take from it.

The checkpoint is the single source of truth of a run. Resuming reads the run's settings
from its last.pt (config.json before the first epoch was saved), refuses a change to anything
that changes the model, the data or the optimisation (`RESUMABLE_CHANGES` may change), and
rewrites metrics.jsonl/csv from the checkpoint's history, so a kill between two writes never
leaves a duplicated or missing epoch. Resuming never starts over on top of finished work: a run
whose last.pt is unreadable, or missing while its metrics or best.pt show it existed, is
refused, and `restart` moves the old run aside (RUN/previous-N) instead of deleting it. A
directory holds one training process at a time (an flock on RUN/.lock), and temporary files
left by a killed writer are removed.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from pathlib import Path

from .. import jsonio
from ..errors import ParameterError
from . import checkpoint
from .settings import TrainSettings

__all__ = [
    "CONFUSION_FILE", "RESUMABLE_CHANGES", "RunLock", "stored_settings", "resumed_settings", "check_resume",
    "append_epoch", "rewrite_metrics", "remove_stale_temporaries", "aside_path", "move_aside",
]

#: The run's final-epoch confusion matrix (figs. 8-9), one per run directory: `train` draws it,
#: `analyze` lists it, `evaluate --out` refuses a run's own folder so as not to replace it.
CONFUSION_FILE = "confusion_matrix.png"

# What may differ when a run is resumed: how long, where and how fast it trains, never what.
# (cache_dir, compile, CUDA graphs, cuDNN's algorithm choice, the attention trace, the progress
# display and the TensorBoard log change neither the data nor the math; resume, restart and out
# name the run.)
RESUMABLE_CHANGES = ("epochs", "device", "workers", "out", "resume", "restart", "cache_dir", "compile",
                     "cuda_graphs", "deterministic", "trace_every", "trace_images", "progress", "tensorboard")


# ---- lock ---------------------------------------------------------------------------------------
class RunLock:
    """An exclusive flock on RUN/.lock for the life of a training process (POSIX; elsewhere
    a no-op). A second process on the same directory is refused instead of interleaving logs."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self._fh = None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise ParameterError("out", f"{self.path.parent} is in use by another training process ({holder})") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}")
        fh.flush()
        self._fh = fh
        return self

    def __exit__(self, *exc):
        if self._fh is not None:
            self._fh.close()  # closing releases the flock
            self._fh = None


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Delete the `.<name>.<pid>.tmp` files a killed writer left (the lock says none is live)."""
    removed = []
    for path in list(Path(run_dir).glob(".*.tmp")) + list(Path(run_dir).glob("fold*/.*.tmp")):
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


# ---- metrics files --------------------------------------------------------------------------------
def _csv_columns(record: dict) -> list[str]:
    return [k for k, v in record.items() if not isinstance(v, (list, dict))]


def append_epoch(run_dir: Path, record: dict) -> None:
    with open(run_dir / "metrics.jsonl", "a") as fh:
        fh.write(jsonio.dumps(record) + "\n")
    csv_path = run_dir / "metrics.csv"
    new = not csv_path.exists()
    with open(csv_path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, _csv_columns(record), extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow(record)


def read_epochs(run_dir: Path) -> list[dict]:
    """The records of metrics.jsonl, one per finished epoch ([] when there is none)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def rewrite_metrics(run_dir: Path, history: list[dict]) -> None:
    """metrics.jsonl and metrics.csv exactly as `history` (the checkpoint's) says, each
    replaced atomically."""
    jsonl = run_dir / ".metrics.jsonl.rewrite.tmp"
    jsonl.write_text("".join(jsonio.dumps(record) + "\n" for record in history))
    os.replace(jsonl, run_dir / "metrics.jsonl")
    table = run_dir / ".metrics.csv.rewrite.tmp"
    with open(table, "w", newline="") as fh:
        if history:
            writer = csv.DictWriter(fh, _csv_columns(history[0]), extrasaction="ignore")
            writer.writeheader()
            writer.writerows(history)
    if history:
        os.replace(table, run_dir / "metrics.csv")
    else:
        table.unlink()
        (run_dir / "metrics.csv").unlink(missing_ok=True)


# ---- resume -----------------------------------------------------------------------------------------
def _last_checkpoints(run_dir: Path) -> list[Path]:
    return [p for p in [run_dir / "last.pt", *sorted(run_dir.glob("fold*/last.pt"))] if p.is_file()]


def aside_path(run_dir: Path) -> Path:
    """Where `move_aside` puts the run now in `run_dir`: run_dir/previous-N, the first N free."""
    n = 1
    while (Path(run_dir) / f"previous-{n}").exists():
        n += 1
    return Path(run_dir) / f"previous-{n}"


def move_aside(run_dir: Path) -> Path | None:
    """Move the run in `run_dir` (everything but the lock and earlier previous-N folders) into
    `aside_path(run_dir)`, deleting nothing; None when there is nothing to move. Inside the
    directory, not beside it, so the lock the caller holds stays the directory's."""
    run_dir = Path(run_dir)
    entries = [p for p in run_dir.iterdir() if p.name != ".lock" and not p.name.startswith("previous-")] \
        if run_dir.is_dir() else []
    if not entries:
        return None
    target = aside_path(run_dir)
    target.mkdir()
    for path in entries:
        os.replace(path, target / path.name)
    return target


def _finished_work(unit: Path) -> list[str]:
    """What in one run (or fold) directory shows that a last.pt existed: epochs in metrics.jsonl
    (appended only once last.pt is written), or a best.pt past epoch 1. A best.pt of epoch 1
    alone is what a kill during the first checkpoint write leaves (best.pt is written first)."""
    found = []
    metrics = unit / "metrics.jsonl"
    epochs = sum(1 for line in metrics.read_text().splitlines() if line.strip()) if metrics.is_file() else 0
    if epochs:
        found.append(f"{metrics} holds {epochs} epoch(s)")
    best = unit / "best.pt"
    if best.is_file():
        try:
            epoch = checkpoint.load(best, mmap=True).get("epoch")
        except checkpoint.UnreadableCheckpointError as error:
            found.append(f"{best} {error.reason}")
        else:
            if epochs or not isinstance(epoch, int) or epoch > 1:
                found.append(f"{best} holds epoch {epoch}")
    return found


def _refuse_lost_work(run_dir: Path) -> None:
    """Refuse to resume a run (or fold) that would start over on top of finished work: its
    last.pt unreadable, or missing while `_finished_work` shows that it existed."""
    for unit in [run_dir, *sorted(p for p in run_dir.glob("fold*") if p.is_dir())]:
        last = unit / "last.pt"
        lost = f"{last} is missing"
        if last.is_file():
            try:
                checkpoint.load(last, mmap=True)
                continue
            except checkpoint.UnreadableCheckpointError as error:
                lost = f"{last} {error.reason}"
        found = _finished_work(unit)
        if found or last.is_file():
            raise ParameterError("resume", f"cannot continue {run_dir}: {lost}"
                                 + (f", and starting over would overwrite finished work: {'; '.join(found)}" if found else "")
                                 + f". Pass `restart` to move the run aside to {aside_path(run_dir)} and start over")


def stored_settings(run_dir: Path, restart: bool = False) -> TrainSettings:
    """The settings of the run in `run_dir`: its last.pt's, else (no epoch saved yet) its
    config.json's. ParameterError("out") when the directory holds no run; ParameterError("resume")
    when its last.pt is unreadable or lost and finished work would be overwritten (unless
    `restart`: the run is then to be moved aside, and config.json speaks for a bad last.pt)."""
    run_dir = Path(run_dir)
    if not restart:
        _refuse_lost_work(run_dir)
    for last in _last_checkpoints(run_dir):
        try:
            # Mapped, not read: a last.pt holds the optimizer state too, and only its settings are wanted.
            return TrainSettings.from_dict(checkpoint.load(last, mmap=True)["settings"])
        except checkpoint.UnreadableCheckpointError:
            continue  # only with `restart` (refused above otherwise)
    config = run_dir / "config.json"
    if config.is_file():
        return TrainSettings.from_dict(json.loads(config.read_text())["settings"])
    raise ParameterError("out", f"{run_dir} holds no run to resume (no last.pt, no config.json)")


def _differences(stored: TrainSettings, wanted: TrainSettings) -> list[tuple[str, object, object]]:
    found = []
    for f in dataclasses.fields(TrainSettings):
        if f.name in RESUMABLE_CHANGES or f.name == "model":
            continue
        a, b = getattr(stored, f.name), getattr(wanted, f.name)
        if a != b:
            found.append((f.name, a, b))
    stored_model, wanted_model = stored.model.to_dict(), wanted.model.to_dict()
    found += [(k, stored_model[k], wanted_model[k]) for k in stored_model if stored_model[k] != wanted_model.get(k)]
    return found


def _refuse(name: str, stored, wanted) -> ParameterError:
    return ParameterError(
        name, f"cannot change when resuming: the run has {stored!r}, not {wanted!r} (only "
        + ", ".join(f"`{n}`" for n in ("epochs", "device", "workers", "out")) + " may change)")


def _refuse_a_longer_cosine(stored: TrainSettings, epochs: int) -> None:
    """The cosine schedule's length is the run's epochs: another --epochs would bend the lr
    curve mid-run (a 10-epoch run at lr ~0 jumping back up to finish 20), not extend it."""
    if stored.schedule == "cosine" and epochs != stored.epochs:
        raise ParameterError("epochs", f"cannot change when resuming a `schedule` cosine run: its cosine spans "
                                       f"the run's {stored.epochs} epochs, and {epochs} would reshape the lr curve "
                                       "it has followed so far (start a new run for a longer schedule)")


def resumed_settings(run_dir: Path, changes: dict) -> TrainSettings:
    """The stored run's settings with `changes` (field -> value, model fields included) applied.
    A change to a field outside RESUMABLE_CHANGES that differs from the run's is refused."""
    stored = stored_settings(run_dir, bool(changes.get("restart")))
    run_changes = {k: v for k, v in changes.items() if k in {f.name for f in dataclasses.fields(TrainSettings)}}
    model_changes = {k: v for k, v in changes.items() if k not in run_changes}
    model = stored.model.to_dict()
    for name, value in model_changes.items():
        if model.get(name) != value:
            raise _refuse(name, model.get(name), value)
    for name, value in run_changes.items():
        if name not in RESUMABLE_CHANGES and getattr(stored, name) != value:
            raise _refuse(name, getattr(stored, name), value)
    _refuse_a_longer_cosine(stored, run_changes.get("epochs", stored.epochs))
    return dataclasses.replace(stored, **{**run_changes, "resume": True})


def check_resume(run_dir: Path, settings: TrainSettings) -> TrainSettings:
    """For `train(resume=True)`: the stored run's settings, once `settings` is checked to differ
    from them only in RESUMABLE_CHANGES."""
    # Validated as the resumed run it becomes: its weights come from last.pt, not `backbone_weights`.
    stored = dataclasses.replace(stored_settings(run_dir, settings.restart), resume=True)
    stored.validate()
    for name, a, b in _differences(stored, settings):
        raise _refuse(name, a, b)
    _refuse_a_longer_cosine(stored, settings.epochs)
    return dataclasses.replace(stored, **{name: getattr(settings, name) for name in RESUMABLE_CHANGES})

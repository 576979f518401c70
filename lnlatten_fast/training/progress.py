"""Training progress, for a terminal or for a batch job's log.

    progress = Progress(settings.progress, settings.epochs, first_epoch=len(history))
    for step, (x, y) in enumerate(progress.epoch(loader, epoch, steps_done=0), start=1):
        ...
        progress.report(loss=1.93, images_per_second=212.0)
    progress.write("warm-up ...")              # a line of the log, never mixed into a bar
    progress.epoch_done("epoch   1  loss ...")  # the epoch's line, with the run's ETA

Modes (`PROGRESS_MODES`), all on stderr:
- "bar": a tqdm bar, redrawn in place and erased when the epoch ends;
- "lines": plain lines, no carriage returns: within an epoch, one each time
  `LINE_INTERVAL_SECONDS` of wall time has passed since the last, with the step, loss, img/s
  and the epoch's ETA. An epoch shorter than that prints none, so a log grows with the run's
  wall time (about one line a minute), never with its steps;
- "none": nothing;
- "auto": "bar" when stderr is a terminal, "lines" otherwise.
In every mode the epoch lines and `write`'s lines go to stdout, flushed: they are the run's
record, and a log file holds them in order with the progress lines.

`CacheProgress` shows the building of the image cache before training the same way: a line on
stdout when a build starts and when it ends, and the mode's progress on stderr between them.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TextIO

from tqdm import tqdm

from ..data.cache import BuildProgress

__all__ = ["PROGRESS_MODES", "LINE_INTERVAL_SECONDS", "Progress", "CacheProgress", "resolve_mode", "format_duration"]

PROGRESS_MODES = ("auto", "bar", "lines", "none")
# A heartbeat a minute: often enough to see that a job is alive and when it will end, and a
# day of long epochs still logs under 100 KB.
LINE_INTERVAL_SECONDS = 60.0
# The run's ETA follows the pace of this many latest epochs: a machine that speeds up or slows
# down mid-run (shared CPUs) shows in it within a few epochs.
ETA_EPOCHS = 3


def resolve_mode(mode: str, stream: TextIO) -> str:
    """"auto" as "bar" on a terminal and "lines" elsewhere; other modes as given."""
    if mode != "auto":
        return mode
    isatty = getattr(stream, "isatty", None)
    return "bar" if isatty is not None and isatty() else "lines"


def _record(line: str) -> None:
    """A line of the run's record: on stdout, flushed, without breaking a bar."""
    tqdm.write(line, file=sys.stdout)
    sys.stdout.flush()


def format_duration(seconds: float) -> str:
    """Whole seconds as 45s, 3m07s or 2h05m."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """The progress of one model's epochs `first_epoch`..`epochs - 1` (0-based), shown as
    `mode` says on `stream` (stderr when None); `enabled=False` (a DDP rank other than the
    first) shows none. `clock` and `interval` are for tests."""

    def __init__(self, mode: str, epochs: int, *, first_epoch: int = 0, enabled: bool = True,
                 stream: TextIO | None = None, interval: float = LINE_INTERVAL_SECONDS,
                 clock: Callable[[], float] = time.monotonic):
        self.stream = sys.stderr if stream is None else stream
        self.mode = resolve_mode(mode, self.stream) if enabled else "none"
        self.epochs = epochs
        self.interval = interval
        self.clock = clock
        self._epochs_left = epochs - first_epoch
        self._epochs_done = 0.0  # this object's share of them: a resumed epoch counts its part
        self._epoch_share = 1.0
        self._epoch_ends: list[tuple[float, float]] = []  # (clock, epochs done), from the first start
        self._bar: tqdm | None = None
        self._latest: dict[str, float] = {}

    def epoch(self, loader: Iterable, epoch: int, steps_done: int = 0) -> Iterator:
        """The items of `loader`, showing epoch `epoch + 1`'s progress: `len(loader)` steps, of
        which `steps_done` were done before (an epoch resumed mid-way). The bar is erased however
        the loop ends (exhausted, break or exception)."""
        if not self._epoch_ends:
            self._epoch_ends.append((self.clock(), 0.0))
        self._latest = {}
        total = len(loader)
        self._epoch_share = (total - steps_done) / total if total else 1.0
        desc = f"epoch {epoch + 1}/{self.epochs}"
        if self.mode == "bar":
            self._bar = tqdm(loader, desc=desc, total=total, initial=steps_done, leave=False,
                             dynamic_ncols=True, file=self.stream)
            try:
                yield from self._bar
            finally:
                self._bar.close()
                self._bar = None
            return
        if self.mode == "none":
            yield from loader
            return
        start = last_line = self.clock()
        for step, item in enumerate(loader, start=steps_done + 1):
            yield item
            now = self.clock()
            if now - last_line >= self.interval and step < total:
                last_line = now
                self._line(desc, step, total, (now - start) / (step - steps_done))

    def report(self, loss: float, images_per_second: float) -> None:
        """The latest loss and throughput, shown from now on."""
        self._latest = {"loss": loss, "images_per_second": images_per_second}
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{images_per_second:.0f}")

    def write(self, line: str) -> None:
        """Print `line` on stdout without breaking a bar."""
        _record(line)

    def epoch_done(self, line: str) -> None:
        """Print an epoch's line, with the estimated time left for the remaining epochs (at the
        mean wall time, evaluation included, of the last `ETA_EPOCHS` epochs)."""
        self._epochs_done += self._epoch_share
        self._epochs_left -= 1
        now = self.clock()
        since, done_then = self._epoch_ends[-ETA_EPOCHS:][0] if self._epoch_ends else (now, self._epochs_done)
        if self._epochs_left > 0 and self._epochs_done > done_then:
            per_epoch = (now - since) / (self._epochs_done - done_then)
            line += f"  ETA {format_duration(per_epoch * self._epochs_left)}"
        self._epoch_ends.append((now, self._epochs_done))
        self.write(line)

    def _line(self, desc: str, step: int, total: int, seconds_per_step: float) -> None:
        parts = [desc, f"step {step}/{total}"]
        if self._latest:
            parts += [f"loss {self._latest['loss']:.4f}", f"{self._latest['images_per_second']:.0f} img/s"]
        parts.append(f"epoch ETA {format_duration(seconds_per_step * (total - step))}")
        print("  ".join(parts), file=self.stream, flush=True)


class CacheProgress(BuildProgress):
    """The building of an image cache entry, as a run shows it: "<what>: building the image
    cache (N images)…" on stdout when it starts and "<what>: image cache built in 4s" when it
    ends, and between them, as `mode` says (see the module's docstring), a bar or a plain line
    each `interval` seconds with the images done and the ETA on `stream` (stderr when None).
    `enabled=False` (a DDP rank other than the first) shows nothing at all."""

    def __init__(self, mode: str, *, enabled: bool = True, stream: TextIO | None = None,
                 interval: float = LINE_INTERVAL_SECONDS, clock: Callable[[], float] = time.monotonic):
        self.stream = sys.stderr if stream is None else stream
        self.mode = resolve_mode(mode, self.stream)
        self.enabled = enabled
        self.interval = interval
        self.clock = clock

    @contextlib.contextmanager
    def task(self, what: str, total: int) -> Iterator[Callable[[int], None]]:
        if not self.enabled:
            yield lambda count: None
            return
        _record(f"{what}: building the image cache ({total} images)…")
        start = self.clock()
        if self.mode == "bar":
            with tqdm(total=total, desc=f"{what}: image cache", unit="img", leave=False, dynamic_ncols=True,
                      file=self.stream) as bar:
                yield bar.update
        elif self.mode == "lines":
            yield self._lines(what, total, start)
        else:
            yield lambda count: None
        _record(f"{what}: image cache built in {format_duration(self.clock() - start)}")

    def _lines(self, what: str, total: int, start: float) -> Callable[[int], None]:
        done, last_line = 0, start

        def advance(count: int) -> None:
            nonlocal done, last_line
            done += count
            now = self.clock()
            if now - last_line >= self.interval and done < total:
                last_line = now
                left = (now - start) / done * (total - done)
                print(f"{what}: image cache {done}/{total} images  ETA {format_duration(left)}", file=self.stream,
                      flush=True)

        return advance
